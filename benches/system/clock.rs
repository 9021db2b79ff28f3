//! CPU clocks: this process, one of its threads, another process.
//!
//! Thread and process CPU come from `schedstat` (nanoseconds on CPU) rather
//! than `stat`'s utime+stime, whose 10 ms clock ticks are far too coarse for
//! a thread that works for microseconds per second.

use std::fs;
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// CPU time of every thread of this process, past and present.
pub fn process_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Threads of `pid` whose name (`comm`) is `name`.
pub fn threads_named(pid: &str, name: &str) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .filter(|tid| {
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Nanoseconds one thread has run, from `/proc/<pid>/task/<tid>/schedstat`.
pub fn thread_cpu_ns(pid: &str, tid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| format!("{path}: no run time in {text:?}"))
}

/// Nanoseconds every live thread of another process has run.
pub fn live_threads_cpu_ns(pid: i32) -> Result<u64, String> {
    let pid = pid.to_string();
    let tasks =
        fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("/proc/{pid}/task: {e}"))?;
    let mut total = 0;
    for task in tasks.filter_map(|t| t.ok()) {
        // A thread may exit between the listing and the read.
        total += thread_cpu_ns(&pid, &task.file_name().to_string_lossy()).unwrap_or(0);
    }
    Ok(total)
}
