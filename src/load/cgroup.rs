//! Finding the process's CPU cgroup, and reading its quota chain and usage.
//!
//! The v1 `cpu` controller wins when mounted (hybrid hosts keep cgroup2 at
//! `/sys/fs/cgroup/unified` without the cpu controller, and its files would
//! not reflect the quota that actually throttles us).

use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};

use super::LoadError;
pub(crate) use super::cgroup_file::{CgroupVersion, parse_u64};
use super::mountinfo::{self, CgroupFs, CgroupMount, Membership};
use super::paths::{HostPaths, read_if_present, read_into, read_string};
use super::share::{ShareFile, set_by_kubernetes};
use super::throttle::ThrottleFile;

/// What `/proc/<pid>/cgroup` and `/proc/<pid>/mountinfo` say about a pid.
pub(crate) struct Cgroups {
    pub pid: i32,
    pub cgroup_file: PathBuf,
    pub memberships: Vec<Membership>,
    pub mounts: Vec<CgroupMount>,
}

impl Cgroups {
    pub fn read(paths: &HostPaths, pid: i32) -> Result<Self, LoadError> {
        let cgroup_file = paths.pid_file(pid, "cgroup");
        let memberships = mountinfo::parse_proc_cgroup(&read_string(&cgroup_file)?)
            .map_err(|detail| LoadError::malformed(&cgroup_file, detail))?;
        let mountinfo_file = paths.pid_file(pid, "mountinfo");
        let mounts = mountinfo::parse_cgroup_mounts(&read_string(&mountinfo_file)?)
            .map_err(|detail| LoadError::malformed(&mountinfo_file, detail))?;
        Ok(Self {
            pid,
            cgroup_file,
            memberships,
            mounts,
        })
    }

    /// The pid's cgroup directory in the hierarchy holding `controller`
    /// (`None` means the cgroup2 hierarchy), re-rooted under `paths`; `None`
    /// when the pid has no such hierarchy or it is not mounted.
    fn locate(
        &self,
        paths: &HostPaths,
        controller: Option<&str>,
    ) -> Option<Result<Located, LoadError>> {
        let membership = self.memberships.iter().find(|m| match controller {
            Some(name) => m.has_controller(name),
            None => m.is_unified(),
        })?;
        let mut mounts = self.mounts.iter().filter(|m| match controller {
            Some(name) => m.has_controller(name),
            None => m.fs == CgroupFs::V2,
        });
        let first = mounts.next()?;
        // Bind mounts of sub-trees (containers) show up as several mounts of
        // one hierarchy: prefer the deepest one that contains our cgroup.
        let cgroup = Path::new(&membership.path);
        let best = std::iter::once(first)
            .chain(mounts)
            .filter(|m| cgroup.starts_with(&m.root))
            .max_by_key(|m| m.root.components().count())
            .unwrap_or(first);
        Some(self.resolve(paths, best, &membership.path))
    }

    fn resolve(
        &self,
        paths: &HostPaths,
        mount: &CgroupMount,
        cgroup: &str,
    ) -> Result<Located, LoadError> {
        let mount_dir = paths.reroot(&mount.mount_point);
        let not_found = |detail: &str| LoadError::CgroupNotFound {
            pid: self.pid,
            cgroup: cgroup.to_owned(),
            path: mount_dir.clone(),
            detail: detail.to_owned(),
        };
        let cgroup_path = Path::new(cgroup);
        if !cgroup_path.has_root() {
            return Err(not_found("cgroup path is not absolute"));
        }
        if cgroup_path.components().any(|c| c == Component::ParentDir) {
            return Err(not_found(
                "cgroup lies outside this mount namespace's view (path has `..`)",
            ));
        }
        // A mount whose root is our cgroup's ancestor exposes it at the
        // remainder; otherwise try the full path under the mount point.
        let relative = cgroup_path
            .strip_prefix(&mount.root)
            .or_else(|_| cgroup_path.strip_prefix("/"))
            .unwrap_or(cgroup_path)
            .to_path_buf();
        let dir = if relative.as_os_str().is_empty() {
            mount_dir.clone()
        } else {
            mount_dir.join(&relative)
        };
        if !dir.is_dir() {
            return Err(LoadError::CgroupNotFound {
                pid: self.pid,
                cgroup: cgroup.to_owned(),
                path: dir,
                detail: format!(
                    "no such directory under mount {} (mount root {})",
                    mount.mount_point.display(),
                    mount.root.display()
                ),
            });
        }
        Ok(Located {
            cgroup: cgroup.to_owned(),
            mount_dir,
            relative,
            dir,
        })
    }

    /// The pid's cgroup2 directory, when cgroup2 is mounted (hybrid or pure v2).
    pub fn unified_dir(&self, paths: &HostPaths) -> Option<PathBuf> {
        self.locate(paths, None)?.ok().map(|l| l.dir)
    }
}

struct Located {
    /// As written in `/proc/<pid>/cgroup`.
    cgroup: String,
    mount_dir: PathBuf,
    relative: PathBuf,
    dir: PathBuf,
}

impl Located {
    /// Directories from the leaf up to the mount root, leaf first.
    fn levels(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.relative.ancestors().map(|a| {
            if a.as_os_str().is_empty() {
                self.mount_dir.clone()
            } else {
                self.mount_dir.join(a)
            }
        })
    }
}

/// The cgroup that limits and accounts the pid's CPU time.
pub(crate) struct CpuCgroup {
    pub version: CgroupVersion,
    note: &'static str,
    located: Located,
    pub quota: QuotaChain,
    /// `Err(why)` on v1 hosts without a mounted `cpuacct`: the quota is still
    /// usable for capacity, but there is nothing to measure usage with.
    pub usage: Result<UsageFile, LoadError>,
    /// The CPU request Kubernetes wrote, when it manages this cgroup.
    pub shares: Option<ShareFile>,
}

impl CpuCgroup {
    pub fn locate(paths: &HostPaths, cgroups: &Cgroups) -> Result<Self, LoadError> {
        if let Some(located) = cgroups.locate(paths, Some("cpu")) {
            let located = located?;
            let usage = match cgroups.locate(paths, Some("cpuacct")) {
                Some(Ok(acct)) => Ok(UsageFile {
                    path: acct.dir.join("cpuacct.usage"),
                    unit: UsageUnit::V1Nanos,
                }),
                Some(Err(err)) => Err(err),
                None => Err(LoadError::CgroupNotFound {
                    pid: cgroups.pid,
                    cgroup: located.cgroup.clone(),
                    path: cgroups.cgroup_file.clone(),
                    detail: "no cpuacct hierarchy mounted to measure usage".to_owned(),
                }),
            };
            let levels = located
                .levels()
                .map(|dir| QuotaFiles::V1 {
                    quota: dir.join("cpu.cfs_quota_us"),
                    period: dir.join("cpu.cfs_period_us"),
                })
                .collect();
            return Ok(Self {
                version: CgroupVersion::V1,
                note: "",
                quota: QuotaChain { levels },
                usage,
                shares: set_by_kubernetes(&located.cgroup)
                    .then(|| ShareFile::new(&located.dir, CgroupVersion::V1)),
                located,
            });
        }
        if let Some(located) = cgroups.locate(paths, None) {
            let located = located?;
            // Without the cpu controller cgroup2 still reports usage_usec, and
            // an ancestor with cpu enabled may still carry a cpu.max; walking
            // up finds it. Say so in the logs, it is unusual.
            let controllers = located.dir.join("cgroup.controllers");
            let has_cpu = read_string(&controllers)
                .is_ok_and(|text| text.split_whitespace().any(|c| c == "cpu"));
            let levels = located
                .levels()
                .map(|dir| QuotaFiles::V2 {
                    max: dir.join("cpu.max"),
                })
                .collect();
            return Ok(Self {
                version: CgroupVersion::V2,
                note: if has_cpu {
                    ""
                } else {
                    " (cpu controller not enabled here)"
                },
                quota: QuotaChain { levels },
                usage: Ok(UsageFile {
                    path: located.dir.join("cpu.stat"),
                    unit: UsageUnit::V2Micros,
                }),
                shares: set_by_kubernetes(&located.cgroup)
                    .then(|| ShareFile::new(&located.dir, CgroupVersion::V2)),
                located,
            });
        }
        Err(LoadError::NoCpuController {
            pid: cgroups.pid,
            path: cgroups.cgroup_file.clone(),
        })
    }

    /// The cgroup's directory, re-rooted.
    pub fn dir(&self) -> &Path {
        &self.located.dir
    }

    /// One phrase for logs: `cgroup v1 /a/b at /sys/fs/cgroup/cpu/a/b`.
    pub fn describe(&self) -> String {
        format!(
            "cgroup {} {} at {}{}",
            self.version.as_str(),
            self.located.cgroup,
            self.located.dir.display(),
            self.note
        )
    }
}

enum QuotaFiles {
    V1 { quota: PathBuf, period: PathBuf },
    V2 { max: PathBuf },
}

impl QuotaFiles {
    fn dir(&self) -> Option<&Path> {
        match self {
            Self::V1 { quota, .. } => quota.parent(),
            Self::V2 { max } => max.parent(),
        }
    }

    fn name(&self) -> &Path {
        match self {
            Self::V1 { quota, .. } => quota,
            Self::V2 { max } => max,
        }
    }

    fn read(&self, buf: &mut String) -> Result<Level, LoadError> {
        match self {
            Self::V2 { max } => {
                if !read_if_present(max, buf)? {
                    return Ok(Level::Absent);
                }
                parse_cpu_max(buf).map_err(|d| LoadError::malformed(max, d))
            }
            Self::V1 { quota, period } => {
                if !read_if_present(quota, buf)? {
                    return Ok(Level::Absent);
                }
                let Some(quota_us) =
                    parse_cfs_quota(buf).map_err(|d| LoadError::malformed(quota, d))?
                else {
                    return Ok(Level::Unlimited);
                };
                read_into(period, buf)?;
                let period_us =
                    parse_cfs_period(buf).map_err(|d| LoadError::malformed(period, d))?;
                Ok(Level::Cpus(quota_us as f64 / period_us as f64, period_us))
            }
        }
    }
}

/// One level of the quota chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Level {
    /// No quota file (controller not enabled at this level, or no CFS bandwidth).
    Absent,
    /// `max` or `-1`.
    Unlimited,
    /// CPUs, and the CFS period in µs.
    Cpus(f64, u64),
}

/// A quota and where it was found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct QuotaLimit {
    pub cpus: f64,
    /// Index in the chain, leaf first.
    pub level: usize,
    /// The CFS period the quota is handed out per, in µs.
    pub period_us: u64,
}

/// The quota files from the leaf cgroup up to the mount root.
pub(crate) struct QuotaChain {
    levels: Vec<QuotaFiles>,
}

impl QuotaChain {
    /// The tightest quota along the chain; parents can be stricter than the leaf.
    pub fn read(&self, buf: &mut String) -> Result<Option<QuotaLimit>, LoadError> {
        let mut tightest: Option<QuotaLimit> = None;
        for (level, files) in self.levels.iter().enumerate() {
            match files.read(buf)? {
                // A missing leaf file is normal (cpu controller not enabled
                // there) but a missing leaf directory means our cgroup is gone:
                // don't report "unlimited" for a cgroup we no longer see.
                Level::Absent if level == 0 && !files.dir().is_some_and(Path::is_dir) => {
                    return Err(LoadError::read(
                        files.name(),
                        std::io::Error::from(std::io::ErrorKind::NotFound),
                    ));
                }
                Level::Absent | Level::Unlimited => {}
                Level::Cpus(cpus, period_us) => {
                    if tightest.is_none_or(|t| cpus < t.cpus) {
                        tightest = Some(QuotaLimit {
                            cpus,
                            level,
                            period_us,
                        });
                    }
                }
            }
        }
        Ok(tightest)
    }

    /// The file that set `limit`, for logs.
    pub fn file(&self, limit: &QuotaLimit) -> Option<&Path> {
        self.levels.get(limit.level).map(QuotaFiles::name)
    }

    /// The `cpu.stat` of the level that set `limit`: the group the kernel
    /// throttles when the quota is spent.
    pub fn throttle_file(&self, limit: &QuotaLimit) -> Option<ThrottleFile> {
        let files = self.levels.get(limit.level)?;
        let version = match files {
            QuotaFiles::V1 { .. } => CgroupVersion::V1,
            QuotaFiles::V2 { .. } => CgroupVersion::V2,
        };
        Some(ThrottleFile::new(files.dir()?, version))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsageUnit {
    /// cgroup2 `cpu.stat` `usage_usec`.
    V2Micros,
    /// cgroup1 `cpuacct.usage`.
    V1Nanos,
}

/// The cumulative CPU time counter of a cgroup.
pub(crate) struct UsageFile {
    pub path: PathBuf,
    unit: UsageUnit,
}

impl UsageFile {
    /// The raw counter, in the file's own unit so error messages match the file.
    pub fn read(&self, buf: &mut String) -> Result<u64, LoadError> {
        read_into(&self.path, buf)?;
        match self.unit {
            UsageUnit::V2Micros => parse_usage_usec(buf),
            UsageUnit::V1Nanos => parse_u64(buf.trim()),
        }
        .map_err(|d| LoadError::malformed(&self.path, d))
    }

    /// A divisor rather than a factor: 1e-6 is inexact, 1e6 is not.
    pub fn units_per_second(&self) -> f64 {
        match self.unit {
            UsageUnit::V2Micros => 1e6,
            UsageUnit::V1Nanos => 1e9,
        }
    }
}

/// The kernel's CFS bandwidth bounds (`kernel/sched/core.c`): a period of
/// 1 ms to 1 s and a quota of at least 1 ms and at most 2^44-1 µs. A value
/// outside them is not something the kernel wrote, and would turn into an
/// absurd capacity (a quota of 1 µs per 2^64 µs reads as any load × 10^19, a
/// false drain).
const CFS_PERIOD_US: RangeInclusive<u64> = 1_000..=1_000_000;
const CFS_QUOTA_US: RangeInclusive<u64> = 1_000..=(1 << 44) - 1;

/// `cpu.max`: `"QUOTA PERIOD"` or `"max PERIOD"`.
pub(super) fn parse_cpu_max(text: &str) -> Result<Level, String> {
    let mut fields = text.split_whitespace();
    let quota = fields.next().ok_or("empty file")?;
    if quota == "max" {
        return Ok(Level::Unlimited);
    }
    let quota = parse_in_range(quota, "quota", CFS_QUOTA_US)?;
    let period = parse_in_range(
        fields.next().ok_or("missing period")?,
        "period",
        CFS_PERIOD_US,
    )?;
    Ok(Level::Cpus(quota as f64 / period as f64, period))
}

/// `cpu.cfs_quota_us`: microseconds, or -1 for no quota.
pub(super) fn parse_cfs_quota(text: &str) -> Result<Option<u64>, String> {
    match text.trim() {
        "-1" => Ok(None),
        other => parse_in_range(other, "quota", CFS_QUOTA_US).map(Some),
    }
}

/// `cpu.cfs_period_us`: microseconds.
pub(super) fn parse_cfs_period(text: &str) -> Result<u64, String> {
    parse_in_range(text.trim(), "period", CFS_PERIOD_US)
}

fn parse_in_range(text: &str, what: &str, range: RangeInclusive<u64>) -> Result<u64, String> {
    let value = parse_u64(text)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{what} {value} µs is outside the kernel's range {}..={} µs",
            range.start(),
            range.end()
        ))
    }
}

pub(super) fn parse_usage_usec(text: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .ok_or_else(|| "no usage_usec line".to_owned())
        .and_then(|v| parse_u64(v.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses_quota_and_max() {
        assert_eq!(
            parse_cpu_max("150000 100000\n"),
            Ok(Level::Cpus(1.5, 100_000))
        );
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(Level::Unlimited));
        assert_eq!(parse_cpu_max("max\n"), Ok(Level::Unlimited));
        assert!(parse_cpu_max("").is_err());
        assert!(parse_cpu_max("abc 100000").is_err());
        assert!(parse_cpu_max("50000 0").is_err());
        assert!(parse_cpu_max("0 100000").is_err());
        assert!(parse_cpu_max("50000").is_err());
        assert!(parse_cpu_max("1 18446744073709551615").is_err());
        let err = parse_cpu_max("50000 100").unwrap_err();
        assert!(err.contains("period 100 µs is outside"), "{err}");
    }

    #[test]
    fn cfs_quota_parses_minus_one_as_unlimited() {
        assert_eq!(parse_cfs_quota("-1\n"), Ok(None));
        assert_eq!(parse_cfs_quota("50000\n"), Ok(Some(50000)));
        assert!(parse_cfs_quota("-2").is_err());
        assert!(parse_cfs_quota("0").is_err());
        assert!(parse_cfs_quota("").is_err());
        assert!(parse_cfs_quota("999").is_err());
        assert_eq!(parse_cfs_period("1000000\n"), Ok(1_000_000));
        assert!(parse_cfs_period("1000001").is_err());
        assert!(parse_cfs_period("999").is_err());
    }

    #[test]
    fn usage_usec_is_found_among_other_lines() {
        let text = "nr_periods 3\nusage_usec 12345\nuser_usec 1\n";
        assert_eq!(parse_usage_usec(text), Ok(12345));
        assert!(parse_usage_usec("user_usec 1\n").is_err());
        assert!(parse_usage_usec("usage_usec -3\n").is_err());
        assert!(parse_usage_usec("usage_usec 99999999999999999999999\n").is_err());
    }
}
