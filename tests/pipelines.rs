//! cpuguard in real encode pipelines: whole-pipeline drains that leave playable
//! files, drain timeouts with a blocked sink, and the plugin used from gst-launch-1.0.

mod common;

use common::*;
use gst::prelude::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn launch(desc: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

fn av_recording(path: &Path, guard_props: &str) -> gst::Pipeline {
    launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast ! h264parse \
         ! cpuguard name=guard {guard_props} ! queue ! mux. \
         audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! queue ! mux. \
         mp4mux name=mux ! filesink location={}",
        path.display()
    ))
}

#[test]
fn drain_action_finalizes_audio_and_video_branches() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("av.mp4");
    // A calm fake host: the drain under test is the action's, not one the
    // machine's real load could start first.
    let host = FakeHost::new(0.1);
    let pipeline = av_recording(
        &out,
        &format!("load-source=system root={}", host.root_str()),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    // A sample taken: the recording has run for an interval.
    wait_for(&pipeline.bus().unwrap(), Duration::from_secs(60), |m| {
        is_element_message(m, "cpuguard-load")
    })
    .expect("a load sample");
    let guard = pipeline.by_name("guard").unwrap();
    let requested = Instant::now();
    assert!(guard.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    let msgs = run_until_end(&pipeline, Duration::from_secs(30));
    pipeline.set_state(gst::State::Null).unwrap();
    assert_ends_with_eos(&msgs, "pipeline did not reach EOS");
    assert!(requested.elapsed() < Duration::from_secs(10));
    let drain = msgs
        .iter()
        .find(|m| is_element_message(m, "cpuguard-drain"))
        .expect("drain message");
    assert_eq!(
        structure_of(drain).get::<&str>("reason").unwrap(),
        "stop-requested"
    );
    let mut streams = mp4_streams(&out).expect("playable MP4");
    streams.sort();
    assert_eq!(streams, ["audio/mpeg", "video/x-h264"]);
}

#[test]
fn load_drain_finalizes_the_recording() {
    let host = FakeHost::new(0.2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("load.mp4");
    let pipeline = av_recording(
        &out,
        &format!(
            "load-source=system root={} interval=50 hold=3 soft-threshold=0.6",
            host.root_str()
        ),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    // Past the unjudged start-up sample, with frames recorded: then overload.
    let bus = pipeline.bus().unwrap();
    for _ in 0..5 {
        wait_for(&bus, Duration::from_secs(60), |m| {
            is_element_message(m, "cpuguard-load")
        })
        .expect("a load sample");
    }
    host.set_load(0.75);
    let msgs = run_until_end(&pipeline, Duration::from_secs(30));
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(matches!(
        msgs.last().map(|m| m.view()),
        Some(gst::MessageView::Eos(_))
    ));
    let drain = msgs
        .iter()
        .find(|m| is_element_message(m, "cpuguard-drain"))
        .expect("drain message");
    assert_eq!(
        structure_of(drain).get::<&str>("reason").unwrap(),
        "cpu-limit"
    );
    assert_eq!(mp4_streams(&out).expect("playable MP4").len(), 2);
}

#[test]
fn drain_timeout_posts_error_while_sink_is_blocked() {
    // appsink with room for one buffer and nobody pulling: the streaming thread
    // blocks in the sink, so EOS can never arrive there.
    let pipeline = launch(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 \
         ! cpuguard name=guard load-source=system drain-timeout=300 interval=5000 \
         ! appsink name=stuck max-buffers=1 drop=false sync=false emit-signals=false",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    // PLAYING reached (the appsink prerolled its one buffer, then blocks).
    let (reached, state, _) = pipeline.state(gst::ClockTime::from_seconds(60));
    assert_eq!(
        (reached, state),
        (Ok(gst::StateChangeSuccess::Success), gst::State::Playing)
    );
    let guard = pipeline.by_name("guard").unwrap();
    let requested = Instant::now();
    assert!(guard.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    let bus = pipeline.bus().unwrap();
    let err = wait_for(&bus, Duration::from_secs(10), |m| {
        matches!(m.view(), gst::MessageView::Error(_))
    })
    .expect("drain-timeout error");
    let elapsed = requested.elapsed();
    let gst::MessageView::Error(e) = err.view() else {
        unreachable!()
    };
    assert!(
        e.error().to_string().contains("drain-timeout (300 ms)"),
        "{}",
        e.error()
    );
    assert_eq!(
        e.src().map(|s| s.name().to_string()).as_deref(),
        Some("guard")
    );
    // The sampling interval is 5 s: the timeout must not wait for a sample.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn completed_drain_posts_no_timeout_error() {
    let host = FakeHost::new(0.1);
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 \
         ! cpuguard name=guard load-source=system root={} drain-timeout=2000 interval=50 \
         ! fakesink",
        host.root_str()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    wait_for(&pipeline.bus().unwrap(), Duration::from_secs(60), |m| {
        is_element_message(m, "cpuguard-load")
    })
    .expect("a load sample");
    let guard = pipeline.by_name("guard").unwrap();
    assert!(guard.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    let msgs = run_until_end(&pipeline, Duration::from_secs(10));
    assert_ends_with_eos(&msgs, "no EOS");
    // Stay PLAYING past the timeout: a finished drain must not turn into an ERROR.
    let bus = pipeline.bus().unwrap();
    let late = wait_for(&bus, Duration::from_millis(2500), |m| {
        matches!(m.view(), gst::MessageView::Error(_))
    });
    assert!(late.is_none(), "finished drain reported as error: {late:?}");
    pipeline.set_state(gst::State::Null).unwrap();
}

fn gst_launch(args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new("gst-launch-1.0");
    cmd.args(args)
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("gst-launch-1.0 runs")
}

#[test]
fn gst_launch_shows_reason_in_messages_and_tags() {
    let host = FakeHost::new(0.9);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("launch.mp4");
    let root = format!("root={}", host.root_str());
    let location = format!("location={}", out.display());
    let output = gst_launch(
        &[
            "-e",
            "-m",
            "-t",
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,format=I420,width=320,height=240,framerate=30/1",
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "!",
            "h264parse",
            "!",
            "cpuguard",
            "load-source=system",
            &root,
            "interval=100",
            "hold=3",
            "soft-threshold=0.5",
            "!",
            "mp4mux",
            "!",
            "filesink",
            &location,
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("cpuguard-drain"), "{stdout}");
    assert!(stdout.contains("reason=(string)cpu-limit"), "{stdout}");
    assert!(
        stdout.contains("CPU\\ limit\\ reached") || stdout.contains("CPU limit reached"),
        "{stdout}"
    );
    // -t prints tags by their nick, which is the tag's name.
    assert!(
        stdout.contains("cpuguard-end-reason: cpu-limit"),
        "{stdout}"
    );
    assert_eq!(mp4_streams(&out).expect("playable MP4"), ["video/x-h264"]);
}

/// The issue's own acceptance check, with no fakes: a real live encode whose
/// process load is above a low soft threshold ends by itself with a playable MP4.
#[test]
fn heavy_live_encode_with_low_threshold_ends_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heavy.mp4");
    let location = format!("location={}", out.display());
    let started = Instant::now();
    let output = gst_launch(
        &[
            "-e",
            "-m",
            "-t",
            "videotestsrc",
            "is-live=true",
            "!",
            "video/x-raw,format=I420,width=640,height=360,framerate=30/1",
            "!",
            "x264enc",
            "speed-preset=fast",
            "tune=zerolatency",
            "!",
            "h264parse",
            "!",
            "cpuguard",
            "load-source=process",
            "soft-threshold=0.02",
            "hold=2",
            "interval=250",
            "!",
            "mp4mux",
            "!",
            "filesink",
            &location,
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let drain = stdout
        .lines()
        .find(|l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| panic!("no drain:\n{stdout}"));
    assert!(drain.contains("reason=(string)cpu-limit"), "{drain}");
    assert!(drain.contains("source=(string)process"), "{drain}");
    assert!(
        stdout.contains("cpuguard-end-reason: cpu-limit"),
        "{stdout}"
    );
    assert_eq!(mp4_streams(&out).expect("playable MP4"), ["video/x-h264"]);
}

#[test]
fn gst_inspect_documents_the_interface() {
    let output = Command::new("gst-inspect-1.0")
        .arg("cpuguard")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"))
        .output()
        .expect("gst-inspect-1.0 runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    for needle in [
        "soft-threshold",
        "Default:            0.85",
        "Default:            0.95",
        "Default: 30000",
        "hard-threshold",
        "hold",
        "release",
        "interval",
        "load-source",
        "(0): auto",
        "(4): psi",
        "drain-timeout",
        "dry-run",
        "load ",
        "readable",
        "\"drain\"",
        "cpuguard-drain",
    ] {
        assert!(
            text.contains(needle),
            "gst-inspect lacks {needle:?}:\n{text}"
        );
    }
}

/// A real CPU quota: a CPU-hungry encode in a cgroup limited to 0.25 CPU reads a
/// cgroup load of about 1 and drains. Needs root and a writable v1 `cpu` controller.
#[test]
fn real_cgroup_quota_reads_saturated_and_drains() {
    let cpu = Path::new("/sys/fs/cgroup/cpu");
    let cpuacct = Path::new("/sys/fs/cgroup/cpuacct");
    let name = format!("cpuguard-test-{}", std::process::id());
    let (cpu_dir, acct_dir) = (cpu.join(&name), cpuacct.join(&name));
    if std::fs::create_dir(&cpu_dir).is_err() {
        return machine::skip(
            "real_cgroup_quota_reads_saturated_and_drains",
            &format!(
                "cannot create {} (not root or no v1 cpu controller)",
                cpu_dir.display()
            ),
        );
    }
    let _ = std::fs::create_dir(&acct_dir);
    struct Cleanup(Vec<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let _cleanup = Cleanup(vec![cpu_dir.clone(), acct_dir.clone()]);
    std::fs::write(cpu_dir.join("cpu.cfs_period_us"), "100000").unwrap();
    std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), "25000").unwrap();

    let mut join = format!("echo $$ > {}/cgroup.procs", cpu_dir.display());
    if acct_dir.is_dir() {
        join += &format!(" && echo $$ > {}/cgroup.procs", acct_dir.display());
    }
    let script = format!(
        "{join} && exec gst-launch-1.0 -e -m videotestsrc num-buffers=100000 \
         ! video/x-raw,width=640,height=480 ! x264enc speed-preset=medium ! cpuguard \
         load-source=cgroup interval=500 hold=3 drain-non-live=true ! fakesink"
    );
    let output = Command::new("timeout")
        .args(["60", "sh", "-c", &script])
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"))
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("capacity=(double)0.25"), "{stdout}");
    let drain = stdout
        .lines()
        .find(|l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| panic!("no drain:\n{stdout}"));
    assert!(drain.contains("reason=(string)cpu-limit"), "{drain}");
    let load: f64 = drain
        .split("load=(double)")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("load field");
    assert!(load >= 0.85, "saturated quota must read near 1, got {load}");
}
