//! Crash safety: recordings under `cpuguard-run` that are SIGKILLed at random
//! moments (the kubelet at the end of a grace period, the OOM killer) on a
//! host oversubscribed by stress-ng still play to within about the crash-safe
//! interval of the kill, with both streams; the `--report` file then holds
//! the last known state; a drain that never finishes still leaves a playable
//! file; a layout the pipeline chose is left alone and said so.
//!
//! Randomness is seeded: the seed is printed, and `CPUGUARD_SEED=<seed>`
//! replays a run. Timings are upper bounds, except the random delay before
//! each SIGKILL, which is the point.

#[path = "reliability/burner.rs"]
mod burner;
mod common;
#[allow(dead_code)]
#[path = "reliability/recording.rs"]
mod recording;

use burner::Burner;
use common::run::*;
use common::{exclusive_cpu, seed};
use nix::sys::signal::Signal;
use recording::{Container, av_description, play_av};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The default `--crash-safe-interval`.
const INTERVAL: Duration = Duration::from_secs(1);
/// How much more than the time recorded a file may hold: running time 0
/// lies before the ACTIVE line (the state change is seen on the main loop,
/// later under overload: 0.37 s was seen with the 4 burners plus a second
/// test suite on 2 cores). A file holding more is no loss; this bound only
/// catches a wrong measurement.
const SLACK: Duration = Duration::from_secs(1);

/// One recording killed `after` its pipeline played, as measured.
struct Killed {
    /// From the ACTIVE line (the pipeline PLAYING) to the SIGKILL.
    recorded: Duration,
    /// The span of video the file plays.
    in_file: Duration,
}

/// Records into `container` under cpuguard-run (dry-run: the overloaded host
/// must not drain it first), SIGKILLs it `after` ACTIVE, and checks the file
/// plays both streams to their end and the report file says ACTIVE.
fn record_and_kill(container: Container, after: Duration, dir: &Path) -> Result<Killed, String> {
    let out = dir.join(format!("rec.{}", container.extension()));
    let report = dir.join("report.json");
    let mut run = spawn(&[
        "--dry-run".to_owned(),
        "--report".to_owned(),
        report.display().to_string(),
        av_description(container, &out, ""),
    ]);
    run.wait_active();
    let active = Instant::now();
    std::thread::sleep(after);
    let killed = run.signal(Signal::SIGKILL);
    let ended = run.wait_exit(HANG);
    if ended.status.code().is_some() {
        return Err(format!(
            "cpuguard-run ended before the kill ({:?}):\n{}",
            ended.status, ended.stderr
        ));
    }
    let configured = match container {
        Container::Mp4 => "configured: fragment-duration=250",
        _ => "already-safe",
    };
    if !ended.stderr.contains(&format!(
        "crash-safe: mux ({}): {configured}",
        container.muxer()
    )) {
        return Err(format!(
            "no crash-safe line for the muxer:\n{}",
            ended.stderr
        ));
    }
    let text = std::fs::read_to_string(&report).map_err(|e| format!("report file: {e}"))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("report file {text:?}: {e}"))?;
    if json["status"] != "ACTIVE" || json["crash_safe"][0]["protected"] != true {
        return Err(format!("report file after the kill: {json}"));
    }
    let in_file = play_av(&out, container)?
        .video
        .duration()
        .ok_or("no video frame in the file")?;
    Ok(Killed {
        recorded: killed - active,
        in_file,
    })
}

/// Runs `count` kills into `container` at random moments within `range`,
/// two at a time under a burner; returns a summary line for the README.
fn kills_under_overload(container: Container, count: usize, range: (u64, u64)) -> String {
    let _cpu = exclusive_cpu();
    let seed = seed();
    eprintln!("{container:?} SIGKILLs: seed {seed} (CPUGUARD_SEED={seed} replays these moments)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let moments: Vec<Duration> = (0..count)
        .map(|_| Duration::from_millis(rng.u64(range.0..=range.1)))
        .collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let burner = Burner::start(workers as u32, &[]);
    let before = burner::host_ticks();
    let started = Instant::now();
    let queue = Mutex::new(moments.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    // Two at a time, as a small recorder would run them.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let Some((n, after)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let dir = tempfile::tempdir().expect("tempdir");
                    let result = record_and_kill(container, after, dir.path());
                    results.lock().unwrap().push((n, after, result));
                }
            });
        }
    });
    let busy = burner::busy_share(before, burner::host_ticks());
    drop(burner);

    let results = results.into_inner().unwrap();
    let mut failures = Vec::new();
    let mut worst_loss = Duration::ZERO;
    for (n, after, result) in &results {
        match result {
            Ok(k) => {
                let loss = k.recorded.saturating_sub(k.in_file);
                worst_loss = worst_loss.max(loss);
                eprintln!(
                    "kill {n:2} after {after:?}: recorded {:.3} s, file plays {:.3} s (lost {:.3} s)",
                    k.recorded.as_secs_f64(),
                    k.in_file.as_secs_f64(),
                    loss.as_secs_f64()
                );
                // Running time 0 lies before the ACTIVE line (up to the
                // state change's delivery): a little more is fine.
                // The interval is the whole bound: fragments are a quarter of
                // it, the rest covers the encoder, the queues and the host.
                if loss > INTERVAL || k.in_file > k.recorded + SLACK {
                    failures.push(format!(
                        "kill {n} after {after:?}: recorded {:?}, file {:?}: outside \
                         -{INTERVAL:?}..+{SLACK:?}",
                        k.recorded, k.in_file
                    ));
                }
            }
            Err(e) => failures.push(format!("kill {n} after {after:?}: {e}")),
        }
    }
    let summary = format!(
        "{container:?}: {} SIGKILLs at {}-{} ms, files lost {}, worst loss {:.0} ms \
         (bound {} ms, at most {} ms more than recorded); host busy {:.0}% under {workers} burners; {:.0} s; seed {seed}",
        results.len(),
        range.0,
        range.1,
        failures.len(),
        worst_loss.as_secs_f64() * 1000.0,
        INTERVAL.as_millis(),
        SLACK.as_millis(),
        busy * 100.0,
        started.elapsed().as_secs_f64()
    );
    eprintln!("CRASH-SAFE {summary}");
    assert_eq!(results.len(), count);
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} kills lost their recording:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    assert!(busy > 0.85, "host only {:.0}% busy", busy * 100.0);
    summary
}

/// 30 live H.264 + AAC MP4 recordings SIGKILLed 0.5-8 s in: none lost, each
/// plays both streams to within the interval of the kill.
#[test]
fn mp4_recordings_survive_sigkill_at_random_moments_under_overload() {
    kills_under_overload(Container::Mp4, 30, (500, 8000));
}

#[test]
fn matroska_recordings_survive_sigkill_at_random_moments_under_overload() {
    kills_under_overload(Container::Matroska, 8, (500, 8000));
}

#[test]
fn mpegts_recordings_survive_sigkill_at_random_moments_under_overload() {
    kills_under_overload(Container::MpegTs, 8, (500, 8000));
}

/// Crash-safe messages on the bus so far, as (element, action, detail).
fn crash_safe_messages(bus: &gst::Bus) -> Vec<(String, String, String)> {
    std::iter::from_fn(|| bus.pop())
        .filter(|m| common::is_element_message(m, "cpuguard-crash-safe"))
        .map(|m| {
            let s = common::structure_of(&m);
            (
                s.get::<String>("element").unwrap(),
                s.get::<String>("action").unwrap(),
                s.get::<String>("detail").unwrap(),
            )
        })
        .collect()
}

/// The element's `crash-safe` property: off by default; on, it configures
/// every MP4 muxer of the pipeline when it starts (also the one splitmuxsink
/// makes), makes their filesinks unbuffered, leaves a layout the pipeline
/// chose alone, and says so on the bus.
#[test]
fn element_configures_the_pipelines_muxers_and_leaves_chosen_layouts_alone() {
    use gst::prelude::*;
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let description = |guard: &str| {
        format!(
            "videotestsrc is-live=true ! x264enc ! h264parse ! tee name=t \
             t. ! queue ! cpuguard {guard} ! mp4mux name=plain ! filesink name=out location={a} \
             t. ! queue ! mp4mux name=chosen faststart=true ! filesink location={b} \
             t. ! queue ! splitmuxsink name=split location={c}",
            a = dir.path().join("a.mp4").display(),
            b = dir.path().join("b.mp4").display(),
            c = dir.path().join("c%02d.mp4").display(),
        )
    };
    let fragment = |p: &gst::Pipeline, name: &str| {
        p.by_name(name)
            .unwrap()
            .property::<u32>("fragment-duration")
    };

    // Off by default: nothing touched.
    let off = gst::parse::launch(&description(""))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    off.set_state(gst::State::Ready).unwrap();
    assert_eq!(fragment(&off, "plain"), 0);
    assert!(crash_safe_messages(&off.bus().unwrap()).is_empty());
    off.set_state(gst::State::Null).unwrap();

    let on = gst::parse::launch(&description("crash-safe=true crash-safe-interval=2000"))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    on.set_state(gst::State::Ready).unwrap();
    assert_eq!(fragment(&on, "plain"), 500, "a quarter of 2000 ms");
    assert_eq!(fragment(&on, "chosen"), 0, "left alone");
    let out = on.by_name("out").unwrap();
    let mode = glib::EnumValue::from_value(&out.property_value("buffer-mode"))
        .map(|(_, v)| v.nick().to_owned());
    assert_eq!(mode.as_deref(), Some("unbuffered"));
    let split = on.by_name("split").unwrap().downcast::<gst::Bin>().unwrap();
    let split_muxer = split
        .iterate_elements()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == "mp4mux"))
        .expect("splitmuxsink made its muxer");
    assert_eq!(split_muxer.property::<u32>("fragment-duration"), 500);
    let split_sink = split
        .iterate_elements()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == "filesink"))
        .expect("splitmuxsink made its sink");
    let mode = glib::EnumValue::from_value(&split_sink.property_value("buffer-mode"))
        .map(|(_, v)| v.nick().to_owned());
    assert_eq!(
        mode.as_deref(),
        Some("unbuffered"),
        "splitmuxsink's own sink"
    );
    // A muxer added once the element started (a dynamic pipeline) too.
    let late = gst::ElementFactory::make("mp4mux")
        .name("late")
        .build()
        .unwrap();
    on.add(&late).unwrap();
    assert_eq!(late.property::<u32>("fragment-duration"), 500);

    let messages = crash_safe_messages(&on.bus().unwrap());
    let find = |element: &str| {
        messages
            .iter()
            .find(|(e, _, _)| e.as_str() == element)
            .unwrap_or_else(|| panic!("no message for {element}: {messages:?}"))
    };
    let plain = find("plain");
    assert_eq!(plain.1, "configured");
    assert!(
        plain.2.contains("fragment-duration=500")
            && plain
                .2
                .contains("sink out: configured: buffer-mode=unbuffered"),
        "{plain:?}"
    );
    let chosen = find("chosen");
    assert_eq!(chosen.1, "left-alone");
    assert!(chosen.2.contains("faststart=true"), "{chosen:?}");
    assert!(
        messages
            .iter()
            .any(|(e, a, _)| e.starts_with("split/") && a == "configured"),
        "{messages:?}"
    );
    on.set_state(gst::State::Null).unwrap();
}

/// Copies what cpuguard-run writes into a FIFO to a file, until told to
/// stop reading: from then on the writer (filesink) blocks, as on a stalled
/// network mount. A FIFO cannot seek either: the muxer gets a sink it cannot
/// go back in.
struct StallingReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: std::sync::mpsc::Sender<()>,
    fifo: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StallingReader {
    fn start(fifo: &Path, copy: &Path) -> StallingReader {
        let status = std::process::Command::new("mkfifo")
            .arg(fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", fifo.display());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (fifo_path, copy) = (fifo.to_owned(), copy.to_owned());
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut input = std::fs::File::open(&fifo_path).expect("fifo opens");
            let mut output = std::fs::File::create(&copy).expect("copy");
            let mut chunk = vec![0u8; 4096];
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                match input.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => output.write_all(&chunk[..n]).expect("copy written"),
                }
            }
            // Keep the FIFO open and unread until the test is done.
            let _ = released.recv();
        });
        StallingReader {
            stop,
            release,
            fifo: fifo.to_owned(),
            thread: Some(thread),
        }
    }

    /// Stops reading and returns once the pipe is full: the writer is blocked.
    fn stall(&self) {
        use std::os::fd::AsRawFd;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // A second reader end to look at the pipe's fill level (FIONREAD)
        // without taking anything out of it.
        let probe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&self.fifo)
            .expect("fifo opens again");
        let deadline = Instant::now() + HANG;
        loop {
            let mut queued: nix::libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            let rc =
                unsafe { nix::libc::ioctl(probe.as_raw_fd(), nix::libc::FIONREAD, &mut queued) };
            assert_eq!(rc, 0, "FIONREAD");
            // 64 KiB pipe; a writer blocks once less than its next write fits.
            if queued >= 60_000 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pipe never filled ({queued} bytes)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::libc::O_NONBLOCK)
    }
}

impl Drop for StallingReader {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A drain that cannot finish because the recording's own sink is blocked
/// (and cannot seek): FAILED drain-timeout, the result says the file was
/// kept and up to when, and the file plays both streams that far.
#[test]
fn a_drain_that_times_out_on_a_blocked_sink_still_leaves_a_playable_file() {
    let _cpu = exclusive_cpu();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stalled.mp4");
    let copy = dir.path().join("copy.mp4");
    let reader = StallingReader::start(&fifo, &copy);
    let report = dir.path().join("report.json");
    let mut run = spawn(&[
        "--dry-run".to_owned(),
        "--drain-timeout".to_owned(),
        "2s".to_owned(),
        "--report".to_owned(),
        report.display().to_string(),
        av_description(Container::Mp4, &fifo, ""),
    ]);
    run.wait_active();
    // How long the recording runs before its sink stalls: its length, not
    // a synchronization.
    std::thread::sleep(Duration::from_secs(3));
    reader.stall();
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED", "{json}");
    assert_eq!(str_field(&json, "reason"), "drain-timeout", "{json}");
    let muxer = &json["crash_safe"][0];
    assert_eq!(muxer["element"], "mux", "{json}");
    assert_eq!(muxer["file_kept"], true, "{json}");
    let kept_until = muxer["kept_until_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no kept_until_s in {json}"));
    // The report file holds the same final result.
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(on_disk["reason"], "drain-timeout");
    drop(reader);
    let in_file = play_av(&copy, Container::Mp4)
        .unwrap_or_else(|e| panic!("the kept file does not play: {e}\n{}", ended.stderr))
        .video
        .duration()
        .expect("video in the kept file");
    eprintln!(
        "blocked sink: drain-timeout; kept_until_s {kept_until:.3}, file plays {:.3} s; \
         crash_safe: {}",
        in_file.as_secs_f64(),
        json["crash_safe"]
    );
    assert!(
        kept_until >= 1.0,
        "kept_until_s {kept_until} after 3 s recorded"
    );
    assert!(
        in_file.as_secs_f64() + 0.05 >= kept_until,
        "the file plays {in_file:?}, the result says at least {kept_until} s"
    );
}

/// cpuguard-run leaves a layout the pipeline chose alone and says what a
/// kill will leave (a reservation fails the recording once outgrown: measured
/// on 1.22, a 3 s reservation failed at about 9 s); --no-crash-safe touches
/// nothing and says so.
#[test]
fn cpuguard_run_leaves_a_chosen_layout_alone_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chosen.mp4");
    let description = format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=64,height=64 ! x264enc \
         ! mp4mux name=mux reserved-max-duration=3000000000 \
         reserved-moov-update-period=1000000000 ! filesink location={}",
        file.display()
    );
    let ended = spawn(std::slice::from_ref(&description)).wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(
            "crash-safe: mux (mp4mux): left-alone: the pipeline sets \
             reserved-max-duration=3000000000, reserved-moov-update-period=1000000000; \
             robust moov"
        ),
        "{}",
        ended.stderr
    );
    let json = ended.json();
    assert_eq!(json["crash_safe"][0]["action"], "left-alone", "{json}");
    assert_eq!(
        json["crash_safe"][0]["file_kept"],
        Value::Null,
        "finalized: {json}"
    );

    let plain = dir.path().join("plain.mp4");
    let ended = spawn(&[
        "--no-crash-safe".to_owned(),
        description
            .replace(
                "reserved-max-duration=3000000000 reserved-moov-update-period=1000000000",
                "",
            )
            .replace(&file.display().to_string(), &plain.display().to_string()),
    ])
    .wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(ended.stderr.contains("crash-safe: off"), "{}", ended.stderr);
    assert!(
        !ended.stderr.contains("crash-safe: mux"),
        "{}",
        ended.stderr
    );
    assert_eq!(ended.json()["crash_safe"], Value::Null);
}

/// What cpuguard-run does before the pipeline starts: splitmuxsink then
/// has its muxer but adds its sink only when it starts; both are configured.
#[test]
fn splitmuxsinks_muxer_and_late_sink_are_configured_before_start() {
    use gst::prelude::*;
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! x264enc ! h264parse ! splitmuxsink name=split location={}",
        dir.path().join("p%02d.mp4").display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let told = std::sync::Arc::new(Mutex::new(Vec::new()));
    let lines = told.clone();
    let protection = gstcpuguard::crashsafe::protect(pipeline.upcast_ref(), 1000, move |d| {
        lines.lock().unwrap().push(d.describe())
    });
    pipeline.set_state(gst::State::Ready).unwrap();
    let split = pipeline
        .by_name("split")
        .unwrap()
        .downcast::<gst::Bin>()
        .unwrap();
    let child = |factory: &str| {
        split
            .iterate_elements()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == factory))
            .unwrap_or_else(|| panic!("no {factory} in splitmuxsink"))
    };
    assert_eq!(child("mp4mux").property::<u32>("fragment-duration"), 250);
    let mode = glib::EnumValue::from_value(&child("filesink").property_value("buffer-mode"))
        .map(|(_, v)| v.nick().to_owned());
    assert_eq!(mode.as_deref(), Some("unbuffered"));
    let decisions = protection.decisions();
    assert_eq!(decisions.len(), 1, "{:?}", told.lock().unwrap());
    assert!(
        decisions[0]
            .detail()
            .contains("configured: buffer-mode=unbuffered"),
        "{}",
        decisions[0].describe()
    );
    pipeline.set_state(gst::State::Null).unwrap();
}

/// Multi-pipeline mode: the parent's `--report` file too holds what it knew
/// when it was SIGKILLed (summary ACTIVE), never nothing or half a file.
#[test]
fn a_sigkilled_multi_pipeline_parent_leaves_its_last_known_state() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("multi.json");
    let mut run = spawn(&[
        "--report".to_owned(),
        report.display().to_string(),
        "--pipeline".to_owned(),
        "videotestsrc is-live=true ! fakesink".to_owned(),
        "--pipeline".to_owned(),
        "videotestsrc is-live=true num-buffers=5 ! fakesink".to_owned(),
    ]);
    run.wait_workers_active(&[1]);
    // Worker 2 ends by itself: its result is the last state written.
    let done = run.wait_result(2);
    assert_eq!(done["status"], "COMPLETE", "{done}");
    let worker = run.worker_pid(1);
    run.signal(Signal::SIGKILL);
    // The orphaned worker must not outlive the test.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
    let ended = run.wait_exit(HANG);
    assert_eq!(ended.code(), None, "killed");
    let text = std::fs::read_to_string(&report).expect("report file");
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(json["summary"]["status"], "ACTIVE", "{json}");
    assert_eq!(json["summary"]["exit_code"], Value::Null, "{json}");
    assert_eq!(json["workers"][0]["worker"], 2, "{json}");
    assert_eq!(json["workers"][0]["status"], "COMPLETE", "{json}");
}

/// Past any reservation: a moov reservation the pipeline sets (3 s here,
/// left alone) fails the recording once outgrown, as measured on 1.22,
/// which is why crash safety uses fragments; the crash-safe layout records
/// the same 20 s to the end.
#[test]
fn a_recording_longer_than_a_reservation_fails_but_a_crash_safe_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let recording = |muxer: &str, file: &Path| {
        format!(
            "videotestsrc num-buffers=600 ! video/x-raw,width=64,height=64,framerate=30/1 \
             ! x264enc speed-preset=ultrafast ! h264parse ! {muxer} ! filesink location={}",
            file.display()
        )
    };
    let reserved = dir.path().join("reserved.mp4");
    let ended = spawn(&[recording(
        "mp4mux name=mux reserved-max-duration=3000000000 reserved-moov-update-period=1000000000",
        &reserved,
    )])
    .wait_exit(HANG);
    assert!(
        ended
            .stderr
            .contains("fails once it outgrows reserved-max-duration"),
        "told on stderr:\n{}",
        ended.stderr
    );
    let json = ended.json();
    assert_eq!(json["status"], "FAILED", "{json}");
    assert!(
        str_field(&json, "error").contains("Not enough free reserved header space"),
        "{json}"
    );

    let fragmented = dir.path().join("fragmented.mp4");
    let ended = spawn(&[recording("mp4mux name=mux", &fragmented)]).wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "{}", ended.stderr);
    let json = ended.json();
    assert_eq!(json["crash_safe"][0]["action"], "configured", "{json}");
    let played = recording::play(&fragmented, Container::Mp4)
        .unwrap()
        .video
        .duration()
        .unwrap();
    assert!(
        played >= Duration::from_millis(19_900),
        "20 s recorded, {played:?} plays"
    );
}
