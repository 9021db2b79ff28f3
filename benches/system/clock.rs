//! CPU clocks: this process, one of its threads, another process; and
//! waiting, bounded, for the threads a measurement reads to appear.
//!
//! Thread and process CPU come from `schedstat` (nanoseconds on CPU) rather
//! than `stat`'s utime+stime, whose 10 ms clock ticks are far too coarse for
//! a thread that works for microseconds per second.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

/// CPU time of every thread of this process, past and present.
pub fn process_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// How long a process may take to start the threads a measurement reads (a
/// bound against a hang, not a measurement).
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// Calls `probe` every `step` until it gives `Ok`, for at most `limit`; past
/// that, its last `Err`.
pub fn poll<T, E>(
    limit: Duration,
    step: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(found) => return Ok(found),
            Err(not_yet) if started.elapsed() > limit => return Err(not_yet),
            Err(_) => thread::sleep(step),
        }
    }
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
