//! System benchmarks of cpuguard (items 1–8 of BENCHMARKS.md): per-buffer
//! overhead, sampler cost, reaction time, drain time, memory, scale and the
//! cost of crash safety, each against a baseline measured in the same run.
//!
//! `cargo bench --bench system` (as `scripts/bench.sh` runs it) measures
//! everything and writes BENCHMARKS.md; `CPUGUARD_BENCH_QUICK=1` makes it
//! short. Without `--bench` (`cargo test --all-targets`) it only runs a smoke
//! check of a few seconds.

// The tests' cgroup v1 helper, for item 8's real quota.
#[allow(dead_code)]
#[path = "../../tests/reliability/cgroup.rs"]
mod cgroup;
mod clock;
mod crash_safe;
mod launcher;
mod per_buffer;
mod pipeline;
mod reaction;
mod recorder;
mod report;
mod sampler_cost;
mod saturation;
mod scale;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::Row;

/// How long each measurement runs; quick mode is for trying the script.
struct Plan {
    buffers: u64,
    buffer_rounds: usize,
    sampler_window: Duration,
    sampler_rounds: usize,
    reaction_rounds: usize,
    record_for: Duration,
    recorder_rounds: usize,
    scale_settle: Duration,
    scale_window: Duration,
    scale_rounds: usize,
    crash_safe_seconds: u64,
    crash_safe_rounds: usize,
    saturation_rounds: usize,
}

const FULL: Plan = Plan {
    buffers: 1_000_000,
    buffer_rounds: 7,
    sampler_window: Duration::from_secs(8),
    sampler_rounds: 3,
    reaction_rounds: 7,
    record_for: Duration::from_secs(3),
    recorder_rounds: 5,
    scale_settle: Duration::from_secs(3),
    scale_window: Duration::from_secs(4),
    scale_rounds: 3,
    crash_safe_seconds: 120,
    crash_safe_rounds: 9,
    saturation_rounds: 5,
};

const QUICK: Plan = Plan {
    buffers: 200_000,
    buffer_rounds: 3,
    sampler_window: Duration::from_secs(3),
    sampler_rounds: 1,
    reaction_rounds: 3,
    record_for: Duration::from_secs(2),
    recorder_rounds: 2,
    scale_settle: Duration::from_secs(2),
    scale_window: Duration::from_secs(2),
    scale_rounds: 1,
    crash_safe_seconds: 30,
    crash_safe_rounds: 5,
    saturation_rounds: 2,
};

fn main() -> ExitCode {
    // Before anything grows this process: see launcher.rs.
    if let Some(code) = launcher::run_if_launcher() {
        return code;
    }
    let set_up = gst::init()
        .map_err(|e| e.to_string())
        .and_then(|()| gstcpuguard::plugin_register_static().map_err(|e| e.to_string()));
    if let Err(err) = set_up {
        eprintln!("system bench: cannot set GStreamer up: {err}");
        return ExitCode::FAILURE;
    }
    let benching = std::env::args().any(|a| a == "--bench");
    let result = if benching { bench() } else { smoke() };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("system bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Under `cargo test`: cpuguard passes every buffer through one shared
/// sampler thread, and a recording stopped by cpuguard-run plays.
fn smoke() -> Result<(), String> {
    let started = Instant::now();
    per_buffer::smoke(20_000)?;
    println!(
        "system bench smoke check passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench() -> Result<(), String> {
    let quick = std::env::var_os("CPUGUARD_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty());
    let plan = if quick { &QUICK } else { &FULL };
    let scratch = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let started = Instant::now();
    let step = |name: &str| eprintln!("[{:6.1} s] {name}", started.elapsed().as_secs_f64());

    // CPUGUARD_BENCH_ONLY=1,3 runs only those items (profiling a fix); the
    // table is then printed but BENCHMARKS.md is left alone.
    let only: Option<Vec<String>> = std::env::var("CPUGUARD_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |item: &str| only.as_ref().is_none_or(|o| o.iter().any(|i| i == item));
    let mut rows: Vec<Row> = Vec::new();
    let mut details = Vec::new();
    if wanted("1") {
        step("1. per-buffer overhead");
        let o = per_buffer::measure(plan.buffers, plan.buffer_rounds)?;
        rows.extend(o.rows);
        details.push(("1. Per-buffer overhead", o.details));
    }
    if wanted("2") {
        step("2. sampler cost");
        let o = sampler_cost::measure(plan.sampler_window, plan.sampler_rounds)?;
        rows.extend(o.rows);
        details.push(("2. Sampler cost", o.details));
    }
    if wanted("3") {
        step("3. reaction time");
        let o = reaction::measure(plan.reaction_rounds)?;
        rows.extend(o.rows);
        details.push(("3. Reaction time", o.details));
    }
    if wanted("4") || wanted("5") {
        step("4, 5. drain time and memory");
        let o = recorder::measure(plan.record_for, plan.recorder_rounds, scratch.path())?;
        rows.extend(o.rows);
        details.push(("4, 5. Drain time and memory", o.details));
    }
    if wanted("6") {
        step("6. scale");
        let o = scale::measure(plan.scale_settle, plan.scale_window, plan.scale_rounds)?;
        rows.extend(o.rows);
        details.push(("6. Scale", o.details));
    }
    if wanted("7") {
        step("7. crash safety");
        let o = crash_safe::measure(
            plan.crash_safe_seconds,
            plan.crash_safe_rounds,
            scratch.path(),
        )?;
        rows.extend(o.rows);
        details.push(("7. Crash safety", o.details));
    }
    if wanted("8") {
        step("8. samples from saturation to drain");
        let o = saturation::measure(plan.saturation_rounds)?;
        rows.extend(o.rows);
        details.push(("8. Samples from saturation to drain", o.details));
    }
    step("done");

    let table = report::table(&rows);
    let machine = report::machine();
    println!("\n{table}\n{machine}");
    if only.is_some() {
        for (title, text) in &details {
            println!("### {title}\n\n{text}");
        }
        return Ok(());
    }
    let micro = report::micro(&report::target_dir().join("criterion"));
    let mut md = format!(
        "# cpuguard benchmarks\n\n\
         Written by `scripts/bench.sh`{} on {}. Every figure is a ratio or a difference \
         against a baseline measured in the same run; medians of interleaved runs.\n\n\
         ## Machine\n\n{machine}\n## Results\n\n{table}\n",
        if quick {
            " (quick mode: short runs)"
        } else {
            ""
        },
        chrono_free_date()
    );
    for (title, text) in details {
        md.push_str(&format!("### {title}\n\n{text}\n"));
    }
    md.push_str(&format!(
        "## Micro-benchmarks (criterion, pure core)\n\n{}\n",
        report::micro_table(&micro)
    ));
    // Profile findings and limits, kept by hand beside the code they explain.
    let notes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/system/NOTES.md");
    md.push_str(&std::fs::read_to_string(&notes).map_err(|e| format!("{}: {e}", notes.display()))?);
    let out = std::env::var_os("CPUGUARD_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
    std::fs::write(&out, md).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Today's date from `date`, without a date crate for one line.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "an unknown date".into())
}
