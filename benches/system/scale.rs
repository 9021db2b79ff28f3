//! Item 6: `cpuguard-run` multi-pipeline mode with 1, 4 and 16 light
//! workers. The parent decides nothing: each worker's cpuguard samples and
//! coordinates with the other workers through the parent's coordination
//! directory (`src/hostwide/`), and tells the parent its samples. Over a
//! steady window this measures what each side pays per sample: the parent
//! (every thread: relaying every worker's events and stderr), and each
//! worker's `cpuguard-meter` thread (its load, its entry in the coordination
//! directory and the drain lock read).

use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::clock::{STARTUP_LIMIT, live_threads_cpu_ns, poll, thread_cpu_ns, threads_named};
use crate::report::{Row, listed};
use crate::stats::{interleaved, median};

const WORKERS: [usize; 3] = [1, 4, 16];
const INTERVAL_MS: u64 = 100;
const WORKER: &str = "videotestsrc is-live=true pattern=black ! \
                      video/x-raw,width=64,height=48,framerate=5/1 ! cpuguard ! fakesink";

struct Run {
    /// The parent's CPU per sampling interval, all workers together.
    parent_us: f64,
    /// The median worker's sampler-thread CPU per sample.
    meter_us: f64,
}

/// The processes `pid`'s main thread started: the parent spawns its
/// workers from its main loop, on that thread.
fn children_of(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|text| {
            text.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Each worker's sampler thread, once all `workers` of them run one.
fn meters(parent: i32, workers: usize) -> Result<Vec<(String, String)>, String> {
    poll(STARTUP_LIMIT, Duration::from_millis(50), || {
        let found: Vec<(String, String)> = children_of(parent)
            .into_iter()
            .filter_map(|pid| {
                let pid = pid.to_string();
                let tid = threads_named(&pid, gstcpuguard::cpuguard::SAMPLER_THREAD_NAME)
                    .into_iter()
                    .next()?;
                Some((pid, tid))
            })
            .collect();
        if found.len() == workers {
            return Ok(found);
        }
        Err(format!(
            "{} of {workers} workers run a sampler thread after {} s",
            found.len(),
            STARTUP_LIMIT.as_secs()
        ))
    })
}

fn meter_cpu_ns(meters: &[(String, String)]) -> Result<Vec<u64>, String> {
    meters
        .iter()
        .map(|(pid, tid)| thread_cpu_ns(pid, tid))
        .collect()
}

fn run_once(workers: usize, settle: Duration, window: Duration) -> Result<Run, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpuguard-run"));
    // Each worker's own CPU as its load: it never gets near the thresholds,
    // so no worker is drained mid-measurement, yet every sample runs the
    // policy and the coordination directory.
    cmd.args(["--load-source", "process", "--interval"])
        .arg(INTERVAL_MS.to_string());
    for _ in 0..workers {
        cmd.arg("--pipeline").arg(WORKER);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start cpuguard-run: {e}"))?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let measured = meters(pid, workers).and_then(|meters| {
        thread::sleep(settle);
        let parent_before = live_threads_cpu_ns(pid)?;
        let meters_before = meter_cpu_ns(&meters)?;
        thread::sleep(window);
        let parent_after = live_threads_cpu_ns(pid)?;
        let meters_after = meter_cpu_ns(&meters)?;
        Ok((
            parent_after.saturating_sub(parent_before),
            meters_before,
            meters_after,
        ))
    });
    // Stopped whatever happened, so that no run outlives the bench.
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let text = reader
        .join()
        .map_err(|_| "stdout reader panicked".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parent_ns, meters_before, meters_after) = measured?;
    if !status.success() {
        return Err(format!("cpuguard-run with {workers} workers: {status}"));
    }
    let summary: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["summary"] == true)
        .ok_or_else(|| format!("no summary line in {text:?}"))?;
    if summary["complete"] != workers {
        return Err(format!("not every worker completed: {summary}"));
    }
    let samples = window.as_secs_f64() / Duration::from_millis(INTERVAL_MS).as_secs_f64();
    let per_sample: Vec<f64> = meters_after
        .iter()
        .zip(&meters_before)
        .map(|(after, before)| after.saturating_sub(*before) as f64 / 1e3 / samples)
        .collect();
    Ok(Run {
        parent_us: parent_ns as f64 / 1e3 / samples,
        meter_us: median(&per_sample),
    })
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(settle: Duration, window: Duration, rounds: usize) -> Result<Outcome, String> {
    let mut meter = vec![Vec::new(); WORKERS.len()];
    let parent = interleaved(&WORKERS, rounds, |&n| {
        let run = run_once(n, settle, window)?;
        let i = WORKERS.iter().position(|&w| w == n).expect("listed");
        meter[i].push(run.meter_us);
        Ok(run.parent_us)
    })?;
    let parent: Vec<f64> = parent.iter().map(|v| median(v)).collect();
    let meter_rounds: Vec<String> = meter.iter().map(|v| listed(v.iter().copied(), 1)).collect();
    let meter: Vec<f64> = meter.iter().map(|v| median(v)).collect();
    let growth = |v: &[f64]| {
        WORKERS
            .iter()
            .zip(v)
            .map(|(n, x)| format!("{n}: {:.2}×", x / v[0]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = vec![
        Row {
            item: "6. Scale",
            measure: format!(
                "multi-mode parent CPU per sample interval ({INTERVAL_MS} ms), all workers"
            ),
            baseline: format!("1 worker: {:.0} µs", parent[0]),
            result: format!("4: {:.0} µs; 16: {:.0} µs", parent[1], parent[2]),
            figure: format!("1→4→16: {}", growth(&parent)),
            target: "≤ linear (4×, 16×)",
            met: Some(parent[1] / parent[0] <= 4.0 && parent[2] / parent[0] <= 16.0),
        },
        Row {
            item: "6. Scale",
            measure: "each worker's `cpuguard-meter` CPU per sample (median worker)".into(),
            baseline: format!("1 worker: {:.1} µs", meter[0]),
            result: format!("4: {:.1} µs; 16: {:.1} µs", meter[1], meter[2]),
            figure: format!("1→4→16: {}", growth(&meter)),
            target: "≤ 2× (flat in workers)",
            met: Some(meter[1] / meter[0] <= 2.0 && meter[2] / meter[0] <= 2.0),
        },
    ];
    let details = format!(
        "`cpuguard-run --load-source process --interval {INTERVAL_MS} --pipeline …` × N, each \
         worker `{WORKER}`; {rounds} interleaved rounds. The parent samples nothing: the \
         workers' cpuguard elements coordinate through its coordination directory and tell it \
         their samples. Once every worker runs its sampler thread, and {:.0} s more, a {:.0} s \
         window: the parent's CPU is every thread of it (schedstat) divided by the sampling \
         intervals in the window; a worker's is its `cpuguard-meter` thread (schedstat) divided \
         by the same, the median worker each run. Sampler thread per sample, each run's median \
         worker, 1 / 4 / 16 workers: {} / {} / {} µs.\n",
        settle.as_secs_f64(),
        window.as_secs_f64(),
        meter_rounds[0],
        meter_rounds[1],
        meter_rounds[2],
    );
    Ok(Outcome { rows, details })
}
