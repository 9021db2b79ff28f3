//! A worker's CPU use is that of its whole process tree, as LiveKit Egress
//! groups it per handler: a pipeline may start helper processes, and their CPU
//! is the worker's too.
//!
//! Children are found from every `/proc/<pid>/stat`'s parent field rather
//! than `/proc/<pid>/task/<tid>/children`: that file lists only the children
//! one thread forked (a process needs a read per thread), and exists only on
//! kernels built with CONFIG_PROC_CHILDREN. Always the real `/proc`: `--root`
//! fakes the shared load only, a worker's CPU must be its own.

use std::collections::HashMap;
use std::time::Instant;

use gstcpuguard::load::{HostPaths, process_cpu_seconds};

/// Parent → children for every process, from one scan of `/proc`.
#[derive(Debug, Default)]
pub struct ProcessTable {
    children: HashMap<i32, Vec<i32>>,
}

impl ProcessTable {
    pub fn scan(paths: &HostPaths) -> Self {
        let mut table = ProcessTable::default();
        let Ok(entries) = std::fs::read_dir(paths.root.join("proc")) else {
            return table;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A process may exit between the listing and the read: skip it.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = parse_ppid(&stat) {
                table.add(pid, ppid);
            }
        }
        table
    }

    fn add(&mut self, pid: i32, ppid: i32) {
        self.children.entry(ppid).or_default().push(pid);
    }

    /// `root` and every descendant, `root` first.
    pub fn tree(&self, root: i32) -> Vec<i32> {
        let mut out = vec![root];
        let mut next = 0;
        while let Some(&pid) = out.get(next) {
            next += 1;
            for &child in self.children.get(&pid).into_iter().flatten() {
                // A pid can be reused while scanning: never loop.
                if !out.contains(&child) {
                    out.push(child);
                }
            }
        }
        out
    }

    /// utime+stime of `root`'s tree in seconds; `None` once `root` is gone.
    pub fn cpu_seconds(&self, paths: &HostPaths, root: i32) -> Option<f64> {
        let own = process_cpu_seconds(paths, root).ok()?;
        Some(
            self.tree(root)
                .into_iter()
                .skip(1)
                .map(|pid| process_cpu_seconds(paths, pid).unwrap_or(0.0))
                .sum::<f64>()
                + own,
        )
    }
}

/// Field 4 (ppid) of `/proc/<pid>/stat`, counted after the command name,
/// which is in parentheses and may hold spaces and `)`.
pub fn parse_ppid(stat: &str) -> Option<i32> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// CPU use of one worker, in CPUs, between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    last_seconds: f64,
    last_at: Instant,
    /// CPUs used over the last window.
    pub rate: f64,
    /// CPU seconds used so far.
    pub total: f64,
}

impl CpuUse {
    /// A process starts with no CPU time, so the first window starts at its spawn.
    pub fn new(spawned: Instant) -> Self {
        CpuUse {
            last_seconds: 0.0,
            last_at: spawned,
            rate: 0.0,
            total: 0.0,
        }
    }

    pub fn update(&mut self, seconds: f64, now: Instant) {
        let wall = now.saturating_duration_since(self.last_at).as_secs_f64();
        if wall > 0.0 {
            // A descendant that exits takes its time with it (until reaped
            // into cutime, which stat leaves out): never a negative rate.
            self.rate = (seconds - self.last_seconds).max(0.0) / wall;
        }
        self.last_seconds = seconds;
        self.last_at = now;
        self.total = seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ppid_is_read_after_the_command_name() {
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (x) S"), None);
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn tree_holds_every_descendant_once() {
        let mut table = ProcessTable::default();
        for (pid, ppid) in [(10, 1), (11, 10), (12, 11), (13, 10), (20, 1), (10, 12)] {
            table.add(pid, ppid);
        }
        let mut tree = table.tree(10);
        tree.sort();
        assert_eq!(tree, [10, 11, 12, 13]);
        assert_eq!(table.tree(99), [99]);
    }

    #[test]
    fn own_process_tree_includes_a_child() {
        // A child that burns CPU: its time is the tree's too.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        let me = i32::try_from(std::process::id()).unwrap();
        let paths = HostPaths::system();
        let table = ProcessTable::scan(&paths);
        let found = table.tree(me).contains(&(child.id() as i32));
        let child_cpu = || process_cpu_seconds(&paths, child.id() as i32).unwrap_or(0.0);
        // Until the child has used 50 ms (five clock ticks), as /proc counts it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child_cpu() < 0.05 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Read in this order, each figure can only have grown by the next read.
        let child_seconds = child_cpu();
        let alone = process_cpu_seconds(&paths, me).unwrap();
        let tree = table.cpu_seconds(&paths, me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "child not in the tree");
        assert!(child_seconds >= 0.05, "the child burnt {child_seconds} s");
        assert!(
            tree >= alone + child_seconds - 0.011,
            "tree {tree} s < this process {alone} s + child {child_seconds} s"
        );
        assert_eq!(
            table.cpu_seconds(&HostPaths::under("/nonexistent"), me),
            None
        );
    }

    #[test]
    fn rate_is_cpus_over_the_window() {
        let start = Instant::now();
        let mut cpu = CpuUse::new(start);
        cpu.update(1.0, start + Duration::from_secs(2));
        assert!((cpu.rate - 0.5).abs() < 1e-9);
        cpu.update(0.5, start + Duration::from_secs(3));
        assert_eq!(cpu.rate, 0.0);
        assert_eq!(cpu.total, 0.5);
    }
}
