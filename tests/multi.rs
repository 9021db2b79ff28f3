//! `cpuguard-run` multi-pipeline mode, driven as a user drives it: the real
//! binary, real worker processes, real signals, real x264 encodes into MP4.
//!
//! The shared load comes from a simulated host (`--load-source system --root`)
//! so that decisions are deterministic on a busy 2-core machine; each
//! worker's CPU is real, so "the heaviest" is really the costliest encode.
//! The workers' cpuguard elements choose which worker drains (they coordinate
//! in the run's private directory); the parent logs what each worker tells
//! it on its channel, which the waits below read.
//! Timing bounds are generous: they catch hangs, not speed.

mod common;

use common::run::*;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// The run logged (`GST_DEBUG=cpuguard:5`): the parent's admission samples
/// and, for each sample a worker's cpuguard took, the worker's CPU as the
/// worker told it, which the waits below read.
fn spawn_logged(a: &[String]) -> Run {
    let mut cmd = command(a);
    cmd.env("GST_DEBUG", "cpuguard:5");
    spawn_command(cmd)
}

/// A debug line of the parent itself, not one of a worker's forwarded lines
/// (which the parent prints behind its own `cpuguard-run [time] worker N:`).
fn parent_line(line: &str, needle: &str) -> bool {
    !line.starts_with("cpuguard-run [") && line.contains(needle)
}

/// Waits for the parent's next `n` admission samples: bounds a check by
/// samples taken, not by time slept.
fn wait_parent_samples(run: &mut Run, n: usize) {
    for _ in 0..n {
        run.wait_line(Stream::Stderr, HANG, |l| {
            parent_line(l, "cpuguard-run: sample: load")
        });
    }
}

/// The next sample a worker told the parent about: its id and its
/// whole-process CPU (`None` for its first sample, before a rate).
fn next_worker_sample(run: &mut Run) -> (u32, Option<f64>) {
    let line = run.wait_line(Stream::Stderr, HANG, |l| {
        parent_line(l, "cpuguard-run: worker ") && l.contains(") CPU ")
    });
    let rest = &line[line.find("cpuguard-run: worker ").unwrap() + 21..];
    let id: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
    let cpu = rest
        .split(") CPU ")
        .nth(1)
        .and_then(|c| c.split(':').next())
        .unwrap_or_else(|| panic!("no CPU in {line}"));
    (id, (cpu != "unknown").then(|| cpu.parse().unwrap()))
}

/// Waits until every worker in `ids` told the parent of `n` more samples its
/// cpuguard took: bounds a check by the samples the workers judged, not by
/// time slept.
fn wait_worker_samples(run: &mut Run, ids: &[u32], n: usize) {
    let mut seen = std::collections::BTreeMap::<u32, usize>::new();
    while !ids.iter().all(|id| seen.get(id).is_some_and(|&c| c >= n)) {
        let (id, _) = next_worker_sample(run);
        *seen.entry(id).or_default() += 1;
    }
}

/// Waits until the workers' own CPU figures (whole process, what their
/// cpuguard elements rank processes by) rank worker `heaviest` first of
/// `ids` for two whole samples in a row: past the start-up burst, when the
/// encodes are ranked by their cost.
fn wait_ranked_first(run: &mut Run, heaviest: u32, ids: &[u32]) {
    let mut latest = std::collections::BTreeMap::<u32, f64>::new();
    let mut streak = 0;
    while streak < 2 * ids.len() {
        let (id, cpu) = next_worker_sample(run);
        let Some(cpu) = cpu else { continue };
        latest.insert(id, cpu);
        let first = ids.iter().all(|i| latest.contains_key(i))
            && ids
                .iter()
                .filter(|&&i| i != heaviest)
                .all(|i| latest[i] < latest[&heaviest]);
        streak = if first { streak + 1 } else { 0 };
    }
    eprintln!("CPU ranking: {latest:?}");
}

fn pipelines(descriptions: &[String]) -> Vec<String> {
    descriptions
        .iter()
        .flat_map(|d| ["--pipeline".to_owned(), d.clone()])
        .collect()
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
    let mut run = spawn_logged(&a);
    run.wait_workers_active(&[1, 2, 3]);
    wait_ranked_first(&mut run, 3, &[1, 2, 3]);
    host.set_load(0.9);
    let decision = run.wait_stderr("draining worker");
    eprintln!("decision: {decision}");
    assert!(decision.contains("draining worker 3 "), "{decision}");
    assert!(decision.contains("soft threshold 0.5"), "{decision}");

    let large = run.wait_result(3);
    // The load stayed high during that drain: still nobody else was chosen.
    host.set_load(0.1);
    assert_eq!(str_field(&large, "status"), "COMPLETE", "{large}");
    assert_eq!(str_field(&large, "reason"), "cpu-limit");
    assert_eq!(str_field(&large, "end_reason"), "CPU limit reached");
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
    // Several more samples at low load: the others keep recording.
    wait_worker_samples(&mut run, &[1, 2], 6);
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
        assert_eq!(str_field(r, "status"), "COMPLETE", "{r}");
        let expected = if id == 3 {
            "cpu-limit"
        } else {
            "stop-requested"
        };
        assert_eq!(str_field(r, "reason"), expected, "{r}");
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
    // The workers chose: without --max-utilization the parent took no
    // sample of its own.
    let sampling = &summary["sampling"];
    assert_eq!(sampling["samples"], 0, "{sampling}");
    // The summary's load is what the workers measured.
    assert!(summary["peak_load"].as_f64() >= Some(0.9), "{summary}");
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
    let mut run = spawn_logged(&a);
    run.wait_workers_active(&[1, 2]);
    wait_ranked_first(&mut run, 1, &[1, 2]);
    host.set_load(0.9);
    let decision = run.wait_stderr("draining worker");
    let drained_at = Instant::now();
    // The load is back down at once: escalation must not depend on it.
    host.set_load(0.1);
    assert!(decision.contains("draining worker 1 "), "{decision}");

    let stuck = run.wait_result(1);
    let took = drained_at.elapsed();
    eprintln!("drain-timeout escalation after {took:?}");
    assert_eq!(str_field(&stuck, "status"), "FAILED", "{stuck}");
    assert_eq!(str_field(&stuck, "reason"), "drain-timeout");
    assert!(str_field(&stuck, "error").contains("SIGKILL"), "{stuck}");
    assert_eq!(stuck["drain"]["reason"], "cpu-limit");
    assert_eq!(stuck["drain"]["completed"], false);
    assert_eq!(stuck["exit_code"], 137);
    assert!(
        took >= Duration::from_millis(1300),
        "killed early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "killed late: {took:?}");
    assert_eq!(run.stdout_so_far().len(), 1, "the other keeps going");

    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(
        str_field(&results[1], "status"),
        "COMPLETE",
        "{}",
        results[1]
    );
    assert_eq!(str_field(&results[1], "reason"), "stop-requested");
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
    let mut run = spawn_logged(&a);
    run.wait_workers_active(&[1, 2]);
    let pid = run.worker_pid(1);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("worker killed");

    let crashed = run.wait_result(1);
    assert_eq!(str_field(&crashed, "status"), "FAILED", "{crashed}");
    assert_eq!(str_field(&crashed, "reason"), "error");
    assert_eq!(str_field(&crashed, "error"), "worker killed by SIGKILL");
    assert_eq!(crashed["pid"], pid);
    wait_worker_samples(&mut run, &[2], 4);
    assert_eq!(run.stdout_so_far().len(), 1, "the other keeps going");

    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(str_field(&results[1], "status"), "COMPLETE");
    assert_eq!(str_field(&results[1], "reason"), "stop-requested");
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
    let mut run = spawn_logged(&a);
    run.wait_workers_active(&[1, 2]);
    assert!(run.stderr_so_far().contains("release 2"));
    // The workers coordinate in a directory private to this run, never in
    // the host-wide one (tests run in parallel with simulated loads).
    let stderr = run.stderr_so_far();
    let private = stderr
        .split("workers coordinate their drains in ")
        .nth(1)
        .and_then(|rest| rest.split(" (private to this run)").next())
        .unwrap_or_else(|| panic!("no coordination directory:\n{stderr}"))
        .to_owned();
    let mode = std::fs::metadata(&private).expect("exists").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700,
        "{private}"
    );
    wait_worker_samples(&mut run, &[1, 2], 2);
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
        assert_eq!(str_field(r, "status"), "FAILED", "{r}");
        assert_eq!(str_field(r, "reason"), "interrupted", "{r}");
        assert_eq!(r["drain"], Value::Null, "no drain: {r}");
    }
    assert_eq!(summary["status"], "FAILED");
    assert_eq!(summary["exit_code"], 130);
    assert!(!Path::new(&private).exists(), "{private} left behind");
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
    let mut run = spawn_logged(&a);
    run.wait_stderr("admission: load");
    // Five more samples at high load: still nothing admitted.
    wait_parent_samples(&mut run, 5);
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
    run.wait_workers_active(&[1, 2]);
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 2);
    assert_eq!(summary["complete"], 2);
    // Admission is the parent's one reason to sample, and it timed them.
    let sampling = &summary["sampling"];
    assert!(sampling["samples"].as_u64() >= Some(6), "{sampling}");
    assert!(sampling["mean_us"].as_f64() > Some(0.0), "{sampling}");
    assert!(sampling["max_us"].as_f64() >= sampling["mean_us"].as_f64());
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
        assert_eq!(str_field(r, "reason"), "not-started", "{r}");
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
        assert!(ended.stdout_lines().is_empty(), "{a:?}: {:?}", ended.stdout);
    }
    // The bad description is named, not just its number.
    let ended = spawn(&args(&["--jobs", &bad_line])).wait_exit(HANG);
    assert!(ended.stderr.contains("nosuchthing"), "{}", ended.stderr);
}

#[test]
fn sigusr1_drains_a_single_run_with_reason_cpu_limit() {
    // An outside supervisor's CPU drain request, usable on any run.
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let description = recording(160, 120, &out).replace(
        "cpuguard",
        &format!("cpuguard load-source=system root={}", host.root_str()),
    );
    let mut run = spawn_logged(&args(&[&description]));
    run.wait_stderr("state ACTIVE");
    // A sample taken: the recording has run for an interval.
    run.wait_line(Stream::Stderr, HANG, |l| {
        l.contains("cpuguard-run: sample: load")
    });
    run.signal(Signal::SIGUSR1);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "cpu-limit");
    assert_eq!(str_field(&json, "end_reason"), "CPU limit reached");
    assert_eq!(json["signals"][0]["signal"], "SIGUSR1");
    assert_eq!(json["signals"][0]["action"], "drain");
    mp4_streams(&out).expect("playable");
}

#[test]
fn help_documents_multi_pipeline_mode_and_sigusr1() {
    let ended = spawn(&args(&["--help"])).wait_exit(HANG);
    assert_eq!(ended.code(), Some(0));
    let help = &ended.stdout;
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
