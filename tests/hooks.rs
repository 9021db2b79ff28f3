//! After the end: `--webhook` events received by a real HTTP receiver on
//! 127.0.0.1 (written here, ephemeral port), their HMAC-SHA256 signature
//! checked with the receiver's own code; `--on-end` hooks that see the
//! result and the files, that hang (killed at the budget), and that SIGINT
//! stops. The real binary, real pipelines and files, real signals; timings
//! only bound hangs or come from the budget the test itself sets.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::receiver::{Hit, listen, receive, states_received};
use common::run::{Ended, HANG, Run, Stream, assert_no_panic, command, spawn_command};
use nix::sys::signal::Signal;
use serde_json::Value;

const SECRET: &[u8] = b"s3cret shared with the receiver";

/// A port nothing listens on (bound once to pick it, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn secret_file(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("secret");
    // One trailing newline, as `echo` writes it: not part of the secret.
    let mut text = SECRET.to_vec();
    text.push(b'\n');
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

/// A live recording to an MP4 that only SIGTERM ends; `--dry-run` so that
/// a busy test host cannot drain it on load first.
fn live_recording(file: &Path) -> Vec<String> {
    common::run::args_of(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse ! cpuguard dry-run=true \
         ! mp4mux ! filesink location={}",
        file.display()
    ))
}

/// A short recording that ends by itself.
fn short_recording(file: &Path) -> Vec<String> {
    common::run::args_of(&format!(
        "videotestsrc num-buffers=15 ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! x264enc speed-preset=ultrafast ! h264parse ! mp4mux ! filesink location={}",
        file.display()
    ))
}

fn run_with(options: &[String], pipeline: Vec<String>) -> Run {
    let mut args = options.to_vec();
    args.extend(pipeline);
    let mut cmd = command(&args);
    cmd.env_remove("CPUGUARD_WEBHOOK");
    spawn_command(cmd)
}

#[track_caller]
fn next_hit(hits: &mpsc::Receiver<Hit>) -> Hit {
    hits.recv_timeout(HANG)
        .expect("a webhook event within the hang bound")
}

#[test]
fn webhook_events_arrive_in_order_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hits) = listen("/hooks/rec");
    let file = dir.path().join("rec.mp4");
    let mut run = run_with(
        &[
            format!("--webhook={url}"),
            format!("--webhook-secret-file={}", secret_file(dir.path())),
        ],
        live_recording(&file),
    );
    run.wait_active();
    let active = next_hit(&hits);
    run.signal(Signal::SIGTERM);
    let ending = next_hit(&hits);
    let last = next_hit(&hits);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);

    for hit in [&active, &ending, &last] {
        assert_eq!(hit.path, "/hooks/rec");
        assert_eq!(
            hit.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(
            hit.signed_with(SECRET),
            "signature verifies: {:?}",
            hit.headers
        );
        // With another secret (or the newline left in) it must not.
        assert!(!hit.signed_with(b"s3cret shared with the receiver\n"));
    }
    let (active, ending, last) = (active.json(), ending.json(), last.json());
    assert_eq!(active["state"], "ACTIVE", "{active}");
    assert_eq!(ending["state"], "ENDING", "{ending}");
    assert_eq!(ending["reason"], "stop-requested", "{ending}");
    assert_eq!(last["state"], "COMPLETE", "{last}");
    let sequence: Vec<u64> = [&active, &ending, &last]
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequence, [1, 2, 3]);
    // The final event carries the whole result, the files included.
    let result = &last["result"];
    assert_eq!(result["status"], "COMPLETE", "{last}");
    assert_eq!(result["reason"], "stop-requested");
    let file = file.to_string_lossy().into_owned();
    assert_eq!(result["files"], serde_json::json!([file]));

    let json = ended.json();
    assert_eq!(
        json["webhooks"],
        serde_json::json!({"delivered": 3, "failed": 0})
    );
    assert!(hits.try_recv().is_err(), "exactly three events");
}

#[test]
fn receiver_down_then_up_gets_the_final_event_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let budget = Duration::from_secs(20);
    let mut run = run_with(
        &[
            format!("--webhook=http://127.0.0.1:{port}/"),
            format!("--finish-timeout={}s", budget.as_secs()),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    // The final event was tried and failed: the receiver comes up now.
    run.wait_line(Stream::Stderr, HANG, |l| {
        l.contains("webhook: COMPLETE to") && l.contains("attempt 1 failed")
    });
    let hits = receive(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let up = Instant::now();
    let last = next_hit(&hits).json();
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(last["state"], "COMPLETE", "{last}");
    assert_eq!(last["result"]["status"], "COMPLETE");
    assert!(
        ended.at.duration_since(up) < budget,
        "delivered within the retry budget"
    );
    let json = ended.json();
    assert_eq!(json["status"], "COMPLETE");
    assert_eq!(ended.code(), Some(0));
    // ACTIVE was given up on (the final event supersedes it); COMPLETE arrived.
    assert_eq!(json["webhooks"]["delivered"], 1, "{json}");
    assert_eq!(json["webhooks"]["failed"], 1, "{json}");
}

/// Waits for `run` to end COMPLETE (exit 0) with both of its events (ACTIVE,
/// COMPLETE) failed; its result.
#[track_caller]
fn complete_none_delivered(run: Run) -> Value {
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let json = ended.json();
    assert_eq!(json["status"], "COMPLETE", "{json}");
    assert_eq!(ended.code(), Some(0));
    assert_eq!(
        json["webhooks"],
        serde_json::json!({"delivered": 0, "failed": 2}),
        "{}",
        ended.stderr
    );
    json
}

#[test]
fn receiver_never_up_does_not_change_complete() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let budget = Duration::from_secs(2);
    let run = run_with(
        &[
            format!("--webhook=http://127.0.0.1:{port}/"),
            format!("--finish-timeout={}s", budget.as_secs()),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    let json = complete_none_delivered(run);
    assert_eq!(json["reason"], "eos");
    assert!(common::mp4_streams(&dir.path().join("rec.mp4")).is_ok());
}

/// The paths in `dir`, sorted.
fn sorted_dir(dir: &Path) -> Vec<String> {
    let mut paths: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    paths.sort();
    paths
}

/// The result's `files`, sorted.
fn sorted_files(result: &Value) -> Vec<String> {
    let mut files: Vec<String> = result["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    files.sort();
    files
}

/// The hook writes what it was given into `dir`, then exits 3.
fn recording_hook(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "cat > {d}/stdin.json; printf %s \"$CPUGUARD_FILES\" > {d}/files; \
         printf '%s %s' \"$CPUGUARD_STATUS\" \"$CPUGUARD_REASON\" > {d}/env; exit 3"
    )
}

#[test]
fn on_end_sees_the_result_and_every_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // 3 s at 10 fps, a keyframe a second, a fragment a second.
    let pipeline = common::run::args_of(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=10/1 \
         ! x264enc key-int-max=10 speed-preset=ultrafast ! h264parse \
         ! splitmuxsink location={}/seg%02d.mp4 max-size-time=1000000000",
        out.display()
    ));
    let run = run_with(
        &[format!("--on-end={}", recording_hook(dir.path()))],
        pipeline,
    );
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let json = ended.json();
    // The hook's failure is reported, never the recording's.
    assert_eq!(json["status"], "COMPLETE", "{json}");
    assert_eq!(ended.code(), Some(0));
    assert_eq!(json["on_end"]["exit_code"], 3, "{json}");
    assert_eq!(json["on_end"]["timed_out"], false);
    assert!(json["on_end"]["duration_s"].as_f64().unwrap() >= 0.0);

    let fragments = sorted_dir(&out);
    assert!(fragments.len() >= 2, "splitmuxsink split: {fragments:?}");
    assert_eq!(sorted_files(&json), fragments);

    let files = std::fs::read_to_string(dir.path().join("files")).unwrap();
    let mut given: Vec<&str> = files.lines().collect();
    given.sort();
    assert_eq!(given, fragments);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env")).unwrap(),
        "COMPLETE eos"
    );
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdin.json")).unwrap())
            .expect("the result as JSON on stdin");
    assert_eq!(stdin["status"], "COMPLETE");
    assert_eq!(stdin["files"], json["files"]);
}

/// Whether `pid` is gone (or a zombie waiting for whoever inherited it).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A hook that hangs, with a child of its own; says when it is running.
fn hanging_hook(dir: &Path) -> String {
    format!(
        "sleep 1000 & echo $! > {}/child; echo hook-running; wait",
        dir.display()
    )
}

#[test]
fn a_hanging_hook_is_killed_at_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2.0;
    let run = run_with(
        &[
            format!("--on-end={}", hanging_hook(dir.path())),
            format!("--finish-timeout={budget}s"),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let json = ended.json();
    assert_eq!(json["status"], "COMPLETE", "{json}");
    let hook = &json["on_end"];
    assert_eq!(hook["timed_out"], true, "{json}");
    assert_eq!(hook["exit_code"], Value::Null);
    assert_eq!(hook["signal"], "SIGKILL");
    let took = hook["duration_s"].as_f64().unwrap();
    // The budget counts from the pipeline's end, a moment before the hook
    // starts: it runs for nearly all of it, never much less.
    assert!(
        took >= budget * 0.9,
        "killed at the budget, not before: {took}"
    );
    let child: i32 = std::fs::read_to_string(dir.path().join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(child), "the hook's own child went with its group");
}

#[test]
fn sigint_during_the_hook_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = run_with(
        &[
            format!("--on-end={}", hanging_hook(dir.path())),
            // Far beyond the hang bound: only SIGINT can end it in time.
            "--finish-timeout=10m".to_owned(),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    // The hook's stdout joins cpuguard-run's stderr.
    run.wait_line(Stream::Stderr, HANG, |l| l == "hook-running");
    run.signal(Signal::SIGINT);
    let ended: Ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let json = ended.json();
    assert_eq!(json["status"], "COMPLETE", "{json}");
    assert_eq!(json["on_end"]["interrupted"], true, "{json}");
    assert_eq!(json["on_end"]["timed_out"], false);
    let child: i32 = std::fs::read_to_string(dir.path().join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(child));
}

#[test]
fn bad_webhook_settings_are_usage_errors_naming_the_option() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = dir.path().join("shared");
    std::fs::write(&shared, "x").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    let missing = dir.path().join("missing");
    let url = "--webhook=http://127.0.0.1:9/".to_owned();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec![
                url.clone(),
                format!("--webhook-secret-file={}", empty.display()),
            ],
            "empty",
        ),
        (
            vec![
                url.clone(),
                format!("--webhook-secret-file={}", shared.display()),
            ],
            "writable by group or others",
        ),
        (
            vec![
                url.clone(),
                format!("--webhook-secret-file={}", missing.display()),
            ],
            "No such file",
        ),
        (vec!["--webhook=ftp://example/".to_owned()], "--webhook"),
        (vec!["--finish-timeout=soon".to_owned()], "finish-timeout"),
    ];
    for (options, needle) in cases {
        let mut args = options.clone();
        args.extend(short_recording(&dir.path().join("rec.mp4")));
        let mut cmd = command(&args);
        cmd.env_remove("CPUGUARD_WEBHOOK");
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{options:?}: {stderr}");
        assert!(stderr.contains(needle), "{options:?}: {stderr}");
        if options
            .iter()
            .any(|o| o.starts_with("--webhook-secret-file"))
        {
            assert!(stderr.contains("--webhook-secret-file"), "{stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty());
        assert!(!dir.path().join("rec.mp4").exists(), "nothing ran");
    }
}

#[test]
fn webhook_urls_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hits) = listen("/env");
    let mut cmd = command(&short_recording(&dir.path().join("rec.mp4")));
    cmd.env("CPUGUARD_WEBHOOK", &url);
    let ended = spawn_command(cmd).wait_exit(HANG);
    assert_no_panic(&ended);
    let mut states = Vec::new();
    while let Ok(hit) = hits.recv_timeout(Duration::ZERO) {
        assert_eq!(hit.path, "/env");
        assert!(
            !hit.headers.contains_key("x-cpuguard-signature"),
            "unsigned without a secret"
        );
        states.push(hit.json()["state"].as_str().unwrap().to_owned());
    }
    // The result is printed only once every delivery is done.
    assert_eq!(states, ["ACTIVE", "COMPLETE"]);
    assert_eq!(ended.json()["webhooks"]["delivered"], 2);
}

#[test]
fn multi_pipeline_workers_notify_and_run_their_hooks_for_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (url, hits) = listen("/multi");
    let drain_timeout = 2.0;
    let pipeline = |name: &str| {
        format!(
            "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1 \
             ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse ! mp4mux \
             ! filesink location={}",
            dir.path().join(name).display()
        )
    };
    // Each hook outlasts the drain timeout: the pipeline has ended by then,
    // so the parent must not escalate (kill) a worker still in its hook.
    let hook = format!(
        "printf %s \"$CPUGUARD_FILES\" > {}/files-$CPUGUARD_WORKER; sleep {}",
        dir.path().display(),
        drain_timeout + 1.0
    );
    let mut run = spawn_command({
        let mut cmd = command(&[
            format!("--webhook={url}"),
            format!("--on-end={hook}"),
            format!("--drain-timeout={drain_timeout}s"),
            "--dry-run".to_owned(),
            "--pipeline".to_owned(),
            pipeline("a.mp4"),
            "--pipeline".to_owned(),
            pipeline("b.mp4"),
        ]);
        cmd.env_remove("CPUGUARD_WEBHOOK");
        cmd
    });
    run.wait_workers_active(&[1, 2]);
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let (workers, summary) = ended.results();
    assert_eq!(summary["complete"], 2, "{summary}");
    for (w, name) in workers.iter().zip(["a.mp4", "b.mp4"]) {
        assert_eq!(w["status"], "COMPLETE", "{w}");
        assert_eq!(w["on_end"]["exit_code"], 0, "{w}");
        assert!(w["on_end"]["duration_s"].as_f64().unwrap() > drain_timeout);
        let file = dir.path().join(name).to_string_lossy().into_owned();
        assert_eq!(w["files"], serde_json::json!([file]));
        let id = w["worker"].as_u64().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("files-{id}"))).unwrap(),
            file
        );
        assert_eq!(w["webhooks"]["delivered"], 3, "{w}");
    }
    // Every event names its worker; each worker's own are in order.
    let mut seen: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    while let Ok(hit) = hits.recv_timeout(Duration::ZERO) {
        let event = hit.json();
        seen.entry(event["worker"].as_u64().expect("a worker id"))
            .or_default()
            .push(event["state"].as_str().unwrap().to_owned());
    }
    for id in [1, 2] {
        assert_eq!(seen[&id], ["ACTIVE", "ENDING", "COMPLETE"], "worker {id}");
    }
}

#[test]
fn hls_playlists_and_their_segments_are_listed() {
    for (sink, parse) in [("hlssink2", "h264parse"), ("hlssink", "mpegtsmux")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hls");
        std::fs::create_dir(&out).unwrap();
        // 3 s, a keyframe a second, one-second segments; max-files=2 deletes
        // the older ones, which must not be listed.
        let pipeline = common::run::args_of(&format!(
            "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=10/1 \
             ! x264enc key-int-max=10 speed-preset=ultrafast ! {parse} \
             ! {sink} location={0}/seg%05d.ts playlist-location={0}/live.m3u8 \
             target-duration=1 max-files=2",
            out.display()
        ));
        let ended = run_with(&[], pipeline).wait_exit(HANG);
        assert_no_panic(&ended);
        let json = ended.json();
        assert_eq!(json["status"], "COMPLETE", "{sink}: {json}");
        let on_disk = sorted_dir(&out);
        assert!(
            on_disk.len() >= 3,
            "{sink}: a playlist and segments: {on_disk:?}"
        );
        assert_eq!(sorted_files(&json), on_disk, "{sink}");
    }
}

#[test]
fn sigint_during_the_final_delivery_ends_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut run = run_with(
        &[
            format!("--webhook=http://127.0.0.1:{port}/"),
            // Far beyond the hang bound: only SIGINT can end it in time.
            "--finish-timeout=10m".to_owned(),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    run.wait_line(Stream::Stderr, HANG, |l| {
        l.contains("webhook: COMPLETE to") && l.contains("attempt 1 failed")
    });
    run.signal(Signal::SIGINT);
    // The recording had finished: SIGINT only ends the retries.
    complete_none_delivered(run);
}

#[test]
fn a_dead_receiver_does_not_hold_up_another() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let (live, hits) = listen("/live");
    let run = run_with(
        &[
            format!("--webhook=http://127.0.0.1:{dead}/"),
            format!("--webhook={live}"),
            "--finish-timeout=2s".to_owned(),
        ],
        short_recording(&dir.path().join("rec.mp4")),
    );
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    let states = states_received(&hits);
    assert_eq!(states, ["ACTIVE", "COMPLETE"], "{}", ended.stderr);
    // The live receiver had the final event while the dead one was still
    // being retried, not after it was given up on.
    let at = |needle: &str| {
        ended
            .stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", ended.stderr))
    };
    assert!(
        at(&format!("webhook: delivered COMPLETE to {live}"))
            < at(&format!(
                "webhook: COMPLETE to http://127.0.0.1:{dead}/: gave up"
            )),
        "{}",
        ended.stderr
    );
    let json = ended.json();
    assert_eq!(json["status"], "COMPLETE");
    assert_eq!(
        json["webhooks"],
        serde_json::json!({"delivered": 2, "failed": 2})
    );
}
