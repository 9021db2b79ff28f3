//! What the machine running the tests can give: its CPUs as this process sees
//! them (affinity, CFS quota), and the rule for a test that cannot run here.
//!
//! Read independently of the crate's load code, so a test's expectation is
//! not the code under test repeating itself.

use std::path::{Path, PathBuf};

/// The CPUs this process may run on (`Cpus_allowed_list`, as `taskset` sets it).
pub fn affinity_set() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()
        })
        .collect()
}

/// How many CPUs this process may run on.
pub fn affinity_cpus() -> f64 {
    affinity_set().len() as f64
}

/// The tightest CFS quota on this process's cgroup and its ancestors, in
/// CPUs (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`); `None` without one.
pub fn quota_cpus() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut tightest: Option<f64> = None;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let v1 = controllers.split(',').any(|c| c == "cpu");
        let v2 = controllers.is_empty();
        let mounts: &[&str] = if v1 {
            &["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
        } else if v2 {
            &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        } else {
            continue;
        };
        for mount in mounts {
            let mut dir = PathBuf::from(mount).join(path.trim_start_matches('/'));
            while dir.starts_with(mount) {
                if let Some(cpus) = if v1 { v1_quota(&dir) } else { v2_quota(&dir) } {
                    tightest = Some(tightest.map_or(cpus, |t| t.min(cpus)));
                }
                if !dir.pop() {
                    break;
                }
            }
        }
    }
    tightest
}

fn v1_quota(dir: &Path) -> Option<f64> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
    };
    let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
    (quota > 0.0).then(|| quota / period)
}

fn v2_quota(dir: &Path) -> Option<f64> {
    let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let (quota, period) = max.trim().split_once(' ')?;
    Some(quota.parse::<f64>().ok()? / period.parse::<f64>().ok()?)
}

/// The capacity cpuguard must report for this process on the real host:
/// the quota, else the CPU request, else nothing; never more than the CPUs
/// it may run on.
pub fn expected_capacity(cpu_request: Option<f64>) -> f64 {
    let promised = quota_cpus().or(cpu_request);
    promised.map_or(affinity_cpus(), |p| p.min(affinity_cpus()))
}

/// True where a skip is a failure: CI runs as root with every package the
/// tests need, so anything a test cannot do there is a defect of the set-up.
pub fn skips_forbidden() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("CPUGUARD_NO_SKIP").is_some()
}

/// A test that cannot run on this machine: fails in CI, and elsewhere says
/// why and records it in `target/cpuguard-skips.txt`, which `scripts/test.sh`
/// counts in its summary line (cargo's own counts have no place for it).
pub fn skip(test: &str, reason: &str) {
    assert!(
        !skips_forbidden(),
        "{test} cannot run here: {reason} (a skip in CI is a failure: CI runs as root with \
         everything installed)"
    );
    eprintln!("SKIP {test}: {reason}");
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cpuguard-skips.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        use std::io::Write;
        let _ = writeln!(file, "{test}: {reason}");
    }
}
