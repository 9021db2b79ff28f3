//! A CPU burner (`stress-ng`, installed by scripts/deps.sh) that runs for as
//! long as its guard lives, and the host's busy share while it ran.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

pub struct Burner {
    child: Child,
}

impl Burner {
    /// `workers` spinning processes, in their own process group so that the
    /// guard's drop takes the workers down with their parent.
    pub fn start(workers: u32, extra: &[&str]) -> Burner {
        let child = Command::new("stress-ng")
            .args([
                "--cpu",
                &workers.to_string(),
                "--timeout",
                "900s",
                "--quiet",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("stress-ng runs (scripts/deps.sh installs it)");
        Burner { child }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Busy and total jiffies of the CPUs this process may run on (all of the
/// host's, unless `taskset` narrowed them), from /proc/stat's `cpuN` lines:
/// a burner started from here can only oversubscribe those.
pub fn host_ticks() -> (u64, u64) {
    let allowed = crate::common::machine::affinity_set();
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let (mut busy, mut all) = (0, 0);
    for line in stat.lines() {
        let mut words = line.split_whitespace();
        let Some(cpu) = words
            .next()
            .and_then(|w| w.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !allowed.contains(&cpu) {
            continue;
        }
        let fields: Vec<u64> = words.take(8).map(|v| v.parse().expect("counter")).collect();
        let total: u64 = fields.iter().sum();
        busy += total - fields[3] - fields[4];
        all += total;
    }
    (busy, all)
}

/// Busy share of the host between two `host_ticks` readings.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1).max(1) as f64;
    busy / total
}
