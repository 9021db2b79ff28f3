//! The Kubernetes manifest in deploy/ is consistent: the grace period covers
//! the drain, the CPU request is wired through the Downward API, and
//! `cpuguard-run` run with the manifest's own args drains on SIGTERM (what
//! the kubelet sends) into a playable file and a COMPLETE result.

use nix::sys::signal::Signal;
use serde_yaml_ng::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::run::{BIN, HANG, Stream, assert_no_panic, spawn_command};
/// What cpuguard-run allows itself after giving a drain up (README, Drain timeout).
const STOP_GRACE: Duration = Duration::from_secs(5);

fn manifest() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/recorder.yaml"))
            .expect("deploy/recorder.yaml readable");
    serde_yaml_ng::from_str(&text).expect("deploy/recorder.yaml is valid YAML")
}

fn pod_spec(doc: &Value) -> &Value {
    &doc["spec"]["template"]["spec"]
}

fn container(doc: &Value) -> &Value {
    let containers = pod_spec(doc)["containers"]
        .as_sequence()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["command"][0].as_str() == Some("cpuguard-run"))
        .expect("a container running cpuguard-run")
}

fn args(doc: &Value) -> Vec<String> {
    container(doc)["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
}

fn env<'a>(doc: &'a Value, name: &str) -> (usize, &'a Value) {
    container(doc)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .enumerate()
        .find(|(_, e)| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// A Kubernetes CPU quantity ("500m", "2", "0.5") in millicores.
fn millicores(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => (quantity.parse::<f64>().expect("CPUs") * 1000.0).round() as u64,
    }
}

#[test]
fn grace_period_covers_the_drain_timeout() {
    let doc = manifest();
    let args = args(&doc);
    let drain = option(&args, "--drain-timeout").expect("--drain-timeout set in args");
    let drain = humantime::parse_duration(drain).expect("a duration");
    let grace = pod_spec(&doc)["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let needed = drain + STOP_GRACE;
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed drain timeout + stop grace ({needed:?})"
    );
    assert!(
        container(&doc)["lifecycle"]["preStop"].is_null(),
        "no preStop: SIGTERM itself drains"
    );
}

#[test]
fn cpu_request_reaches_cpuguard_through_the_downward_api() {
    let doc = manifest();
    let name = container(&doc)["name"].as_str().expect("container name");
    let (raw_at, raw) = env(&doc, "CPU_REQUEST_MILLICORES");
    let field = &raw["valueFrom"]["resourceFieldRef"];
    assert_eq!(field["resource"].as_str(), Some("requests.cpu"));
    assert_eq!(field["divisor"].as_str(), Some("1m"));
    assert_eq!(field["containerName"].as_str(), Some(name));
    let (cpuguard_at, cpuguard) = env(&doc, "CPUGUARD_CPU_REQUEST");
    assert_eq!(
        cpuguard["value"].as_str(),
        Some("$(CPU_REQUEST_MILLICORES)m")
    );
    // Kubernetes expands $(VAR) only from entries defined earlier.
    assert!(raw_at < cpuguard_at);
    let request = container(&doc)["resources"]["requests"]["cpu"]
        .as_str()
        .expect("a CPU request");
    assert!(millicores(request) > 0);
}

#[test]
fn cpuguard_run_with_the_manifest_args_drains_on_sigterm() {
    let doc = manifest();
    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().to_string_lossy().into_owned();
    // The emptyDir mount becomes a temporary directory; nothing else changes.
    let mount = container(&doc)["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("recordings mount");
    let mut args: Vec<String> = args(&doc)
        .iter()
        .map(|a| a.replace(mount, &recordings))
        .collect();
    // A busy test host could drain on load first; the SIGTERM is what is
    // tested here, so measure only (options go before the pipeline).
    args.insert(args.len() - 1, "--dry-run".to_owned());
    let request = container(&doc)["resources"]["requests"]["cpu"]
        .as_str()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .env("CPUGUARD_CPU_REQUEST", format!("{}m", millicores(request)))
        // The samples, logged: the SIGTERM goes once the recording has run
        // for an interval, not after a guessed sleep.
        .env("GST_DEBUG", "cpuguard:5")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn_command(cmd);
    run.wait_active();
    run.wait_line(Stream::Stderr, HANG, |l| {
        l.contains("cpuguard-run: sample: load")
    });
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let report = option(&args, "--report").expect("--report in args");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).expect("report written"))
            .expect("JSON report");
    assert_eq!(result["status"], "COMPLETE", "{result}");
    assert_eq!(result["reason"], "stop-requested", "{result}");
    let streams = common::mp4_streams(&dir.path().join("rec.mp4")).expect("a finalized MP4");
    assert_eq!(streams.len(), 2, "{streams:?}");
}
