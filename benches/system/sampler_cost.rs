//! Item 2: CPU the shared sampler thread (`cpuguard-meter`) spends, with 1
//! and 16 cpuguard elements in one process, at the default interval and at
//! 100 ms, extrapolated to seconds per hour. The baseline is the same process
//! running the same pipelines without cpuguard: no sampler thread, and the
//! process CPU the guarded runs are compared with.
//!
//! Then many cpuguards in one pipeline, one per branch: a round asks each of
//! them about its pipeline (is it ending by itself, is it live), and doubling
//! the cpuguards must at most double the round, never square it.

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use gstcpuguard::cpuguard::SAMPLER_THREAD_NAME;

use crate::clock::{STARTUP_LIMIT, poll, process_cpu, thread_cpu_ns, threads_named};
use crate::pipeline::{launch, play, stop};
use crate::report::{Row, listed};
use crate::stats::{interleaved, median};

const DEFAULT_INTERVAL_MS: u64 = 1000;
const HOUR: f64 = 3600.0;

#[derive(Clone, Copy)]
struct Variant {
    instances: usize,
    /// None: no cpuguard (the baseline); Some(None): the default interval.
    guard: Option<Option<u64>>,
}

impl Variant {
    fn interval_ms(&self) -> u64 {
        self.guard.flatten().unwrap_or(DEFAULT_INTERVAL_MS)
    }

    fn description(&self) -> String {
        let guard = match self.guard {
            None => String::new(),
            // dry-run: a busy shared machine must not end the measurement.
            Some(None) => "cpuguard dry-run=true ! ".to_owned(),
            Some(Some(ms)) => format!("cpuguard dry-run=true interval={ms} ! "),
        };
        format!(
            "videotestsrc is-live=true pattern=black ! \
             video/x-raw,width=64,height=48,framerate=5/1 ! {guard}fakesink"
        )
    }
}

struct Sample {
    meter_s_per_h: f64,
    process_s_per_h: f64,
    /// A thread that only sleeps and wakes at the same interval: the floor
    /// any periodic sampler pays on this machine, whatever it reads.
    idle_s_per_h: f64,
}

/// A thread that wakes every `interval` and does nothing else.
struct IdleTicker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: thread::JoinHandle<()>,
    tid: String,
}

impl IdleTicker {
    fn start(interval: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let _ = tx.send(nix::unistd::gettid().as_raw().to_string());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                thread::sleep(interval);
            }
        });
        let tid = rx.recv().unwrap_or_default();
        IdleTicker { stop, handle, tid }
    }

    fn cpu_ns(&self) -> Result<u64, String> {
        thread_cpu_ns("self", &self.tid)
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

fn run_once(v: &Variant, window: Duration) -> Result<Sample, String> {
    let pipelines = (0..v.instances)
        .map(|_| launch(&v.description()))
        .collect::<Result<Vec<_>, _>>()?;
    let idle = IdleTicker::start(Duration::from_millis(v.interval_ms()));
    let result = (|| {
        for p in &pipelines {
            play(p)?;
        }
        // Past the first sample, which only sets the baseline.
        thread::sleep(Duration::from_millis(v.interval_ms() + 300));
        let meters = threads_named("self", SAMPLER_THREAD_NAME);
        match (v.guard.is_some(), meters.len()) {
            (true, 1) | (false, 0) => {}
            (_, n) => {
                return Err(format!(
                    "{n} {SAMPLER_THREAD_NAME} threads with {} instances",
                    if v.guard.is_some() { v.instances } else { 0 }
                ));
            }
        }
        let meter_cpu =
            || -> Result<u64, String> { meters.iter().map(|tid| thread_cpu_ns("self", tid)).sum() };
        let (meter_before, process_before, idle_before) =
            (meter_cpu()?, process_cpu(), idle.cpu_ns()?);
        thread::sleep(window);
        let (meter_after, process_after, idle_after) =
            (meter_cpu()?, process_cpu(), idle.cpu_ns()?);
        let per_hour = HOUR / window.as_secs_f64();
        Ok(Sample {
            meter_s_per_h: (meter_after - meter_before) as f64 / 1e9 * per_hour,
            process_s_per_h: (process_after - process_before).as_secs_f64() * per_hour,
            idle_s_per_h: (idle_after - idle_before) as f64 / 1e9 * per_hour,
        })
    })();
    idle.stop();
    for p in &pipelines {
        stop(p);
    }
    // Bus messages nobody read (cpuguard-load) go with the pipelines.
    drop(pipelines);
    result
}

/// Branches of the one pipeline, each with its cpuguard: baseline, then twice as many.
const BRANCHES: [usize; 2] = [16, 32];
const BRANCH_INTERVAL_MS: u64 = 100;

fn branches(n: usize) -> String {
    (0..n)
        .map(|_| {
            format!(
                "videotestsrc is-live=true pattern=black ! \
                 video/x-raw,width=64,height=48,framerate=5/1 ! queue ! \
                 cpuguard dry-run=true interval={BRANCH_INTERVAL_MS} ! fakesink "
            )
        })
        .collect()
}

/// The sampler thread's CPU per sample (µs) with one pipeline of `n`
/// branches, run by `cpuguard-run --dry-run` as a deployment runs it, in a
/// process of its own (in this one, 32 branches would also raise the bench's
/// peak RSS for the rest of the run).
fn per_sample_us(n: usize, window: Duration) -> Result<f64, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cpuguard-run"))
        .arg("--dry-run")
        .args(branches(n).split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start cpuguard-run: {e}"))?;
    let pid = child.id().to_string();
    let measured = (|| {
        let meter = poll(
            STARTUP_LIMIT,
            Duration::from_millis(20),
            || match threads_named(&pid, SAMPLER_THREAD_NAME).as_slice() {
                [meter] => Ok(meter.clone()),
                _ => Err(format!(
                    "no {SAMPLER_THREAD_NAME} thread with {n} cpuguards after {} s",
                    STARTUP_LIMIT.as_secs()
                )),
            },
        )?;
        // Past the first sample, which only sets the baseline.
        thread::sleep(Duration::from_millis(BRANCH_INTERVAL_MS + 300));
        let before = thread_cpu_ns(&pid, &meter)?;
        thread::sleep(window);
        let after = thread_cpu_ns(&pid, &meter)?;
        let samples = window.as_secs_f64() * 1e3 / BRANCH_INTERVAL_MS as f64;
        Ok(after.saturating_sub(before) as f64 / 1e3 / samples)
    })();
    // Stopped whatever happened, so that no run outlives the bench.
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let _ = child.wait();
    measured
}

/// The row and details of many cpuguards in one pipeline.
fn one_pipeline(window: Duration, rounds: usize) -> Result<(Row, String), String> {
    let runs = interleaved(&BRANCHES, rounds, |&n| per_sample_us(n, window))?;
    let [base, double] = [median(&runs[0]), median(&runs[1])];
    let ratio = double / base;
    let [few, many] = BRANCHES;
    let row = Row {
        item: "2. Sampler cost",
        measure: format!(
            "`cpuguard-meter` CPU per sample, cpuguards in one pipeline ({BRANCH_INTERVAL_MS} ms)"
        ),
        baseline: format!("{few} cpuguards: {base:.0} µs"),
        result: format!("{many} cpuguards: {double:.0} µs"),
        figure: format!("{many}/{few} = {ratio:.2}×"),
        target: "≤ 2× (linear in cpuguards)",
        met: Some(ratio <= 2.0),
    };
    let details = format!(
        "\nOne pipeline of {few} and of {many} branches (`videotestsrc is-live=true` 64x48 at \
         5 fps ! queue ! cpuguard dry-run=true interval={BRANCH_INTERVAL_MS} ! fakesink) run \
         by `cpuguard-run --dry-run`, {rounds} interleaved rounds, {:.0} s windows; the \
         sampler thread's CPU per sample, median: {few}: {base:.0} µs ({}), {many}: \
         {double:.0} µs ({}). A round asks every \
         cpuguard whether its pipeline is ending by itself and whether it is live; one look at \
         the pipeline per round serves all of its cpuguards.\n",
        window.as_secs_f64(),
        listed(runs[0].iter().copied(), 0),
        listed(runs[1].iter().copied(), 0),
    );
    Ok((row, details))
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(window: Duration, rounds: usize) -> Result<Outcome, String> {
    let variants: Vec<Variant> = [1, 16]
        .into_iter()
        .flat_map(|instances| {
            [None, Some(None), Some(Some(100))]
                .into_iter()
                .map(move |guard| Variant { instances, guard })
        })
        .collect();
    let mut meters = Vec::new();
    let mut idles = Vec::new();
    let process = interleaved(&variants, rounds, |v| {
        let s = run_once(v, window)?;
        meters.push(s.meter_s_per_h);
        idles.push(s.idle_s_per_h);
        Ok(s.process_s_per_h)
    })?;
    // `interleaved` fills round by round: sample k belongs to variant k % len.
    let by_variant = |all: &[f64]| -> Vec<f64> {
        (0..variants.len())
            .map(|i| {
                median(
                    &all.iter()
                        .skip(i)
                        .step_by(variants.len())
                        .copied()
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    };
    let meter = by_variant(&meters);
    let idle = by_variant(&idles);
    let process: Vec<f64> = process.iter().map(|p| median(p)).collect();
    let index = |instances: usize, guard: Option<Option<u64>>| {
        variants
            .iter()
            .position(|v| v.instances == instances && v.guard == guard)
            .expect("variant listed")
    };
    let mut rows = Vec::new();
    let mut details = format!(
        "{:.0} s windows after the first sample, {rounds} interleaved rounds; meter thread CPU \
         from /proc/self/task/<tid>/schedstat, process CPU from CLOCK_PROCESS_CPUTIME_ID; \
         each instance in its own pipeline (`videotestsrc is-live=true` 64x48 at 5 fps ! \
         cpuguard dry-run=true ! fakesink), all sharing one sampler thread.\n\n\
         A thread that only sleeps and wakes at the same interval runs beside it, as the \
         floor any periodic sampler pays here.\n\n\
         | instances | interval | meter thread s/h | idle waking thread s/h | process s/h | process s/h without cpuguard | difference s/h |\n\
         |---|---|---|---|---|---|---|\n",
        window.as_secs_f64()
    );
    for (label, guard) in [
        ("default (1000 ms)", Some(None)),
        ("100 ms", Some(Some(100))),
    ] {
        let one = meter[index(1, guard)];
        let sixteen = meter[index(16, guard)];
        let floor = idle[index(1, guard)];
        let flat = sixteen / one;
        let target_met = if guard == Some(None) {
            Some(one < 0.1 && sixteen < 0.1)
        } else {
            None
        };
        rows.push(Row {
            item: "2. Sampler cost",
            measure: format!("`cpuguard-meter` CPU, interval {label}"),
            baseline: format!("no cpuguard: 0 s/h; a thread only waking: {floor:.3} s/h"),
            result: format!("1 inst. {one:.3} s/h; 16 inst. {sixteen:.3} s/h"),
            figure: format!("+{sixteen:.3} s/h; 16/1 = {flat:.2}×"),
            target: if guard == Some(None) {
                "< 0.1 s/h, flat in instances"
            } else {
                "flat in instances"
            },
            met: target_met,
        });
        for instances in [1, 16] {
            let guarded = process[index(instances, guard)];
            let bare = process[index(instances, None)];
            details.push_str(&format!(
                "| {instances} | {label} | {:.3} | {:.3} | {guarded:.2} | {bare:.2} | {:+.2} |\n",
                meter[index(instances, guard)],
                idle[index(instances, guard)],
                guarded - bare
            ));
        }
    }
    let (row, text) = one_pipeline(window, rounds)?;
    rows.push(row);
    details.push_str(&text);
    Ok(Outcome { rows, details })
}
