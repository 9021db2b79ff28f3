//! `cpuguard-run` multi-pipeline mode, driven as a user drives it: the real
//! binary, real worker processes, real signals, real x264 encodes into MP4.
//!
//! The shared load comes from a simulated host (`--load-source system --root`)
//! so that decisions are deterministic on a busy 2-core machine; each
//! worker's CPU is real, so "the heaviest" is really the costliest encode.
//! Timing bounds are generous: they catch hangs, not speed.

mod common;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cpuguard-run");
/// Upper bound for anything that should happen "soon": only catches hangs.
const HANG: Duration = Duration::from_secs(60);

/// A live H.264 recording at `width`x`height` into `path`, cpuguard included.
fn recording(width: u32, height: u32, path: &Path) -> String {
    format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width={width},height={height},\
         framerate=30/1 ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse \
         ! cpuguard ! mp4mux ! filesink location={}",
        path.display()
    )
}

/// A cheap live pipeline with cpuguard and no file.
const TINY: &str = "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 ! cpuguard ! fakesink";

/// Options that make the parent read the simulated host.
fn fake_load(host: &FakeHost) -> Vec<String> {
    vec![
        "--load-source".into(),
        "system".into(),
        "--root".into(),
        host.root_str(),
    ]
}

/// A running parent; stdout and stderr are read line by line as they come.
struct Run {
    child: Child,
    events: Receiver<(bool, String)>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

struct Ended {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: String,
    at: Instant,
}

impl Ended {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Every result line, keyed by worker id, and the summary (last line).
    fn results(&self) -> (Vec<Value>, Value) {
        let mut values: Vec<Value> = self
            .stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect();
        let summary = values.pop().expect("a summary line");
        assert_eq!(summary["summary"], true, "last line is the summary");
        values.sort_by_key(|v| v["worker"].as_u64());
        (values, summary)
    }
}

fn spawn(args: &[String]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("GST_PLUGIN_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpuguard-run starts");
    let (tx, events) = channel();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (out, tx_out) = (stdout.clone(), tx.clone());
    let pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.trim().is_empty() {
                continue;
            }
            out.lock().unwrap().push(line.clone());
            let _ = tx_out.send((true, line));
        }
    });
    let (err, pipe) = (stderr.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            {
                let mut err = err.lock().unwrap();
                err.push_str(&line);
                err.push('\n');
            }
            let _ = tx.send((false, line));
        }
    });
    Run {
        child,
        events,
        stdout,
        stderr,
    }
}

impl Run {
    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout_so_far(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for a line (on stdout when `stdout`) for which `pred` holds.
    fn wait_line(
        &mut self,
        stdout: bool,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((out, line)) if out == stdout && pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no such line within {timeout:?}; stderr:\n{}",
                    self.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("output closed first; stderr:\n{}", self.stderr_so_far())
                }
            }
        }
    }

    fn wait_stderr(&mut self, needle: &str) -> String {
        self.wait_line(false, HANG, |l| l.contains(needle))
    }

    /// The result line of worker `id`, as soon as it is printed.
    fn wait_result(&mut self, id: u64) -> Value {
        let line = self.wait_line(true, HANG, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["worker"] == id)
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Waits until every worker in `ids` says it is PLAYING (in any order).
    fn wait_active(&mut self, ids: &[u32]) {
        let deadline = Instant::now() + HANG;
        while !ids.iter().all(|id| {
            self.stderr_so_far()
                .contains(&format!("worker {id}: state ACTIVE"))
        }) {
            assert!(
                Instant::now() < deadline,
                "workers {ids:?} not all ACTIVE:\n{}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: Signal) -> Instant {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal sent");
        Instant::now()
    }

    fn wait_exit(mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "cpuguard-run did not exit within {timeout:?}:\n{}",
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let at = Instant::now();
        // The readers finish once the pipes close.
        while self.events.recv_timeout(Duration::from_secs(5)).is_ok() {}
        Ended {
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            at,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed assertion must not leave recorders running: SIGINT makes
        // the parent stop (and reap) its workers.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_no_panic(ended: &Ended) {
    assert!(
        !ended.stderr.contains("panicked"),
        "panic:\n{}",
        ended.stderr
    );
}

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {v}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn pipelines(descriptions: &[String]) -> Vec<String> {
    descriptions
        .iter()
        .flat_map(|d| ["--pipeline".to_owned(), d.clone()])
        .collect()
}

/// The pid the parent printed for worker `id`.
fn worker_pid(stderr: &str, id: u32) -> i32 {
    let needle = format!("worker {id} started: pid ");
    let line = stderr
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no start line for worker {id}:\n{stderr}"));
    let rest = &line[line.find(&needle).unwrap() + needle.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn heaviest_of_three_encodes_is_drained_first_and_alone() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let files = [
        dir.path().join("small.mp4"),
        dir.path().join("medium.mp4"),
        dir.path().join("large.mp4"),
    ];
    let mut a = fake_load(&host);
    a.extend(args(&[
        "--soft-threshold",
        "0.5",
        "--hold",
        "3",
        "--interval",
        "250",
        "--drain-timeout",
        "30s",
    ]));
    a.extend(pipelines(&[
        recording(160, 120, &files[0]),
        recording(640, 360, &files[1]),
        recording(1280, 720, &files[2]),
    ]));
    let mut run = spawn(&a);
    run.wait_active(&[1, 2, 3]);
    // Past the start-up burst, so CPU ranks the encodes by their cost.
    std::thread::sleep(Duration::from_millis(2000));
    host.set_load(0.9);
    let decision = run.wait_stderr("draining worker");
    eprintln!("decision: {decision}");
    assert!(decision.contains("draining worker 3 "), "{decision}");
    assert!(decision.contains("soft threshold 0.5"), "{decision}");

    let large = run.wait_result(3);
    // The load stayed high during that drain: still nobody else was chosen.
    host.set_load(0.1);
    assert_eq!(str_of(&large, "status"), "COMPLETE", "{large}");
    assert_eq!(str_of(&large, "reason"), "cpu-limit");
    assert_eq!(str_of(&large, "end_reason"), "CPU limit reached");
    assert_eq!(large["drain"]["trigger"], "soft");
    assert_eq!(large["drain"]["threshold"], 0.5);
    assert_eq!(large["drain"]["source"], "system");
    assert_eq!(large["drain"]["completed"], true);
    assert!(large["pid"].as_i64().unwrap() > 1);
    assert_eq!(
        run.stdout_so_far().len(),
        1,
        "only the heaviest ended: {:?}",
        run.stdout_so_far()
    );
    // Several more intervals at low load: the others keep recording.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run.stdout_so_far().len(), 1, "{:?}", run.stdout_so_far());

    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(
        ended.stderr.matches("draining worker").count(),
        1,
        "{}",
        ended.stderr
    );
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 3);
    for (r, id) in results.iter().zip(1..) {
        assert_eq!(r["worker"], id);
        assert_eq!(str_of(r, "status"), "COMPLETE", "{r}");
        let expected = if id == 3 {
            "cpu-limit"
        } else {
            "stop-requested"
        };
        assert_eq!(str_of(r, "reason"), expected, "{r}");
        eprintln!(
            "worker {id}: cpu_s {}, duration_s {}",
            r["cpu_s"], r["duration_s"]
        );
    }
    assert!(results[2]["cpu_s"].as_f64() > results[0]["cpu_s"].as_f64());
    assert_eq!(summary["workers"], 3);
    assert_eq!(summary["complete"], 3);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["status"], "COMPLETE");
    assert_eq!(
        summary["by_reason"],
        serde_json::json!({"cpu-limit": 1, "stop-requested": 2})
    );
    assert_eq!(summary["signals"][0]["signal"], "SIGTERM");
    // The parent sampled (it chose worker 3) and timed each sample.
    let sampling = &summary["sampling"];
    assert!(sampling["samples"].as_u64() >= Some(3), "{sampling}");
    assert!(sampling["mean_us"].as_f64() > Some(0.0), "{sampling}");
    assert!(sampling["max_us"].as_f64() >= sampling["mean_us"].as_f64());
    for file in &files {
        let streams = mp4_streams(file).unwrap_or_else(|e| panic!("not playable: {e}"));
        assert_eq!(streams, ["video/x-h264"], "{}", file.display());
    }
}

#[test]
fn stuck_drain_is_killed_after_the_timeout_even_with_load_back_down() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let light = dir.path().join("light.mp4");
    // A heavy encode next to a branch whose sink blocks (nobody pulls the
    // appsink): EOS can never reach that sink, so the drain never completes.
    let stuck = "videotestsrc is-live=true ! video/x-raw,width=1280,height=720,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency ! fakesink sync=false \
         videotestsrc is-live=true ! video/x-raw,width=64,height=64 ! cpuguard \
         ! appsink max-buffers=1 drop=false sync=false"
        .to_owned();
    let mut a = fake_load(&host);
    a.extend(args(&[
        "--soft-threshold",
        "0.5",
        "--hold",
        "2",
        "--interval",
        "250",
        "--drain-timeout",
        "1500",
    ]));
    a.extend(pipelines(&[stuck, recording(160, 120, &light)]));
    let mut run = spawn(&a);
    run.wait_active(&[1, 2]);
    std::thread::sleep(Duration::from_millis(1500));
    host.set_load(0.9);
    let decision = run.wait_stderr("draining worker");
    let drained_at = Instant::now();
    // The load is back down at once: escalation must not depend on it.
    host.set_load(0.1);
    assert!(decision.contains("draining worker 1 "), "{decision}");

    let stuck = run.wait_result(1);
    let took = drained_at.elapsed();
    eprintln!("drain-timeout escalation after {took:?}");
    assert_eq!(str_of(&stuck, "status"), "FAILED", "{stuck}");
    assert_eq!(str_of(&stuck, "reason"), "drain-timeout");
    assert!(str_of(&stuck, "error").contains("SIGKILL"), "{stuck}");
    assert_eq!(stuck["drain"]["reason"], "cpu-limit");
    assert_eq!(stuck["drain"]["completed"], false);
    assert_eq!(stuck["exit_code"], 137);
    assert!(
        took >= Duration::from_millis(1300),
        "killed early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "killed late: {took:?}");
    assert_eq!(run.stdout_so_far().len(), 1, "the other keeps going");

    std::thread::sleep(Duration::from_millis(500));
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(str_of(&results[1], "status"), "COMPLETE", "{}", results[1]);
    assert_eq!(str_of(&results[1], "reason"), "stop-requested");
    assert_eq!(summary["status"], "FAILED");
    assert_eq!(summary["failed"], 1);
    assert_eq!(
        summary["by_reason"],
        serde_json::json!({"drain-timeout": 1, "stop-requested": 1})
    );
    mp4_streams(&light).expect("the other recording plays");
}

#[test]
fn a_crashing_worker_fails_alone() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let survivor = dir.path().join("survivor.mp4");
    let mut a = fake_load(&host);
    a.extend(args(&["--interval", "250"]));
    a.extend(pipelines(&[
        TINY.to_owned(),
        recording(160, 120, &survivor),
    ]));
    let mut run = spawn(&a);
    run.wait_active(&[1, 2]);
    let pid = worker_pid(&run.stderr_so_far(), 1);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("worker killed");

    let crashed = run.wait_result(1);
    assert_eq!(str_of(&crashed, "status"), "FAILED", "{crashed}");
    assert_eq!(str_of(&crashed, "reason"), "error");
    assert_eq!(str_of(&crashed, "error"), "worker killed by SIGKILL");
    assert_eq!(crashed["pid"], pid);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(run.stdout_so_far().len(), 1, "the other keeps going");

    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(str_of(&results[1], "status"), "COMPLETE");
    assert_eq!(str_of(&results[1], "reason"), "stop-requested");
    assert_eq!(summary["complete"], 1);
    assert_eq!(summary["failed"], 1);
    mp4_streams(&survivor).expect("the survivor's recording plays");
}

#[test]
fn sigint_stops_every_worker_at_once() {
    let host = FakeHost::new(0.1);
    let mut a = fake_load(&host);
    a.extend(args(&["--interval", "250", "--release", "2"]));
    a.extend(pipelines(&[TINY.to_owned(), TINY.to_owned()]));
    let mut run = spawn(&a);
    run.wait_active(&[1, 2]);
    assert!(run.stderr_so_far().contains("release 2"));
    std::thread::sleep(Duration::from_millis(500));
    let sent = run.signal(Signal::SIGINT);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    eprintln!("SIGINT exit took {took:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(130), "stderr:\n{}", ended.stderr);
    assert!(took < Duration::from_secs(3), "SIGINT took {took:?}");
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(str_of(r, "status"), "FAILED", "{r}");
        assert_eq!(str_of(r, "reason"), "interrupted", "{r}");
        assert_eq!(r["drain"], Value::Null, "no drain: {r}");
    }
    assert_eq!(summary["status"], "FAILED");
    assert_eq!(summary["exit_code"], 130);
}

#[test]
fn jobs_wait_for_the_load_to_drop_below_max_utilization() {
    let host = FakeHost::new(0.9);
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.txt");
    std::fs::write(&jobs, format!("# two small jobs\n{TINY}\n\n{TINY}\n")).unwrap();
    let mut a = fake_load(&host);
    a.extend(args(&[
        "--interval",
        "200",
        "--max-utilization",
        "0.5",
        "--jobs",
    ]));
    a.push(jobs.display().to_string());
    let mut run = spawn(&a);
    run.wait_stderr("admission: load");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !run.stderr_so_far().contains("started: pid"),
        "started under high load:\n{}",
        run.stderr_so_far()
    );
    host.set_load(0.1);
    run.wait_stderr("worker 1 started");
    let first = Instant::now();
    run.wait_stderr("worker 2 started");
    let gap = first.elapsed();
    eprintln!("second job started {gap:?} after the first");
    assert!(
        gap >= Duration::from_millis(100),
        "one start per interval: {gap:?}"
    );
    run.wait_active(&[1, 2]);
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 2);
    assert_eq!(summary["complete"], 2);
}

#[test]
fn jobs_never_admitted_are_reported_not_started() {
    let host = FakeHost::new(0.9);
    let mut a = fake_load(&host);
    a.extend(args(&["--interval", "100", "--max-utilization", "0.8"]));
    a.extend(pipelines(&[TINY.to_owned(), TINY.to_owned()]));
    let mut run = spawn(&a);
    run.wait_stderr("admission: load");
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(str_of(r, "reason"), "not-started", "{r}");
        assert_eq!(r["pid"], Value::Null);
    }
    assert_eq!(summary["failed"], 2);
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n   \n").unwrap();
    let bad_line = dir.path().join("bad.txt");
    std::fs::write(
        &bad_line,
        format!("{TINY}\n{TINY}\nvideotestsrc ! nosuchthing ! fakesink\n"),
    )
    .unwrap();
    let empty = empty.display().to_string();
    let bad_line = bad_line.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            args(&["--jobs", &empty]),
            format!("jobs file {empty} holds no pipeline description"),
        ),
        (
            args(&["--jobs", "/nonexistent/jobs.txt"]),
            "cannot read jobs file /nonexistent/jobs.txt".to_owned(),
        ),
        (args(&["--jobs", &bad_line]), format!("{bad_line} line 3")),
        (
            args(&[
                "--pipeline",
                TINY,
                "--pipeline",
                "videotestsrc ! nosuchelement ! fakesink",
            ]),
            "invalid pipeline (--pipeline 2)".to_owned(),
        ),
        (
            args(&["--pipeline", TINY, "videotestsrc", "!", "fakesink"]),
            "cannot be used with".to_owned(),
        ),
        (
            args(&["--max-utilization", "0.8", "fakesrc", "!", "fakesink"]),
            "--max-utilization applies to multi-pipeline mode".to_owned(),
        ),
        (
            args(&["--max-utilization", "1.5", "--pipeline", TINY]),
            "max-utilization must be between 0 and 1".to_owned(),
        ),
        (
            args(&["--soft-threshold", "0.97", "--pipeline", TINY]),
            "soft-threshold (0.97) must not be above hard-threshold".to_owned(),
        ),
        (
            args(&["--release", "0", "--pipeline", TINY]),
            "release must be between 1".to_owned(),
        ),
    ];
    for (a, needle) in cases {
        let ended = spawn(&a).wait_exit(HANG);
        assert_no_panic(&ended);
        assert_eq!(ended.code(), Some(2), "{a:?}: stderr:\n{}", ended.stderr);
        assert!(
            ended.stderr.contains(&needle),
            "{a:?}: expected {needle:?} in:\n{}",
            ended.stderr
        );
        assert!(ended.stdout.is_empty(), "{a:?}: {:?}", ended.stdout);
    }
    // The bad description is named, not just its number.
    let ended = spawn(&args(&["--jobs", &bad_line])).wait_exit(HANG);
    assert!(ended.stderr.contains("nosuchthing"), "{}", ended.stderr);
}

#[test]
fn sigusr1_drains_a_single_run_with_reason_cpu_limit() {
    // What the parent sends its chosen worker, usable on any run.
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let description = recording(160, 120, &out).replace(
        "cpuguard",
        &format!("cpuguard load-source=system root={}", host.root_str()),
    );
    let mut run = spawn(&args(&[&description]));
    run.wait_stderr("state ACTIVE");
    std::thread::sleep(Duration::from_millis(500));
    run.signal(Signal::SIGUSR1);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert_eq!(ended.stdout.len(), 1, "{:?}", ended.stdout);
    let json: Value = serde_json::from_str(&ended.stdout[0]).unwrap();
    assert_eq!(str_of(&json, "status"), "COMPLETE");
    assert_eq!(str_of(&json, "reason"), "cpu-limit");
    assert_eq!(str_of(&json, "end_reason"), "CPU limit reached");
    assert_eq!(json["signals"][0]["signal"], "SIGUSR1");
    assert_eq!(json["signals"][0]["action"], "drain");
    mp4_streams(&out).expect("playable");
}

#[test]
fn help_documents_multi_pipeline_mode_and_sigusr1() {
    let ended = spawn(&args(&["--help"])).wait_exit(HANG);
    assert_eq!(ended.code(), Some(0));
    let help = ended.stdout.join("\n");
    for needle in [
        "--pipeline",
        "--jobs",
        "--max-utilization",
        "--release",
        "SIGUSR1",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    assert!(!help.contains("--worker"), "internal flag shown:\n{help}");
}
