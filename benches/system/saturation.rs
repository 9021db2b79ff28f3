//! Item 8: on a real CFS quota that a burner saturates from one instant on,
//! how many samples each load source takes until the default policy
//! drains, at intervals of 250 ms and 1 s.
//!
//! The quota is a cgroup v1 `cpu` group made here (0.5 CPU, 100 ms period,
//! so a 250 ms window holds two or three periods: the case whose usage
//! samples scatter), the burner one spinning shell written into it before
//! it execs. All four meters follow the burner and sample at the same
//! instants, each feeding its own default policy (`hold` 3, the default
//! `release`, and the start-up sample the guards leave unjudged, which is
//! counted here as a sample that passed).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gstcpuguard::load::{HostPaths, LoadMeter, LoadSourceKind};
use gstcpuguard::policy::{Policy, PolicyConfig, START_UP_SAMPLES, Verdict};

use crate::cgroup::{PERIOD_US, V1Cgroup};
use crate::report::Row;
use crate::stats::median;

const QUOTA_CPUS: f64 = 0.5;
/// Samples after which a source counts as not draining.
const MAX_SAMPLES: u32 = 12;
const SOURCES: [LoadSourceKind; 4] = [
    LoadSourceKind::Process,
    LoadSourceKind::Cgroup,
    LoadSourceKind::System,
    LoadSourceKind::Psi,
];
const INTERVALS_MS: [u64; 2] = [250, 1000];

/// The quota group (the tests' helper: created here, emptied and removed
/// on drop).
fn create_group() -> Result<V1Cgroup, String> {
    let name = format!("cpuguard-bench-{}", std::process::id());
    V1Cgroup::with_quota(&name, QUOTA_CPUS)
}

/// A spinning shell that joins the group between fork and exec.
fn spawn_burner(group: &V1Cgroup) -> Result<Child, String> {
    let mut command = Command::new("sh");
    command
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    group.join_before_exec(&mut command);
    command.spawn().map_err(|e| format!("burner: {e}"))
}

/// Samples each source took to drain in one run (`None`: not within
/// `MAX_SAMPLES`, or the source is unavailable here).
fn run_once(group: &V1Cgroup, interval: Duration) -> Result<Vec<Option<u32>>, String> {
    let mut burner = spawn_burner(group)?;
    let pid = burner.id() as i32;
    let paths = HostPaths::system();
    let mut judged: Vec<Option<(LoadMeter, Policy)>> = SOURCES
        .iter()
        .map(|&kind| {
            let meter = LoadMeter::new(kind, &paths, pid).ok()?;
            let policy = Policy::new(PolicyConfig::default())
                .ok()?
                .with_warm_up(START_UP_SAMPLES);
            Some((meter, policy))
        })
        .collect();
    let mut drained = vec![None; SOURCES.len()];
    let start = Instant::now();
    for k in 1..=MAX_SAMPLES {
        // The interval under measurement, not a wait for anything.
        std::thread::sleep((start + interval * k).saturating_duration_since(Instant::now()));
        let now = Instant::now();
        for (slot, done) in judged.iter_mut().zip(drained.iter_mut()) {
            let Some((meter, policy)) = slot else {
                continue;
            };
            if done.is_some() {
                continue;
            }
            let Ok(sample) = meter.sample(now) else {
                continue;
            };
            if let Verdict::Drain { .. } = policy.observe(sample.load) {
                *done = Some(k);
            }
        }
        if drained
            .iter()
            .zip(&judged)
            .all(|(d, j)| d.is_some() || j.is_none())
        {
            break;
        }
    }
    let _ = burner.kill();
    let _ = burner.wait();
    Ok(drained)
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub details: String,
}

pub fn measure(rounds: usize) -> Result<Outcome, String> {
    let group = create_group()?;
    let config = PolicyConfig::default();
    let mut rows = Vec::new();
    let mut details = format!(
        "A {QUOTA_CPUS} CPU cgroup v1 quota ({} ms CFS period) saturated by one spinning \
         process from the first sample's baseline on; default policy (soft {}, hard {}, hold \
         {}, release {}, {START_UP_SAMPLES} start-up sample unjudged but counted); {rounds} runs \
         per interval, at most {MAX_SAMPLES} samples. Samples until the drain, per run:\n\n\
         | source | interval | samples to drain (runs) |\n|---|---|---|\n",
        PERIOD_US / 1000,
        config.soft,
        config.hard,
        config.hold,
        config.release
    );
    for interval_ms in INTERVALS_MS {
        let interval = Duration::from_millis(interval_ms);
        let mut per_source: Vec<Vec<Option<u32>>> = vec![Vec::new(); SOURCES.len()];
        for _ in 0..rounds {
            for (all, one) in per_source.iter_mut().zip(run_once(&group, interval)?) {
                all.push(one);
            }
        }
        for (kind, runs) in SOURCES.iter().zip(&per_source) {
            let shown: Vec<String> = runs
                .iter()
                .map(|r| r.map_or_else(|| "none".to_owned(), |n| n.to_string()))
                .collect();
            let drained: Vec<f64> = runs.iter().flatten().map(|&n| f64::from(n)).collect();
            let result = if drained.len() == runs.len() {
                format!("median {}", median(&drained))
            } else {
                format!("{} of {} runs drained", drained.len(), runs.len())
            };
            details.push_str(&format!(
                "| {kind} | {interval_ms} ms | {result} ({}) |\n",
                shown.join(", ")
            ));
            // The quota's own sources must see it; system and psi measure
            // the host, which a 0.5 CPU quota on this machine does not fill.
            let judged = matches!(kind, LoadSourceKind::Cgroup | LoadSourceKind::Process);
            let within = config.hold + 1;
            rows.push(Row {
                item: "8. Samples to drain",
                measure: format!("saturated {QUOTA_CPUS} CPU quota, `{kind}`, {interval_ms} ms"),
                baseline: format!("hold + 1 = {within} samples"),
                result,
                figure: format!("{} runs", runs.len()),
                target: if judged {
                    "≤ hold + 1 in every run"
                } else {
                    "–"
                },
                met: judged.then(|| runs.iter().all(|r| r.is_some_and(|n| n <= within))),
            });
        }
    }
    details.push_str(
        "\n`system` is the whole host's busy share and `psi` the host's (or, on cgroup v2, the \
         group's) CPU pressure: a quota that fills a quarter of this 2-core host is neither, so \
         they are not expected to drain here.\n",
    );
    Ok(Outcome { rows, details })
}
