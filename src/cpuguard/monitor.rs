//! A named thread that runs a tick function until told to stop.
//!
//! Kept apart from the element so that stopping never deadlocks: the stop flag
//! is a condvar (the thread wakes at once) and a stop requested from the
//! thread itself (e.g. an app's sync bus handler tearing down on our ERROR)
//! detaches instead of joining itself.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Default)]
struct StopFlag {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopFlag {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits up to `wait`; false once stopped.
    fn wait(&self, wait: Duration) -> bool {
        let stopped = self.lock();
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, wait, |stopped| !*stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !*stopped
    }
}

pub struct Monitor {
    flag: Arc<StopFlag>,
    handle: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Runs `tick` after `first_wait`, then again after each wait it returns, until
    /// it returns `None` or `stop` is called.
    pub fn spawn<F>(name: &str, first_wait: Duration, mut tick: F) -> std::io::Result<Self>
    where
        F: FnMut() -> Option<Duration> + Send + 'static,
    {
        let flag = Arc::new(StopFlag::default());
        let thread_flag = flag.clone();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut wait = first_wait;
                while thread_flag.wait(wait) {
                    match tick() {
                        Some(next) => wait = next,
                        None => break,
                    }
                }
            })?;
        Ok(Monitor {
            flag,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        self.signal_and_join();
    }

    fn signal_and_join(&mut self) {
        *self.flag.lock() = true;
        self.flag.wake.notify_all();
        if let Some(handle) = self.handle.take()
            && handle.thread().id() != thread::current().id()
        {
            // A panic in the tick already reported itself; nothing more to do here.
            let _ = handle.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.signal_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    #[test]
    fn ticks_until_stopped_and_stops_promptly() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = ticks.clone();
        let monitor = Monitor::spawn("test-monitor", Duration::ZERO, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(Duration::from_millis(5))
        })
        .unwrap();
        while ticks.load(Ordering::SeqCst) < 3 {
            thread::sleep(Duration::from_millis(1));
        }
        let long = Monitor::spawn("test-long", Duration::ZERO, || {
            Some(Duration::from_secs(3600))
        })
        .unwrap();
        let started = Instant::now();
        long.stop();
        monitor.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn tick_returning_none_ends_the_thread() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = ticks.clone();
        let monitor = Monitor::spawn("test-once", Duration::ZERO, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            None
        })
        .unwrap();
        let started = Instant::now();
        while monitor.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "thread did not end"
            );
            thread::sleep(Duration::from_millis(1));
        }
        monitor.stop();
        assert_eq!(ticks.load(Ordering::SeqCst), 1);
    }
}
