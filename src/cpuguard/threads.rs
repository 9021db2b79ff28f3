//! Which threads stream through an element, and how much CPU they use.
//!
//! CPU is attributed to a cpuguard instance through the threads that pushed
//! data through it: a streaming thread runs its whole branch, from the source
//! or queue that owns it down to the next queue or sink, so the CPU of those
//! threads is the CPU the instance's branch costs. Threads of other branches
//! of the same pipeline (behind a queue, or inside an encoder's own thread
//! pool) are not seen; they are not counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::load::{CpuRate, own_thread_cpu_time};

/// The calling thread's pthread handle: one read of the thread pointer. A
/// thread-local in this shared library costs a `__tls_get_addr` call, and
/// `gettid` a syscall; per buffer, this is what is compared.
fn current_handle() -> u64 {
    nix::sys::pthread::pthread_self()
}

/// A thread as noted: its kernel tid (whose CPU clock is read) and the
/// pthread handle it was noted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Noted {
    tid: i32,
    handle: u64,
}

/// The threads that streamed through one element. Noting is a hot-path call
/// (every buffer): one relaxed load when the thread is the last one seen.
#[derive(Debug, Default)]
pub struct StreamingThreads {
    /// The pthread handle of the last thread noted; 0 for none.
    last: AtomicU64,
    seen: Mutex<Vec<Noted>>,
}

impl StreamingThreads {
    #[inline]
    pub fn note_current(&self) {
        let handle = current_handle();
        if self.last.load(Ordering::Relaxed) != handle {
            self.note(handle);
        }
    }

    #[cold]
    #[inline(never)]
    fn note(&self, handle: u64) {
        let tid = nix::unistd::gettid().as_raw();
        let mut seen = lock(&self.seen);
        if !seen.iter().any(|n| n.tid == tid) {
            seen.push(Noted { tid, handle });
        }
        self.last.store(handle, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn snapshot(&self) -> Vec<i32> {
        lock(&self.seen).iter().map(|n| n.tid).collect()
    }

    /// Calls `visit` on each thread and drops those it returns false for
    /// (exited), so the list does not grow with every pool thread that ever
    /// pushed. The last handle is forgotten with its thread: glibc hands an
    /// exited thread's handle to the next thread it starts, which must be
    /// noted afresh (at its next buffer after this).
    fn visit_live(&self, mut visit: impl FnMut(i32) -> bool) {
        lock(&self.seen).retain(|noted| {
            let live = visit(noted.tid);
            if !live {
                let _ = self.last.compare_exchange(
                    noted.handle,
                    0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            live
        });
    }

    pub fn clear(&self) {
        lock(&self.seen).clear();
        self.last.store(0, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// CPU use of one instance's threads between samples, in CPUs.
#[derive(Debug, Default)]
pub struct CpuUse {
    /// Cumulative CPU time of each thread at the previous sample.
    previous: Vec<(i32, Duration)>,
    /// This sample's readings, swapped with `previous` (no allocation per sample).
    current: Vec<(i32, Duration)>,
    rate: CpuRate,
}

impl CpuUse {
    /// Reads every thread's CPU clock (threads of this process only, whatever
    /// the element's `root` says: one `clock_gettime` each, no file). A
    /// thread seen for the first time only sets its baseline, since pool
    /// threads may have worked for someone else before. Exited threads are
    /// forgotten.
    pub fn update(&mut self, threads: &StreamingThreads, now: Instant) -> f64 {
        let mut used = Duration::ZERO;
        self.current.clear();
        let (previous, current) = (&self.previous, &mut self.current);
        threads.visit_live(|tid| {
            let Ok(time) = own_thread_cpu_time(tid) else {
                return false;
            };
            if let Some((_, before)) = previous.iter().find(|(t, _)| *t == tid) {
                used += time.saturating_sub(*before);
            }
            current.push((tid, time));
            true
        });
        std::mem::swap(&mut self.previous, &mut self.current);
        self.rate.update(now, used).unwrap_or(0.0)
    }

    /// The last value `update` returned (0 before the first).
    pub fn last(&self) -> f64 {
        self.rate.last().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_each_thread_once() {
        let threads = StreamingThreads::default();
        threads.note_current();
        threads.note_current();
        std::thread::scope(|s| {
            s.spawn(|| threads.note_current());
        });
        threads.note_current();
        let seen = threads.snapshot();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.contains(&nix::unistd::gettid().as_raw()));
    }

    /// glibc gives a new thread the handle of one that exited: once the
    /// exited one is forgotten, a thread with its handle is noted afresh.
    #[test]
    fn a_thread_with_an_exited_threads_handle_is_noted() {
        let threads = StreamingThreads::default();
        // An exited thread that had this thread's handle: no task has its
        // tid, one above the kernel's PID_MAX_LIMIT.
        const GONE: i32 = 4_194_305;
        let handle = current_handle();
        lock(&threads.seen).push(Noted { tid: GONE, handle });
        threads.last.store(handle, Ordering::Relaxed);
        threads.note_current();
        assert_eq!(threads.snapshot(), [GONE], "the handle was the last seen");
        CpuUse::default().update(&threads, Instant::now());
        assert!(
            threads.snapshot().is_empty(),
            "the exited thread is forgotten"
        );
        threads.note_current();
        assert_eq!(threads.snapshot(), [nix::unistd::gettid().as_raw()]);
    }

    #[test]
    fn busy_thread_reads_more_cpu_and_exited_threads_are_forgotten() {
        let threads = StreamingThreads::default();
        let mut cpu = CpuUse::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                threads.note_current();
                let start = Instant::now();
                cpu.update(&threads, start);
                // Spin in rounds until its CPU shows: on a loaded machine the
                // thread may get little CPU, so bound the wait, not the share.
                loop {
                    let round = Instant::now();
                    while round.elapsed() < Duration::from_millis(100) {
                        std::hint::black_box(0u64);
                    }
                    let used = cpu.update(&threads, Instant::now());
                    if used > 0.0 {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "spinning thread still reads {used} CPUs"
                    );
                }
            });
        });
        // The kernel may list a joined thread's task for a moment longer.
        let joined = Instant::now();
        loop {
            cpu.update(&threads, Instant::now());
            if threads.snapshot().is_empty() {
                break;
            }
            assert!(
                joined.elapsed() < Duration::from_secs(5),
                "exited thread still noted: {:?}",
                threads.snapshot()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
