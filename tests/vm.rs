//! cpuguard on a real cgroup v2 kernel: one VM (scripts/vm.sh: Debian's
//! kernel under QEMU, every cgroup controller) runs tests/vm/guest.sh, which
//! builds each cgroup layout, runs cpuguard-run in it and leaves the results
//! in a shared directory; each test here judges one case from those files.
//!
//! The VM takes both cores, so these tests are `#[ignore]`d in the parallel
//! pass and run alone in scripts/test.sh's serial phase
//! (`cargo test --test vm -- --ignored`). A VM that cannot boot is a skip
//! here and a failure in CI.

mod common;

use common::machine::skip;
use common::plays;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Boots the VM once for every test of this binary; the directory the guest
/// wrote, or why it could not run.
fn guest() -> Result<&'static Path, &'static str> {
    static OUT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    OUT.get_or_init(boot)
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(String::as_str)
}

fn boot() -> Result<PathBuf, String> {
    let out = Path::new(ROOT).join("target/cpuguard-vm");
    // Keep the GStreamer registry (its first scan under emulation takes
    // about a minute); everything else is this run's.
    if let Ok(entries) = fs::read_dir(&out) {
        for entry in entries.flatten() {
            if entry.file_name() != "gst-registry.bin" {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // The VM's console is for people: a file beside the results.
    let console =
        fs::File::create(out.join("console.log")).map_err(|e| format!("console.log: {e}"))?;
    let started = std::time::Instant::now();
    // A hang bound only: a full run takes about 2 minutes.
    let status = Command::new("timeout")
        .arg("1200")
        .arg(Path::new(ROOT).join("scripts/vm.sh"))
        .arg(&out)
        .arg(Path::new(ROOT).join("tests/vm/guest.sh"))
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_cpuguard-run"))
        .stdout(
            console
                .try_clone()
                .map_err(|e| format!("console.log: {e}"))?,
        )
        .stderr(console)
        .status()
        .map_err(|e| format!("scripts/vm.sh: {e}"))?;
    eprintln!(
        "vm: {status} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !out.join("done").exists() {
        return Err(format!(
            "the cgroup v2 VM did not run to its end ({status}); see {}",
            out.display()
        ));
    }
    Ok(out)
}

/// The guest's directory, or a skip (a failure in CI) naming `test`.
fn out(test: &str) -> Option<&'static Path> {
    match guest() {
        Ok(out) => Some(out),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

fn read(out: &Path, file: &str) -> String {
    fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("the guest wrote no {file}: {e}"))
}

/// The result JSON of one case (the last stdout line), with its exit code.
fn result(out: &Path, case: &str) -> Value {
    let json = read(out, &format!("{case}.json"));
    let err = read(out, &format!("{case}.err"));
    let rc = read(out, &format!("{case}.rc"));
    let line = json
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{case}: no result (exit {rc}); stderr:\n{err}"));
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{case}: bad JSON {line:?}: {e}; stderr:\n{err}"));
    assert_eq!(rc.trim(), "0", "{case}: exit code; stderr:\n{err}");
    value
}

/// The capacity the kernel enforces on the listed groups: the tightest
/// `cpu.max` the guest read back, bounded by the VM's CPUs.
fn expected_capacity(out: &Path, case: &str) -> f64 {
    let cpus: f64 = read(out, "nproc").trim().parse().expect("nproc");
    read(out, &format!("{case}.limits"))
        .lines()
        .filter_map(|line| {
            let (quota, period) = line.split_once(' ')?;
            Some(quota.parse::<f64>().ok()? / period.trim().parse::<f64>().ok()?)
        })
        .fold(cpus, f64::min)
}

fn assert_capacity(case: &str) {
    let Some(out) = out(case) else { return };
    let json = result(out, case);
    let expected = expected_capacity(out, case);
    assert_eq!(json["status"], "COMPLETE", "{case}: {json}");
    assert_eq!(json["load_source"], "cgroup", "{case}: {json}");
    let capacity = json["capacity"].as_f64().expect("capacity");
    assert!(
        (capacity - expected).abs() < 1e-6,
        "{case}: capacity {capacity}, the cpu.max written gives {expected}"
    );
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn vm_has_cgroup2_with_the_cpu_controller() {
    let Some(out) = out("vm_has_cgroup2_with_the_cpu_controller") else {
        return;
    };
    eprintln!("vm kernel {}", read(out, "kernel").trim());
    assert_eq!(
        read(out, "cgroup2").trim(),
        "1",
        "cgroup2 at /sys/fs/cgroup"
    );
    assert_eq!(read(out, "subtree.err"), "", "enabling +cpu");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_flat_quarter_cpu() {
    assert_capacity("flat");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_pod_tighter_than_its_container() {
    assert_capacity("nested");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_controller_on_the_parent_only() {
    assert_capacity("parent_only");
    if let Some(out) = out("v2_controller_on_the_parent_only") {
        assert!(
            !read(out, "parent_only.leaf-files").contains("cpu.max"),
            "the leaf must have no cpu.max for this case to mean anything"
        );
    }
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_50ms_period() {
    assert_capacity("period");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_cgroup_namespace() {
    assert_capacity("namespace");
    if let Some(out) = out("v2_cgroup_namespace") {
        assert!(
            read(out, "namespace.err").contains("0::/\n"),
            "inside the namespace the group must be /"
        );
    }
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_live_resize_from_quarter_to_two() {
    let Some(out) = out("v2_live_resize_from_quarter_to_two") else {
        return;
    };
    let json = result(out, "resize");
    let err = read(out, "resize.err");
    let before = expected_capacity(out, "resize_before");
    let after = expected_capacity(out, "resize");
    assert!(
        err.contains(&format!("capacity {before:.2} CPUs")),
        "no sample at {before} CPUs before the resize"
    );
    assert_eq!(json["reason"], "stop-requested", "{json}");
    let capacity = json["capacity"].as_f64().expect("capacity");
    assert!(
        (capacity - after).abs() < 1e-6,
        "capacity {capacity} after the resize to {after}"
    );
}

fn assert_source(source: &str) {
    let case = format!("source-{source}");
    let Some(out) = out(&case) else { return };
    let json = result(out, &case);
    assert_eq!(json["status"], "COMPLETE", "{case}: {json}");
    assert_eq!(json["load_source"], source, "{case}: {json}");
    let expected = if source == "system" {
        read(out, "nproc").trim().parse().expect("nproc")
    } else {
        expected_capacity(out, "source")
    };
    let capacity = json["capacity"].as_f64().expect("capacity");
    assert!(
        (capacity - expected).abs() < 1e-6,
        "{case}: capacity {capacity}, expected {expected}"
    );
    // A tiny live pipeline in a 1-CPU group: a real share, never negative,
    // never far beyond saturation.
    for field in ["peak_load", "last_load"] {
        let load = json[field].as_f64().unwrap_or(f64::NAN);
        assert!(
            (0.0..=1.5).contains(&load),
            "{case}: {field} {load} is not a sane reading: {json}"
        );
    }
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_source_process() {
    assert_source("process");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_source_cgroup() {
    assert_source("cgroup");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_source_system() {
    assert_source("system");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_source_psi() {
    assert_source("psi");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_sigterm_drain_finalizes_the_mp4() {
    let Some(out) = out("v2_sigterm_drain_finalizes_the_mp4") else {
        return;
    };
    let json = result(out, "sigterm");
    assert_eq!(json["status"], "COMPLETE", "{json}");
    assert_eq!(json["reason"], "stop-requested", "{json}");
    assert!(plays(&out.join("sigterm.mp4")), "sigterm.mp4 does not play");
}

#[test]
#[ignore = "boots a VM: scripts/test.sh runs it alone"]
fn v2_cpu_limit_drain_inside_a_quota() {
    let Some(out) = out("v2_cpu_limit_drain_inside_a_quota") else {
        return;
    };
    let json = result(out, "limit");
    assert_eq!(json["status"], "COMPLETE", "{json}");
    assert_eq!(json["reason"], "cpu-limit", "{json}");
    assert_eq!(json["end_reason"], "CPU limit reached", "{json}");
    let expected = expected_capacity(out, "limit");
    let capacity = json["capacity"].as_f64().expect("capacity");
    assert!(
        (capacity - expected).abs() < 1e-6,
        "capacity {capacity}, the quota gives {expected}"
    );
    assert!(plays(&out.join("limit.mp4")), "limit.mp4 does not play");
}
