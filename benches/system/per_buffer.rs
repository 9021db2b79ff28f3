//! Item 1: what cpuguard adds to every buffer, against `identity` and against
//! no element at all, in process CPU time for `num-buffers` buffers.

use std::time::Duration;

use gst::prelude::*;

use crate::clock::process_cpu;
use crate::pipeline::{launch, play, stop, wait_eos};
use crate::report::{Row, listed};
use crate::stats::{interleaved, median};

/// dry-run: on a busy machine a real drain would end the stream early.
const VARIANTS: [(&str, &str); 3] = [
    ("none", ""),
    ("identity", "identity ! "),
    ("cpuguard", "cpuguard dry-run=true ! "),
];

fn description(element: &str, buffers: u64) -> String {
    format!("fakesrc num-buffers={buffers} ! {element}fakesink")
}

/// CPU seconds the process spent streaming `buffers` buffers.
fn run_once(element: &str, buffers: u64) -> Result<f64, String> {
    let pipeline = launch(&description(element, buffers))?;
    pipeline
        .set_state(gst::State::Paused)
        .map_err(|e| format!("cannot pause: {e}"))?;
    let before = process_cpu();
    play(&pipeline)?;
    let ended = wait_eos(&pipeline, Duration::from_secs(120));
    let used = process_cpu() - before;
    stop(&pipeline);
    ended?;
    Ok(used.as_secs_f64())
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(buffers: u64, rounds: usize) -> Result<Outcome, String> {
    // Warm-up: first pipelines pay for plugin loading and page faults.
    for (_, element) in VARIANTS {
        run_once(element, buffers / 10)?;
    }
    let results = interleaved(&VARIANTS, rounds, |(_, element)| run_once(element, buffers))?;
    let per_buffer_ns = |i: usize| median(&results[i]) / buffers as f64 * 1e9;
    let (none, identity, guard) = (per_buffer_ns(0), per_buffer_ns(1), per_buffer_ns(2));
    // Added cost and ratio within each round, then their medians: a round is
    // three runs seconds apart, so load from elsewhere on the machine shifts
    // all three alike and cancels out of the difference.
    let added = |i: usize| -> Vec<f64> {
        results[i]
            .iter()
            .zip(&results[0])
            .map(|(x, base)| (x - base) / buffers as f64 * 1e9)
            .collect()
    };
    let (identity_rounds, guard_rounds) = (added(1), added(2));
    let ratios: Vec<f64> = guard_rounds
        .iter()
        .zip(&identity_rounds)
        .map(|(g, i)| g / i)
        .collect();
    let identity_added = median(&identity_rounds);
    let guard_added = median(&guard_rounds);
    let ratio = median(&ratios);
    let rows = vec![Row {
        item: "1. Per-buffer overhead",
        measure: "CPU added per buffer (`fakesrc ! X ! fakesink`)".into(),
        baseline: format!("identity +{identity_added:.0} ns (none: {none:.0} ns)"),
        result: format!("cpuguard +{guard_added:.0} ns"),
        figure: format!("{ratio:.2}× identity"),
        target: "≤ 0.5× identity",
        met: Some(ratio <= 0.5),
    }];
    let details = format!(
        "{buffers} buffers per run, {rounds} interleaved rounds, process CPU time \
         (CLOCK_PROCESS_CPUTIME_ID) from PLAYING to EOS. Median CPU per buffer: no element \
         {none:.1} ns, identity {identity:.1} ns, cpuguard {guard:.1} ns. The figure is the \
         median of each round's ratio (cpuguard added / identity added): {}.\n",
        listed(ratios.iter().copied(), 2)
    );
    Ok(Outcome { rows, details })
}

/// The smoke check under `cargo test`: every buffer passes a cpuguard, and
/// all of them go through one shared sampler thread.
pub fn smoke(buffers: u64) -> Result<(), String> {
    let pipeline = launch(&description(VARIANTS[2].1, buffers))?;
    let sink = pipeline
        .iterate_sinks()
        .next()
        .ok()
        .flatten()
        .ok_or("no sink")?;
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = counted.clone();
    sink.static_pad("sink")
        .ok_or("fakesink without a sink pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    play(&pipeline)?;
    // A thread names itself once it runs: give the new sampler a moment.
    let meters = crate::clock::poll(Duration::from_secs(5), Duration::from_millis(10), || {
        let meters =
            crate::clock::threads_named("self", gstcpuguard::cpuguard::SAMPLER_THREAD_NAME);
        if meters.is_empty() {
            Err(meters)
        } else {
            Ok(meters)
        }
    })
    .unwrap_or_else(|none| none);
    let ended = wait_eos(&pipeline, Duration::from_secs(10));
    stop(&pipeline);
    ended?;
    let passed = counted.load(std::sync::atomic::Ordering::Relaxed);
    if passed != buffers {
        return Err(format!(
            "{passed} of {buffers} buffers reached fakesink through cpuguard"
        ));
    }
    if meters.len() != 1 {
        return Err(format!(
            "{} sampler threads while playing, want 1",
            meters.len()
        ));
    }
    Ok(())
}
