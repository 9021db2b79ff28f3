//! What `cpuguard-run` tells besides its result: `--cpu-request` in the
//! reported capacity, Prometheus metrics scraped during a real run,
//! the `--timeline` SVG, and the `cpuguard` debug category. The real binary,
//! real worker processes and signals; the shared load comes from a simulated
//! host where a decision must be deterministic. Timing bounds only catch hangs.

// Shared with tests/reliability.rs, which uses the rest of it.
#[allow(dead_code)]
#[path = "reliability/cgroup.rs"]
mod cgroup;
mod common;

use common::run::{Run, Stream, assert_no_panic, spawn_command};
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cpuguard-run");
const HANG: Duration = Duration::from_secs(60);

/// A cheap live pipeline with cpuguard and no file.
const TINY: &str = "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 ! cpuguard ! fakesink";

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("GST_PLUGIN_PATH")
        .env_remove("CPUGUARD_CPU_REQUEST")
        .env_remove("GST_DEBUG")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cpuguard-run runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// Starts `cmd` under the shared harness, which reads stdout and stderr as
/// they come and stops the run if the test fails half-way.
fn start(mut cmd: Command) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    spawn_command(cmd)
}

/// Waits for the exit; returns the exit code, the stdout JSON lines and stderr.
fn end(run: Run) -> (Option<i32>, Vec<Value>, String) {
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let lines = ended
        .stdout_lines()
        .into_iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    (ended.code(), lines, ended.stderr)
}

/// The metrics address cpuguard-run printed.
fn metrics_addr(run: &mut Run) -> String {
    let line = run.wait_stderr("metrics: serving http://");
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest.split("/metrics").next().unwrap().to_owned()
}

/// GET /metrics over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics server accepts");
    stream.set_read_timeout(Some(HANG)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.to_owned()
}

/// The value of the sample `series` (name with labels, exactly as exposed).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

fn fake_system(host: &FakeHost) -> Vec<String> {
    vec![
        "--load-source".into(),
        "system".into(),
        "--root".into(),
        host.root_str(),
    ]
}

#[test]
fn cpu_request_sets_the_reported_capacity_from_option_or_environment() {
    // Without a CPU quota the request is the capacity; a quota wins, and
    // neither goes beyond the CPUs this process may run on.
    let pipeline = "videotestsrc is-live=true num-buffers=20 ! cpuguard interval=100 ! fakesink";
    let out = run(command(&[
        "--cpu-request",
        "250m",
        "--load-source",
        "process",
        "--dry-run",
        pipeline,
    ])
    .env("GST_DEBUG", "cpuguard:5"));
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["capacity"],
        machine::expected_capacity(Some(0.25)),
        "{json}"
    );
    assert_eq!(json["load_source"], "process");

    // The Kubernetes manifest's form: env from the Downward API in millicores.
    // auto follows the cgroup (no quota, but a request).
    let out = run(command(&["--dry-run", pipeline]).env("CPUGUARD_CPU_REQUEST", "1500m"));
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["capacity"],
        machine::expected_capacity(Some(1.5)),
        "{json}"
    );
    assert_eq!(json["load_source"], "cgroup", "{json}");

    // The multi-pipeline parent measures against it too.
    let out = run(&mut command(&[
        "--cpu-request",
        "0.5",
        "--load-source",
        "process",
        "--interval",
        "100",
        "--pipeline",
        "videotestsrc num-buffers=5 ! fakesink",
    ]));
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["capacity"],
        machine::expected_capacity(Some(0.5)),
        "{summary}"
    );

    for (value, why) in [
        ("0", "must be above zero"),
        ("-1", "cannot be negative"),
        ("two", "not a decimal number"),
        ("$(CPU_REQUEST_MILLICORES)m", "not a decimal number"),
    ] {
        for by_env in [false, true] {
            let mut cmd = if by_env {
                let mut cmd = command(&[pipeline]);
                cmd.env("CPUGUARD_CPU_REQUEST", value);
                cmd
            } else {
                command(&["--cpu-request", value, pipeline])
            };
            let out = run(&mut cmd);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
            assert!(out.stdout.is_empty(), "nothing ran");
            assert!(
                stderr.contains("invalid CPU request") && stderr.contains(why),
                "{value}: {stderr}"
            );
        }
    }
}

#[test]
fn metrics_follow_a_multi_pipeline_run_through_a_cpu_limit_drain() {
    let host = FakeHost::new(0.2);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("multi.svg");
    let mut args = fake_system(&host);
    args.extend(
        [
            "--metrics-addr",
            "127.0.0.1:0",
            "--timeline",
            svg.to_str().unwrap(),
            "--interval",
            "200",
            "--soft-threshold",
            "0.8",
            "--hold",
            "3",
            "--pipeline",
            TINY,
            "--pipeline",
            TINY,
        ]
        .map(String::from),
    );
    let mut cmd = command(&[]);
    cmd.args(&args).env("GST_DEBUG", "cpuguard:5");
    let mut run = start(cmd);
    let addr = metrics_addr(&mut run);

    run.wait_stderr("worker 2: state ACTIVE");
    // Let a few samples in.
    let deadline = Instant::now() + HANG;
    let body = loop {
        let body = scrape(&addr);
        if value(&body, r#"cpuguard_load_samples_total{source="system"}"#).unwrap_or(0.0) >= 2.0 {
            break body;
        }
        assert!(Instant::now() < deadline, "no samples:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(value(&body, "cpuguard_up"), Some(1.0), "{body}");
    let load = value(&body, r#"cpuguard_load_ratio{source="system"}"#).unwrap();
    assert!((load - 0.2).abs() < 0.05, "load {load}:\n{body}");
    assert_eq!(value(&body, "cpuguard_capacity_cpus"), Some(2.0), "{body}");
    assert_eq!(
        value(&body, "cpuguard_soft_threshold_ratio"),
        Some(0.8),
        "{body}"
    );
    assert_eq!(
        value(&body, "cpuguard_hard_threshold_ratio"),
        Some(0.95),
        "{body}"
    );
    assert_eq!(
        value(&body, "cpuguard_pipelines_running"),
        Some(2.0),
        "{body}"
    );
    assert!(!body.contains("cpuguard_drains_total{"), "{body}");

    // Over the soft threshold: one worker drains, then calm again. Soft, not
    // hard: a hard threshold drains at once, so a second worker whose next
    // window still reads the high load would drain right after the first
    // (a TINY drain takes milliseconds); after a drain the others need a
    // fresh hold of 3 samples, which the calm load never completes.
    host.set_load(0.9);
    // The parent's line, told when the worker's channel says ENDING.
    run.wait_stderr("soft threshold 0.8: draining worker");
    host.set_load(0.1);
    // The drained worker's result on stdout: printed once the metrics have
    // counted it (its "ended" line on stderr comes before they have).
    run.wait_line(Stream::Stdout, HANG, |l| l.contains("\"cpu-limit\""));
    let body = scrape(&addr);
    assert_eq!(
        value(&body, r#"cpuguard_drains_total{reason="cpu-limit"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            r#"cpuguard_results_total{status="COMPLETE",reason="cpu-limit"}"#
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(
            &body,
            r#"cpuguard_drain_duration_seconds_count{reason="cpu-limit"}"#
        ),
        Some(1.0),
        "{body}"
    );
    let seconds = value(
        &body,
        r#"cpuguard_drain_duration_seconds_sum{reason="cpu-limit"}"#,
    )
    .unwrap();
    // The worker's own drain duration, to the millisecond: a TINY drain the
    // element starts itself reaches EOS in under a millisecond, so 0 is a
    // real value here (the count above says it was observed).
    assert!((0.0..30.0).contains(&seconds), "{seconds}");
    assert_eq!(
        value(&body, "cpuguard_pipelines_running"),
        Some(1.0),
        "{body}"
    );

    run.signal(Signal::SIGTERM);
    let (code, lines, stderr) = end(run);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.len(), 3, "two workers and the summary");

    // The story in the debug log, in order.
    let mut from = 0;
    for step in [
        "cpuguard-run: sample: load",
        "cpuguard-run: worker 1 (pid",
        "cpuguard-run: victim: worker",
        "cpuguard-run: drain start: worker",
        "cpuguard-run: SIGTERM received: drain",
    ] {
        let at = stderr[from..]
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} after byte {from} in:\n{stderr}"));
        from += at + step.len();
    }

    // The multi-pipeline picture: both drains marked, per-worker CPU drawn.
    let text = std::fs::read_to_string(&svg).unwrap();
    let texts = svg_texts(&text);
    assert!(texts.iter().any(|t| t.contains("cpu-limit")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("stop-requested")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("worker 1 CPU")),
        "{texts:?}"
    );
}

#[test]
fn a_busy_or_bad_metrics_address_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for multi in [false, true] {
        let mut cmd = if multi {
            command(&["--metrics-addr", &addr, "--pipeline", TINY])
        } else {
            command(&["--metrics-addr", &addr, TINY])
        };
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing ran: {stderr}");
        assert!(
            stderr.contains(&format!("cannot serve metrics on {addr}")),
            "{stderr}"
        );
    }
    let out = run(&mut command(&["--metrics-addr", "localhost", TINY]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'localhost' for '--metrics-addr <ADDR>'"),
        "{stderr}"
    );
}

/// Every text of an SVG, parsed as XML (so the file must be well formed).
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the timeline is valid XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|d| d.is_text())
                .filter_map(|d| d.text())
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn timeline_shows_the_thresholds_and_the_cpu_limit_drain() {
    let host = FakeHost::new(0.7);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("run.svg");
    let mut args = fake_system(&host);
    args.extend(
        [
            "--timeline",
            svg.to_str().unwrap(),
            "--interval",
            "100",
            "--soft-threshold",
            "0.5",
            "--hold",
            "3",
            TINY,
        ]
        .map(String::from),
    );
    let mut cmd = command(&[]);
    cmd.args(&args).env("GST_DEBUG", "cpuguard:5");
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reason"], "cpu-limit", "{json}");

    let text = std::fs::read_to_string(&svg).unwrap();
    let texts = svg_texts(&text);
    for needle in [
        "cpuguard-run: CPU limit reached (cpu-limit)",
        "soft threshold 0.5 (drains after hold 3, release 2)",
        "hard threshold 0.95 (drains at once)",
        "drain: cpu-limit (soft threshold, load 0.70)",
        "time since start (s)",
        "load (system, share of 2.00 CPUs)",
    ] {
        assert!(
            texts.iter().any(|t| t == needle),
            "no {needle:?} in {texts:?}"
        );
    }
    // Load line plus the two threshold lines and the drain marker.
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(lines >= 4, "{lines} polylines");
}

#[test]
fn timeline_is_written_when_a_drain_times_out() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("timeout.svg");
    // appsink with room for one buffer and nobody pulling: the streaming
    // thread blocks in the sink and EOS can never get there.
    let pipeline = format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 \
         ! cpuguard interval=100 load-source=system root={} \
         ! appsink max-buffers=1 drop=false sync=false",
        host.root_str()
    );
    let mut cmd = command(&[
        "--timeline",
        svg.to_str().unwrap(),
        "--drain-timeout",
        "500",
        &pipeline,
    ]);
    cmd.env("GST_DEBUG", "cpuguard:5");
    let mut run = start(cmd);
    run.wait_stderr("state ACTIVE");
    run.wait_stderr("cpuguard-run: sample: load 0.100 (system)");
    run.signal(Signal::SIGTERM);
    let (code, lines, stderr) = end(run);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(lines[0]["reason"], "drain-timeout", "{stderr}");
    // Single mode tells the signal and what it did in the debug category.
    let signal = stderr
        .find("cpuguard-run: SIGTERM received: drain")
        .expect("signal logged");
    let sample = stderr
        .find("cpuguard-run: sample: load 0.100 (system), capacity 2.00 CPUs")
        .expect("the element's samples logged");
    assert!(sample < signal, "{stderr}");
    let texts = svg_texts(&std::fs::read_to_string(&svg).unwrap());
    assert!(
        texts
            .iter()
            .any(|t| t == "cpuguard-run: Drain did not complete in time (drain-timeout)"),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t == "SIGTERM: drain (stop-requested)"),
        "{texts:?}"
    );
}

/// Issue #14: where a CFS quota binds, each sample's throttling reaches the
/// metrics. A real cgroup v1 quota of 0.25 CPU that a burner saturates, with
/// cpuguard-run measuring it from inside.
#[test]
fn throttling_of_a_real_quota_reaches_the_metrics() {
    const TEST: &str = "throttling_of_a_real_quota_reaches_the_metrics";
    let _cpu = exclusive_cpu();
    let name = format!("cpuguard-obs-{}", std::process::id());
    let group = match cgroup::V1Cgroup::with_quota(&name, 0.25) {
        Ok(group) => group,
        Err(why) => return machine::skip(TEST, &why),
    };
    let mut burner = Command::new("stress-ng");
    burner
        .args(["--cpu", "2", "--quiet", "--timeout", "120s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    group.join_before_exec(&mut burner);
    let mut burner = burner.spawn().expect("stress-ng runs (scripts/deps.sh)");
    let mut cmd = command(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--load-source",
        "cgroup",
        "--interval",
        "250",
        "--dry-run",
        TINY,
    ]);
    cmd.env("GST_DEBUG", "cpuguard:5");
    group.join_before_exec(&mut cmd);
    let mut run = start(cmd);
    let addr = metrics_addr(&mut run);
    // Three samples logged: the metrics hold at least the first two.
    for _ in 0..3 {
        run.wait_stderr("cpuguard-run: sample:");
    }
    let body = scrape(&addr);
    let _ = burner.kill();
    let _ = burner.wait();
    let ratio = value(&body, "cpuguard_throttled_periods_ratio");
    let seconds = value(&body, "cpuguard_throttled_seconds_total");
    assert!(ratio.is_some_and(|r| r >= 0.9), "{body}");
    assert!(seconds.is_some_and(|s| s > 0.0), "{body}");
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
}
