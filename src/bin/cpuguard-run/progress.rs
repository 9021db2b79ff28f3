//! Human-readable progress on stderr. Never panics: a closed stderr must not
//! turn a clean drain into a crash (`eprintln!` panics on write errors).

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Marks time zero for the elapsed-time prefix. Called once, first thing in `main`.
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Time zero of the run, once [`start_clock`] was called.
pub fn started() -> Option<Instant> {
    START.get().copied()
}

/// One progress line: `cpuguard-run [  1.234s] text`.
pub fn line(args: std::fmt::Arguments<'_>) {
    let elapsed = START
        .get()
        .map_or(0.0, |start| start.elapsed().as_secs_f64());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "cpuguard-run [{elapsed:8.3}s] {args}");
}

/// A problem that ends the program before a run (usage errors): no time prefix,
/// in the `program: message` form shells and logs expect.
pub fn fatal_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "cpuguard-run: {args}");
}

macro_rules! progress {
    ($($arg:tt)*) => { $crate::progress::line(format_args!($($arg)*)) };
}

macro_rules! fatal {
    ($($arg:tt)*) => { $crate::progress::fatal_line(format_args!($($arg)*)) };
}

pub(crate) use {fatal, progress};
