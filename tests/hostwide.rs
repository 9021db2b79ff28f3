//! Host-wide coordination: independent `gst-launch-1.0` recorders (separate
//! processes, no common parent but the test) that judge one CPU budget drain
//! one at a time, the heaviest process first, through a test-private
//! coordination directory; separate budgets drain independently; a drainer
//! killed mid-drain frees the budget; hostile or unusable directories are
//! warned about and never cause or block a drain.
//!
//! Every recorder's `-m` output is read line by line as it comes (stdout
//! line-buffered with stdbuf), each line stamped on arrival: the order and
//! the spacing of drains come from those lines, never from sleeps.

#[allow(dead_code)]
#[path = "reliability/burner.rs"]
mod burner;
#[allow(dead_code)]
#[path = "reliability/cgroup.rs"]
mod cgroup;
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{FakeHost, plays, plugin_dir};
use gstcpuguard::hostwide::Entry;

const INTERVAL_MS: u64 = 400;
const HOLD: u32 = 4;

/// What a recorder printed, stamped on arrival.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<(Instant, String)>>,
    changed: Condvar,
}

struct Recorder {
    name: &'static str,
    child: Child,
    out: PathBuf,
    lines: Arc<Lines>,
}

/// The cpuguard element's properties common to a test's recorders.
fn guard(root: Option<&Path>, coord: &str, extra: &str) -> String {
    let root = root.map_or(String::new(), |r| format!("root={}", r.display()));
    format!(
        "cpuguard load-source=system {root} soft-threshold=0.6 hard-threshold=0.95 \
         hold={HOLD} interval={INTERVAL_MS} coordination-dir={coord} {extra}"
    )
}

/// For real load: thresholds that only a saturated host reaches (a CPU
/// burner with more spinners than CPUs), not the ordinary background load
/// of a shared test machine.
fn saturation_guard(coord: &str) -> String {
    format!(
        "cpuguard load-source=system soft-threshold=0.97 hard-threshold=0.99 hold={HOLD} \
         interval={INTERVAL_MS} coordination-dir={coord}"
    )
}

/// A live H.264 recorder of `w`x`h` at `fps`, encoded with `preset`.
fn recording(w: u32, h: u32, fps: u32, preset: &str, guard: &str, out: &Path) -> String {
    format!(
        "videotestsrc is-live=true ! video/x-raw,width={w},height={h},framerate={fps}/1 \
         ! x264enc tune=zerolatency speed-preset={preset} ! h264parse ! {guard} \
         ! mp4mux ! filesink location={}",
        out.display()
    )
}

impl Recorder {
    /// `prefix`: a shell command run first (joining a cgroup), or none.
    fn spawn(name: &'static str, pipeline: &str, out: PathBuf, prefix: Option<&str>) -> Recorder {
        let launch = format!("exec stdbuf -oL gst-launch-1.0 -e -m {pipeline}");
        let script = match prefix {
            Some(prefix) => format!("{prefix} && {launch}"),
            None => launch,
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"))
            .env_remove("CPUGUARD_COORDINATION_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh and gst-launch-1.0 run");
        let lines = Arc::new(Lines::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lines.lock().unwrap().push((Instant::now(), line));
                    lines.changed.notify_all();
                }
            });
        }
        Recorder {
            name,
            child,
            out,
            lines,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn snapshot(&self) -> Vec<(Instant, String)> {
        self.lines.lines.lock().unwrap().clone()
    }

    /// Waits for a line matching `pred` (the first one, also if already
    /// printed) and returns it with its arrival time.
    fn wait_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lines.lock().unwrap();
        loop {
            if let Some(found) = lines.iter().find(|(_, l)| pred(l)) {
                return Some(found.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = self.lines.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until `count` lines match `pred`.
    fn wait_count(&self, count: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|(_, l)| pred(l)).count() >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = self.lines.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn drain(&self) -> Option<(Instant, String)> {
        self.snapshot()
            .into_iter()
            .find(|(_, l)| l.contains("cpuguard-drain"))
    }

    fn eos(&self) -> Option<Instant> {
        self.snapshot()
            .into_iter()
            .find(|(_, l)| l.contains("Got EOS from element \"pipeline0\""))
            .map(|(at, _)| at)
    }

    fn samples_between(&self, after: Instant, until: Instant) -> usize {
        self.snapshot()
            .iter()
            .filter(|(at, l)| l.contains("cpuguard-load") && *at > after && *at <= until)
            .count()
    }

    fn count(&self, needle: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    fn dump(&self) -> String {
        self.snapshot()
            .iter()
            .filter(|(_, l)| !l.contains("cpuguard-load"))
            .map(|(_, l)| format!("  {}: {l}", self.name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=("))?;
    let rest = &line[start..];
    let value = &rest[rest.find(')')? + 1..];
    Some(value.split([',', ';']).next()?.trim())
}

fn dump(recorders: &[&Recorder]) -> String {
    recorders
        .iter()
        .map(|r| r.dump())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A test-private coordination directory (mode 0700, ours).
fn coord_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let coord = dir.path().join("coord");
    (dir, coord.to_string_lossy().into_owned())
}

/// The budget directory a FakeHost root gets (no boot id under it).
fn fake_budget_dir(coord: &str, host: &FakeHost) -> PathBuf {
    let meta = std::fs::metadata(host.root().join("proc")).unwrap();
    Path::new(coord).join(format!("root-{}-{}", meta.dev(), meta.ino()))
}

/// Whole-process CPU each recorder published in its entry.
fn published_cpu(budget: &Path, pid: i32) -> Option<f64> {
    let bytes = std::fs::read(budget.join(format!("{pid}.entry"))).ok()?;
    Entry::parse(&bytes).ok().map(|e| e.cpu)
}

fn skip_or_panic(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run in CI: {why}");
    }
    eprintln!("SKIP: {why}");
}

const LONG: Duration = Duration::from_secs(60);

/// Two light recorders (160x120 at 10 fps) guarded by `guard`, writing into
/// `dir`; each waited for until it took `samples` samples, when given.
fn light_recorders(dir: &Path, guard: &str, samples: Option<usize>) -> Vec<Recorder> {
    ["light1", "light2"]
        .into_iter()
        .map(|name| {
            let out = dir.join(format!("{name}.mp4"));
            let r = Recorder::spawn(
                name,
                &recording(160, 120, 10, "ultrafast", guard, &out),
                out,
                None,
            );
            if let Some(samples) = samples {
                started(&r, samples);
            }
            r
        })
        .collect()
}

/// Every recorder reaches EOS and its file plays.
fn assert_all_finalized(all: Vec<&Recorder>) {
    for r in all {
        r.wait_line(LONG, |l| l.contains("Got EOS from element"));
        assert!(
            plays(&r.out),
            "{} does not play:\n{}",
            r.out.display(),
            r.dump()
        );
    }
}

fn started(r: &Recorder, samples: usize) {
    assert!(
        r.wait_count(samples, LONG, |l| l.contains("cpuguard-load")),
        "{} never sampled {samples} times:\n{}",
        r.name,
        r.dump()
    );
}

/// Drains in order, checked pairwise: each after the previous one's EOS and
/// after at least `HOLD - 1` fresh samples of its own (a fresh hold; without
/// one it would drain at its first sample after the release). The lock is
/// released when the previous drain is seen complete, which may be a little
/// before its EOS line arrives here, so one sample of the hold may predate it.
fn assert_one_at_a_time(order: &[&Recorder]) {
    for pair in order.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        let prev_eos = prev
            .eos()
            .unwrap_or_else(|| panic!("{} drained but never reached EOS", prev.name));
        let (next_at, line) = next.drain().unwrap();
        assert!(
            next_at > prev_eos,
            "{} drained before {} had ended:\n{}",
            next.name,
            prev.name,
            dump(order)
        );
        let fresh = next.samples_between(prev_eos, next_at);
        // Hard: the next sample may drain; soft: a fresh hold.
        let needed = match field(&line, "trigger") {
            Some("hard") => 1,
            _ => (HOLD - 1) as usize,
        };
        assert!(
            fresh >= needed,
            "{} drained after only {fresh} samples after {} ended (hold {HOLD}): no fresh hold\n{}",
            next.name,
            prev.name,
            dump(order)
        );
    }
}

#[test]
fn heaviest_process_drains_first_then_one_at_a_time_after_a_fresh_hold() {
    let host = FakeHost::new(0.1);
    let (tmp, coord) = coord_dir();
    let g = guard(Some(host.root()), &coord, "");
    // The light ones start first and the heavy one last: its samples then
    // tend to come after theirs in each interval, so the light ones want a
    // drain first and must wait for the heavier one (a rule that let the
    // first to want go would drain a light one first).
    let light = light_recorders(tmp.path(), &g, Some(2));
    let heavy = Recorder::spawn(
        "heavy",
        &recording(640, 360, 30, "veryfast", &g, &tmp.path().join("heavy.mp4")),
        tmp.path().join("heavy.mp4"),
        None,
    );
    let all: Vec<&Recorder> = std::iter::once(&heavy).chain(light.iter()).collect();
    for r in &all {
        started(r, 4);
    }
    // The premise: the heavy process does use more CPU, as published.
    let budget = fake_budget_dir(&coord, &host);
    let cpu = |r: &Recorder| published_cpu(&budget, r.pid());
    for l in &light {
        let (h, c) = (cpu(&heavy), cpu(l));
        assert!(
            h.zip(c).is_some_and(|(h, c)| h > c),
            "heavy {h:?} CPUs is not above {} {c:?} in {}",
            l.name,
            budget.display()
        );
    }

    host.set_load(0.8);
    let first = all.iter().find_map(|r| {
        r.wait_line(LONG, |l| l.contains("cpuguard-drain"))
            .map(|d| (r, d))
    });
    let Some((_, _)) = first else {
        panic!("nothing drained:\n{}", dump(&all))
    };
    // Whoever drained, the heaviest drained and no light one did before its EOS.
    let (heavy_at, heavy_line) = heavy
        .wait_line(LONG, |l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| panic!("heavy never drained:\n{}", dump(&all)));
    assert_eq!(field(&heavy_line, "scope"), Some("host"), "{heavy_line}");
    assert_eq!(field(&heavy_line, "candidates"), Some("3"), "{heavy_line}");
    for l in &light {
        assert!(
            l.wait_line(LONG, |x| x.contains("cpuguard-drain"))
                .is_some(),
            "{} never drained after the heavy one:\n{}",
            l.name,
            dump(&all)
        );
        assert!(l.drain().unwrap().0 > heavy_at);
    }
    let mut order: Vec<&Recorder> = all.clone();
    order.sort_by_key(|r| r.drain().unwrap().0);
    assert_eq!(order[0].name, "heavy", "{}", dump(&all));
    assert_one_at_a_time(&order);
    for r in &all {
        assert_eq!(r.count("cpuguard-drain"), 1, "{}", r.dump());
    }
    assert_all_finalized(all);
}

#[test]
fn real_load_drains_the_heaviest_first_one_at_a_time() {
    if Command::new("stress-ng").arg("--version").output().is_err() {
        return skip_or_panic("stress-ng is not installed (scripts/deps.sh installs it)");
    }
    let (tmp, coord) = coord_dir();
    let g = saturation_guard(&coord);
    // Light ones first, heavy last: see the fake-host test above.
    let light = light_recorders(tmp.path(), &g, Some(2));
    let heavy_out = tmp.path().join("heavy.mp4");
    let heavy = Recorder::spawn(
        "heavy",
        &recording(640, 360, 30, "veryfast", &g, &heavy_out),
        heavy_out,
        None,
    );
    let all: Vec<&Recorder> = std::iter::once(&heavy).chain(light.iter()).collect();
    for r in &all {
        started(r, 3);
    }
    for r in &all {
        assert!(
            r.drain().is_none(),
            "drained before the burner started:\n{}",
            r.dump()
        );
    }
    // Twice as many spinners as CPUs: the host is saturated whatever else runs.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
    let _burner = burner::Burner::start(2 * cpus, &[]);
    for r in &all {
        assert!(
            r.wait_line(LONG, |l| l.contains("cpuguard-drain"))
                .is_some(),
            "{} never drained under stress-ng:\n{}",
            r.name,
            dump(&all)
        );
    }
    let mut order: Vec<&Recorder> = all.clone();
    order.sort_by_key(|r| r.drain().unwrap().0);
    assert_eq!(order[0].name, "heavy", "{}", dump(&all));
    assert_one_at_a_time(&order);
    assert_all_finalized(all);
}

#[test]
fn a_drainer_killed_mid_drain_frees_the_budget() {
    let host = FakeHost::new(0.1);
    let (tmp, coord) = coord_dir();
    // Drains forever: its guarded branch ends in a sink that waits an hour
    // for its first buffer, so the EOS never gets through. A second branch
    // makes it the heaviest process.
    let g = guard(Some(host.root()), &coord, "drain-timeout=0");
    let hanger = Recorder::spawn(
        "hanger",
        &format!(
            "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1 ! {g} \
             ! fakesink sync=true ts-offset=3600000000000 \
             videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=veryfast ! fakesink"
        ),
        tmp.path().join("none"),
        None,
    );
    started(&hanger, 2);
    let light = light_recorders(tmp.path(), &g, None);
    for r in std::iter::once(&hanger).chain(light.iter()) {
        started(r, 4);
    }
    host.set_load(0.8);
    let (hang_at, _) = hanger
        .wait_line(LONG, |l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| {
            panic!(
                "the heaviest did not drain first:\n{}{}",
                hanger.dump(),
                light[0].dump()
            )
        });
    // While its drain hangs, the others wait: two holds' worth of samples.
    let seen = light[0].count("cpuguard-load");
    assert!(light[0].wait_count(seen + 2 * HOLD as usize, LONG, |l| {
        l.contains("cpuguard-load")
    }));
    for l in &light {
        assert!(
            l.drain().is_none(),
            "{} drained during a drain in flight:\n{}",
            l.name,
            l.dump()
        );
        assert!(l.samples_between(hang_at, Instant::now()) > 0);
    }
    let mut hanger = hanger;
    let _ = hanger.child.kill();
    let _ = hanger.child.wait();
    let killed = Instant::now();
    let next = light.iter().find_map(|l| {
        l.wait_line(LONG, |x| x.contains("cpuguard-drain"))
            .map(|d| (l, d))
    });
    let Some((first, (at, _))) = next else {
        panic!("nobody drained after the drainer was killed")
    };
    let other = light.iter().find(|l| l.name != first.name).unwrap();
    let (first, at) = match other.drain() {
        Some((other_at, _)) if other_at < at => (other, other_at),
        _ => (first, at),
    };
    let took = at - killed;
    // One interval to see the lock gone, then a fresh hold; plus slack for
    // a loaded 2-CPU test machine.
    let bound = Duration::from_millis(INTERVAL_MS * u64::from(HOLD + 1)) + Duration::from_secs(2);
    assert!(
        took <= bound,
        "{} drained {took:?} after the kill (bound {bound:?})",
        first.name
    );
    assert!(
        first.samples_between(killed, at) >= (HOLD - 1) as usize,
        "no fresh hold after the kill:\n{}",
        first.dump()
    );
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A CPU burner inside a cgroup, killed (with its workers) on drop.
struct CgroupBurner(Child);

impl CgroupBurner {
    fn start(join: &str, workers: u32) -> CgroupBurner {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{join} && exec stress-ng --cpu {workers} --timeout 900s --quiet"
            ))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("stress-ng runs");
        CgroupBurner(child)
    }
}

impl Drop for CgroupBurner {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A pipeline whose drain never completes: its sink waits an hour for its
/// first buffer, so the EOS never gets through.
fn hanging(guard: &str) -> String {
    format!(
        "videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=10/1 ! {guard} \
         ! fakesink sync=true ts-offset=3600000000000"
    )
}

#[test]
fn separate_cgroup_budgets_drain_independently() {
    if !is_root() || Command::new("stress-ng").arg("--version").output().is_err() {
        return skip_or_panic("needs root (v1 cgroups) and stress-ng");
    }
    let tag = std::process::id();
    let quota = 0.5;
    let groups: Vec<cgroup::V1Cgroup> = match ["a", "b"]
        .iter()
        .map(|n| cgroup::V1Cgroup::with_quota(&format!("cpuguard-hostwide-{tag}-{n}"), quota))
        .collect::<Result<_, _>>()
    {
        Ok(groups) => groups,
        Err(why) => return skip_or_panic(&format!("no v1 cgroups with a quota here: {why}")),
    };
    let (tmp, coord) = coord_dir();
    let g = format!(
        "cpuguard load-source=cgroup soft-threshold=0.6 hard-threshold=0.95 hold={HOLD} \
         interval={INTERVAL_MS} coordination-dir={coord} drain-timeout=0"
    );
    // A's drain hangs and keeps A's drain lock for good: B, with its own
    // quota, must drain all the same.
    let a = Recorder::spawn(
        "cgroup-a",
        &hanging(&g),
        tmp.path().join("none"),
        Some(&groups[0].join_script()),
    );
    let b_out = tmp.path().join("b.mp4");
    let b = Recorder::spawn(
        "cgroup-b",
        &recording(160, 120, 10, "ultrafast", &g, &b_out),
        b_out,
        Some(&groups[1].join_script()),
    );
    started(&a, 3);
    started(&b, 3);
    assert!(
        a.drain().is_none() && b.drain().is_none(),
        "{}{}",
        a.dump(),
        b.dump()
    );
    let _burn_a = CgroupBurner::start(&groups[0].join_script(), 1);
    let (_, a_line) = a
        .wait_line(LONG, |l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| panic!("A never drained:\n{}", a.dump()));
    assert_eq!(field(&a_line, "scope"), Some("cgroup"), "{a_line}");
    assert_eq!(field(&a_line, "candidates"), Some("1"), "{a_line}");
    let _burn_b = CgroupBurner::start(&groups[1].join_script(), 1);
    let (_, b_line) = b
        .wait_line(LONG, |l| l.contains("cpuguard-drain"))
        .unwrap_or_else(|| {
            panic!(
                "B never drained while A's drain hung:\n{}{}",
                a.dump(),
                b.dump()
            )
        });
    assert_eq!(field(&b_line, "scope"), Some("cgroup"), "{b_line}");
    assert_eq!(field(&b_line, "candidates"), Some("1"), "{b_line}");
    assert!(a.eos().is_none(), "A's drain was to hang:\n{}", a.dump());
    let budgets: Vec<String> = std::fs::read_dir(&coord)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        budgets.iter().filter(|n| n.starts_with("cgroup-")).count(),
        2,
        "{budgets:?}"
    );
    b.wait_line(LONG, |l| l.contains("Got EOS from element"));
    assert!(
        plays(&b.out),
        "{} does not play:\n{}",
        b.out.display(),
        b.dump()
    );
}

/// One recorder on a fake host whose coordination directory is `coord`:
/// with the load low for two holds it must not drain, with the load high
/// it must (nothing in the directory may block it). Returns the recorder
/// after its drain.
fn calm_then_drains(host: &FakeHost, coord: &str, name: &'static str) -> Recorder {
    let tmp = host.root().join(format!("{name}.mp4"));
    let g = guard(Some(host.root()), coord, "");
    let r = Recorder::spawn(
        name,
        &recording(160, 120, 10, "ultrafast", &g, &tmp),
        tmp,
        None,
    );
    started(&r, 2 * HOLD as usize + 1);
    assert!(
        r.drain().is_none(),
        "false drain at low load:\n{}",
        r.dump()
    );
    host.set_load(0.8);
    assert!(
        r.wait_line(LONG, |l| l.contains("cpuguard-drain"))
            .is_some(),
        "never drained:\n{}",
        r.dump()
    );
    r.wait_line(LONG, |l| l.contains("Got EOS from element"));
    assert!(
        plays(&r.out),
        "{} does not play:\n{}",
        r.out.display(),
        r.dump()
    );
    r
}

/// The WARNING lines gst-launch-1.0 -m printed that contain `needle`.
fn warnings(r: &Recorder, needle: &str) -> usize {
    r.snapshot()
        .iter()
        .filter(|(_, l)| l.starts_with("WARNING") && l.contains(needle))
        .count()
}

/// An unusable directory: one warning naming the problem, no false drain,
/// and the drain still happens, chosen in-process.
fn unusable_dir(name: &'static str, prepare: impl FnOnce(&Path) -> String, warning: &str) {
    let host = FakeHost::new(0.1);
    let tmp = tempfile::tempdir().unwrap();
    let coord = prepare(tmp.path());
    let r = calm_then_drains(&host, &coord, name);
    assert_eq!(warnings(&r, warning), 1, "{}", r.dump());
    assert_eq!(
        warnings(&r, "drains are coordinated within this process only"),
        1
    );
    let (_, line) = r.drain().unwrap();
    assert_eq!(field(&line, "scope"), Some("process"), "{line}");
}

#[test]
fn directory_of_another_user_is_refused() {
    if !is_root() {
        return skip_or_panic("needs root to chown a directory to another user");
    }
    unusable_dir(
        "wrong-owner",
        |tmp| {
            let dir = tmp.join("coord");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            dir.to_string_lossy().into_owned()
        },
        "belongs to uid 65534",
    );
}

#[test]
fn directory_open_to_others_is_refused() {
    unusable_dir(
        "open-mode",
        |tmp| {
            let dir = tmp.join("coord");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            dir.to_string_lossy().into_owned()
        },
        "has mode 0777; it must be 0700",
    );
}

#[test]
fn symlinked_directory_is_refused() {
    unusable_dir(
        "symlink",
        |tmp| {
            let real = tmp.join("real");
            std::fs::create_dir(&real).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
            let link = tmp.join("coord");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            link.to_string_lossy().into_owned()
        },
        "is a symlink",
    );
}

/// A read-only tmpfs mounted for the test, unmounted on drop.
struct ReadOnlyMount(PathBuf);

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_directory_falls_back() {
    if !is_root() {
        return skip_or_panic("needs root to mount a read-only tmpfs (root ignores file modes)");
    }
    let mut mount = None;
    unusable_dir(
        "read-only",
        |tmp| {
            let dir = tmp.join("coord");
            std::fs::create_dir(&dir).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,mode=0700", "tmpfs"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot mount a read-only tmpfs on {}", dir.display());
            mount = Some(ReadOnlyMount(dir.clone()));
            dir.to_string_lossy().into_owned()
        },
        "Read-only file system",
    );
    drop(mount);
}

#[test]
fn hostile_entries_are_ignored_with_one_warning_each() {
    if !is_root() {
        return skip_or_panic("needs root to make another user's entry");
    }
    let host = FakeHost::new(0.1);
    let (_tmp, coord) = coord_dir();
    let budget = fake_budget_dir(&coord, &host);
    std::fs::create_dir_all(&budget).unwrap();
    for dir in [Path::new(&coord), budget.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // Heavy, wanting entries that would win every ranking if believed.
    let entry = |pid: i32, uid: u32| Entry {
        pid,
        uid,
        cpu: 64.0,
        wants: true,
        interval_ms: INTERVAL_MS,
        seq: 1,
        at_ms: u64::MAX / 2,
    };
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id() as i32;
    dead.wait().unwrap();
    std::fs::write(
        budget.join(format!("{dead_pid}.entry")),
        entry(dead_pid, 0).encode(),
    )
    .unwrap();
    std::fs::write(budget.join("999991.entry"), b"garbage\n").unwrap();
    std::fs::write(budget.join("999992.entry"), vec![b'x'; 4096]).unwrap();
    let other = budget.join("999993.entry");
    std::fs::write(&other, entry(999993, 65534).encode()).unwrap();
    std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", budget.join("999994.entry")).unwrap();
    // A FIFO would block a plain open: it must not hang the sampler.
    let fifo = Command::new("mkfifo")
        .arg(budget.join("999995.entry"))
        .status();
    assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");

    let r = calm_then_drains(&host, &coord, "hostile");
    let (_, line) = r.drain().unwrap();
    assert_eq!(field(&line, "scope"), Some("host"), "{line}");
    assert_eq!(field(&line, "candidates"), Some("1"), "{line}");
    for kind in [
        "ignores a malformed entry",
        "ignores an oversized entry",
        "ignores an entry of a dead process",
        "ignores an entry of another user",
        "ignores a symlink or non-regular entry",
    ] {
        assert_eq!(warnings(&r, kind), 1, "{kind}:\n{}", r.dump());
    }
    // The dead process's entry was cleared away; the others stay, unread.
    assert!(!budget.join(format!("{dead_pid}.entry")).exists());
}
