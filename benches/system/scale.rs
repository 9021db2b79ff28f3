//! Item 6: `cpuguard-run` multi-pipeline mode with 1, 4 and 16 light
//! workers: the parent's CPU per sample (all its threads, from schedstat,
//! over a steady window) and its decision time (the summary's `sampling`:
//! load, every worker's process tree, the coordinator's choice).

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::clock::live_threads_cpu_ns;
use crate::report::Row;
use crate::stats::{interleaved, median};

const WORKERS: [usize; 3] = [1, 4, 16];
const INTERVAL_MS: u64 = 100;
const WORKER: &str = "videotestsrc is-live=true pattern=black ! \
                      video/x-raw,width=64,height=48,framerate=5/1 ! cpuguard ! fakesink";

struct Run {
    cpu_per_sample_us: f64,
    decision_us: f64,
}

fn run_once(workers: usize, settle: Duration, window: Duration) -> Result<Run, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpuguard-run"));
    // The parent's own CPU as the load: it never gets near the thresholds, so
    // no worker is drained mid-measurement, yet every sample runs the policy.
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
    thread::sleep(settle);
    let before = live_threads_cpu_ns(pid);
    thread::sleep(window);
    let after = live_threads_cpu_ns(pid);
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let text = reader
        .join()
        .map_err(|_| "stdout reader panicked".to_owned())?
        .map_err(|e| e.to_string())?;
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
    let decision_us = summary["sampling"]["mean_us"]
        .as_f64()
        .ok_or_else(|| format!("no sampling in the summary: {summary}"))?;
    let samples = window.as_secs_f64() / Duration::from_millis(INTERVAL_MS).as_secs_f64();
    Ok(Run {
        cpu_per_sample_us: (after? - before?) as f64 / 1e3 / samples,
        decision_us,
    })
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(settle: Duration, window: Duration, rounds: usize) -> Result<Outcome, String> {
    let mut decisions = vec![Vec::new(); WORKERS.len()];
    let cpu = interleaved(&WORKERS, rounds, |&n| {
        let run = run_once(n, settle, window)?;
        let i = WORKERS.iter().position(|&w| w == n).expect("listed");
        decisions[i].push(run.decision_us);
        Ok(run.cpu_per_sample_us)
    })?;
    let cpu: Vec<f64> = cpu.iter().map(|v| median(v)).collect();
    let decision: Vec<f64> = decisions.iter().map(|v| median(v)).collect();
    let growth = |v: &[f64]| {
        WORKERS
            .iter()
            .zip(v)
            .map(|(n, x)| format!("{n}: {:.2}×", x / v[0]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // No worse than linear: per-worker cost at 16 not above that at 1.
    let sublinear = |v: &[f64]| v[2] / v[0] <= 16.0 && v[1] / v[0] <= 4.0;
    let rows = vec![
        Row {
            item: "6. Scale",
            measure: format!("parent CPU per sample (interval {INTERVAL_MS} ms)"),
            baseline: format!("1 worker: {:.0} µs", cpu[0]),
            result: format!("4: {:.0} µs; 16: {:.0} µs", cpu[1], cpu[2]),
            figure: format!("1→4→16: {}", growth(&cpu)),
            target: "≤ linear (4×, 16×)",
            met: Some(sublinear(&cpu)),
        },
        Row {
            item: "6. Scale",
            measure: "parent decision time per sample (mean)".into(),
            baseline: format!("1 worker: {:.0} µs", decision[0]),
            result: format!("4: {:.0} µs; 16: {:.0} µs", decision[1], decision[2]),
            figure: format!("1→4→16: {}", growth(&decision)),
            target: "≤ linear (4×, 16×)",
            met: Some(sublinear(&decision)),
        },
    ];
    let details = format!(
        "`cpuguard-run --load-source process --interval {INTERVAL_MS} --pipeline …` × N, each \
         worker `{WORKER}`; {rounds} interleaved rounds. Parent CPU: every thread of the parent \
         (schedstat) over a {:.0} s window starting {:.0} s after launch, divided by the samples \
         in it; it includes relaying the workers' output. Decision time: the summary's \
         `sampling.mean_us` (shared load, the process table scan, every worker's tree, the \
         coordinator).\n",
        window.as_secs_f64(),
        settle.as_secs_f64()
    );
    Ok(Outcome { rows, details })
}
