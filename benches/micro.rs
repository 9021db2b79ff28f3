//! Criterion micro-benchmarks of the pure core: what one sample costs the
//! sampler thread (reading and parsing each load source's files), the policy
//! step and the coordinator's choice. Run by `scripts/bench.sh`; under
//! `cargo test --all-targets` each runs once as a smoke test.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use gstcpuguard::coordinator::{Candidate, Coordinator, heaviest};
use gstcpuguard::hostwide::files::{BudgetFiles, CoordDir};
use gstcpuguard::hostwide::{self, BudgetId, Entry, Peer};
use gstcpuguard::load::{HostPaths, LoadMeter, LoadSourceKind};
use gstcpuguard::policy::{Policy, PolicyConfig, Verdict};

/// The pid every fixture host describes (tests/fixtures/hosts/README.md).
const FIXTURE_PID: i32 = 4242;

fn fixture(host: &str) -> HostPaths {
    HostPaths::under(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(host),
    )
}

/// Each source on a host that has its files: v2 and v1 cgroups, the host
/// counters, PSI and the process's own stat.
const CASES: [(&str, LoadSourceKind); 6] = [
    ("v2", LoadSourceKind::Cgroup),
    ("v1-split", LoadSourceKind::Cgroup),
    ("hybrid", LoadSourceKind::System),
    ("v2", LoadSourceKind::Psi),
    ("v2", LoadSourceKind::Process),
    ("nested-quota", LoadSourceKind::Auto),
];

fn load(c: &mut Criterion) {
    let mut setup = c.benchmark_group("load/new");
    for (host, kind) in CASES {
        let paths = fixture(host);
        setup.bench_function(BenchmarkId::new(kind.as_str(), host), |b| {
            b.iter(|| LoadMeter::new_at(kind, &paths, FIXTURE_PID, Instant::now()).map(black_box))
        });
    }
    setup.finish();

    // What the sampler thread does every interval: read and parse the counter
    // (and the quota, which may change), then the load maths.
    let mut sample = c.benchmark_group("load/sample");
    for (host, kind) in CASES {
        let paths = fixture(host);
        let mut meter = LoadMeter::new_at(kind, &paths, FIXTURE_PID, Instant::now())
            .unwrap_or_else(|err| panic!("{host} {kind}: {err}"));
        let mut now = Instant::now();
        sample.bench_function(BenchmarkId::new(kind.as_str(), host), |b| {
            b.iter(|| {
                now += Duration::from_secs(1);
                black_box(meter.sample(now)).ok()
            })
        });
    }
    sample.finish();
}

/// A load that crosses the soft threshold now and then, so every branch of
/// the policy runs.
fn loads() -> Vec<f64> {
    (0..64)
        .map(|i| 0.5 + 0.45 * ((i as f64) * 0.7).sin())
        .collect()
}

fn policy(c: &mut Criterion) {
    let loads = loads();
    let config = PolicyConfig {
        release: 5,
        ..PolicyConfig::default()
    };
    let mut policy = Policy::new(config).expect("default policy is valid");
    let mut i = 0;
    c.bench_function("policy/observe", |b| {
        b.iter(|| {
            i = (i + 1) % loads.len();
            let verdict = policy.observe(black_box(loads[i]));
            if policy.above_count() >= config.hold {
                policy.reset();
            }
            verdict
        })
    });
}

fn candidates(n: u32) -> Vec<Candidate<u32>> {
    (0..n)
        .map(|id| Candidate {
            id,
            cpu: f64::from((id * 7919) % 101) / 100.0,
            ending: id % 5 == 4,
        })
        .collect()
}

fn coordinator(c: &mut Criterion) {
    // The victim choice itself, as made on every drain decision.
    let mut choice = c.benchmark_group("coordinator/heaviest");
    for n in [1u32, 16, 256] {
        let candidates = candidates(n);
        choice.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| heaviest(black_box(&candidates)).map(|c| c.id))
        });
    }
    choice.finish();

    // A full step at every sample: policy, then a choice when it says drain
    // (every third sample here: hold 1, loads alternating around soft).
    let config = PolicyConfig {
        hold: 1,
        ..PolicyConfig::default()
    };
    let loads = [0.9, 0.5, 0.5];
    let mut step = c.benchmark_group("coordinator/observe");
    for n in [1u32, 16, 256] {
        let candidates = candidates(n);
        let mut coordinator = Coordinator::new(config).expect("valid policy");
        let mut i = 0;
        step.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % loads.len();
                let decision = coordinator.observe(black_box(loads[i]), &candidates);
                // Finish any drain at once so the next high sample chooses again.
                if let Some(id) = coordinator.in_flight().copied() {
                    coordinator.finished(&id);
                }
                decision
            })
        });
    }
    step.finish();
}

/// A coordination directory holding `n` live processes' entries (each
/// locked through its own open file, as separate processes hold theirs),
/// ours being the first.
fn budget_with(n: usize) -> (tempfile::TempDir, Vec<BudgetFiles>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CoordDir::open(&tmp.path().join("coord"), false).expect("coordination dir");
    let budget = BudgetId::Root { dev: 1, ino: 2 };
    let files: Vec<BudgetFiles> = (0..n)
        .map(|i| {
            let pid = 1_000_000 + i as i32;
            let files = dir.join(&budget, pid).expect("joined");
            files
                .publish(&entry(pid, i as f64 / 10.0))
                .expect("published");
            files
        })
        .collect();
    (tmp, files)
}

fn entry(pid: i32, cpu: f64) -> Entry {
    Entry {
        pid,
        uid: hostwide::files::euid(),
        cpu,
        wants: false,
        interval_ms: 1000,
        seq: 1,
        at_ms: now_ms(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cross-process coordination with 1, 4, 16 and 64 processes on one budget.
/// Every sample: look at the drain lock, rewrite our entry. A decision
/// (only when the policy says drain): read every entry and rank them.
fn crossproc(c: &mut Criterion) {
    let mut sample = c.benchmark_group("hostwide/sample");
    for n in [1usize, 4, 16, 64] {
        let (_tmp, files) = budget_with(n);
        let ours = &files[0];
        let mut seq = 0;
        sample.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let state = ours.drain_state().expect("drain lock");
                seq += 1;
                let mut e = entry(1_000_000, 0.5);
                e.seq = seq;
                ours.publish(&e).expect("published");
                black_box(state)
            })
        });
    }
    sample.finish();

    let mut decide = c.benchmark_group("hostwide/decision");
    for n in [1usize, 4, 16, 64] {
        let (_tmp, files) = budget_with(n);
        let ours = &files[0];
        decide.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let found = ours.scan(now_ms()).expect("scan");
                let peers: Vec<Peer> = found
                    .into_iter()
                    .filter_map(|f| match f {
                        hostwide::files::Found::Entry(e) => Some(Peer {
                            pid: e.pid,
                            cpu: e.cpu,
                            wants: e.wants,
                        }),
                        hostwide::files::Found::Rejected { .. } => None,
                    })
                    .collect();
                let me = Peer {
                    pid: 1_000_000,
                    cpu: 0.5,
                    wants: true,
                };
                black_box(hostwide::choose(&me, &peers, true))
            })
        });
    }
    decide.finish();
}

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = criterion();
    targets = load, policy, coordinator, crossproc
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets -- --test-threads=2`
/// passes libtest options criterion rejects. Without `--bench`, check once
/// that every benchmarked call works instead.
fn main() {
    if std::env::args().any(|a| a == "--bench") {
        micro();
        Criterion::default().configure_from_args().final_summary();
    } else {
        smoke();
    }
}

fn smoke() {
    for (host, kind) in CASES {
        let t0 = Instant::now();
        let mut meter = LoadMeter::new_at(kind, &fixture(host), FIXTURE_PID, t0)
            .unwrap_or_else(|err| panic!("{host} {kind}: {err}"));
        // The fixtures' counters stand still: a result either way, never a panic.
        let _ = meter.sample(t0 + Duration::from_secs(1));
    }
    let mut policy = Policy::new(PolicyConfig::default()).expect("default policy is valid");
    assert!(matches!(policy.observe(0.99), Verdict::Drain { .. }));
    let candidates = candidates(16);
    let victim = heaviest(&candidates).expect("a live candidate");
    assert!(candidates.iter().all(|c| c.ending || c.cpu <= victim.cpu));
    let (_tmp, files) = budget_with(4);
    let found = files[0].scan(now_ms()).expect("scan");
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(files[0].drain_state().is_ok());
    println!("micro bench smoke check passed");
}
