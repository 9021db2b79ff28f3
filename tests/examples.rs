//! The examples run for real: each records an MP4 through cpuguard, is
//! drained (by load, or by its own `drain` action), prints the reason and
//! exits 0 with a playable file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// An upper bound that only catches hangs.
const HANG: Duration = Duration::from_secs(90);

/// Runs `cmd` to completion, killing it if it outlives `HANG`.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            panic!("{cmd:?} still running after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn rust_example() -> PathBuf {
    let plugins = common::plugin_dir();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "record", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(plugins.parent().expect("target dir"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building examples/record.rs failed");
    plugins.join("examples/record")
}

fn python_example(output: &Path, args: &[&str], registry: &Path) -> Output {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/record.py"))
        .arg(output)
        .args(args)
        .env("GST_PLUGIN_PATH", common::plugin_dir())
        .env("GST_REGISTRY", registry);
    run(cmd)
}

/// Exit 0, the drain reason printed before the EOS, and a finalized MP4
/// holding both streams.
fn assert_drained(out: &Output, reason: &str, file: &Path) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}:\n{stdout}\n{stderr}",
        out.status
    );
    let drain = stdout
        .find(&format!("cpuguard drains: {reason} "))
        .unwrap_or_else(|| panic!("no drain with reason {reason} in:\n{stdout}"));
    let eos = stdout
        .find("EOS: the recording is finalized")
        .unwrap_or_else(|| panic!("no EOS in:\n{stdout}"));
    assert!(drain < eos, "EOS before the drain message:\n{stdout}");
    let streams = common::mp4_streams(file).expect("a finalized MP4");
    assert!(
        streams.iter().any(|s| s == "video/x-h264") && streams.iter().any(|s| s == "audio/mpeg"),
        "streams: {streams:?}"
    );
}

/// Thresholds of 0: the first sample is at the hard threshold, whatever the
/// host's load, so the drain is a real load decision.
const DRAIN_AT_FIRST_SAMPLE: [&str; 3] = ["soft-threshold=0", "hard-threshold=0", "interval=100"];

#[test]
fn rust_example_drains_on_load_and_finalizes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rust-load.mp4");
    let mut cmd = Command::new(rust_example());
    cmd.arg(&file).args(DRAIN_AT_FIRST_SAMPLE);
    assert_drained(&run(cmd), "cpu-limit", &file);
}

#[test]
fn rust_example_stops_with_the_drain_action() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rust-stop.mp4");
    let mut cmd = Command::new(rust_example());
    // dry-run: load never drains, only the application's own stop does.
    cmd.arg(&file).args(["--seconds", "1", "dry-run=true"]);
    assert_drained(&run(cmd), "stop-requested", &file);
}

#[test]
fn rust_example_names_a_bad_property() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(rust_example());
    cmd.arg(dir.path().join("never.mp4")).arg("hold=lots");
    let out = run(cmd);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"hold\""), "{stderr}");
}

#[test]
fn python_example_drains_on_load_and_finalizes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("py-load.mp4");
    let out = python_example(
        &file,
        &DRAIN_AT_FIRST_SAMPLE,
        &dir.path().join("registry.bin"),
    );
    assert_drained(&out, "cpu-limit", &file);
}

#[test]
fn python_example_stops_with_the_drain_action() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("py-stop.mp4");
    let out = python_example(
        &file,
        &["--seconds", "1", "dry-run=true"],
        &dir.path().join("registry.bin"),
    );
    assert_drained(&out, "stop-requested", &file);
}
