//! The `cpuguard-run` supervisor, driven as a user drives it: the real binary,
//! real signals, real x264/AAC encodes into MP4, its JSON result on stdout.
//!
//! Timing bounds are generous (they catch hangs), except where the issue sets
//! one: SIGINT must stop the run within a second.

mod common;

use common::run::*;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Live 320x240 H.264, the cheapest real encode.
const VIDEO: &str = "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
     ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse";

fn assert_playable(path: &Path, expected: &[&str]) {
    let mut streams =
        mp4_streams(path).unwrap_or_else(|e| panic!("{} does not play: {e}", path.display()));
    streams.sort();
    assert_eq!(streams, expected, "{}", path.display());
}

/// cpuguard reading a simulated host that stays at 10% load: the real load of
/// a 2-core machine running tests in parallel must not start CPU drains in
/// tests about signals.
fn calm_guard(host: &FakeHost, extra: &str) -> String {
    format!(
        "cpuguard load-source=system root={} {extra}",
        host.root_str()
    )
}

/// Audio + video recording with cpuguard in the video branch.
fn av_recording(path: &Path, guard: &str) -> String {
    format!(
        "{VIDEO} ! {guard} ! queue ! mux. \
         audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
         mp4mux name=mux ! filesink location={}",
        path.display()
    )
}

/// A recording whose drain takes a couple of seconds: a slow consumer behind an
/// unbounded queue has a backlog to work through after EOS.
fn slow_drain_recording(path: &Path, host: &FakeHost) -> Vec<String> {
    args_of(&format!(
        "{VIDEO} ! {} ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
         ! identity sleep-time=60000 ! mp4mux ! filesink location={}",
        calm_guard(host, ""),
        path.display()
    ))
}

#[test]
fn sigterm_drains_to_a_playable_mp4_and_exits_0() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let report = dir.path().join("report.json");
    let mut args = vec![
        "--interval".to_owned(),
        "200".to_owned(),
        "--report".to_owned(),
        report.display().to_string(),
    ];
    args.extend(args_of(&av_recording(
        &out,
        &calm_guard(&host, "name=guard"),
    )));
    let mut run = spawn(&args);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    let drain_time = ended.at - sent;
    eprintln!("SIGTERM drain took {drain_time:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);

    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert_eq!(str_field(&json, "end_reason"), "Stop requested");
    assert_eq!(json["error"], Value::Null);
    assert_eq!(json["exit_code"], 0);
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "ENDING", "COMPLETE"]);
    assert_eq!(json["cpuguard_elements"], serde_json::json!(["guard"]));
    assert_eq!(json["drain"]["completed"], true);
    assert_eq!(json["drain"]["element"], "guard");
    assert_eq!(json["drain"]["trigger"], "request");
    assert!(json["drain_requested_at"].is_string());
    assert!(
        json["last_load"].is_f64() && json["peak_load"].is_f64(),
        "{json}"
    );
    assert!(json["peak_load"].as_f64() >= json["last_load"].as_f64());
    assert!(json["duration_s"].as_f64().unwrap() > 1.0);
    for stamp in ["started_at", "ended_at"] {
        humantime::parse_rfc3339(str_field(&json, stamp)).expect("RFC 3339 time");
    }
    assert_eq!(json["signals"][0]["signal"], "SIGTERM");
    assert_eq!(json["signals"][0]["action"], "drain");
    // Progress is on stderr, in order.
    let ending = ended.stderr.find("state ENDING").expect("ENDING line");
    let complete = ended.stderr.find("state COMPLETE").expect("COMPLETE line");
    assert!(ending < complete);

    let written: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written, json, "--report holds the same result");

    assert_playable(&out, &["audio/mpeg", "video/x-h264"]);
    assert!(drain_time < Duration::from_secs(10), "{drain_time:?}");
}

#[test]
fn sigterm_while_starting_still_drains() {
    let host = FakeHost::new(0.1);
    // The STARTING line is printed once signals are handled and just before
    // the pipeline is set to PLAYING: an EOS sent then would be lost, so the
    // supervisor drains as soon as the pipeline plays.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut run = spawn(&args_of(&format!(
        "{VIDEO} ! {} ! mp4mux ! filesink location={}",
        calm_guard(&host, ""),
        out.display()
    )));
    run.wait_stderr("state STARTING");
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert!(
        json["drain"]["duration_s"].as_f64().unwrap() < 10.0,
        "{json}"
    );
    assert_playable(&out, &["video/x-h264"]);
}

#[test]
fn sigint_stops_within_a_second_without_draining() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut run = spawn(&args_of(&av_recording(&out, &calm_guard(&host, ""))));
    run.wait_active();
    std::thread::sleep(Duration::from_millis(1000));
    let sent = run.signal(Signal::SIGINT);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    eprintln!("SIGINT exit took {took:?}");
    assert_no_panic(&ended);
    assert!(took < Duration::from_secs(1), "SIGINT took {took:?}");
    assert_eq!(ended.code(), Some(130), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "interrupted");
    assert_eq!(json["exit_code"], 130);
    assert_eq!(json["drain"], Value::Null, "SIGINT does not drain");
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "FAILED"]);
}

#[test]
fn blocked_sink_drain_times_out_as_failed() {
    let host = FakeHost::new(0.1);
    // appsink with room for one buffer and nobody pulling: the streaming thread
    // blocks in the sink and EOS can never get there.
    let mut args = vec!["--drain-timeout".to_owned(), "1000".to_owned()];
    args.extend(args_of(&format!(
        "{VIDEO} ! {} ! appsink max-buffers=1 drop=false sync=false",
        calm_guard(&host, "")
    )));
    let mut run = spawn(&args);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(500));
    let sent = run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    eprintln!("drain-timeout exit (cpuguard) took {took:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "drain-timeout");
    assert!(str_field(&json, "error").contains("drain"), "{json}");
    assert_eq!(json["drain"]["completed"], false);
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "ENDING", "FAILED"]);
    assert!(
        took >= Duration::from_millis(900),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "timeout 1 s but exit took {took:?}"
    );
}

#[test]
fn blocked_sink_without_cpuguard_times_out_on_the_supervisor_timer() {
    let mut args = vec!["--drain-timeout".to_owned(), "1s".to_owned()];
    args.extend(args_of(&format!(
        "{VIDEO} ! appsink max-buffers=1 drop=false sync=false"
    )));
    let mut run = spawn(&args);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(500));
    let sent = run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    eprintln!("drain-timeout exit (no cpuguard) took {took:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "reason"), "drain-timeout");
    assert!(str_field(&json, "error").contains("1000 ms"), "{json}");
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
}

#[test]
fn cpu_limit_drain_reports_cpu_limit() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut args = args_of("--load-source system --soft-threshold 0.5 --interval 100");
    args.extend(args_of(&av_recording(
        &out,
        &format!("cpuguard root={}", host.root_str()),
    )));
    let mut run = spawn(&args);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(1000));
    host.set_load(0.8);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "cpu-limit");
    assert_eq!(str_field(&json, "end_reason"), "CPU limit reached");
    assert_eq!(json["drain"]["trigger"], "soft");
    assert_eq!(json["drain"]["threshold"], 0.5);
    assert_eq!(json["load_source"], "system");
    let peak = json["peak_load"].as_f64().expect("peak_load");
    assert!((0.75..=0.85).contains(&peak), "peak {peak}");
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "ENDING", "COMPLETE"]);
    assert!(json["signals"].as_array().unwrap().is_empty());
    assert!(
        ended.stderr.contains("CPU limit reached"),
        "{}",
        ended.stderr
    );
    assert_playable(&out, &["audio/mpeg", "video/x-h264"]);
}

#[test]
fn natural_end_is_complete_eos_and_quoted_locations_work() {
    // The location holds a space: one argument, as the shell passes `location="a b.mp4"`.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a b.mp4");
    let mut args = args_of(
        "videotestsrc num-buffers=30 ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse ! cpuguard ! mp4mux ! filesink",
    );
    args.push(format!("location={}", out.display()));
    let ended = spawn(&args).wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "eos");
    assert_eq!(str_field(&json, "end_reason"), "End of stream");
    assert_eq!(json["drain"], Value::Null);
    assert_eq!(json["drain_requested_at"], Value::Null);
    assert!(str_field(&json, "pipeline").contains(r"a\ b.mp4"), "{json}");
    assert_playable(&out, &["video/x-h264"]);
}

#[test]
fn second_sigterm_does_not_cut_the_drain_short() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut run = spawn(&slow_drain_recording(&out, &host));
    run.wait_active();
    std::thread::sleep(Duration::from_millis(2000));
    run.signal(Signal::SIGTERM);
    run.wait_stderr("state ENDING");
    std::thread::sleep(Duration::from_millis(200));
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    let signals = json["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 2, "{json}");
    assert_eq!(signals[1]["signal"], "SIGTERM");
    assert_eq!(signals[1]["action"], "none (already draining)");
    // The second signal came while the drain was still going on.
    assert!(
        json["drain"]["duration_s"].as_f64().unwrap() > 0.2,
        "{json}"
    );
    assert_playable(&out, &["video/x-h264"]);
}

#[test]
fn sigint_during_a_drain_interrupts_it() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut run = spawn(&slow_drain_recording(&out, &host));
    run.wait_active();
    std::thread::sleep(Duration::from_millis(2000));
    run.signal(Signal::SIGTERM);
    run.wait_stderr("state ENDING");
    std::thread::sleep(Duration::from_millis(200));
    let sent = run.signal(Signal::SIGINT);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    assert_no_panic(&ended);
    assert!(
        took < Duration::from_secs(1),
        "SIGINT during drain took {took:?}"
    );
    assert_eq!(ended.code(), Some(130), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "interrupted");
    assert_eq!(json["drain"]["reason"], "stop-requested");
    assert_eq!(json["drain"]["completed"], false);
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "ENDING", "FAILED"]);
}

#[test]
fn without_cpuguard_sigterm_still_drains_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut args = args_of("--soft-threshold 0.5");
    args.extend(args_of(&format!(
        "{VIDEO} ! queue ! mux. audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse \
         ! queue ! mux. mp4mux name=mux ! filesink location={}",
        out.display()
    )));
    let mut run = spawn(&args);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(1000));
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert!(
        ended.stderr.contains("CPU guarding is off"),
        "{}",
        ended.stderr
    );
    assert!(
        ended.stderr.contains("--soft-threshold 0.5 ignored"),
        "{}",
        ended.stderr
    );
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert_eq!(json["cpuguard_elements"], serde_json::json!([]));
    assert_eq!(json["drain"]["trigger"], "eos");
    assert_eq!(json["last_load"], Value::Null);
    assert_playable(&out, &["audio/mpeg", "video/x-h264"]);
}

#[test]
fn pipeline_error_fails_with_its_text() {
    let host = FakeHost::new(0.1);
    // A full disk, mid-recording: filesink's own buffer (which crash safety
    // would turn off, failing the very first write) holds the first
    // 256 KB, so the write error comes once the pipeline is playing.
    let mut run = spawn(&args_of(&format!(
        "{VIDEO} ! {} ! mp4mux ! filesink location=/dev/full buffer-mode=full \
         buffer-size=262144",
        calm_guard(&host, "")
    )));
    let ended = {
        run.wait_active();
        run.wait_exit(HANG)
    };
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "error");
    let error = str_field(&json, "error");
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(json["error_source"], "filesink0");
    assert!(ended.stderr.contains(error), "{}", ended.stderr);
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "FAILED"]);
}

#[test]
fn sighup_drains_like_sigterm() {
    let host = FakeHost::new(0.1);
    let mut run = spawn(&args_of(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64 ! {} ! fakesink",
        calm_guard(&host, "")
    )));
    run.wait_active();
    run.signal(Signal::SIGHUP);
    let ended = run.wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert_eq!(json["signals"][0]["signal"], "SIGHUP");
}

#[test]
fn bad_input_exits_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (
            &["videotestsrc", "!", "nosuchelement", "!", "fakesink"],
            "nosuchelement",
        ),
        (&["videotestsrc", "!", "!", "fakesink"], "invalid pipeline"),
        (&[""], "empty"),
        (
            &[
                "--soft-threshold",
                "0.97",
                "--hard-threshold",
                "0.9",
                "fakesrc",
                "!",
                "cpuguard",
                "!",
                "fakesink",
            ],
            "soft-threshold (0.97) must not be above hard-threshold (0.9)",
        ),
        (
            &[
                "fakesrc",
                "!",
                "cpuguard",
                "soft-threshold=0.97",
                "!",
                "fakesink",
            ],
            "soft-threshold (0.97) must not be above hard-threshold (0.95)",
        ),
        (
            &["--soft-threshold", "1.5", "fakesrc", "!", "fakesink"],
            "soft-threshold must be between 0 and 1, got 1.5",
        ),
        (
            &["--hard-threshold", "abc", "fakesrc", "!", "fakesink"],
            "hard-threshold",
        ),
        (
            &["--hold", "0", "fakesrc", "!", "fakesink"],
            "hold must be between 1",
        ),
        (
            &["--interval", "5", "fakesrc", "!", "fakesink"],
            "interval must be between 10 ms",
        ),
        (
            &["--drain-timeout", "soon", "fakesrc", "!", "fakesink"],
            "drain-timeout",
        ),
        (&["--load-source", "gpu", "fakesrc", "!", "fakesink"], "gpu"),
        (
            &["--no-such-option", "fakesrc", "!", "fakesink"],
            "--no-such-option",
        ),
        (
            &[
                "--report",
                "/nonexistent-dir/report.json",
                "fakesrc",
                "!",
                "fakesink",
            ],
            "cannot write report file /nonexistent-dir/report.json",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let ended = spawn(&args).wait_exit(HANG);
        assert_no_panic(&ended);
        assert_eq!(ended.code(), Some(2), "{args:?}: stderr:\n{}", ended.stderr);
        assert!(
            ended.stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{}",
            ended.stderr
        );
        assert!(
            ended.stdout_lines().is_empty(),
            "{args:?}: no result when nothing ran: {}",
            ended.stdout
        );
    }
}

#[test]
fn help_lists_every_option_and_the_exit_codes() {
    let ended = spawn(&["--help".to_owned()]).wait_exit(HANG);
    assert_eq!(ended.code(), Some(0));
    for needle in [
        "--soft-threshold",
        "--hard-threshold",
        "--hold",
        "--interval",
        "--load-source",
        "--drain-timeout",
        "--report",
        "SIGTERM",
        "SIGINT",
        "130",
    ] {
        assert!(
            ended.stdout.contains(needle),
            "--help lacks {needle}:\n{}",
            ended.stdout
        );
    }
}

#[test]
fn works_when_the_plugin_is_also_on_gst_plugin_path() {
    let plugin = plugin_dir().join("libgstcpuguard.so");
    assert!(plugin.exists(), "{} not built", plugin.display());
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&args_of(
        "videotestsrc num-buffers=20 ! video/x-raw,width=64,height=64 ! cpuguard name=guard ! fakesink",
    ));
    // A fresh registry that lists the dynamic plugin; the binary then
    // registers the same element statically on top of it.
    let registry = dir.path().join("registry.bin");
    cmd.env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", &registry);
    let ended = spawn_command(cmd).wait_exit(HANG);
    let scanned = std::fs::read(&registry).expect("registry written");
    assert!(
        scanned.windows(14).any(|w| w == b"libgstcpuguard"),
        "the dynamic plugin was not in the registry"
    );
    assert_no_panic(&ended);
    assert!(!ended.stderr.contains("CRITICAL"), "{}", ended.stderr);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "reason"), "eos");
    assert_eq!(json["cpuguard_elements"], serde_json::json!(["guard"]));
}

#[test]
fn sigterm_drains_when_running_as_pid_1() {
    // A new PID namespace makes cpuguard-run its PID 1, as in a container. The
    // kernel only delivers signals to a namespace's init that it handles, so
    // this fails (hangs, then is killed) if SIGTERM were left to its default.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return machine::skip(
            "sigterm_drains_when_running_as_pid_1",
            "cannot create a PID namespace here (needs root and unshare)",
        );
    }
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pid1.mp4");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", BIN])
        .args(args_of(&format!(
            "{VIDEO} ! {} ! mp4mux ! filesink location={}",
            calm_guard(&host, ""),
            out.display()
        )))
        .env_remove("GST_PLUGIN_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn_command(cmd);
    run.wait_active();
    // unshare's only child is cpuguard-run, PID 1 inside the namespace.
    let unshare = run.child.id();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("children of unshare");
    let init: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("cpuguard-run pid");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not PID 1 in its namespace: {nspid}"
    );
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(init), Signal::SIGTERM).expect("SIGTERM sent");
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert_playable(&out, &["video/x-h264"]);
}

/// gst-launch-1.0 habits: -e -m -t -v -q are accepted, and each but -e says
/// where cpuguard-run puts what it asked for.
#[test]
fn gst_launch_flags_are_accepted_and_explained() {
    let ended = spawn(&args(&[
        "-e",
        "-m",
        "-t",
        "-v",
        "-q",
        "videotestsrc num-buffers=3 ! fakesink",
    ]))
    .wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    for flag in ["-m (", "-t (", "-v (", "-q:"] {
        assert!(
            ended.stderr.contains(&format!("note: {flag}")),
            "{flag}: {}",
            ended.stderr
        );
    }
    assert_eq!(str_field(&ended.json(), "status"), "COMPLETE");
}

/// An option after the pipeline is a usage error that says so, not a
/// parser complaint about a missing element.
#[test]
fn an_option_after_the_pipeline_is_a_clear_usage_error() {
    for late in [&["--report", "r.json"][..], &["--drain-timeout=30s"][..]] {
        let mut a = args(&["videotestsrc", "num-buffers=3", "!", "fakesink"]);
        a.extend(late.iter().map(|s| s.to_string()));
        let ended = spawn(&a).wait_exit(HANG);
        assert_eq!(ended.code(), Some(2), "{}", ended.stderr);
        assert!(
            ended
                .stderr
                .contains(&format!("the option {} comes after the pipeline", late[0])),
            "{}",
            ended.stderr
        );
    }
}

/// A value a cpuguard property refuses, inside the description: the error
/// says what the property takes, with its unit and range.
#[test]
fn a_bad_cpuguard_value_in_a_description_names_unit_and_range() {
    for (description, help) in [
        (
            "videotestsrc ! cpuguard interval=fast ! fakesink",
            "cpuguard's interval takes a whole number 10-",
        ),
        (
            "videotestsrc ! cpuguard drain-timeout=soon ! fakesink",
            "milliseconds (a bare number; 30 s is 30000)",
        ),
        (
            "videotestsrc ! cpuguard soft-threshold=1.5 ! fakesink",
            "cpuguard's soft-threshold takes a number 0-1",
        ),
    ] {
        let ended = spawn(&args(&[description])).wait_exit(HANG);
        assert_eq!(ended.code(), Some(2), "{}", ended.stderr);
        assert!(
            ended.stderr.contains(help),
            "{description}: {}",
            ended.stderr
        );
    }
}

/// HEAD /metrics answers 200 with the metrics' content type and no body, as
/// probes expect; the port picked for port 0 is in the report file while the
/// run goes on, not only on stderr.
#[test]
fn head_metrics_is_not_404() {
    use std::io::{Read, Write};
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut run = spawn(&args(&[
        "--report",
        report.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
        &format!(
            "videotestsrc is-live=true ! cpuguard load-source=system root={} ! fakesink",
            host.root_str()
        ),
    ]));
    let line = run.wait_stderr("metrics: serving http://");
    let addr = line[line.find("http://").unwrap() + 7..]
        .split("/metrics")
        .next()
        .unwrap()
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).expect("metrics server accepts");
    stream.set_read_timeout(Some(HANG)).unwrap();
    write!(stream, "HEAD /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.contains(" 200 "), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.is_empty(), "HEAD with a body: {body}");
    run.wait_active();
    let running: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        running["metrics_url"],
        format!("http://{addr}/metrics"),
        "{running}"
    );
    run.signal(Signal::SIGINT);
    assert_no_panic(&run.wait_exit(HANG));
}

/// Durations with a unit in a description, as the options take them: a
/// cpuguard's drain-timeout=30s is 30000 ms, interval=500ms is 500 ms, in one
/// argument or in many.
#[test]
fn durations_in_a_description_take_units() {
    for a in [
        args(&[
            "videotestsrc num-buffers=5 ! cpuguard drain-timeout=30s interval=500ms ! fakesink",
        ]),
        args_of("videotestsrc num-buffers=5 ! cpuguard drain-timeout=1m interval=500ms ! fakesink"),
    ] {
        let ended = spawn(&a).wait_exit(HANG);
        assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
        let expected = if a.len() == 1 { 30_000 } else { 60_000 };
        assert!(
            ended.stderr.contains(&format!(
                "interval 500 ms, load-source auto, drain-timeout {expected} ms"
            )),
            "{}",
            ended.stderr
        );
        assert!(!ended.stderr.contains("bare number"), "{}", ended.stderr);
    }
}
