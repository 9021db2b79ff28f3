//! Reliability: the recording survives. Randomized stops of real encodes
//! under a CPU burner, natural ends that race a stop, real cgroup quotas, and
//! (flagged, `scripts/soak.sh`) a hysteresis soak.
//!
//! Randomness is seeded: the seed is printed, and `CPUGUARD_SEED=<seed>`
//! replays a failing run. Timings are upper bounds that only catch hangs.

#[path = "reliability/burner.rs"]
mod burner;
#[path = "reliability/cgroup.rs"]
mod cgroup;
mod common;
#[path = "reliability/recording.rs"]
mod recording;
#[path = "reliability/supervised.rs"]
mod supervised;

use burner::Burner;
use common::{
    FakeHost, assert_ends_with_eos, exclusive_cpu, init, is_element_message, machine,
    run_until_end, seed, structure_of,
};
use gst::prelude::*;
use nix::sys::signal::Signal;
use recording::{Container, FRAME, av_description, play, play_av, watch_pad};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use supervised::{Supervised, stamp, state_at};

/// Upper bound for a run to end once stopped: only catches hangs.
const HANG: Duration = Duration::from_secs(60);

fn launch(description: &str) -> gst::Pipeline {
    init();
    gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("{description}: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM to cpuguard-run.
    Sigterm,
    /// cpuguard's soft threshold held for `hold` samples.
    Soft,
    /// cpuguard's hard threshold.
    Hard,
    /// The `drain` action signal.
    DrainAction,
}

impl Stop {
    const ALL: [Stop; 4] = [Stop::Sigterm, Stop::Soft, Stop::Hard, Stop::DrainAction];
}

struct Case {
    stop: Stop,
    container: Container,
    /// How long the recording runs before it is stopped.
    after: Duration,
}

/// A stopped recording as measured: what the test recorded and what the file holds.
struct Measured {
    recorded: Duration,
    in_file: Duration,
    /// The file may hold this much more than `recorded`: the uncertainty of
    /// where running time 0 lies, and frames produced while the drain was
    /// under way.
    slack: Duration,
}

/// Soft, hard and drain-action stops, in this process. "Time recorded" is
/// exact here: the span of video PTS that passed the pad right before the
/// muxer (`vrec`), i.e. every frame the muxer was given. The file must hold
/// the same span (up to two frame intervals).
fn stop_in_process(case: &Case, dir: &Path) -> Result<Measured, String> {
    let out = dir.join(format!("rec.{}", case.container.extension()));
    let host = FakeHost::new(0.2);
    let props = match case.stop {
        Stop::Soft => format!(
            "load-source=system root={} interval=50 hold=3 soft-threshold=0.6 hard-threshold=0.9",
            host.root_str()
        ),
        // A hold no test reaches: only the hard threshold can drain.
        Stop::Hard => format!(
            "load-source=system root={} interval=50 hold=100000 soft-threshold=0.6 hard-threshold=0.9",
            host.root_str()
        ),
        // The real, overloaded host would drain it on load: dry-run leaves only the action.
        Stop::DrainAction => "load-source=system dry-run=true".to_owned(),
        Stop::Sigterm => unreachable!("SIGTERM stops go through cpuguard-run"),
    };
    let pipeline = launch(&av_description(case.container, &out, &props));
    let vrec = pipeline.by_name("vrec").expect("vrec");
    let recorded = watch_pad(&vrec.static_pad("src").expect("vrec src"));
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play: {e}"))?;
    std::thread::sleep(case.after);
    let (reason, trigger) = match case.stop {
        Stop::Soft => {
            host.set_load(0.75);
            ("cpu-limit", "soft")
        }
        Stop::Hard => {
            host.set_load(0.97);
            ("cpu-limit", "hard")
        }
        _ => {
            let guard = pipeline.by_name("guard").expect("guard");
            if !guard.emit_by_name::<bool>("drain", &[&"stop-requested"]) {
                return Err("the drain action was refused".to_owned());
            }
            ("stop-requested", "request")
        }
    };
    let msgs = run_until_end(&pipeline, HANG);
    let _ = pipeline.set_state(gst::State::Null);
    if !matches!(
        msgs.last().map(|m| m.view()),
        Some(gst::MessageView::Eos(_))
    ) {
        return Err(format!("no EOS, last message {:?}", msgs.last()));
    }
    let drain = msgs
        .iter()
        .find(|m| is_element_message(m, "cpuguard-drain"))
        .map(structure_of)
        .ok_or("no cpuguard-drain message")?;
    let got = (
        drain.get::<String>("reason").unwrap_or_default(),
        drain.get::<String>("trigger").unwrap_or_default(),
    );
    if got != (reason.to_owned(), trigger.to_owned()) {
        return Err(format!("drained with {got:?}, expected {reason}/{trigger}"));
    }
    let recorded = recorded
        .lock()
        .unwrap()
        .duration()
        .ok_or("no frame reached the muxer")?;
    let in_file = play_av(&out, case.container)?
        .video
        .duration()
        .ok_or("no video frame in the file")?;
    Ok(Measured {
        recorded,
        in_file,
        slack: Duration::ZERO,
    })
}

/// SIGTERM to cpuguard-run. The recording is in another process, so "time
/// recorded" comes from cpuguard-run's report: from the pipeline reaching
/// PLAYING (state ACTIVE) to the drain request. The live sources' running time
/// 0 lies between STARTING (set to PLAYING) and ACTIVE (the state change seen
/// on the main loop, later under overload), so the file must hold at least
/// ACTIVE → request, and at most STARTING → request plus the drain's own
/// duration (frames produced until the sources took the EOS).
fn stop_with_sigterm(case: &Case, dir: &Path) -> Result<Measured, String> {
    let out = dir.join(format!("rec.{}", case.container.extension()));
    let run = Supervised::spawn(
        // dry-run: the overloaded host must not end the run before the signal.
        &["--dry-run", "--drain-timeout", "30s"],
        &av_description(case.container, &out, ""),
    );
    std::thread::sleep(case.after);
    run.signal(Signal::SIGTERM);
    let done = run.finish(HANG)?;
    let report = &done.json;
    if done.code != Some(0) || report["status"] != "COMPLETE" {
        return Err(format!(
            "exit {:?}, {} {}:\n{}",
            done.code, report["status"], report["reason"], done.stderr
        ));
    }
    if report["reason"] != "stop-requested" || report["drain"]["completed"] != true {
        return Err(format!("unexpected result {report}"));
    }
    let starting = state_at(report, "STARTING").ok_or("no STARTING state")?;
    let active = state_at(report, "ACTIVE").ok_or("no ACTIVE state")?;
    let requested = stamp(&report["drain_requested_at"]).ok_or("no drain_requested_at")?;
    let recorded = requested.duration_since(active).unwrap_or_default();
    let slack = active.duration_since(starting).unwrap_or_default()
        + Duration::from_secs_f64(report["drain"]["duration_s"].as_f64().unwrap_or(0.0));
    let in_file = play_av(&out, case.container)?
        .video
        .duration()
        .ok_or("no video frame in the file")?;
    Ok(Measured {
        recorded,
        in_file,
        slack,
    })
}

fn run_case(case: &Case) -> Result<Measured, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let measured = match case.stop {
        Stop::Sigterm => stop_with_sigterm(case, dir.path())?,
        _ => stop_in_process(case, dir.path())?,
    };
    let tolerance = 2 * FRAME;
    let low = measured.recorded.saturating_sub(tolerance);
    let high = measured.recorded + measured.slack + tolerance;
    if measured.in_file < low || measured.in_file > high {
        return Err(format!(
            "file holds {:?}, recorded {:?} (allowed {low:?}..{high:?})",
            measured.in_file, measured.recorded
        ));
    }
    Ok(measured)
}

/// At least 30 real encodes into MP4 and Matroska, stopped at random moments
/// by every kind of stop while a burner oversubscribes the cores. Every file
/// must play to its end and hold the time recorded.
#[test]
fn randomized_stops_under_overload_lose_nothing() {
    const ROUNDS: usize = 4;
    let _cpu = exclusive_cpu();
    let seed = seed();
    eprintln!("randomized stops: seed {seed} (CPUGUARD_SEED={seed} replays this run)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cases = Vec::new();
    for _ in 0..ROUNDS {
        for stop in Stop::ALL {
            for container in Container::ALL {
                let after = Duration::from_millis(rng.u64(800..=2800));
                cases.push(Case {
                    stop,
                    container,
                    after,
                });
            }
        }
    }
    rng.shuffle(&mut cases);

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let burner = Burner::start(workers as u32, &[]);
    let before = burner::host_ticks();
    let started = Instant::now();
    let queue = Mutex::new(cases.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    // Two at a time: more would measure the test, not the recorder.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let Some((n, case)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let result = run_case(&case);
                    results.lock().unwrap().push((n, case, result));
                }
            });
        }
    });
    let busy = burner::busy_share(before, burner::host_ticks());
    drop(burner);
    let results = results.into_inner().unwrap();

    let mut failures = Vec::new();
    let mut worst = Duration::ZERO;
    for (n, case, result) in &results {
        match result {
            Ok(m) => {
                let deviation = if m.in_file > m.recorded {
                    (m.in_file - m.recorded).saturating_sub(m.slack)
                } else {
                    m.recorded - m.in_file
                };
                worst = worst.max(deviation);
                eprintln!(
                    "run {n:2}: {:?} {:?} after {:?}: recorded {:.3} s, file {:.3} s",
                    case.stop,
                    case.container,
                    case.after,
                    m.recorded.as_secs_f64(),
                    m.in_file.as_secs_f64()
                );
            }
            Err(e) => failures.push(format!(
                "run {n}: {:?} {:?} after {:?}: {e}",
                case.stop, case.container, case.after
            )),
        }
    }
    let count = |stop: Stop, container: Container| {
        results
            .iter()
            .filter(|(_, c, _)| c.stop == stop && c.container == container)
            .count()
    };
    let per_kind: Vec<String> = Stop::ALL
        .iter()
        .map(|&s| {
            format!(
                "{s:?} {}+{}",
                count(s, Container::Mp4),
                count(s, Container::Matroska)
            )
        })
        .collect();
    eprintln!(
        "RELIABILITY randomized stops: {} runs ({} mp4+mkv), {} playable with the time recorded, \
         files lost {}; worst deviation {:.1} ms; host busy {:.0}% under {workers} burners; \
         {:.0} s; seed {seed}",
        results.len(),
        per_kind.join(", "),
        results.len() - failures.len(),
        failures.len(),
        worst.as_secs_f64() * 1000.0,
        busy * 100.0,
        started.elapsed().as_secs_f64()
    );
    assert!(results.len() >= 30, "only {} runs", results.len());
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} runs lost their recording:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    // The burner must really have oversubscribed the host.
    assert!(busy > 0.85, "host only {:.0}% busy", busy * 100.0);
}

/// 30 frames that the source produces at once (not live) and that then take
/// about a second to trickle through a slow element: the source's own EOS is
/// queued behind them, so a stop requested meanwhile comes *during* the
/// pipeline's natural end.
fn ending_by_itself(location: &Path, guard_props: &str) -> String {
    format!(
        "videotestsrc num-buffers=30 ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
         ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! identity sleep-time=30000 \
         ! x264enc tune=zerolatency speed-preset=ultrafast ! h264parse \
         ! cpuguard name=guard {guard_props} ! mp4mux ! filesink location={}",
        location.display()
    )
}

/// Every one of the 30 frames made it into a playable file.
fn all_frames_kept(path: &Path) -> Result<(), String> {
    let playback = play(path, Container::Mp4)?;
    match playback.video.frames {
        30 => Ok(()),
        n => Err(format!("{}: {n} of 30 frames", path.display())),
    }
}

/// SIGTERM while the pipeline is ending by itself: COMPLETE with reason eos,
/// and nothing queued behind the source's EOS is cut off.
#[test]
fn sigterm_during_a_natural_end_completes_with_eos() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("natural.mp4");
    let run = Supervised::spawn(&["--drain-timeout", "30s"], &ending_by_itself(&out, ""));
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGTERM);
    let done = run.finish(HANG).unwrap();
    let report = &done.json;
    assert_eq!(report["status"], "COMPLETE", "{report}\n{}", done.stderr);
    assert_eq!(report["reason"], "eos", "{report}\n{}", done.stderr);
    assert_eq!(done.code, Some(0));
    assert_eq!(report["signals"][0]["signal"], "SIGTERM");
    all_frames_kept(&out).unwrap();
}

/// The element on its own: neither the `drain` action nor a threshold crossed
/// during a natural end starts a drain; the EOS is the pipeline's own.
#[test]
fn element_lets_a_natural_end_finish() {
    for by_threshold in [false, true] {
        let host = FakeHost::new(0.1);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("natural.mp4");
        let pipeline = launch(&ending_by_itself(
            &out,
            &format!(
                "load-source=system root={} interval=50 hold=2 soft-threshold=0.6",
                host.root_str()
            ),
        ));
        pipeline.set_state(gst::State::Playing).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        if by_threshold {
            host.set_load(0.99);
        } else {
            let guard = pipeline.by_name("guard").unwrap();
            assert!(
                !guard.emit_by_name::<bool>("drain", &[&"stop-requested"]),
                "a drain started during a natural end"
            );
        }
        let msgs = run_until_end(&pipeline, HANG);
        pipeline.set_state(gst::State::Null).unwrap();
        assert_ends_with_eos(&msgs, "no EOS");
        let drained = msgs
            .iter()
            .find(|m| is_element_message(m, "cpuguard-drain"));
        assert!(drained.is_none(), "drained: {drained:?}");
        all_frames_kept(&out).unwrap();
    }
}

/// A live recording that ends by itself (num-buffers) with a SIGTERM or a
/// SIGUSR1 drain at seeded random moments around its end: always COMPLETE.
/// A stop that came after the end is reason eos and keeps every frame; one
/// that came before is the drain's own reason.
#[test]
fn stops_around_a_natural_end_always_complete() {
    const FRAMES: u64 = 45;
    let seed = seed();
    eprintln!("natural end: seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut by_reason = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("live.mp4");
        let description = format!(
            "videotestsrc is-live=true num-buffers={FRAMES} \
             ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast ! h264parse \
             ! cpuguard name=guard ! mp4mux ! filesink location={}",
            out.display()
        );
        // dry-run: a busy host must not drain it before the signal does.
        let run = Supervised::spawn(&["--dry-run", "--drain-timeout", "30s"], &description);
        let (signal, expected) = if n % 2 == 0 {
            (Signal::SIGTERM, "stop-requested")
        } else {
            (Signal::SIGUSR1, "cpu-limit")
        };
        // The end is at 1.5 s of running time, plus start-up.
        let at = Duration::from_millis(rng.u64(1300..=1900));
        std::thread::sleep(at);
        run.signal(signal);
        let done = run.finish(HANG).unwrap();
        let report = &done.json;
        let context = format!("seed {seed}, run {n}, {signal} at {at:?}: {report}");
        assert_eq!(report["status"], "COMPLETE", "{context}\n{}", done.stderr);
        assert_eq!(done.code, Some(0), "{context}");
        let reason = report["reason"].as_str().unwrap_or_default().to_owned();
        let frames = play(&out, Container::Mp4)
            .unwrap_or_else(|e| panic!("{context}: {e}"))
            .video
            .frames;
        match reason.as_str() {
            "eos" => assert_eq!(frames, FRAMES, "{context}"),
            r if r == expected => assert!(frames <= FRAMES, "{context}"),
            other => panic!("{context}: reason {other}"),
        }
        *by_reason.entry(reason).or_default() += 1;
    }
    eprintln!("RELIABILITY natural end: 8 runs, all COMPLETE, by reason {by_reason:?}");
}

/// One `cpuguard-load` sample as gst-launch-1.0 -m prints it.
struct LoadLine {
    element: String,
    load: f64,
    source: String,
    capacity: f64,
}

fn load_lines(stdout: &str) -> Vec<LoadLine> {
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = line.split(&format!("{key}=(")).nth(1)?;
        let value = rest.split_once(')')?.1;
        Some(value.split([',', ';']).next()?.trim().to_owned())
    };
    stdout
        .lines()
        .filter(|l| l.contains("cpuguard-load"))
        .filter_map(|l| {
            Some(LoadLine {
                element: l.split('"').nth(1)?.to_owned(),
                load: field(l, "load")?.parse().ok()?,
                source: field(l, "source")?,
                capacity: field(l, "capacity")?.parse().ok()?,
            })
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What cpuguard measured inside a group while a burner used `share` of its quota.
struct QuotaReading {
    cgroup_load: f64,
    capacity: f64,
    auto_source: String,
    /// The group's CPU use measured from its processes, as a share of the quota.
    used_share: f64,
}

/// Runs a burner using `share` (1 = all, more than the quota allows) of the
/// quota `cpus` inside the group `join` moves a shell into, and next to it a
/// gst-launch-1.0 with two dry-run cpuguards: `cgroup` and `auto`.
fn read_quota(join: &str, procs: &Path, cpus: f64, share: f64) -> QuotaReading {
    let burner_args = if share >= 1.0 {
        // More workers than the quota has CPUs: the quota is the limit.
        format!("--cpu {}", cpus.ceil() as u32 + 1)
    } else {
        format!(
            "--cpu 1 --cpu-load {}",
            (cpus * share * 100.0).round() as u32
        )
    };
    let _burner = {
        use std::os::unix::process::CommandExt;
        struct Group(std::process::Child);
        impl Drop for Group {
            fn drop(&mut self) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-(self.0.id() as i32)),
                    Signal::SIGKILL,
                );
                let _ = self.0.wait();
            }
        }
        Group(
            std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("{join} && exec stress-ng {burner_args} --timeout 60s --quiet"),
                ])
                .process_group(0)
                .spawn()
                .expect("sh runs"),
        )
    };
    std::thread::sleep(Duration::from_millis(500));
    let plugins = common::plugin_dir();
    let (ticks_before, wall) = (group_ticks(procs), Instant::now());
    let meter = format!(
        "{join} && exec gst-launch-1.0 -m videotestsrc is-live=true num-buffers=45 \
         ! video/x-raw,width=16,height=16,framerate=10/1 \
         ! cpuguard name=cg load-source=cgroup interval=500 dry-run=true \
         ! cpuguard name=au load-source=auto interval=500 dry-run=true ! fakesink"
    );
    let output = std::process::Command::new("timeout")
        .args(["60", "sh", "-c", &meter])
        .env("GST_PLUGIN_PATH", &plugins)
        .env("GST_REGISTRY", plugins.join("test-registry.bin"))
        .output()
        .expect("gst-launch-1.0 runs");
    let used = ticks_since(procs, &ticks_before) / wall.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = load_lines(&stdout);
    // The first samples cover the start-up: steady state only.
    let of = |name: &str| -> Vec<&LoadLine> {
        lines.iter().filter(|l| l.element == name).skip(2).collect()
    };
    let (cg, au) = (of("cg"), of("au"));
    assert!(
        cg.len() >= 4 && !au.is_empty(),
        "too few samples:\n{stdout}"
    );
    assert!(
        cg.iter().chain(&au).all(|l| l.capacity == cg[0].capacity),
        "capacity varies:\n{stdout}"
    );
    assert!(cg.iter().all(|l| l.source == "cgroup"), "{stdout}");
    QuotaReading {
        cgroup_load: median(cg.iter().map(|l| l.load).collect()),
        capacity: cg[0].capacity,
        auto_source: au[0].source.clone(),
        // Against what the group can really use: the quota, within affinity.
        used_share: used / cpus.min(machine::affinity_cpus()),
    }
}

/// utime+stime in seconds of every process in the group (`cgroup.procs`),
/// read from each process's own /proc stat: independent of the cgroup
/// counters cpuguard reads.
fn group_ticks(procs: &Path) -> std::collections::HashMap<i32, f64> {
    let tps = procfs::ticks_per_second() as f64;
    std::fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
            Some((pid, (stat.utime + stat.stime) as f64 / tps))
        })
        .collect()
}

/// CPU seconds the group's processes used since `before` (processes present
/// both times; the burner's are, for the whole measurement).
fn ticks_since(procs: &Path, before: &std::collections::HashMap<i32, f64>) -> f64 {
    group_ticks(procs)
        .iter()
        .filter_map(|(pid, now)| before.get(pid).map(|then| now - then))
        .sum()
}

/// Checks one quota: capacity = quota, the cgroup load tracks what the
/// group's processes really used, a burner using all of the quota reads about
/// 1 and half of it about 0.5, and `auto` picks the cgroup. `procs` is the
/// group's `cgroup.procs`.
fn check_quota(join: &str, procs: &Path, cpus: f64, label: &str) -> String {
    let full = read_quota(join, procs, cpus, 1.0);
    let half = read_quota(join, procs, cpus, 0.5);
    let line = format!(
        "{label} quota {cpus} CPU: capacity {:.2}; all of it: load {:.2} (used {:.2} of the quota); \
         half of it: load {:.2} (used {:.2}); auto -> {}",
        full.capacity,
        full.cgroup_load,
        full.used_share,
        half.cgroup_load,
        half.used_share,
        full.auto_source
    );
    eprintln!("{line}");
    // The quota, but never more CPUs than this process (and so the
    // recorder it starts) may run on: under `taskset -c 0`, 1.5 CPU reads 1.
    let capacity = cpus.min(machine::affinity_cpus());
    for reading in [&full, &half] {
        assert!((reading.capacity - capacity).abs() < 0.01, "{line}");
        assert_eq!(reading.auto_source, "cgroup", "{line}");
        assert!(
            (reading.cgroup_load - reading.used_share).abs() <= 0.15,
            "cgroup load does not track the group's use: {line}"
        );
    }
    // On a host busy with other work a burner may not get its whole quota
    // (the load still tracks what it got, checked above).
    if full.used_share >= 0.9 {
        assert!((0.85..=1.2).contains(&full.cgroup_load), "{line}");
    } else {
        eprintln!(
            "note: the host did not give the burner its {cpus} CPU (only {:.2} of it): \
             the saturated reading is checked against what it got",
            full.used_share
        );
    }
    if (0.4..=0.6).contains(&half.used_share) {
        assert!((0.3..=0.7).contains(&half.cgroup_load), "{line}");
    }
    line
}

/// Real CFS quotas of 0.25, 0.5 and 1.5 CPU, in whichever hierarchy has the
/// cpu controller here: v1 (this hybrid host), else cgroup2. Needs root.
#[test]
fn real_quotas_are_tracked_and_picked_by_auto() {
    let _cpu = exclusive_cpu();
    let mut tried = Vec::new();
    let mut why_not = Vec::new();
    for cpus in [0.25, 0.5, 1.5] {
        let name = format!("cpuguard-rel-{}-{}", std::process::id(), cpus * 100.0);
        match cgroup::V1Cgroup::with_quota(&name, cpus) {
            Ok(group) => tried.push(check_quota(
                &group.join_script(),
                &group.cpu.join("cgroup.procs"),
                cpus,
                "v1",
            )),
            Err(why) => {
                why_not.push(format!("v1: {why}"));
                break;
            }
        }
    }
    if tried.is_empty() {
        match (cgroup::v2_cpu_unavailable(), cgroup::v2_root()) {
            (None, Some(root)) => {
                for cpus in [0.25, 0.5, 1.5] {
                    let name = format!("cpuguard-rel-{}-{}", std::process::id(), cpus * 100.0);
                    let group = cgroup::V2Cgroup::with_quota(&root, &name, cpus)
                        .unwrap_or_else(|e| panic!("cgroup v2 group: {e}"));
                    tried.push(check_quota(
                        &group.join_script(),
                        &group.dir.join("cgroup.procs"),
                        cpus,
                        "v2",
                    ));
                }
            }
            (why, _) => why_not.push(format!(
                "v2: {}",
                why.unwrap_or_else(|| "no cgroup2 mount".into())
            )),
        }
    }
    if tried.is_empty() {
        return machine::skip(
            "real_quotas_are_tracked_and_picked_by_auto",
            &why_not.join("; "),
        );
    }
    assert_eq!(tried.len(), 3, "{tried:?}");
    eprintln!("RELIABILITY real quotas: {} tried", tried.len());
}

/// A process started straight into a v1 group (see
/// [`cgroup::V1Cgroup::join_before_exec`]), killed with its process group on drop.
struct InGroup(std::process::Child);

impl InGroup {
    fn spawn(group: &cgroup::V1Cgroup, program: &str, args: &[&str]) -> InGroup {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .process_group(0);
        group.join_before_exec(&mut command);
        InGroup(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("{program} in a cgroup: {e}")),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for InGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// `count` samples of `meter`, one every `interval` (the interval under
/// test, not a wait for anything), after the ones the policy leaves
/// unjudged (`START_UP_SAMPLES`: their window holds the measured work's
/// start-up, e.g. stress-ng's workers before `--cpu-load` settles).
fn samples_every(
    meter: &mut gstcpuguard::load::LoadMeter,
    interval: Duration,
    count: u32,
) -> Vec<gstcpuguard::load::LoadSample> {
    let start = Instant::now();
    let warm_up = gstcpuguard::policy::START_UP_SAMPLES;
    (1..=count + warm_up)
        .filter_map(|k| {
            std::thread::sleep((start + interval * k).saturating_duration_since(Instant::now()));
            match meter.sample(Instant::now()) {
                Ok(_) if k <= warm_up => None,
                Ok(sample) => Some(sample),
                Err(err) => {
                    eprintln!("sample {k}: {err}");
                    None
                }
            }
        })
        .collect()
}

fn v1_group_or_skip(
    test: &str,
    make: impl FnOnce() -> Result<cgroup::V1Cgroup, String>,
) -> Option<cgroup::V1Cgroup> {
    match make() {
        Ok(group) => Some(group),
        Err(why) => {
            machine::skip(test, &why);
            None
        }
    }
}

/// Issue #14: on a saturated quota, usage over 250 ms windows against a
/// 100 ms CFS period scattered 0.75-1.23 (half below the hard threshold);
/// with the throttling counters every sample must read saturated. And a
/// steady load at half its quota must never read saturated.
#[test]
fn real_v1_quota_saturation_is_recognised_at_every_sample() {
    const TEST: &str = "real_v1_quota_saturation_is_recognised_at_every_sample";
    let _cpu = exclusive_cpu();
    let hard = gstcpuguard::policy::PolicyConfig::default().hard;
    let interval = Duration::from_millis(250);
    for cpus in [0.25, 0.5] {
        let name = format!("cpuguard-thr-{}-{}", std::process::id(), cpus * 100.0);
        let Some(group) = v1_group_or_skip(TEST, || cgroup::V1Cgroup::with_quota(&name, cpus))
        else {
            return;
        };
        let workers = (cpus.ceil() as u32 + 1).to_string();
        let (saturated, loads) = cgroup_samples(&group, &["--cpu", &workers], interval);
        eprintln!("{cpus} CPU saturated, loads at 250 ms: {}", loads.join(" "));
        for sample in &saturated {
            let throttling = sample.throttling.expect("throttling of the quota's group");
            assert!(
                sample.load >= hard && throttling.saturated(),
                "{cpus} CPU: a saturated sample read {:.2} ({throttling:?}); all: {loads:?}",
                sample.load
            );
        }

        // Half the quota, spread over its periods.
        let share = ((cpus * 50.0).round() as u32).to_string();
        let (steady, loads) =
            cgroup_samples(&group, &["--cpu", "1", "--cpu-load", &share], interval);
        eprintln!(
            "{cpus} CPU at half its quota, loads at 250 ms: {}",
            loads.join(" ")
        );
        for sample in &steady {
            assert!(
                sample.throttling.is_some_and(|t| !t.saturated()) && sample.load < hard,
                "{cpus} CPU at half its quota read saturated: {sample:?}; all: {loads:?}"
            );
        }
    }
}

/// 16 judged `cgroup` samples, `interval` apart, of stress-ng with `args`
/// running in `group`, and their loads for messages.
fn cgroup_samples(
    group: &cgroup::V1Cgroup,
    args: &[&str],
    interval: Duration,
) -> (Vec<gstcpuguard::load::LoadSample>, Vec<String>) {
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--quiet", "--timeout", "120s"])
        .collect();
    let burner = InGroup::spawn(group, "stress-ng", &args);
    let mut meter = gstcpuguard::load::LoadMeter::new(
        gstcpuguard::load::LoadSourceKind::Cgroup,
        &gstcpuguard::load::HostPaths::system(),
        burner.pid(),
    )
    .expect("cgroup meter on stress-ng");
    let samples = samples_every(&mut meter, interval, 16);
    let loads: Vec<String> = samples.iter().map(|s| format!("{:.2}", s.load)).collect();
    assert!(samples.len() >= 14, "too few samples: {loads:?}");
    (samples, loads)
}

/// Issue #14: without a quota, a Kubernetes-managed group's `cpu.shares` is
/// the request, and an in-place resize is followed; a group that is not
/// under `kubepods` keeps measuring the host.
#[test]
fn real_v1_kubepods_shares_are_the_request_and_follow_a_resize() {
    const TEST: &str = "real_v1_kubepods_shares_are_the_request_and_follow_a_resize";
    let affinity = machine::affinity_cpus();
    let name = format!("kubepods-cpuguard-{}", std::process::id());
    // 250m, as the kubelet writes it: 250 * 1024 / 1000.
    let Some(group) = v1_group_or_skip(TEST, || cgroup::V1Cgroup::with_shares(&name, 256)) else {
        return;
    };
    let member = InGroup::spawn(&group, "sleep", &["120"]);
    let paths = gstcpuguard::load::HostPaths::system();
    let mut meter = gstcpuguard::load::LoadMeter::new(
        gstcpuguard::load::LoadSourceKind::Auto,
        &paths,
        member.pid(),
    )
    .expect("auto meter");
    let describe = meter.describe();
    assert_eq!(
        meter.source(),
        gstcpuguard::load::LoadSourceKind::Cgroup,
        "{describe}"
    );
    assert_eq!(meter.capacity(), 0.25_f64.min(affinity), "{describe}");
    assert!(describe.contains("cpu.shares"), "{describe}");
    // In-place resize to 1 CPU.
    group.set_shares(1024).unwrap();
    let sample = samples_every(&mut meter, Duration::from_millis(200), 1)
        .pop()
        .expect("a sample after the resize");
    assert_eq!(
        sample.capacity,
        1.0_f64.min(affinity),
        "{}",
        meter.describe()
    );
    drop(member);

    let plain = format!("cpuguard-shares-{}", std::process::id());
    let Some(group) = v1_group_or_skip(TEST, || cgroup::V1Cgroup::with_shares(&plain, 256)) else {
        return;
    };
    let member = InGroup::spawn(&group, "sleep", &["120"]);
    let meter = gstcpuguard::load::LoadMeter::new(
        gstcpuguard::load::LoadSourceKind::Auto,
        &paths,
        member.pid(),
    )
    .expect("auto meter");
    assert_eq!(
        meter.source(),
        gstcpuguard::load::LoadSourceKind::System,
        "{}",
        meter.describe()
    );
}

/// Hysteresis soak (not in CI: `scripts/soak.sh`, or `--ignored`): load
/// oscillating around the soft threshold for `CPUGUARD_SOAK_SECS` (default
/// 600) in dry-run, counting the drains that would have fired without
/// (`release=1`) and with (`release=5`, as LiveKit Egress) hysteresis. Both
/// elements judge the same samples.
#[test]
#[ignore = "10-minute soak: run scripts/soak.sh"]
fn hysteresis_soak() {
    const SOFT: f64 = 0.85;
    const INTERVAL_MS: u64 = 100;
    let secs: u64 = std::env::var("CPUGUARD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let seed = seed();
    let host = FakeHost::new(0.5);
    let guard = |name: &str, release: u32| {
        format!(
            "cpuguard name={name} load-source=system root={} interval={INTERVAL_MS} hold=3 \
             release={release} soft-threshold={SOFT} hard-threshold=0.99 dry-run=true",
            host.root_str()
        )
    };
    let pipeline = launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=16,height=16,framerate=10/1 \
         ! {} ! {} ! fakesink",
        guard("release1", 1),
        guard("release5", 5)
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut would = std::collections::BTreeMap::<String, u64>::new();
    let (mut samples, mut above) = (0u64, 0u64);
    std::thread::scope(|scope| {
        // The load: a slow swing of ±0.06 around the threshold with ±0.04 of
        // noise, so runs above it are broken by short dips.
        scope.spawn(|| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = start.elapsed().as_secs_f64();
                let swing = 0.06 * (t * std::f64::consts::TAU / 4.0).sin();
                host.set_load(SOFT + swing + (rng.f64() - 0.5) * 0.08);
                std::thread::sleep(Duration::from_millis(INTERVAL_MS));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(
            deadline
                .saturating_duration_since(Instant::now())
                .as_nanos() as u64,
        )) {
            let source = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
            match msg.view() {
                gst::MessageView::Error(e) => panic!("error from {source}: {}", e.error()),
                gst::MessageView::Eos(_) => panic!("the dry-run pipeline ended"),
                _ if is_element_message(&msg, "cpuguard-drain") => {
                    panic!("dry-run drained: {msg:?}")
                }
                _ if is_element_message(&msg, "cpuguard-would-drain") => {
                    *would.entry(source).or_default() += 1;
                }
                _ if is_element_message(&msg, "cpuguard-load") && source == "release1" => {
                    samples += 1;
                    let load = structure_of(&msg).get::<f64>("load").unwrap_or(0.0);
                    above += u64::from(load >= SOFT);
                }
                _ => {}
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    pipeline.set_state(gst::State::Null).unwrap();
    let (without, with) = (
        would.get("release1").copied().unwrap_or(0),
        would.get("release5").copied().unwrap_or(0),
    );
    eprintln!(
        "RELIABILITY hysteresis soak: {secs} s, {samples} samples ({:.0}% at or above soft {SOFT}), \
         hold 3; would-drain: {without} with release=1, {with} with release=5; 0 real drains; seed {seed}",
        100.0 * above as f64 / samples.max(1) as f64
    );
    assert!(
        samples > secs * 1000 / INTERVAL_MS / 2,
        "too few samples: {samples}"
    );
    // Hysteresis keeps a hovering load from never draining: with release=5 a
    // dip no longer undoes the count, so at least as many drains would fire.
    assert!(with >= without, "release=5 {with} < release=1 {without}");
    assert!(with > 0, "the oscillating load never reached a would-drain");
}
