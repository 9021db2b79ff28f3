//! Faults: what breaks around a recording must never lose it, hang the
//! process, panic or drain it falsely. Real binaries, real encodes into MP4,
//! real signals and, as root, a real v1 cgroup; the host load files are faked
//! (FakeHost) where a fault must be injected into them.
//!
//! Timing bounds are generous upper bounds that catch hangs.

mod common;

use common::run::*;
use common::*;
use gst::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Live 320x240 H.264, the cheapest real encode.
const VIDEO: &str = "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 \
     ! x264enc speed-preset=ultrafast tune=zerolatency ! h264parse";

/// Behind an unbounded queue, a consumer slower than the source: the drain
/// has a backlog of seconds to work through, so events can land in it.
const SLOW: &str = "queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
     ! identity sleep-time=60000";

fn calm_guard(host: &FakeHost, extra: &str) -> String {
    format!(
        "cpuguard load-source=system root={} {extra}",
        host.root_str()
    )
}

fn assert_playable(path: &Path) {
    let streams =
        mp4_streams(path).unwrap_or_else(|e| panic!("{} does not play: {e}", path.display()));
    assert_eq!(streams, ["video/x-h264"], "{}", path.display());
}

fn signals_with_action(json: &Value, action: &str) -> usize {
    json["signals"]
        .as_array()
        .expect("signals")
        .iter()
        .filter(|s| s["action"] == action)
        .count()
}

// ------------------------------------------------------------ drains that fail

#[test]
fn error_in_the_middle_of_a_drain_fails_naming_it_and_the_other_branch_is_finalized() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    // The second branch buffers its whole file in filesink and writes it at
    // EOS, to a full disk: the error comes exactly when the drain starts,
    // while the first branch still has seconds of backlog to finalize.
    let mut a = args(&["--drain-timeout", "30s"]);
    a.extend(args_of(&format!(
        "{VIDEO} ! {} ! {SLOW} ! mp4mux ! filesink location={} \
         {VIDEO} ! mp4mux ! filesink name=full location=/dev/full buffer-mode=full \
         buffer-size=268435456",
        calm_guard(&host, ""),
        good.display()
    )));
    let mut run = spawn(&a);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(2000));
    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "error");
    let error = str_field(&json, "error");
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(json["error_source"], "full");
    assert_eq!(json["drain"]["completed"], false);
    assert_eq!(states(&json), ["STARTING", "ACTIVE", "ENDING", "FAILED"]);
    let stderr = &ended.stderr;
    let error_at = stderr.find("during the drain").expect("error line");
    let finished_at = stderr
        .find("the branches the error did not reach have finished")
        .expect("branches line");
    assert!(error_at < finished_at, "{stderr}");
    assert_playable(&good);
}

#[test]
fn blocked_branch_on_a_cpu_limit_drain_times_out_and_the_other_branch_is_finalized() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.mp4");
    // An appsink nobody pulls from: its branch never takes EOS.
    let mut a = args_of("--drain-timeout 1500 --soft-threshold 0.5 --hold 2 --interval 100");
    a.extend(args_of(&format!(
        "{VIDEO} ! cpuguard root={} load-source=system ! mp4mux ! filesink location={} \
         videotestsrc is-live=true ! video/x-raw,width=64,height=64 \
         ! appsink max-buffers=1 drop=false sync=false",
        host.root_str(),
        good.display()
    )));
    let mut run = spawn(&a);
    run.wait_active();
    std::thread::sleep(Duration::from_millis(1000));
    host.set_load(0.9);
    run.wait_stderr("state ENDING");
    let ending = Instant::now();
    let ended = run.wait_exit(HANG);
    let took = ended.at - ending;
    eprintln!("cpu-limit drain with a blocked branch gave up after {took:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "drain-timeout");
    assert_eq!(json["drain"]["reason"], "cpu-limit");
    assert_eq!(json["drain"]["trigger"], "soft");
    assert!(
        took >= Duration::from_millis(1300),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    assert_playable(&good);
}

// ------------------------------------------------------------ signal storms

/// 100 SIGTERMs, each delivered and handled: the first drains, the 99 others
/// change nothing. The kernel coalesces pending signals of one kind, so each
/// is sent only once the one before it was handled (its stderr line is out):
/// every one then really arrives. A burst follows, and whatever of it was
/// delivered must be handled the same way.
#[test]
fn a_storm_of_100_sigterms_drains_once_and_completes() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    // A consumer 3x slower than the source (100 ms a frame at 30 fps): the
    // drain has the backlog built before it to work through, far longer than
    // 100 signal round trips take.
    let mut run = spawn(&args_of(&format!(
        "{VIDEO} ! {} ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
         ! identity sleep-time=100000 ! mp4mux ! filesink location={}",
        calm_guard(&host, ""),
        out.display()
    )));
    run.wait_active();
    // The backlog: this is what the drain will have to finish, not a wait for
    // something to happen.
    std::thread::sleep(Duration::from_millis(1500));
    run.signal(Signal::SIGTERM);
    run.wait_stderr("SIGTERM: graceful stop, draining (stop-requested)");
    for _ in 1..100 {
        run.signal(Signal::SIGTERM);
        run.wait_stderr("SIGTERM: a drain (stop-requested) is already under way");
    }
    let already = |json: &Value| signals_with_action(json, "none (already draining)");
    for _ in 0..100 {
        run.signal(Signal::SIGTERM);
    }
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "COMPLETE");
    assert_eq!(str_field(&json, "reason"), "stop-requested");
    assert_eq!(json["drain"]["completed"], true);
    let handled = json["signals"].as_array().unwrap().len();
    eprintln!("200 SIGTERMs sent, {handled} delivered and handled");
    assert!(handled >= 100, "the 100 paced ones all arrive: {json}");
    assert_eq!(signals_with_action(&json, "drain"), 1, "{json}");
    // Every delivered one after the first: paced or from the burst, during the
    // drain or once the run had ended.
    let after_end = signals_with_action(&json, "none (the run had already ended)");
    assert!(already(&json) >= 99, "{json}");
    assert_eq!(already(&json) + after_end, handled - 1, "{json}");
    assert_eq!(
        ended.stderr.matches("is already under way").count(),
        already(&json),
        "{}",
        ended.stderr
    );
    assert_eq!(
        ended.stderr.matches("drain requested through").count(),
        1,
        "{}",
        ended.stderr
    );
    assert_playable(&out);
}

#[test]
fn sigint_after_a_storm_of_sigterms_stops_at_once_with_130() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec.mp4");
    let mut run = spawn(&args_of(&format!(
        "{VIDEO} ! {} ! {SLOW} ! mp4mux ! filesink location={}",
        calm_guard(&host, ""),
        out.display()
    )));
    run.wait_active();
    std::thread::sleep(Duration::from_millis(2000));
    for _ in 0..100 {
        run.signal(Signal::SIGTERM);
    }
    run.wait_stderr("state ENDING");
    let sent = run.signal(Signal::SIGINT);
    let ended = run.wait_exit(HANG);
    let took = ended.at - sent;
    eprintln!("SIGINT after the SIGTERM storm took {took:?}");
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(130), "stderr:\n{}", ended.stderr);
    assert!(took < Duration::from_secs(2), "SIGINT took {took:?}");
    let json = ended.json();
    assert_eq!(str_field(&json, "status"), "FAILED");
    assert_eq!(str_field(&json, "reason"), "interrupted");
    assert_eq!(json["drain"]["completed"], false);
    assert_eq!(signals_with_action(&json, "drain"), 1, "{json}");
    assert_eq!(signals_with_action(&json, "stop"), 1, "{json}");
}

// ------------------------------------------------------------ load files

/// Everything `bus` carries for `duration`.
fn collect(bus: &gst::Bus, duration: Duration) -> Vec<gst::Message> {
    let deadline = Instant::now() + duration;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64)) {
            Some(msg) => seen.push(msg),
            None => break,
        }
    }
    seen
}

fn warnings(messages: &[gst::Message]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => Some(w.error().to_string()),
            _ => None,
        })
        .collect()
}

fn assert_no_drain_or_error(messages: &[gst::Message], fault: &str) {
    for m in messages {
        assert!(
            !is_element_message(m, "cpuguard-drain")
                && !is_element_message(m, "cpuguard-would-drain"),
            "{fault}: false drain {m:?}"
        );
        assert!(
            !matches!(
                m.view(),
                gst::MessageView::Error(_) | gst::MessageView::Eos(_)
            ),
            "{fault}: {m:?}"
        );
    }
}

#[test]
fn broken_load_files_warn_never_drain_and_sampling_resumes() {
    init();
    // Just below the thresholds: any garbage read as load (a wrapped counter,
    // a saturated default) would drain.
    let host = FakeHost::new(0.45);
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=64,framerate=30/1 \
         ! cpuguard name=guard load-source=system root={} interval=50 soft-threshold=0.5 \
         hard-threshold=0.5 hold=1 ! fakesink",
        host.root_str()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let load = |m: &gst::Message| is_element_message(m, "cpuguard-load");
    wait_for(&bus, HANG, load).expect("first load sample");

    let stat = host.stat_path().display().to_string();
    let mut faults = 0;
    // (fault, what it is called, what the warning says); None: counters go backwards.
    let cases = [
        (Some(StatFault::Vanished), "vanished", "cannot read"),
        (Some(StatFault::Unreadable), "unreadable", "cannot read"),
        (Some(StatFault::Garbage), "garbage", "malformed"),
        (None, "counters backwards", "went backwards"),
    ];
    for (fault, name, needle) in cases {
        match fault {
            Some(fault) => host.set_fault(fault),
            None => host.rewind(),
        }
        let during = collect(&bus, Duration::from_millis(500));
        host.set_fault(StatFault::None);
        assert_no_drain_or_error(&during, name);
        let warned = warnings(&during);
        assert!(
            warned.iter().any(|w| w.contains("cannot read CPU load")
                && w.contains(needle)
                && w.contains(&stat)),
            "{name}: no warning naming {stat}: {warned:?}"
        );
        // One warning per failure streak, however many samples failed. A
        // "no time elapsed" may come on top when the fake host's writer thread
        // was starved for a whole interval on a busy machine (its counters
        // then did not move): a separate, honest warning, not a repeat.
        let repeats = warned
            .iter()
            .filter(|w| !w.contains("no time elapsed"))
            .count();
        assert_eq!(repeats, 1, "{name}: {warned:?}");
        // Sampling resumes once the file is back.
        let mut after = Vec::new();
        let resumed = wait_for(&bus, HANG, |m| {
            after.push(m.clone());
            load(m)
        });
        assert!(resumed.is_some(), "{name}: no load sample after the fault");
        assert_no_drain_or_error(&after, name);
        let value = structure_of(resumed.as_ref().unwrap())
            .get::<f64>("load")
            .unwrap();
        assert!(
            (0.4..0.5).contains(&value),
            "{name}: load {value} after the fault"
        );
        faults += 1;
    }
    // Still running, never drained.
    let tail = collect(&bus, Duration::from_millis(300));
    assert_no_drain_or_error(&tail, "after the faults");
    pipeline.set_state(gst::State::Null).unwrap();
    eprintln!("load-file faults exercised: {faults} (0 false drains, 0 errors)");
}

// ------------------------------------------------------------ a real cgroup

/// A v1 cgroup in the `cpu` and `cpuacct` hierarchies, removed on drop
/// whatever happens (its processes are moved back to the root first).
struct RealCgroup {
    dirs: Vec<PathBuf>,
}

impl RealCgroup {
    /// `None` when the host does not allow it (not root, no v1 controllers).
    fn create(name: &str) -> Option<Self> {
        let dirs: Vec<PathBuf> = ["cpu", "cpuacct"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(name))
            .collect();
        let mut made = RealCgroup { dirs: Vec::new() };
        for dir in &dirs {
            std::fs::create_dir(dir).ok()?;
            made.dirs.push(dir.clone());
        }
        Some(made)
    }

    fn cpu(&self) -> &Path {
        &self.dirs[0]
    }

    fn set_quota(&self, quota_us: u32, period_us: u32) {
        std::fs::write(self.cpu().join("cpu.cfs_period_us"), period_us.to_string()).unwrap();
        std::fs::write(self.cpu().join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
    }

    /// Shell that puts itself in every hierarchy of this cgroup.
    fn join_script(&self) -> String {
        self.dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// Moves every process back to the root cgroups and removes the cgroup.
    fn remove(&mut self) {
        for dir in self.dirs.drain(..) {
            let root_procs = dir.parent().unwrap().join("cgroup.procs");
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(&root_procs, pid);
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl Drop for RealCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn capacity_in(line: &str) -> Option<f64> {
    line.split("capacity=(double)")
        .nth(1)?
        .split([',', ';', ' '])
        .next()?
        .parse()
        .ok()
}

#[test]
fn real_cgroup_quota_change_and_removal_are_picked_up() {
    let name = format!("cpuguard-faults-{}", std::process::id());
    let Some(mut cgroup) = RealCgroup::create(&name) else {
        return machine::skip(
            "real_cgroup_quota_change_and_removal_are_picked_up",
            "cannot create v1 cpu/cpuacct cgroups (needs root and cgroup v1)",
        );
    };
    cgroup.set_quota(50_000, 100_000);
    // dry-run: the root cgroup the process ends in measures the whole busy
    // host; this test is about following the cgroup, not draining.
    let script = format!(
        "{} && exec gst-launch-1.0 -e -m videotestsrc is-live=true \
         ! video/x-raw,width=64,height=64,framerate=30/1 \
         ! cpuguard load-source=cgroup interval=100 dry-run=true ! fakesink",
        cgroup.join_script()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut run = spawn_command(cmd);
    let capacity = |run: &mut Run, wanted: f64| {
        run.wait_line(Stream::Stdout, HANG, |l| {
            l.contains("cpuguard-load") && capacity_in(l).is_some_and(|c| (c - wanted).abs() < 1e-6)
        })
    };
    capacity(&mut run, 0.5);
    cgroup.set_quota(150_000, 100_000);
    let changed = Instant::now();
    // 1.5 CPU, or fewer where this process may run on fewer (taskset).
    capacity(&mut run, machine::affinity_cpus().min(1.5));
    eprintln!("quota change picked up after {:?}", changed.elapsed());

    // Out of the removed group, the recorder is in the root cgroup (no
    // quota): its capacity is the CPUs it may run on.
    let online = machine::affinity_cpus();
    cgroup.remove();
    let removed = Instant::now();
    run.wait_line(Stream::Stdout, HANG, |l| {
        l.contains("is gone; found the process's cgroup again")
    });
    capacity(&mut run, online);
    eprintln!("cgroup removal picked up after {:?}", removed.elapsed());

    run.signal(Signal::SIGINT);
    let ended = run.wait_exit(HANG);
    assert_eq!(ended.code(), Some(0), "stderr:\n{}", ended.stderr);
    assert!(!ended.stderr.contains("panicked"), "{}", ended.stderr);
    assert!(!ended.stdout.contains("cpuguard-drain"), "{}", ended.stdout);
    assert!(!ended.stdout.contains("(error)"), "{}", ended.stdout);
}

// ------------------------------------------------------------ multi mode

/// A live H.264 recording whose drain takes seconds: its consumer takes
/// 150 ms a frame, so the backlog grows from the start. Noise (`snow`) costs
/// far more to make and encode than the default pattern, so the CPU ranking of
/// the workers below does not depend on how busy the machine is.
fn slow_recording(width: u32, height: u32, path: &Path) -> String {
    format!(
        "videotestsrc is-live=true pattern=snow ! video/x-raw,format=I420,width={width},\
         height={height},framerate=30/1 ! x264enc speed-preset=ultrafast tune=zerolatency \
         ! h264parse ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 \
         ! identity sleep-time=150000 ! mp4mux ! filesink location={}",
        path.display()
    )
}

fn recording(width: u32, height: u32, pattern: &str, path: &Path) -> String {
    format!(
        "videotestsrc is-live=true pattern={pattern} ! video/x-raw,format=I420,width={width},\
         height={height},framerate=30/1 ! x264enc speed-preset=ultrafast tune=zerolatency \
         ! h264parse ! mp4mux ! filesink location={}",
        path.display()
    )
}

#[test]
fn worker_killed_while_draining_fails_alone_and_the_next_drain_goes_on() {
    let host = FakeHost::new(0.1);
    let dir = tempfile::tempdir().unwrap();
    let files = [
        dir.path().join("heavy.mp4"),
        dir.path().join("medium.mp4"),
        dir.path().join("small.mp4"),
    ];
    let mut a = args(&[
        "--load-source",
        "system",
        "--root",
        &host.root_str(),
        "--soft-threshold",
        "0.5",
        "--hold",
        "2",
        "--interval",
        "250",
        "--drain-timeout",
        "30s",
    ]);
    // Workers 1 and 2 both drain slowly, so whichever of them drains first
    // (their cpuguard elements rank the worker processes by CPU, which
    // depends on how the scheduler shares a busy machine) is still draining
    // when it is killed. None of the descriptions has a cpuguard: each
    // worker adds one.
    for d in [
        slow_recording(1280, 720, &files[0]),
        slow_recording(640, 360, &files[1]),
        recording(64, 64, "black", &files[2]),
    ] {
        a.extend(["--pipeline".to_owned(), d]);
    }
    let mut run = spawn(&a);
    run.wait_workers_active(&[1, 2, 3]);
    std::thread::sleep(Duration::from_millis(2000));
    host.set_load(0.9);
    let first = victim(&run.wait_stderr("draining worker"));
    assert!(
        first == 1 || first == 2,
        "drained the tiny worker {first} first"
    );
    // The parent says "draining worker N" when worker N's channel says
    // ENDING: it is draining now (its own stderr line for that may come
    // before or after, on another pipe).
    let pid = run.worker_pid(first);
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("worker killed");

    let killed = run.wait_result(first.into());
    assert_eq!(str_field(&killed, "status"), "FAILED", "{killed}");
    assert!(str_field(&killed, "error").contains("SIGKILL"), "{killed}");
    // Crash safety (on by default) kept the killed worker's file: the
    // parent says so from the same rules, and the file plays.
    assert_eq!(killed["crash_safe"][0]["action"], "configured", "{killed}");
    assert_eq!(killed["crash_safe"][0]["file_kept"], true, "{killed}");
    // The load is still high: the killed worker's drain lock died with it,
    // another worker drains, and that drain completes normally.
    let second = victim(&run.wait_stderr("draining worker"));
    assert_ne!(second, first, "the killed worker drained again");
    let drained = run.wait_result(second.into());
    host.set_load(0.1);
    assert_eq!(str_field(&drained, "status"), "COMPLETE", "{drained}");
    assert_eq!(str_field(&drained, "reason"), "cpu-limit");
    // The cpuguard the worker added is the one that drained.
    assert_eq!(drained["drain"]["element"], "cpuguard-worker", "{drained}");
    assert_eq!(drained["cpuguard_elements"][0], "cpuguard-worker");

    run.signal(Signal::SIGTERM);
    let ended = run.wait_exit(HANG);
    assert_no_panic(&ended);
    assert_eq!(ended.code(), Some(1), "stderr:\n{}", ended.stderr);
    let (results, summary) = ended.results();
    assert_eq!(results.len(), 3);
    let last = 6 - first - second;
    let stopped = &results[last as usize - 1];
    assert_eq!(str_field(stopped, "status"), "COMPLETE", "{stopped}");
    assert_eq!(str_field(stopped, "reason"), "stop-requested");
    assert_eq!(summary["complete"], 2);
    assert_eq!(summary["failed"], 1);
    assert_playable(&files[second as usize - 1]);
    assert_playable(&files[last as usize - 1]);
    assert_playable(&files[first as usize - 1]);
}

/// The worker named in the parent's "draining worker N (pid …)" line.
fn victim(line: &str) -> u32 {
    let rest = &line[line.find("draining worker ").expect("a drain line") + 16..];
    rest.split_whitespace()
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no worker id in {line}"))
}
