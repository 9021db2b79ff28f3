//! Items 4 and 5: the same live MP4 recording run by `cpuguard-run` (stopped
//! with SIGTERM) and by `gst-launch-1.0 -e` (stopped with SIGINT): time from
//! the signal to the process's exit, its peak RSS, and whether the file plays.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::launcher::Launched;
use crate::pipeline::{launch, play, stop, wait_eos};
use crate::report::{Row, listed};
use crate::stats::{interleaved, median};

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    CpuguardRun,
    GstLaunch,
}

struct Run {
    signal_to_exit: Duration,
    max_rss_kib: i64,
}

fn pipeline(guard: bool, file: &Path) -> Vec<String> {
    let guard = if guard { "cpuguard !" } else { "" };
    format!(
        "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast ! h264parse ! {guard} mp4mux ! \
         filesink location={}",
        file.display()
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// The program and its arguments: the same recording either way.
fn command(tool: Tool, file: &Path) -> (OsString, Vec<OsString>) {
    let (program, mut args) = match tool {
        // Measure only: a busy shared machine must not drain on load.
        Tool::CpuguardRun => (
            env!("CARGO_BIN_EXE_cpuguard-run"),
            vec!["--dry-run".to_owned()],
        ),
        Tool::GstLaunch => ("gst-launch-1.0", vec!["-e".to_owned()]),
    };
    args.extend(pipeline(tool == Tool::CpuguardRun, file));
    (
        program.into(),
        args.into_iter().map(OsString::from).collect(),
    )
}

fn run_once(tool: Tool, record_for: Duration, dir: &Path, round: usize) -> Result<Run, String> {
    let name = match tool {
        Tool::CpuguardRun => "cpuguard-run",
        Tool::GstLaunch => "gst-launch",
    };
    let file = dir.join(format!("{name}-{round}.mp4"));
    // Through a launcher, so that its peak RSS is its own (launcher.rs).
    let (program, args) = command(tool, &file);
    let child = Launched::spawn(&program, &args).map_err(|e| format!("{name}: {e}"))?;
    thread::sleep(record_for);
    let signal = match tool {
        Tool::CpuguardRun => Signal::SIGTERM,
        Tool::GstLaunch => Signal::SIGINT,
    };
    let sent = Instant::now();
    kill(Pid::from_raw(child.pid), signal)
        .map_err(|e| format!("{name}: cannot send {signal}: {e}"))?;
    let ended = child.wait().map_err(|e| format!("{name}: {e}"))?;
    let signal_to_exit = sent.elapsed();
    let status = ended.status;
    if !(nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0) {
        return Err(format!(
            "{name} ended with wait status {status:#x} after {signal}"
        ));
    }
    plays(&file).map_err(|e| format!("{name}'s {} does not play: {e}", file.display()))?;
    Ok(Run {
        signal_to_exit,
        max_rss_kib: ended.max_rss_kib,
    })
}

/// qtdemux reads the file to its end: only a finalized MP4 (moov) does that.
pub fn plays(file: &Path) -> Result<(), String> {
    let demux = launch(&format!(
        "filesrc location={} ! qtdemux ! h264parse ! fakesink",
        file.display()
    ))?;
    play(&demux)?;
    let ended = wait_eos(&demux, Duration::from_secs(20));
    stop(&demux);
    ended
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(record_for: Duration, rounds: usize, dir: &Path) -> Result<Outcome, String> {
    // Warm-up: the registry and page cache, for both tools alike.
    for tool in [Tool::CpuguardRun, Tool::GstLaunch] {
        run_once(tool, Duration::from_secs(1), dir, 999)?;
    }
    let tools = [Tool::CpuguardRun, Tool::GstLaunch];
    let mut rss = [Vec::new(), Vec::new()];
    let mut round = 0;
    let times = interleaved(&tools, rounds, |&tool| {
        round += 1;
        let run = run_once(tool, record_for, dir, round)?;
        rss[usize::from(tool == Tool::GstLaunch)].push(run.max_rss_kib as f64);
        Ok(run.signal_to_exit.as_secs_f64())
    })?;
    let (drain_guard, drain_launch) = (median(&times[0]) * 1e3, median(&times[1]) * 1e3);
    let (rss_guard, rss_launch) = (median(&rss[0]) / 1024.0, median(&rss[1]) / 1024.0);
    let drain_ratio = drain_guard / drain_launch;
    let rss_ratio = rss_guard / rss_launch;
    let rows = vec![
        Row {
            item: "4. Drain time",
            measure: "signal → exit, live 320x240 H.264 MP4".into(),
            baseline: format!("gst-launch-1.0 -e, SIGINT: {drain_launch:.1} ms"),
            result: format!("cpuguard-run, SIGTERM: {drain_guard:.1} ms"),
            figure: format!("{drain_ratio:.2}× ({:+.1} ms)", drain_guard - drain_launch),
            target: "≤ 1.05×",
            met: Some(drain_ratio <= 1.05),
        },
        Row {
            item: "5. Memory",
            measure: "peak RSS (wait4 ru_maxrss), same recording".into(),
            baseline: format!("gst-launch-1.0: {rss_launch:.1} MiB"),
            result: format!("cpuguard-run: {rss_guard:.1} MiB"),
            figure: format!("{rss_ratio:.2}× ({:+.1} MiB)", rss_guard - rss_launch),
            target: "≤ 1.1×",
            met: Some(rss_ratio <= 1.1),
        },
    ];
    let list = |v: &[f64], scale: f64| listed(v.iter().map(|x| x * scale), 1);
    let details = format!(
        "Recording {:.0} s before the signal, {rounds} interleaved rounds; every file checked \
         with `qtdemux` to its end. Pipeline: `{}` (cpuguard-run with `cpuguard !` after \
         h264parse and `--dry-run`). Signal → exit ms, cpuguard-run: {}; gst-launch-1.0: {}. \
         Peak RSS MiB, cpuguard-run: {}; gst-launch-1.0: {}.\n",
        record_for.as_secs_f64(),
        pipeline(false, &PathBuf::from("rec.mp4")).join(" "),
        list(&times[0], 1e3),
        list(&times[1], 1e3),
        list(&rss[0], 1.0 / 1024.0),
        list(&rss[1], 1.0 / 1024.0),
    );
    Ok(Outcome { rows, details })
}
