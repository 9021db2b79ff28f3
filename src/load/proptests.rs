//! Bad input for every load-file parser: arbitrary text, mutated copies of
//! real files (proptest), and the committed corpus of malformed files in
//! `tests/fixtures/malformed/<parser>/`. Each parser must return sane values
//! or an error that says what is wrong, and never panic; a meter reading a
//! malformed file must give a warning naming it, never a load.
//!
//! Failing cases found by proptest are kept in `proptest-regressions/` and
//! replayed first on every run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::capacity::{count_cpu_list, count_stat_cpus, parse_affinity};
use super::cgroup::{
    CgroupVersion, Level, parse_cfs_period, parse_cfs_quota, parse_cpu_max, parse_u64,
    parse_usage_usec,
};
use super::mountinfo::{parse_cgroup_mounts, parse_proc_cgroup};
use super::proc_stat::parse_cpu_times;
use super::process::parse_cpu_ticks;
use super::psi::parse_some_total;
use super::tests::{PID, copy_tree, fixture};
use super::throttle::parse_cpu_stat;
use super::{HostPaths, LoadMeter, LoadSourceKind};

/// One parser, a real file it accepts, and the check of what it returns.
struct Parser {
    /// Also the corpus directory name.
    name: &'static str,
    valid: &'static str,
    /// `Err` is the parser's own error; sanity violations panic (fail the test).
    check: fn(&str) -> Result<(), String>,
    /// Where a meter reads this file: fixture host, file under it, source.
    target: (&'static str, &'static str, LoadSourceKind),
}

/// One row: the file at `$rel` of fixture host `$host` is both the valid
/// text the mutations start from and what a `$source` meter reads.
macro_rules! parser {
    ($name:literal, $host:literal, $rel:literal, $source:ident, $check:expr) => {
        Parser {
            name: $name,
            valid: include_str!(concat!("../../tests/fixtures/hosts/", $host, "/", $rel)),
            check: $check,
            target: ($host, $rel, LoadSourceKind::$source),
        }
    };
}

const PARSERS: &[Parser] = &[
    parser!("proc-stat", "v2", "proc/stat", System, |t| parse_cpu_times(
        t
    )
    .map(drop)),
    parser!("proc-stat-cpus", "no-cgroup", "proc/stat", System, |t| {
        count_stat_cpus(t).map(assert_cpu_count)
    }),
    parser!("pid-stat", "v2", "proc/4242/stat", Process, |t| {
        parse_cpu_ticks(t).map(drop)
    }),
    parser!("status", "v2", "proc/4242/status", Process, |t| {
        parse_affinity(t).map(assert_cpu_count)
    }),
    parser!(
        "online",
        "v2",
        "sys/devices/system/cpu/online",
        System,
        |t| count_cpu_list(t.trim()).map(assert_cpu_count)
    ),
    parser!(
        "cfs-quota",
        "v1-split",
        "sys/fs/cgroup/cpu/job/cpu.cfs_quota_us",
        Cgroup,
        |t| {
            parse_cfs_quota(t).map(|quota| {
                assert!(quota.is_none_or(|q| q >= 1000), "quota {quota:?} µs");
            })
        }
    ),
    parser!(
        "cfs-period",
        "v1-split",
        "sys/fs/cgroup/cpu/job/cpu.cfs_period_us",
        Cgroup,
        |t| {
            parse_cfs_period(t).map(|period| {
                assert!((1000..=1_000_000).contains(&period), "period {period} µs");
            })
        }
    ),
    parser!(
        "cpuacct-usage",
        "v1-split",
        "sys/fs/cgroup/cpuacct/job/cpuacct.usage",
        Cgroup,
        |t| parse_u64(t.trim()).map(drop)
    ),
    parser!(
        "cpu-max",
        "v2",
        "sys/fs/cgroup/system.slice/app.service/cpu.max",
        Cgroup,
        |t| {
            parse_cpu_max(t).map(|level| {
                if let Level::Cpus(cpus, _) = level {
                    assert_quota_cpus(cpus);
                }
            })
        }
    ),
    parser!(
        "cpu-stat",
        "v2",
        "sys/fs/cgroup/system.slice/app.service/cpu.stat",
        Cgroup,
        |t| {
            // The throttling lines of the same file, in either version's
            // naming: any text, any outcome, but never a panic.
            for version in [CgroupVersion::V1, CgroupVersion::V2] {
                let _ = parse_cpu_stat(t, version);
            }
            parse_usage_usec(t).map(drop)
        }
    ),
    parser!(
        "psi",
        "v2",
        "sys/fs/cgroup/system.slice/app.service/cpu.pressure",
        Psi,
        |t| parse_some_total(t).map(drop)
    ),
    parser!("mountinfo", "v2", "proc/4242/mountinfo", Cgroup, |t| {
        parse_cgroup_mounts(t).map(|mounts| {
            for m in mounts {
                assert!(!m.mount_point.as_os_str().is_empty(), "{m:?}");
            }
        })
    }),
    parser!("proc-cgroup", "v1-split", "proc/4242/cgroup", Cgroup, |t| {
        parse_proc_cgroup(t).map(|memberships| {
            for m in memberships {
                assert!(!m.path.contains('\n'), "{m:?}");
            }
        })
    }),
];

impl Parser {
    /// cgroup membership and mounts are read once, when the meter starts.
    fn read_at_start_only(&self) -> bool {
        matches!(self.name, "mountinfo" | "proc-cgroup")
    }
}

fn assert_cpu_count(n: u32) {
    assert!((1..=super::capacity::MAX_CPUS).contains(&n), "{n} CPUs");
}

/// The kernel bounds quota (≥ 1 ms) and period (1 ms to 1 s): anything
/// parsed must fall between those extremes, or capacity (and so load) is absurd.
fn assert_quota_cpus(cpus: f64) {
    assert!(
        cpus.is_finite() && (0.001..=1e11).contains(&cpus),
        "{cpus} CPUs"
    );
}

/// Runs `text` through `parser`: sane value or a non-empty error.
fn run(parser: &Parser, text: &str) -> Result<(), String> {
    let result = (parser.check)(text);
    if let Err(detail) = &result {
        assert!(!detail.trim().is_empty(), "{}: empty error", parser.name);
    }
    result
}

// ------------------------------------------------------------- mutations

/// An edit of a real file, as a torn write, a kernel change or a bad
/// fixture would make it.
#[derive(Clone, Debug)]
enum Edit {
    Truncate(usize),
    Insert(usize, String),
    Delete(usize, usize),
    /// Replaces the n-th whitespace-separated token.
    ReplaceToken(usize, String),
    DuplicateLine(usize),
    DropLine(usize),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "-1",
            "-0",
            "999",
            "1000",
            "1000000",
            "1000001",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "1e9",
            "0.5",
            "nan",
            "inf",
            "-inf",
            "max",
            "total=",
            "total=-1",
            "some",
            "full",
            "cpu",
            "cpu0",
            "usage_usec",
            "Cpus_allowed_list:",
            "-",
            ")",
            "(",
            ":",
            "::",
            ",",
            "0-",
            "-0",
            "3-1",
            "\\",
            "\\040",
            "\n",
            " ",
            "\t",
            "\r\n",
            "\u{0}",
            "é",
            "\u{feff}",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
        any::<String>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), token()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 0usize..16).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), token()).prop_map(|(n, t)| Edit::ReplaceToken(n, t)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DropLine),
    ]
}

/// The char boundary at or before `at % (len + 1)`.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_owned();
    for edit in edits {
        match edit {
            Edit::Truncate(at) => text.truncate(boundary(&text, *at)),
            Edit::Insert(at, what) => text.insert_str(boundary(&text, *at), what),
            Edit::Delete(at, n) => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*n).min(text.len()));
                text.replace_range(start..end.max(start), "");
            }
            Edit::ReplaceToken(n, what) => {
                let spans: Vec<(usize, usize)> = token_spans(&text);
                if let Some(&(start, end)) = spans.get(n % spans.len().max(1)) {
                    text.replace_range(start..end, what);
                }
            }
            Edit::DuplicateLine(n) | Edit::DropLine(n) => {
                let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
                if lines.is_empty() {
                    continue;
                }
                let i = n % lines.len();
                if matches!(edit, Edit::DuplicateLine(_)) {
                    lines.insert(i, lines[i]);
                } else {
                    lines.remove(i);
                }
                text = lines.concat();
            }
        }
    }
    text
}

fn token_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

// ------------------------------------------------------------- meters

fn meter_with(parser: &Parser, content: &[u8], write_after_start: bool) -> MeterOutcome {
    let (host, rel, kind) = parser.target;
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(host), dir.path());
    let file = dir.path().join(rel);
    let paths = HostPaths::under(dir.path());
    let t0 = Instant::now();
    if !write_after_start {
        fs::write(&file, content).unwrap();
    }
    let mut meter = match LoadMeter::new_at(kind, &paths, PID, t0) {
        Ok(meter) => meter,
        Err(err) => return MeterOutcome::StartFailed(err.to_string()),
    };
    if write_after_start {
        fs::write(&file, content).unwrap();
    }
    let samples = (1..=3)
        .map(|s| {
            let result = meter.sample(t0 + Duration::from_secs(s));
            if let Ok(sample) = &result {
                assert!(
                    sample.load.is_finite() && sample.load >= 0.0,
                    "{}: {sample:?}",
                    parser.name
                );
                assert!(
                    sample.capacity.is_finite() && sample.capacity > 0.0,
                    "{}: {sample:?}",
                    parser.name
                );
            }
            result.map_err(|e| e.to_string())
        })
        .collect();
    MeterOutcome::Sampled(samples)
}

#[derive(Debug)]
enum MeterOutcome {
    StartFailed(String),
    Sampled(Vec<Result<super::LoadSample, String>>),
}

const CASES: u32 = 512;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_text_through_every_parser(text in any::<String>()) {
        for parser in PARSERS {
            let _ = run(parser, &text);
        }
    }

    #[test]
    fn mutated_real_files_through_every_parser(
        index in 0..PARSERS.len(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let text = apply(PARSERS[index].valid, &edits);
        for parser in PARSERS {
            let _ = run(parser, &text);
        }
    }
}

proptest! {
    // Each case copies a fixture host: fewer cases, still hundreds of files.
    #![proptest_config(ProptestConfig::with_cases(CASES / 4))]

    #[test]
    fn meters_reading_mutated_files_never_panic_or_read_nonsense(
        index in 0..PARSERS.len(),
        edits in prop::collection::vec(edit(), 1..6),
        after_start in any::<bool>(),
    ) {
        let text = apply(PARSERS[index].valid, &edits);
        let _ = meter_with(&PARSERS[index], text.as_bytes(), after_start);
    }
}

// ------------------------------------------------------------- corpus

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed")
}

/// Every corpus file through every parser; each is rejected by its own
/// parser with a clear error, and a meter reading it warns, naming the file,
/// and never reports a load from it.
#[test]
fn malformed_corpus_is_rejected_clearly() {
    let mut files = 0;
    let mut runs = 0;
    for parser in PARSERS {
        let dir = corpus_dir().join(parser.name);
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "no corpus in {}", dir.display());
        for path in entries {
            let bytes = fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            files += 1;
            for other in PARSERS {
                let _ = run(other, &text);
                runs += 1;
            }
            let err = run(parser, &text).expect_err(&format!(
                "{} accepted {}",
                parser.name,
                path.display()
            ));
            let (_, rel, _) = parser.target;
            let when: &[bool] = if parser.read_at_start_only() {
                &[false]
            } else {
                &[false, true]
            };
            for &after_start in when {
                match meter_with(parser, &bytes, after_start) {
                    MeterOutcome::StartFailed(message) => {
                        assert!(message.contains(rel), "{}: {message}", path.display());
                    }
                    MeterOutcome::Sampled(samples) => {
                        assert!(
                            after_start,
                            "{}: a meter started on it ({err})",
                            path.display()
                        );
                        let first = samples[0]
                            .as_ref()
                            .expect_err(&format!("{}: a load was read from it", path.display()));
                        assert!(first.contains(rel), "{}: {first}", path.display());
                        assert!(
                            samples.iter().all(Result::is_err),
                            "{}: {samples:?}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
    eprintln!(
        "malformed corpus: {files} files, {runs} parser runs, {} parsers, 0 panics",
        PARSERS.len()
    );
}
