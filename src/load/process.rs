//! Process and thread CPU time from `/proc/<pid>/stat` and
//! `/proc/<pid>/task/<tid>/stat`, or, for this process's own threads, from
//! their CPU clocks.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

use super::LoadError;
use super::paths::{HostPaths, read_into};

/// utime+stime of `/proc/<pid>/stat` (all threads, reaped children excluded), in seconds.
pub fn process_cpu_seconds(paths: &HostPaths, pid: i32) -> Result<f64, LoadError> {
    cpu_seconds(&paths.pid_file(pid, "stat"))
}

/// utime+stime+cutime+cstime of `/proc/<pid>/stat`, in seconds: a process's
/// CPU with the children it reaped, which is what `wait4`'s rusage reports.
/// Read from an exited, not yet reaped child, it is that child's whole CPU.
pub fn process_and_reaped_cpu_seconds(paths: &HostPaths, pid: i32) -> Result<f64, LoadError> {
    let path = paths.pid_file(pid, "stat");
    let mut buf = String::new();
    read_into(&path, &mut buf)?;
    let ticks = sum_cpu_fields(&buf, 4).map_err(|d| LoadError::malformed(&path, d))?;
    Ok(ticks as f64 / ticks_per_second()?)
}

/// utime+stime of one thread, `/proc/<pid>/task/<tid>/stat`, in seconds.
pub fn thread_cpu_seconds(paths: &HostPaths, pid: i32, tid: i32) -> Result<f64, LoadError> {
    cpu_seconds(&paths.task_file(pid, tid, "stat"))
}

/// The CPU clock of thread `tid` of this process (Linux encodes a thread's
/// CPU clock as `CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD` over the bit-inverted tid).
pub(crate) fn thread_cpu_clock(tid: i32) -> nix::libc::clockid_t {
    ((!tid) << 3) | 6
}

/// CPU time of thread `tid` of this process, from its CPU clock: one
/// syscall, nanosecond precision, no file. Fails once the thread has exited
/// (the kernel also refuses a tid of another process).
/// CPU time of this whole process, every thread included (encoder worker
/// pools too): what cross-process ranking compares.
pub fn own_process_cpu_time() -> Result<Duration, nix::errno::Errno> {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map(Duration::from)
}

/// The CPU rate (in CPUs) of whatever ranks a victim (an element's streaming
/// threads, a whole process), smoothed the same way for all of them: the
/// mean of the previous value and this window's share, about two samples'
/// worth, so one short window (a thread scheduled just before or after the
/// sample) does not misrank.
#[derive(Debug, Default, Clone)]
pub struct CpuRate {
    /// The last reading of a cumulative total, for [`CpuRate::update_total`].
    total: Option<Duration>,
    at: Option<Instant>,
    smoothed: Option<f64>,
}

impl CpuRate {
    /// Adds a window that ends at `now` in which `used` CPU time was spent.
    /// The first call only starts the window: there is nothing to divide by
    /// yet, and a 0 would drag the average.
    pub fn update(&mut self, now: Instant, used: Duration) -> Option<f64> {
        match self.at.replace(now) {
            Some(at) if now > at => {
                let share = used.as_secs_f64() / now.duration_since(at).as_secs_f64();
                let smoothed = match self.smoothed {
                    Some(previous) => (previous + share) / 2.0,
                    None => share,
                };
                self.smoothed = Some(smoothed);
            }
            _ => {}
        }
        self.smoothed
    }

    /// [`CpuRate::update`] from a cumulative CPU time (a process's clock).
    pub fn update_total(&mut self, now: Instant, total: Duration) -> Option<f64> {
        let used = self
            .total
            .replace(total)
            .map(|before| total.saturating_sub(before));
        self.update(now, used.unwrap_or_default())
    }

    /// This whole process, every thread included (encoder worker pools too):
    /// what cross-process ranking compares. `None` until two readings.
    pub fn update_own_process(&mut self, now: Instant) -> Option<f64> {
        match own_process_cpu_time() {
            Ok(total) => self.update_total(now, total),
            Err(_) => self.smoothed,
        }
    }

    /// The last value (`None` before two readings).
    pub fn last(&self) -> Option<f64> {
        self.smoothed
    }
}

pub fn own_thread_cpu_time(tid: i32) -> Result<Duration, nix::errno::Errno> {
    let clock = ClockId::from_raw(thread_cpu_clock(tid));
    clock_gettime(clock).map(Duration::from)
}

fn cpu_seconds(path: &Path) -> Result<f64, LoadError> {
    let mut buf = String::new();
    let ticks = read_cpu_ticks(path, &mut buf)?;
    Ok(ticks as f64 / ticks_per_second()?)
}

/// utime+stime in clock ticks.
pub(crate) fn read_cpu_ticks(path: &Path, buf: &mut String) -> Result<u64, LoadError> {
    read_into(path, buf)?;
    parse_cpu_ticks(buf).map_err(|d| LoadError::malformed(path, d))
}

/// Clock ticks per second as a divisor: dividing (rather than multiplying by
/// its inverse) keeps whole-second amounts exact, so saturation reads 1.0.
pub(crate) fn ticks_per_second() -> Result<f64, LoadError> {
    match procfs::ticks_per_second() {
        0 => Err(LoadError::malformed(
            Path::new("sysconf(_SC_CLK_TCK)"),
            "0 clock ticks per second",
        )),
        ticks => Ok(ticks as f64),
    }
}

/// Fields 14 and 15 (utime, stime).
pub(crate) fn parse_cpu_ticks(stat: &str) -> Result<u64, String> {
    sum_cpu_fields(stat, 2)
}

/// The sum of the first `count` of fields 14–17 (utime, stime, cutime,
/// cstime). The command name (field 2) is in parentheses and may hold spaces
/// and `)`, so fields are counted from the last `)`.
fn sum_cpu_fields(stat: &str, count: usize) -> Result<u64, String> {
    const NAMES: [&str; 4] = ["utime", "stime", "cutime", "cstime"];
    let (_, after_comm) = stat
        .rsplit_once(')')
        .ok_or("no `)` after the command name")?;
    // after_comm starts at field 3 (state): utime is the 12th field from there.
    let mut fields = after_comm.split_whitespace().skip(11);
    let mut total = 0u64;
    for name in &NAMES[..count] {
        let text = fields
            .next()
            .ok_or_else(|| format!("fewer than {} fields", 13 + count))?;
        let ticks = text
            .parse::<u64>()
            .map_err(|_| format!("bad {name} {text:?}"))?;
        total = total
            .checked_add(ticks)
            .ok_or_else(|| format!("the CPU fields overflow at {name}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (gst (launch) 1) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000 200\n";

    #[test]
    fn a_rate_is_the_mean_of_the_last_two_windows_and_waits_for_one() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut rate = CpuRate::default();
        assert_eq!(rate.update_total(t0, Duration::from_secs(5)), None);
        // 500 ms of CPU in 1 s: 0.5.
        assert_eq!(
            rate.update_total(at(1000), Duration::from_millis(5500)),
            Some(0.5)
        );
        // 1.5 s in 1 s: (0.5 + 1.5) / 2.
        assert_eq!(
            rate.update_total(at(2000), Duration::from_millis(7000)),
            Some(1.0)
        );
        // No time passed: no window, the last value stands.
        assert_eq!(
            rate.update_total(at(2000), Duration::from_millis(9000)),
            Some(1.0)
        );
        assert_eq!(rate.last(), Some(1.0));
        let mut threads = CpuRate::default();
        assert_eq!(threads.update(t0, Duration::ZERO), None);
        assert_eq!(
            threads.update(at(500), Duration::from_millis(250)),
            Some(0.5)
        );
    }

    #[test]
    fn sums_utime_and_stime() {
        assert_eq!(parse_cpu_ticks(STAT), Ok(300));
    }

    #[test]
    fn reaped_children_add_cutime_and_cstime() {
        let stat = STAT.replace(" 250 50 0 0 ", " 250 50 7 3 ");
        assert_eq!(sum_cpu_fields(&stat, 4), Ok(310));
        assert_eq!(parse_cpu_ticks(&stat), Ok(300));
        let short = "1 (x) R 1 1 1 0 -1 0 0 0 0 0 250 50 7\n";
        assert_eq!(
            sum_cpu_fields(short, 4),
            Err("fewer than 17 fields".to_owned())
        );
    }

    #[test]
    fn malformed_stat_is_an_error() {
        assert!(parse_cpu_ticks("").is_err());
        assert!(parse_cpu_ticks("4242 (x) R 1 2 3").is_err());
        assert!(parse_cpu_ticks(&STAT.replace(" 250 ", " -5 ")).is_err());
        let max = u64::MAX;
        assert!(parse_cpu_ticks(&STAT.replace(" 250 50 ", &format!(" {max} 1 "))).is_err());
    }

    #[test]
    fn thread_cpu_clock_ids_match_the_kernel_encoding() {
        // CPUCLOCK_PID(clock) = ~(clock >> 3); CPUCLOCK_PERTHREAD_MASK = 4; CPUCLOCK_SCHED = 2.
        for tid in [1, 42, 4_194_304] {
            let clock = thread_cpu_clock(tid);
            assert_eq!(!(clock >> 3), tid);
            assert_eq!(clock & 7, 6);
        }
    }

    #[test]
    fn own_thread_cpu_time_follows_the_thread_and_refuses_others() {
        let tid = nix::unistd::gettid().as_raw();
        let before = own_thread_cpu_time(tid).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0u64);
        }
        let after = own_thread_cpu_time(tid).unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
        // What the thread's own clock says, read just after.
        let own = Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap());
        assert!(own >= after, "{own:?} < {after:?}");
        // Another process's thread (init), and an exited thread of ours.
        assert!(own_thread_cpu_time(1).is_err() || std::process::id() == 1);
        let exited = std::thread::spawn(|| nix::unistd::gettid().as_raw())
            .join()
            .unwrap();
        let gone = std::time::Instant::now();
        // The kernel may reap the task a moment after join returns.
        while own_thread_cpu_time(exited).is_ok() {
            assert!(
                gone.elapsed() < Duration::from_secs(5),
                "tid {exited} still readable"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn own_thread_and_process_times_are_readable() {
        let paths = HostPaths::system();
        let pid = i32::try_from(std::process::id()).unwrap();
        let tid = nix::unistd::gettid().as_raw();
        let thread_clock =
            || Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap());
        let (process_before, thread_before) = (
            process_cpu_seconds(&paths, pid).unwrap(),
            thread_cpu_seconds(&paths, pid, tid).unwrap(),
        );
        // 100 ms of CPU on this thread, by its own clock (not wall time, which
        // a busy machine stretches): ten clock ticks for /proc to count.
        let start = thread_clock();
        while thread_clock() - start < Duration::from_millis(100) {
            std::hint::black_box(0u64);
        }
        let burnt = (thread_clock() - start).as_secs_f64();
        let thread = thread_cpu_seconds(&paths, pid, tid).unwrap() - thread_before;
        let process = process_cpu_seconds(&paths, pid).unwrap() - process_before;
        // Whole ticks of 10 ms: at most one lost at each end of the window.
        assert!(
            (burnt - 0.021..=burnt + 0.021).contains(&thread),
            "thread {thread} s for {burnt} s burnt"
        );
        assert!(
            process >= thread - 0.021,
            "process {process} < thread {thread}"
        );
        let err = process_cpu_seconds(&HostPaths::under("/nonexistent"), 1).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/proc/1/stat"),
            "{err}"
        );
    }
}
