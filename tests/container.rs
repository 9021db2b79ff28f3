//! cpuguard-run in a real container runtime, stopped as the kubelet stops a
//! pod: `podman stop -t N` sends SIGTERM, waits N seconds, then SIGKILLs.
//!
//! podman with runc (crun refuses this host's hybrid cgroups), an image made
//! with `podman import` from an empty skeleton and the host's /usr mounted
//! read-only (no registry). The container takes CPU from everything beside
//! it, so these tests are `#[ignore]`d in the parallel pass and run alone in
//! scripts/test.sh's serial phase (`cargo test --test container -- --ignored`).

mod common;

use common::machine::{affinity_cpus, skip};
use common::plays;
use serde_json::Value;
use std::fs;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/cpuguard-skeleton:test";
/// What `podman run --cpus` gets: the container's CFS quota.
const CPUS: f64 = 0.5;
const RECORDING: &str = "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1 \
     ! x264enc speed-preset=ultrafast tune=zerolatency key-int-max=15 ! h264parse ! cpuguard \
     ! mp4mux ! filesink location=/out/rec.mp4";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Imports the skeleton image once: top-level directories, and the merged-/usr
/// links that let the host's /usr serve as the whole system.
fn image() -> Result<(), String> {
    static IMPORTED: OnceLock<Result<(), String>> = OnceLock::new();
    IMPORTED
        .get_or_init(|| {
            let ok = Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                return Err("podman is not installed (scripts/deps.sh installs it)".into());
            }
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let skel = dir.path().join("skel");
            for d in ["etc", "tmp", "proc", "sys", "dev", "run", "out"] {
                fs::create_dir_all(skel.join(d)).map_err(|e| e.to_string())?;
            }
            for (link, to) in [
                ("bin", "usr/bin"),
                ("sbin", "usr/sbin"),
                ("lib", "usr/lib"),
                ("lib64", "usr/lib64"),
            ] {
                std::os::unix::fs::symlink(to, skel.join(link)).map_err(|e| e.to_string())?;
            }
            let tar = dir.path().join("skel.tar");
            let status = Command::new("tar")
                .arg("-C")
                .arg(&skel)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()
                .map_err(|e| e.to_string())?;
            assert!(status.success(), "tar of the skeleton");
            let out = podman(&["import", "-q", &tar.to_string_lossy(), IMAGE]);
            if !out.status.success() {
                return Err(format!(
                    "podman import: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })
        .clone()
}

/// A recording container; removed when dropped.
struct Container {
    name: String,
    out: tempfile::TempDir,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

impl Container {
    /// Starts `cpuguard-run` recording in a container of `CPUS` CPUs, or
    /// skips (a failure in CI) when podman cannot.
    fn start(test: &str) -> Option<Container> {
        if let Err(why) = image() {
            skip(test, &why);
            return None;
        }
        let out = tempfile::tempdir().expect("tempdir");
        let name = format!("cpuguard-{test}-{}", std::process::id());
        let bin = format!("{}:/cpuguard-run:ro", env!("CARGO_BIN_EXE_cpuguard-run"));
        let vol = format!("{}:/out", out.path().display());
        let cpus = CPUS.to_string();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--runtime",
            "runc",
            // The sandbox has no CAP_SYS_RESOURCE to raise podman's defaults.
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--cpus",
            &cpus,
            "-v",
            "/usr:/usr:ro",
            "-v",
            "/etc/ld.so.cache:/etc/ld.so.cache:ro",
            "-v",
            &bin,
            "-v",
            &vol,
            "-e",
            "GST_REGISTRY=/out/registry.bin",
            "-e",
            "HOME=/out",
            IMAGE,
            "/cpuguard-run",
            "--interval",
            "250",
            "--load-source",
            "cgroup",
            "--report",
            "/out/report.json",
        ];
        args.extend(RECORDING.split(' '));
        podman_ok(&args);
        Some(Container { name, out })
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits (bounded) until the recording has at least `bytes` in its file.
    fn wait_recorded(&self, bytes: u64) {
        let file = self.out.path().join("rec.mp4");
        let deadline = Instant::now() + Duration::from_secs(120);
        while fs::metadata(&file).map_or(0, |m| m.len()) < bytes {
            assert!(
                Instant::now() < deadline,
                "{}: nothing recorded in 120 s; logs:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `podman stop -t grace` (SIGTERM, grace, SIGKILL): the exit code.
    fn stop(&self, grace: u32) -> i64 {
        podman_ok(&["stop", "-t", &grace.to_string(), &self.name]);
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .trim()
            .parse()
            .expect("exit code")
    }

    fn report(&self) -> Value {
        let text = fs::read_to_string(self.out.path().join("report.json")).expect("report");
        serde_json::from_str(&text).expect("report JSON")
    }

    fn recording(&self) -> std::path::PathBuf {
        self.out.path().join("rec.mp4")
    }
}

fn expected_capacity() -> f64 {
    CPUS.min(affinity_cpus())
}

#[test]
#[ignore = "runs containers: scripts/test.sh runs it alone"]
fn podman_stop_drains_within_the_grace_period() {
    let Some(c) = Container::start("podman_stop_drains") else {
        return;
    };
    c.wait_recorded(50_000);
    let code = c.stop(30);
    let report = c.report();
    let logs = c.logs();
    assert_eq!(code, 0, "exit code; logs:\n{logs}");
    assert_eq!(report["status"], "COMPLETE", "{report}");
    assert_eq!(report["reason"], "stop-requested", "{report}");
    assert_eq!(report["signals"][0]["signal"], "SIGTERM", "{report}");
    assert_eq!(report["signals"][0]["action"], "drain", "{report}");
    let capacity = report["capacity"].as_f64().expect("capacity");
    assert!(
        (capacity - expected_capacity()).abs() < 1e-6,
        "capacity {capacity}: the container has --cpus {CPUS}"
    );
    assert!(plays(&c.recording()), "the drained recording does not play");
}

#[test]
#[ignore = "runs containers: scripts/test.sh runs it alone"]
fn podman_stop_with_no_grace_kills_and_the_file_still_plays() {
    let Some(c) = Container::start("podman_stop_kills") else {
        return;
    };
    // Two crash-safe fragments at least (1 s each by default).
    c.wait_recorded(150_000);
    // A grace period of 0: SIGKILL before any drain can finish.
    let code = c.stop(0);
    let report = c.report();
    assert_eq!(code, 137, "SIGKILL's exit code; logs:\n{}", c.logs());
    assert_ne!(
        report["status"], "COMPLETE",
        "a killed run cannot have finished: {report}"
    );
    assert!(
        plays(&c.recording()),
        "the crash-safe recording does not play after SIGKILL"
    );
}
