//! LoadMeter against fixture hosts (`tests/fixtures/hosts/<name>/`) and the real machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;

pub(super) const PID: i32 = 4242;

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hosts")
        .join(name)
}

/// A writable copy of a fixture host, so tests can move counters.
struct Host {
    dir: TempDir,
    paths: HostPaths,
}

impl Host {
    fn copy(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture(name), dir.path());
        let paths = HostPaths::under(dir.path());
        Self { dir, paths }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn remove(&self, rel: &str) {
        fs::remove_file(self.path(rel)).unwrap();
    }

    fn meter(&self, kind: LoadSourceKind, t0: Instant) -> LoadMeter {
        LoadMeter::new_at(kind, &self.paths, PID, t0)
            .unwrap_or_else(|err| panic!("{kind} meter: {err}"))
    }

    /// An auto meter, which must have chosen the cgroup.
    fn auto_cgroup_meter(&self, t0: Instant) -> LoadMeter {
        let meter = self.meter(LoadSourceKind::Auto, t0);
        assert_eq!(
            meter.source(),
            LoadSourceKind::Cgroup,
            "{}",
            meter.describe()
        );
        meter
    }

    /// Why a `kind` meter does not start on this host.
    fn start_error(&self, kind: LoadSourceKind) -> String {
        LoadMeter::new_at(kind, &self.paths, PID, Instant::now())
            .map(|m| m.describe())
            .expect_err("meter should not start")
            .to_string()
    }
}

pub(super) fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fixture_meter(name: &str, kind: LoadSourceKind) -> LoadMeter {
    LoadMeter::new_at(kind, &HostPaths::under(fixture(name)), PID, Instant::now())
        .unwrap_or_else(|err| panic!("{name} {kind} meter: {err}"))
}

fn fixture_error(name: &str, kind: LoadSourceKind) -> String {
    LoadMeter::new_at(kind, &HostPaths::under(fixture(name)), PID, Instant::now())
        .map(|m| m.describe())
        .expect_err("meter should not start")
        .to_string()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "load {actual}, expected {expected}"
    );
}

const V2_USAGE: &str = "sys/fs/cgroup/system.slice/app.service/cpu.stat";
const V2_MAX: &str = "sys/fs/cgroup/system.slice/app.service/cpu.max";
const V1_USAGE: &str = "sys/fs/cgroup/cpuacct/job/cpuacct.usage";

fn usage_usec(value: u64) -> String {
    format!("usage_usec {value}\nuser_usec 0\nsystem_usec 0\n")
}

/// The fixtures' /proc/<pid>/stat with utime and stime replaced.
fn pid_stat(utime: u64, stime: u64) -> String {
    format!(
        "4242 (gst (launch) 1) R 1 4242 4242 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 4 0 12345 1000 200\n"
    )
}

// ---------------------------------------------------------------- kinds

#[test]
fn source_kinds_round_trip_through_strings() {
    for kind in LoadSourceKind::ALL {
        assert_eq!(kind.as_str().parse::<LoadSourceKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.as_str());
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{kind}\""));
        assert_eq!(serde_json::from_str::<LoadSourceKind>(&json).unwrap(), kind);
    }
    let err = serde_json::from_str::<LoadSourceKind>("\"cpu\"").unwrap_err();
    assert!(err.to_string().contains("cpu"), "{err}");
    assert_eq!(
        " PSI ".parse::<LoadSourceKind>().unwrap(),
        LoadSourceKind::Psi
    );
    let err = "cpu".parse::<LoadSourceKind>().unwrap_err().to_string();
    assert!(err.contains("\"cpu\""), "{err}");
    assert!(err.contains("auto, process, cgroup, system, psi"), "{err}");
}

#[test]
fn meter_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<LoadMeter>();
}

// ---------------------------------------------------------------- cgroup v2

#[test]
fn v2_cgroup_load_is_usage_over_wall_times_quota() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_eq!(meter.source(), LoadSourceKind::Cgroup);
    assert_eq!(meter.capacity(), 1.5);

    // 0.75 CPU-seconds in 1 s against 1.5 CPUs.
    host.write(V2_USAGE, &usage_usec(5_000_000 + 750_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.source, LoadSourceKind::Cgroup);
    assert_eq!(sample.capacity, 1.5);
    assert_close(sample.load, 0.5);

    // Whole quota used for 2 s: saturated, must not read below 1.
    host.write(V2_USAGE, &usage_usec(5_750_000 + 3_000_000));
    let sample = meter.sample(t0 + secs(3)).unwrap();
    assert!(sample.load >= 1.0, "saturated load read {}", sample.load);
    assert_close(sample.load, 1.0);

    let describe = meter.describe();
    assert!(describe.contains("source=cgroup"), "{describe}");
    assert!(
        describe.contains("cgroup v2 /system.slice/app.service"),
        "{describe}"
    );
    assert!(describe.contains("app.service/cpu.stat"), "{describe}");
    assert!(describe.contains("capacity 1.50 CPUs"), "{describe}");
    assert!(describe.contains("app.service/cpu.max"), "{describe}");
}

#[test]
fn parent_quota_tighter_than_leaf_wins() {
    let meter = fixture_meter("nested-quota", LoadSourceKind::Cgroup);
    // ctr 1.5, pod1 0.5, affinity 4, online 8.
    assert_eq!(meter.capacity(), 0.5);
    let describe = meter.describe();
    assert!(describe.contains("pod1/cpu.max"), "{describe}");
    assert!(describe.contains("affinity 4, online 8"), "{describe}");
}

#[test]
fn unlimited_max_leaves_affinity_and_online() {
    let host = Host::copy("v2");
    host.write(V2_MAX, "max 100000\n");
    host.write("proc/4242/status", "Name:\tx\nCpus_allowed_list:\t0-1\n");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_eq!(meter.capacity(), 2.0);

    host.write("sys/devices/system/cpu/online", "0\n");
    host.write(V2_USAGE, &usage_usec(5_000_000 + 500_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.capacity, 1.0);
    assert_close(sample.load, 0.5);
}

#[test]
fn quota_change_between_samples_is_picked_up() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_eq!(meter.capacity(), 1.5);

    host.write(V2_MAX, "100000 100000\n");
    host.write(V2_USAGE, &usage_usec(5_000_000 + 1_000_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.capacity, 1.0);
    assert_eq!(meter.capacity(), 1.0);
    assert_close(sample.load, 1.0);
}

// ---------------------------------------------------------------- cgroup v1

#[test]
fn v1_split_reads_cpuacct_against_cpu_quota() {
    let host = Host::copy("v1-split");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_eq!(meter.capacity(), 0.5);

    host.write(V1_USAGE, "2250000000\n");
    assert_close(meter.sample(t0 + secs(1)).unwrap().load, 0.5);

    // A throttled cgroup using its whole 0.5 CPU quota reads ~1.0, not 0.
    host.write(V1_USAGE, "2750000000\n");
    let sample = meter.sample(t0 + secs(2)).unwrap();
    assert!(sample.load >= 1.0, "saturated load read {}", sample.load);
    assert_close(sample.load, 1.0);

    let describe = meter.describe();
    assert!(describe.contains("cgroup v1 /job"), "{describe}");
    assert!(describe.contains("cpuacct/job/cpuacct.usage"), "{describe}");
    assert!(describe.contains("cpu/job/cpu.cfs_quota_us"), "{describe}");
}

#[test]
fn v1_joint_mount_strips_the_mount_root_prefix() {
    let host = Host::copy("v1-joint");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    // Leaf quota -1, mount root 2 CPUs, affinity "0-2,5" = 4, online 8.
    assert_eq!(meter.capacity(), 2.0);
    let describe = meter.describe();
    assert!(
        describe.contains("cgroup v1 /docker/abc123/worker"),
        "{describe}"
    );
    assert!(
        describe.contains("cpu,cpuacct/worker/cpuacct.usage"),
        "{describe}"
    );

    host.write(
        "sys/fs/cgroup/cpu,cpuacct/worker/cpuacct.usage",
        "2000000000\n",
    );
    assert_close(meter.sample(t0 + secs(2)).unwrap().load, 0.25);
}

#[test]
fn hybrid_host_uses_v1_cpu_not_the_unified_hierarchy() {
    let host = Host::copy("hybrid");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_eq!(meter.capacity(), 2.0);
    let describe = meter.describe();
    assert!(describe.contains("cgroup v1 /user.slice"), "{describe}");
    assert!(
        describe.contains("no quota up to the cgroup mount root"),
        "{describe}"
    );

    host.write(
        "sys/fs/cgroup/cpuacct/user.slice/cpuacct.usage",
        "4000000000\n",
    );
    assert_close(meter.sample(t0 + secs(1)).unwrap().load, 0.5);
}

#[test]
fn minus_one_quota_everywhere_means_unlimited() {
    let host = Host::copy("v1-split");
    host.write("sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "-1\n");
    let meter = host.meter(LoadSourceKind::Cgroup, Instant::now());
    assert_eq!(meter.capacity(), 2.0);
    let auto = host.meter(LoadSourceKind::Auto, Instant::now());
    assert_eq!(auto.source(), LoadSourceKind::System);
}

#[test]
fn no_cpu_controller_is_a_clear_error() {
    let err = fixture_error("no-cgroup", LoadSourceKind::Cgroup);
    assert!(
        err.starts_with("no cpu controller found for pid 4242 in "),
        "{err}"
    );
    assert!(err.ends_with("no-cgroup/proc/4242/cgroup"), "{err}");
}

#[test]
fn vanished_cgroup_directory_is_an_error() {
    let host = Host::copy("v1-split");
    fs::remove_dir_all(host.path("sys/fs/cgroup/cpu/job")).unwrap();
    let err = LoadMeter::new_at(LoadSourceKind::Cgroup, &host.paths, PID, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cgroup /job of pid 4242 not found at "),
        "{err}"
    );
    assert!(err.contains("sys/fs/cgroup/cpu/job"), "{err}");
}

#[test]
fn cgroup_removed_while_running_is_found_again() {
    let host = Host::copy("v1-split");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    // The process is moved to /other (1.5 CPUs) and /job is removed.
    host.write("sys/fs/cgroup/cpu/other/cpu.cfs_quota_us", "150000\n");
    host.write("sys/fs/cgroup/cpu/other/cpu.cfs_period_us", "100000\n");
    host.write("sys/fs/cgroup/cpuacct/other/cpuacct.usage", "1000000000\n");
    host.write(
        "proc/4242/cgroup",
        "4:cpu:/other\n3:cpuacct:/other\n1:name=systemd:/init.scope\n",
    );
    fs::remove_dir_all(host.path("sys/fs/cgroup/cpu/job")).unwrap();
    fs::remove_dir_all(host.path("sys/fs/cgroup/cpuacct/job")).unwrap();

    let err = meter.sample(t0 + secs(1)).unwrap_err();
    assert!(matches!(err, LoadError::Relocated { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("cpu/job is gone"), "{text}");
    assert!(text.contains("cgroup v1 /other"), "{text}");

    host.write("sys/fs/cgroup/cpuacct/other/cpuacct.usage", "1750000000\n");
    let sample = meter.sample(t0 + secs(2)).unwrap();
    assert_close(sample.capacity, 1.5);
    assert_close(sample.load, 0.5);
}

#[test]
fn cgroup_outside_the_mount_root_is_an_error() {
    let host = Host::copy("v1-joint");
    host.write("proc/4242/cgroup", "5:cpu,cpuacct:/docker/other/worker\n");
    let err = LoadMeter::new_at(LoadSourceKind::Cgroup, &host.paths, PID, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cgroup /docker/other/worker of pid 4242"),
        "{err}"
    );
}

// ---------------------------------------------------------------- auto

#[test]
fn auto_picks_cgroup_when_a_quota_limits_the_process() {
    for name in ["v2", "v1-split", "v1-joint", "nested-quota"] {
        let meter = fixture_meter(name, LoadSourceKind::Auto);
        assert_eq!(meter.source(), LoadSourceKind::Cgroup, "{name}");
        let describe = meter.describe();
        assert!(describe.contains("source=cgroup (auto: "), "{describe}");
        assert!(describe.contains("is limited to"), "{describe}");
    }
}

#[test]
fn auto_picks_system_without_a_quota_and_says_why() {
    let meter = fixture_meter("hybrid", LoadSourceKind::Auto);
    assert_eq!(meter.source(), LoadSourceKind::System);
    assert_eq!(meter.capacity(), 2.0);
    let describe = meter.describe();
    assert!(describe.contains("source=system (auto: "), "{describe}");
    assert!(describe.contains("has no CPU quota"), "{describe}");

    let meter = fixture_meter("no-cgroup", LoadSourceKind::Auto);
    assert_eq!(meter.source(), LoadSourceKind::System);
    let describe = meter.describe();
    assert!(describe.contains("no CPU cgroup to follow"), "{describe}");
    assert!(describe.contains("no cpu controller found"), "{describe}");
}

#[test]
fn auto_measures_the_process_when_quota_has_no_usage_counter() {
    let host = Host::copy("v1-split");
    let mountinfo = fs::read_to_string(host.path("proc/4242/mountinfo")).unwrap();
    let without_cpuacct: String = mountinfo
        .lines()
        .filter(|l| !l.ends_with("rw,cpuacct"))
        .map(|l| format!("{l}\n"))
        .collect();
    host.write("proc/4242/mountinfo", &without_cpuacct);

    let meter = host.meter(LoadSourceKind::Auto, Instant::now());
    assert_eq!(meter.source(), LoadSourceKind::Process);
    assert_eq!(meter.capacity(), 0.5);
    let describe = meter.describe();
    assert!(describe.contains("no cpuacct hierarchy"), "{describe}");

    let err = host.start_error(LoadSourceKind::Cgroup);
    assert!(err.contains("no cpuacct hierarchy mounted"), "{err}");
}

// ---------------------------------------------------------------- process

#[test]
fn process_load_is_cpu_time_over_wall_times_capacity() {
    let host = Host::copy("v2");
    let tps = procfs::ticks_per_second();
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Process, t0);
    assert_eq!(meter.source(), LoadSourceKind::Process);
    // The quota bounds the process too.
    assert_eq!(meter.capacity(), 1.5);

    // 0.75 s of CPU (in ticks) over 1 s, 1.5 CPUs.
    let delta = tps * 3 / 4;
    host.write("proc/4242/stat", &pid_stat(250 + delta, 50));
    let expected = delta as f64 / tps as f64 / 1.5;
    assert_close(meter.sample(t0 + secs(1)).unwrap().load, expected);

    // Saturation: 1.5 CPU-seconds per second.
    let delta2 = tps * 3 / 2;
    host.write("proc/4242/stat", &pid_stat(250 + delta, 50 + delta2));
    let sample = meter.sample(t0 + secs(2)).unwrap();
    assert_close(sample.load, delta2 as f64 / tps as f64 / 1.5);
    if tps.is_multiple_of(2) {
        assert!(sample.load >= 1.0, "saturated load read {}", sample.load);
    }
    assert!(meter.describe().contains("CPU time of pid 4242"));
}

#[test]
fn process_window_shorter_than_ten_ticks_is_refused() {
    let host = Host::copy("v2");
    let tps = procfs::ticks_per_second();
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Process, t0);
    host.write("proc/4242/stat", &pid_stat(251, 50));
    let short = Duration::from_secs_f64(5.0 / tps as f64);
    let err = meter.sample(t0 + short).unwrap_err();
    assert!(matches!(err, LoadError::WindowTooShort { .. }), "{err}");
    assert!(err.to_string().contains("proc/4242/stat"), "{err}");

    // The baseline was kept: the next window spans from t0.
    host.write("proc/4242/stat", &pid_stat(250 + tps, 50));
    assert_close(meter.sample(t0 + secs(2)).unwrap().load, 1.0 / 2.0 / 1.5);
}

#[test]
fn process_and_thread_cpu_seconds_read_fixtures() {
    let tps = procfs::ticks_per_second() as f64;
    let paths = HostPaths::under(fixture("v2"));
    assert_close(process_cpu_seconds(&paths, PID).unwrap(), 300.0 / tps);
    assert_close(thread_cpu_seconds(&paths, PID, 4243).unwrap(), 100.0 / tps);
    let err = thread_cpu_seconds(&paths, PID, 9999)
        .unwrap_err()
        .to_string();
    assert!(err.contains("proc/4242/task/9999/stat"), "{err}");
}

// ---------------------------------------------------------------- system

#[test]
fn system_load_is_busy_share_without_guest() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::System, t0);
    // Capacity is the online CPUs, whatever the quota.
    assert_eq!(meter.capacity(), 4.0);

    // busy 1800 -> 2000, idle 8200 -> 8300; guest +100 is inside user already.
    host.write(
        "proc/stat",
        "cpu  1100 100 550 8100 200 60 60 130 400 0\ncpu0 1 1 1 1\n",
    );
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.source, LoadSourceKind::System);
    assert_eq!(sample.capacity, 4.0);
    assert_close(sample.load, 200.0 / 300.0);

    // Fully busy host: no idle at all reads 1.0, not 0.
    host.write(
        "proc/stat",
        "cpu  1500 100 550 8100 200 60 60 130 400 0\ncpu0 1 1 1 1\n",
    );
    let sample = meter.sample(t0 + secs(2)).unwrap();
    assert_eq!(sample.load, 1.0);
}

#[test]
fn online_cpus_fall_back_to_proc_stat() {
    // no-cgroup has no sys/devices/system/cpu/online and three cpuN lines.
    let meter = fixture_meter("no-cgroup", LoadSourceKind::System);
    assert_eq!(meter.capacity(), 3.0);
    assert!(meter.describe().contains("online 3"));
}

/// The error of a system meter's sample one second after it started on the
/// v2 host, once `change` has been made to the host's files, with its text.
fn system_sample_error(change: impl FnOnce(&Host)) -> (LoadError, String) {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::System, t0);
    change(&host);
    let err = meter.sample(t0 + secs(1)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("proc/stat"), "{message}");
    (err, message)
}

#[test]
fn unchanged_proc_stat_is_no_time_elapsed_not_zero() {
    let (err, message) = system_sample_error(|_| {});
    assert!(matches!(err, LoadError::NoTimeElapsed { .. }), "{err}");
    assert!(message.starts_with("no time elapsed"), "{message}");
}

// ---------------------------------------------------------------- psi

#[test]
fn psi_follows_the_cgroup_pressure_file_on_v2() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Psi, t0);
    assert_eq!(meter.source(), LoadSourceKind::Psi);
    assert_eq!(meter.capacity(), 1.5);
    assert!(meter.describe().contains("app.service/cpu.pressure"));

    host.write(
        "sys/fs/cgroup/system.slice/app.service/cpu.pressure",
        "some avg10=1.00 avg60=0.50 avg300=0.10 total=450000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n",
    );
    assert_close(meter.sample(t0 + secs(1)).unwrap().load, 0.25);
}

#[test]
fn psi_follows_the_unified_cgroup_on_hybrid_hosts() {
    let meter = fixture_meter("hybrid", LoadSourceKind::Psi);
    let describe = meter.describe();
    assert!(
        describe.contains("unified/user.slice/session-1.scope/cpu.pressure"),
        "{describe}"
    );
}

#[test]
fn psi_some_only_file_parses() {
    let host = Host::copy("psi-some-only");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Psi, t0);
    assert!(meter.describe().contains("proc/pressure/cpu"));
    host.write(
        "proc/pressure/cpu",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1300000\n",
    );
    assert_close(meter.sample(t0 + secs(2)).unwrap().load, 0.15);

    // Fully stalled, with our clock a hair behind the kernel's.
    host.write(
        "proc/pressure/cpu",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=2310000\n",
    );
    assert_eq!(meter.sample(t0 + secs(3)).unwrap().load, 1.0);
}

#[test]
fn psi_missing_is_unavailable() {
    let err = fixture_error("v1-joint", LoadSourceKind::Psi);
    assert!(err.starts_with("psi not available: "), "{err}");
    assert!(err.contains("v1-joint/proc/pressure/cpu"), "{err}");
}

// ---------------------------------------------------------------- errors

#[test]
fn counter_going_backwards_errs_then_recovers() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);

    host.write(V2_USAGE, &usage_usec(100));
    let err = meter.sample(t0 + secs(1)).unwrap_err();
    assert!(
        matches!(err, LoadError::CounterWentBackwards { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("counter went backwards in "),
        "{message}"
    );
    assert!(
        message.ends_with("app.service/cpu.stat (5000000 -> 100); re-baselining"),
        "{message}"
    );

    // Re-baselined at t0+1s on the new value.
    host.write(V2_USAGE, &usage_usec(100 + 750_000));
    assert_close(meter.sample(t0 + secs(2)).unwrap().load, 0.5);
}

#[test]
fn missing_counter_file_errs_naming_it_then_rebaselines() {
    let host = Host::copy("v1-split");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);

    host.remove(V1_USAGE);
    let err = meter.sample(t0 + secs(1)).unwrap_err().to_string();
    let path = host.path(V1_USAGE);
    assert_eq!(
        err,
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            path.display()
        )
    );

    host.write(V1_USAGE, "5000000000\n");
    let err = meter.sample(t0 + secs(2)).unwrap_err();
    assert!(matches!(err, LoadError::Rebaselined { .. }), "{err}");

    host.write(V1_USAGE, "5250000000\n");
    assert_close(meter.sample(t0 + secs(3)).unwrap().load, 0.5);
}

#[test]
fn missing_files_at_start_name_the_path() {
    let err = LoadMeter::new(
        LoadSourceKind::System,
        &HostPaths::under("/nonexistent-root"),
        PID,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("cannot read /nonexistent-root/proc/stat: "),
        "{err}"
    );
    let meter = fixture_meter("no-cgroup", LoadSourceKind::Process);
    let describe = meter.describe();
    assert!(describe.contains("no cgroup quota known"), "{describe}");
}

#[test]
fn malformed_counter_is_an_error() {
    let (err, message) = system_sample_error(|host| host.write("proc/stat", "cpu  garbage\n"));
    assert!(matches!(err, LoadError::Malformed { .. }), "{err}");
    assert!(message.starts_with("malformed "), "{message}");
}

#[test]
fn malformed_quota_is_an_error_and_rebaselines() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    host.write(V2_MAX, "lots 100000\n");
    host.write(V2_USAGE, &usage_usec(6_000_000));
    let err = meter.sample(t0 + secs(1)).unwrap_err().to_string();
    assert!(err.starts_with("malformed "), "{err}");
    assert!(err.contains("app.service/cpu.max"), "{err}");

    // The counters read at t0+1s became the baseline.
    host.write(V2_MAX, "150000 100000\n");
    host.write(V2_USAGE, &usage_usec(6_750_000));
    assert_close(meter.sample(t0 + secs(2)).unwrap().load, 0.5);
}

#[test]
fn zero_elapsed_wall_time_is_an_error_not_zero() {
    let host = Host::copy("v2");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    let err = meter.sample(t0).unwrap_err();
    assert!(matches!(err, LoadError::NoTimeElapsed { .. }), "{err}");
    assert!(err.to_string().starts_with("no time elapsed"), "{err}");

    // The baseline from t0 still stands.
    host.write(V2_USAGE, &usage_usec(5_750_000));
    assert_close(meter.sample(t0 + secs(1)).unwrap().load, 0.5);
}

#[test]
fn malformed_discovery_files_are_errors() {
    let host = Host::copy("v2");
    host.write("proc/4242/mountinfo", "1 2 3\n");
    let err = LoadMeter::new_at(LoadSourceKind::Cgroup, &host.paths, PID, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("malformed "), "{err}");
    assert!(err.contains("proc/4242/mountinfo"), "{err}");

    host.write("proc/4242/status", "Name:\tx\n");
    let err = LoadMeter::new_at(LoadSourceKind::Process, &host.paths, PID, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Cpus_allowed_list line"), "{err}");
}

// ---------------------------------------------------------------- real host

fn burn_cpu(duration: Duration) {
    thread::spawn(move || {
        let end = Instant::now() + duration;
        let mut x = 0u64;
        while Instant::now() < end {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    })
    .join()
    .unwrap();
}

#[test]
fn real_host_every_available_source() {
    let paths = HostPaths::system();
    let pid = i32::try_from(std::process::id()).unwrap();
    for kind in LoadSourceKind::ALL {
        let mut meter = match LoadMeter::new(kind, &paths, pid) {
            Ok(meter) => meter,
            Err(err) => {
                assert!(
                    !matches!(kind, LoadSourceKind::Process | LoadSourceKind::System),
                    "{kind} must work on any Linux host: {err}"
                );
                eprintln!("{kind}: not available here: {err}");
                continue;
            }
        };
        eprintln!("{kind}: {}", meter.describe());
        burn_cpu(Duration::from_millis(200));
        let sample = meter
            .sample(Instant::now())
            .unwrap_or_else(|err| panic!("{kind}: {err}"));
        eprintln!("{kind}: {sample:?}");
        assert!(sample.load.is_finite() && sample.load >= 0.0, "{sample:?}");
        assert!(sample.capacity > 0.0, "{sample:?}");
        assert_ne!(sample.source, LoadSourceKind::Auto);
        if sample.source == LoadSourceKind::Process {
            assert!(sample.load > 0.0, "{kind}: burnt CPU but read {sample:?}");
        }
    }
}

// ---------------------------------------------------------------- CPU request

fn request(text: &str) -> Option<CpuRequest> {
    Some(text.parse().unwrap_or_else(|err| panic!("{text}: {err}")))
}

fn request_meter(host: &str, kind: LoadSourceKind, cpus: &str, t0: Instant) -> LoadMeter {
    LoadMeter::with_request_at(
        kind,
        &HostPaths::under(fixture(host)),
        PID,
        request(cpus),
        t0,
    )
    .unwrap_or_else(|err| panic!("{host} {kind} meter: {err}"))
}

#[test]
fn cpu_requests_parse_as_kubernetes_quantities() {
    for (text, cpus) in [
        ("500m", 0.5),
        ("0.5", 0.5),
        ("2", 2.0),
        (" 250m ", 0.25),
        ("1500m", 1.5),
        ("+1", 1.0),
        ("0.1m", 0.0001),
    ] {
        assert_close(text.parse::<CpuRequest>().unwrap().cpus(), cpus);
    }
    for (text, why) in [
        ("", "no number"),
        ("m", "no number"),
        ("0", "must be above zero"),
        ("0m", "must be above zero"),
        ("-1", "cannot be negative"),
        ("-500m", "cannot be negative"),
        ("abc", "not a decimal number"),
        ("1e3", "not a decimal number"),
        ("inf", "not a decimal number"),
        ("NaN", "not a decimal number"),
        ("1.2.3", "not a decimal number"),
        ("2Ki", "not a decimal number"),
        (".", "not a decimal number"),
    ] {
        let err = text.parse::<CpuRequest>().unwrap_err().to_string();
        assert!(err.contains(why), "{text:?}: {err}");
        assert!(err.contains(&format!("{text:?}")), "{text:?}: {err}");
    }
}

#[test]
fn cpu_request_is_the_capacity_without_a_quota() {
    // hybrid: no quota anywhere, 2 CPUs online.
    let host = Host::copy("hybrid");
    let t0 = Instant::now();
    let mut meter = LoadMeter::with_request_at(
        LoadSourceKind::Cgroup,
        &host.paths,
        PID,
        request("500m"),
        t0,
    )
    .unwrap();
    assert_eq!(meter.capacity(), 0.5);
    let describe = meter.describe();
    assert!(describe.contains("CPU request 0.500"), "{describe}");
    // 1 s of CPU in 1 s against half a CPU: twice the request.
    host.write(
        "sys/fs/cgroup/cpuacct/user.slice/cpuacct.usage",
        "4000000000\n",
    );
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_close(sample.load, 2.0);
    assert_eq!(sample.capacity, 0.5);
}

#[test]
fn auto_follows_the_cgroup_when_a_request_is_given_without_a_quota() {
    let meter = request_meter("hybrid", LoadSourceKind::Auto, "750m", Instant::now());
    assert_eq!(meter.source(), LoadSourceKind::Cgroup);
    assert_eq!(meter.capacity(), 0.75);
    let describe = meter.describe();
    assert!(
        describe.contains("has no CPU quota; its CPU request is 0.75 CPUs"),
        "{describe}"
    );

    // No cgroup at all: the process's own CPU time against the request.
    let meter = request_meter("no-cgroup", LoadSourceKind::Auto, "1", Instant::now());
    assert_eq!(meter.source(), LoadSourceKind::Process);
    assert_eq!(meter.capacity(), 1.0);
}

#[test]
fn a_quota_wins_over_any_cpu_request() {
    // v2: cpu.max 1.5 at the leaf.
    for cpus in ["500m", "3"] {
        let meter = request_meter("v2", LoadSourceKind::Auto, cpus, Instant::now());
        assert_eq!(meter.source(), LoadSourceKind::Cgroup);
        assert_eq!(meter.capacity(), 1.5, "request {cpus}");
        let describe = meter.describe();
        assert!(describe.contains("ignored: the quota wins"), "{describe}");
    }
    // The quota can appear at run time (in-place resize): from then on it wins.
    let host = Host::copy("v2");
    host.write(V2_MAX, "max 100000\n");
    let t0 = Instant::now();
    let mut meter = LoadMeter::with_request_at(
        LoadSourceKind::Cgroup,
        &host.paths,
        PID,
        request("250m"),
        t0,
    )
    .unwrap();
    assert_eq!(meter.capacity(), 0.25);
    host.write(V2_MAX, "100000 100000\n");
    host.write(V2_USAGE, &usage_usec(5_000_000 + 500_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.capacity, 1.0);
    assert_close(sample.load, 0.5);
}

#[test]
fn a_request_above_the_machine_is_bounded_by_affinity_and_online_cpus() {
    // no-cgroup: 3 CPUs from /proc/stat.
    let meter = request_meter("no-cgroup", LoadSourceKind::Process, "8", Instant::now());
    assert_eq!(meter.capacity(), 3.0);
}

#[test]
fn system_load_stays_a_whole_host_share_with_a_request() {
    let meter = request_meter("hybrid", LoadSourceKind::System, "500m", Instant::now());
    assert_eq!(meter.source(), LoadSourceKind::System);
    assert_eq!(meter.capacity(), 2.0);
}

/// This process on the real host reads its CPU clock: exact over any window,
/// even one far shorter than ten clock ticks (which /proc could not resolve).
#[test]
fn own_process_reads_its_cpu_clock_over_short_windows() {
    use nix::time::{ClockId, clock_gettime};
    let paths = HostPaths::system();
    let pid = i32::try_from(std::process::id()).unwrap();
    let mut meter = LoadMeter::new(LoadSourceKind::Process, &paths, pid).unwrap();
    assert!(
        meter.describe().contains("CLOCK_PROCESS_CPUTIME_ID"),
        "{}",
        meter.describe()
    );
    let cpu = || Duration::from(clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap());
    let (wall0, cpu0) = (Instant::now(), cpu());
    // 20 ms of this thread's CPU: two clock ticks, a tenth of the old minimum.
    let thread = || Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap());
    let start = thread();
    while thread() - start < Duration::from_millis(20) {
        std::hint::black_box(0u64);
    }
    let sample = meter.sample(Instant::now()).unwrap();
    let (wall, used) = (wall0.elapsed(), cpu() - cpu0);
    // Between the two clock readings around it: the meter's window started
    // before wall0 (at LoadMeter::new) and ended before the last reading.
    let most = used.as_secs_f64() / (wall.as_secs_f64() * 0.5) / sample.capacity;
    assert!(
        sample.load > 0.0 && sample.load <= most,
        "{sample:?}, used {used:?} in {wall:?}"
    );
}

// ---------------------------------------------------------------- throttling

const V1_CPU_STAT: &str = "sys/fs/cgroup/cpu/job/cpu.stat";

fn v1_cpu_stat(periods: u64, throttled: u64, ns: u64) -> String {
    format!("nr_periods {periods}\nnr_throttled {throttled}\nthrottled_time {ns}\n")
}

#[test]
fn v1_throttled_every_period_reads_saturated_despite_a_short_usage_window() {
    let host = Host::copy("v1-split");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    // 0.5 CPU quota, 250 ms window holding 3 periods, all throttled, but
    // the usage counter caught only two periods' worth: 0.1 s of 0.125.
    host.write(V1_USAGE, &(2_000_000_000u64 + 100_000_000).to_string());
    host.write(V1_CPU_STAT, &v1_cpu_stat(3, 3, 150_000_000));
    let sample = meter.sample(t0 + Duration::from_millis(250)).unwrap();
    let throttling = sample.throttling.expect("throttling of the quota group");
    assert_eq!(throttling.ratio, 1.0);
    assert_eq!(throttling.periods, 3);
    assert_close(throttling.seconds, 0.15);
    assert_close(sample.load, 1.0);

    // Half the periods throttled (a steady load overrunning now and then):
    // usage stands.
    host.write(V1_USAGE, &(2_100_000_000u64 + 75_000_000).to_string());
    host.write(V1_CPU_STAT, &v1_cpu_stat(5, 4, 160_000_000));
    let sample = meter.sample(t0 + Duration::from_millis(500)).unwrap();
    assert_eq!(sample.throttling.unwrap().ratio, 0.5);
    assert_close(sample.load, 0.6);

    // A burst: throttled in each of the 3 periods it ran, idle the other 7
    // of a 1 s window. Every period it ran was throttled, yet the window
    // was not saturated.
    host.write(V1_USAGE, &(2_175_000_000u64 + 200_000_000).to_string());
    host.write(V1_CPU_STAT, &v1_cpu_stat(8, 7, 300_000_000));
    let sample = meter.sample(t0 + Duration::from_millis(1500)).unwrap();
    let throttling = sample.throttling.unwrap();
    assert_eq!((throttling.ratio, throttling.window_periods), (1.0, 10));
    assert_close(sample.load, 0.4);
}

#[test]
fn v2_throttling_comes_from_the_group_whose_quota_binds() {
    // nested-quota: ctr 1.5, pod1 0.5: pod1 binds, and its cpu.stat counts.
    let host = Host::copy("nested-quota");
    let pod = "sys/fs/cgroup/kubepods/burstable/pod1/cpu.stat";
    host.write(
        pod,
        "usage_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    );
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    host.write(
        pod,
        "usage_usec 0\nnr_periods 10\nnr_throttled 10\nthrottled_usec 400000\n",
    );
    // The container used 0.45 of the pod's 0.5 CPU: 0.9 by usage alone.
    host.write(&format!("{POD_CTR}/cpu.stat"), &usage_usec(10_450_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    let throttling = sample.throttling.expect("pod1's counters");
    assert_eq!(throttling.ratio, 1.0);
    assert_close(throttling.seconds, 0.4);
    assert_close(sample.load, 1.0);
}

#[test]
fn throttling_is_reported_but_does_not_raise_process_or_psi_loads() {
    let host = Host::copy("v1-split");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Psi, t0);
    host.write(V1_CPU_STAT, &v1_cpu_stat(10, 10, 1_000_000));
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_eq!(sample.throttling.unwrap().ratio, 1.0);
    assert!(sample.load < 1.0, "psi load {}", sample.load);
}

#[test]
fn no_quota_no_throttling() {
    let host = Host::copy("v2");
    host.write(V2_MAX, "max 100000\n");
    host.write("sys/fs/cgroup/system.slice/cpu.max", "max 100000\n");
    let t0 = Instant::now();
    let mut meter = host.meter(LoadSourceKind::Cgroup, t0);
    host.write(V2_USAGE, &usage_usec(5_500_000));
    assert_eq!(meter.sample(t0 + secs(1)).unwrap().throttling, None);
}

// ------------------------------------------ request from cpu.shares / cpu.weight

const POD_CTR: &str = "sys/fs/cgroup/kubepods/burstable/pod1/ctr";

/// nested-quota without any quota: a Burstable pod with a request only.
fn kubepods_v2_without_quota() -> Host {
    let host = Host::copy("nested-quota");
    for dir in [
        POD_CTR,
        "sys/fs/cgroup/kubepods/burstable/pod1",
        "sys/fs/cgroup/kubepods/burstable",
        "sys/fs/cgroup/kubepods",
    ] {
        host.write(&format!("{dir}/cpu.max"), "max 100000\n");
    }
    host
}

#[test]
fn v2_weight_under_kubepods_is_the_request_and_follows_a_resize() {
    let host = kubepods_v2_without_quota();
    // 500m: shares 512, which runc >= 1.3.2 writes as weight 59.
    host.write(&format!("{POD_CTR}/cpu.weight"), "59\n");
    let t0 = Instant::now();
    let mut meter = host.auto_cgroup_meter(t0);
    // Weight 59 stands for a few share values from 512 up: the largest is read.
    let want = share::WEIGHT_MAPPING.shares(59) as f64 / 1024.0;
    assert!((0.5..0.51).contains(&want), "{want}");
    assert_close(meter.capacity(), want);
    let describe = meter.describe();
    assert!(describe.contains("ctr/cpu.weight"), "{describe}");

    // In-place resize to 2 CPUs (2048 shares: weight 174).
    host.write(&format!("{POD_CTR}/cpu.weight"), "174\n");
    host.write(
        &format!("{POD_CTR}/cpu.stat"),
        &usage_usec(fixture_usage(&host) + 1_000_000),
    );
    let sample = meter.sample(t0 + secs(1)).unwrap();
    let want = share::WEIGHT_MAPPING.shares(174) as f64 / 1024.0;
    assert!((2.0..2.02).contains(&want), "{want}");
    assert_close(sample.capacity, want);
    assert_close(sample.load, 1.0 / want);
}

fn fixture_usage(host: &Host) -> u64 {
    let text = fs::read_to_string(host.path(&format!("{POD_CTR}/cpu.stat"))).unwrap();
    cgroup::parse_usage_usec(&text).unwrap()
}

#[test]
fn an_explicit_request_overrides_the_weight_and_a_quota_overrides_both() {
    let host = kubepods_v2_without_quota();
    host.write(&format!("{POD_CTR}/cpu.weight"), "59\n");
    let t0 = Instant::now();
    let meter = LoadMeter::with_request_at(
        LoadSourceKind::Cgroup,
        &host.paths,
        PID,
        request("1500m"),
        t0,
    )
    .unwrap();
    assert_close(meter.capacity(), 1.5);
    host.write(&format!("{POD_CTR}/cpu.max"), "25000 100000\n");
    let meter = host.meter(LoadSourceKind::Cgroup, t0);
    assert_close(meter.capacity(), 0.25);
}

#[test]
fn weight_outside_kubepods_or_besteffort_is_not_a_request() {
    // The v2 fixture's /system.slice/app.service with a desktop's default weight.
    let host = Host::copy("v2");
    host.write(V2_MAX, "max 100000\n");
    host.write("sys/fs/cgroup/system.slice/cpu.max", "max 100000\n");
    host.write("sys/fs/cgroup/system.slice/app.service/cpu.weight", "100\n");
    let meter = host.meter(LoadSourceKind::Auto, Instant::now());
    assert_eq!(
        meter.source(),
        LoadSourceKind::System,
        "{}",
        meter.describe()
    );
    let meter = host.meter(LoadSourceKind::Cgroup, Instant::now());
    // Affinity 4 of online 8, as without the weight.
    assert_eq!(meter.capacity(), 4.0, "{}", meter.describe());

    // A Burstable pod whose container has the minimum weight: no request.
    let host = kubepods_v2_without_quota();
    host.write(&format!("{POD_CTR}/cpu.weight"), "1\n");
    let meter = host.meter(LoadSourceKind::Cgroup, Instant::now());
    assert_eq!(meter.capacity(), 4.0, "{}", meter.describe());
}

#[test]
fn malformed_weight_is_an_error_naming_the_file() {
    let host = kubepods_v2_without_quota();
    host.write(&format!("{POD_CTR}/cpu.weight"), "lots\n");
    let err = host.start_error(LoadSourceKind::Cgroup);
    assert!(err.contains("ctr/cpu.weight"), "{err}");
}

#[test]
fn v1_shares_under_kubepods_are_the_request() {
    let host = Host::copy("v1-split");
    let pod = "kubepods/burstable/pod1/ctr";
    host.write(
        "proc/4242/cgroup",
        &format!("4:cpu:/{pod}\n3:cpuacct:/{pod}\n1:name=systemd:/init.scope\n"),
    );
    host.write(&format!("sys/fs/cgroup/cpu/{pod}/cpu.cfs_quota_us"), "-1\n");
    host.write(
        &format!("sys/fs/cgroup/cpu/{pod}/cpu.cfs_period_us"),
        "100000\n",
    );
    host.write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
    // 250m: 256 shares.
    host.write(&format!("sys/fs/cgroup/cpu/{pod}/cpu.shares"), "256\n");
    host.write(&format!("sys/fs/cgroup/cpuacct/{pod}/cpuacct.usage"), "0\n");
    let t0 = Instant::now();
    let mut meter = host.auto_cgroup_meter(t0);
    assert_close(meter.capacity(), 0.25);
    host.write(&format!("sys/fs/cgroup/cpu/{pod}/cpu.shares"), "1024\n");
    host.write(
        &format!("sys/fs/cgroup/cpuacct/{pod}/cpuacct.usage"),
        "500000000\n",
    );
    let sample = meter.sample(t0 + secs(1)).unwrap();
    assert_close(sample.capacity, 1.0);
    assert_close(sample.load, 0.5);
}
