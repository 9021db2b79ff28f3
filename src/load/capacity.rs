//! How many CPUs the process may use: the tightest of its cgroup quota chain
//! (or, without a quota, its CPU request), its affinity mask and the online
//! CPUs. Re-read on every sample because quotas and affinity change at run
//! time (e.g. Kubernetes in-place resize).

use std::fmt::Write as _;

use super::LoadError;
use super::cgroup::{QuotaChain, QuotaLimit};
use super::paths::{HostFile, HostPaths};
use super::request::CpuRequest;
use super::share::ShareFile;
use super::throttle::ThrottleCounts;

/// The files that bound capacity.
pub(crate) struct Limits {
    quota: Option<QuotaChain>,
    /// `/proc/<pid>/status`, for `Cpus_allowed_list`. Read instead of
    /// `sched_getaffinity` so that fixtures can fake it; the kernel fills it
    /// from the same mask.
    status: Option<HostFile>,
    online: HostFile,
    proc_stat: HostFile,
    /// Stands in for the quota when there is none. Kubernetes keeps the
    /// request at or below the limit, and the quota is what the kernel
    /// enforces, so a quota always wins, even over a smaller request.
    request: Option<CpuRequest>,
    /// Where Kubernetes wrote the request (`cpu.shares`, `cpu.weight`):
    /// stands in for the quota when neither a quota nor `request` does.
    shares: Option<ShareFile>,
}

/// Capacity as of the last read, with its parts for logs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Capacity {
    pub cpus: f64,
    pub quota: Option<QuotaLimit>,
    pub affinity: Option<u32>,
    pub online: u32,
    /// The CPU request, when it set the capacity (no quota).
    pub request: Option<CpuRequest>,
    /// Whether `request` came from the cgroup's shares or weight.
    pub request_from_cgroup: bool,
    /// Throttling counters of the group whose quota binds (`quota.level`).
    pub throttle: Option<ThrottleCounts>,
}

impl Limits {
    /// Online CPUs only: the whole-host view of the `system` source.
    pub fn host(paths: &HostPaths) -> Self {
        Self {
            quota: None,
            status: None,
            online: HostFile::new(paths, paths.root.join("sys/devices/system/cpu/online")),
            proc_stat: HostFile::new(paths, paths.proc_file("stat")),
            request: None,
            shares: None,
        }
    }

    /// What a process may use: quota chain (if its cgroup is known), affinity, online CPUs.
    pub fn process(paths: &HostPaths, pid: i32, quota: Option<QuotaChain>) -> Self {
        Self {
            quota,
            status: Some(HostFile::new(paths, paths.pid_file(pid, "status"))),
            ..Self::host(paths)
        }
    }

    /// Capacity from `request` whenever no quota applies.
    pub fn with_request(self, request: Option<CpuRequest>) -> Self {
        Self { request, ..self }
    }

    /// Capacity from the request in `shares` when no quota and no explicit
    /// request applies; re-read at every sample to follow a resize.
    pub fn with_shares(self, shares: Option<ShareFile>) -> Self {
        Self { shares, ..self }
    }

    pub fn read(&self, buf: &mut String) -> Result<Capacity, LoadError> {
        let (quota, throttle) = match &self.quota {
            Some(chain) => {
                let quota = chain.read(buf)?;
                let throttle = match quota.and_then(|q| chain.throttle_file(&q)) {
                    Some(file) => file.read(buf)?,
                    None => None,
                };
                (quota, throttle)
            }
            None => (None, None),
        };
        let affinity = match &self.status {
            Some(status) => {
                status.read_into(buf)?;
                Some(parse_affinity(buf).map_err(|d| LoadError::malformed(status.path(), d))?)
            }
            None => None,
        };
        let online = if self.online.read_if_present(buf)? {
            count_cpu_list(buf.trim()).map_err(|d| LoadError::malformed(self.online.path(), d))?
        } else {
            // Containers sometimes hide /sys; /proc/stat lists online CPUs too.
            self.proc_stat.read_into(buf)?;
            count_stat_cpus(buf).map_err(|d| LoadError::malformed(self.proc_stat.path(), d))?
        };
        let mut cpus = f64::from(online);
        if let Some(affinity) = affinity {
            cpus = cpus.min(f64::from(affinity));
        }
        let (request, request_from_cgroup) = match (quota, self.request, &self.shares) {
            (Some(quota), _, _) => {
                cpus = cpus.min(quota.cpus);
                (None, false)
            }
            (None, Some(request), _) => (Some(request), false),
            (None, None, Some(shares)) => {
                let request = shares.read(buf)?;
                (request, request.is_some())
            }
            (None, None, None) => (None, false),
        };
        if let Some(request) = request {
            cpus = cpus.min(request.cpus());
        }
        Ok(Capacity {
            cpus,
            quota,
            affinity,
            online,
            request,
            request_from_cgroup,
            throttle,
        })
    }

    /// `2.00 CPUs (quota 2.00 from <file>, affinity 4, online 8)`.
    pub fn describe(&self, capacity: &Capacity) -> String {
        let mut out = format!("{:.2} CPUs (", capacity.cpus);
        match (&self.quota, capacity.quota) {
            (Some(chain), Some(limit)) => {
                let file = chain.file(&limit).map(|f| f.display().to_string());
                let _ = write!(
                    out,
                    "quota {:.2} from {}, ",
                    limit.cpus,
                    file.as_deref().unwrap_or("?")
                );
            }
            (Some(_), None) => out.push_str("no quota up to the cgroup mount root, "),
            (None, _) => {}
        }
        if let Some(request) = capacity.request {
            let _ = write!(out, "CPU request {:.3}", request.cpus());
            if let (true, Some(shares)) = (capacity.request_from_cgroup, &self.shares) {
                let _ = write!(out, " from {}", shares.path.display());
            }
            out.push_str(", ");
        } else if let (Some(request), Some(_)) = (self.request, capacity.quota) {
            let _ = write!(
                out,
                "CPU request {:.3} ignored: the quota wins, ",
                request.cpus()
            );
        }
        if let Some(affinity) = capacity.affinity {
            let _ = write!(out, "affinity {affinity}, ");
        }
        let _ = write!(out, "online {})", capacity.online);
        out
    }
}

/// `Cpus_allowed_list:\t0-3,6` in `/proc/<pid>/status`.
pub(super) fn parse_affinity(status: &str) -> Result<u32, String> {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .ok_or("no Cpus_allowed_list line")?;
    count_cpu_list(list.trim())
}

/// More CPUs than any Linux build supports (`CONFIG_NR_CPUS` tops out at
/// 8192 on x86-64): a list beyond it is not the kernel's.
pub(super) const MAX_CPUS: u32 = 65_536;

/// Counts a kernel CPU list such as `0-3,6` (4 + 1 = 5).
pub(super) fn count_cpu_list(list: &str) -> Result<u32, String> {
    let mut count: u32 = 0;
    for range in list.split(',') {
        let range = range.trim();
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) else {
            return Err(format!("bad CPU list {list:?}"));
        };
        let n = last
            .checked_sub(first)
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| format!("bad range {range:?} in CPU list {list:?}"))?;
        count = count
            .checked_add(n)
            .ok_or_else(|| format!("CPU list {list:?} too large"))?;
    }
    if count == 0 {
        return Err(format!("no CPUs in {list:?}"));
    }
    if count > MAX_CPUS {
        return Err(format!(
            "CPU list {list:?} has {count} CPUs, more than {MAX_CPUS}"
        ));
    }
    Ok(count)
}

/// Counts the `cpuN` lines of `/proc/stat` (online CPUs only are listed).
pub(super) fn count_stat_cpus(stat: &str) -> Result<u32, String> {
    let count = stat
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    match u32::try_from(count) {
        Ok(0) => Err("no cpuN lines".to_owned()),
        Ok(n) if n <= MAX_CPUS => Ok(n),
        _ => Err(format!("{count} cpuN lines, more than {MAX_CPUS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(count_cpu_list("0-1"), Ok(2));
        assert_eq!(count_cpu_list("0-3,6"), Ok(5));
        assert_eq!(count_cpu_list("5"), Ok(1));
        assert_eq!(count_cpu_list("0,2,4-7"), Ok(6));
        assert!(count_cpu_list("").is_err());
        assert!(count_cpu_list("3-1").is_err());
        assert!(count_cpu_list("a-b").is_err());
        assert!(count_cpu_list("0-4294967295").is_err());
        assert!(count_cpu_list("0-4294967294").is_err());
        assert_eq!(count_cpu_list("0-65535"), Ok(65_536));
    }

    #[test]
    fn reads_affinity_from_status() {
        let status = "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n";
        assert_eq!(parse_affinity(status), Ok(2));
        assert!(parse_affinity("Name:\tx\n").is_err());
    }

    #[test]
    fn counts_cpus_in_proc_stat() {
        let stat = "cpu  1 2 3 4\ncpu0 1 1 1 1\ncpu1 1 1 1 1\nintr 5\nctxt 6\n";
        assert_eq!(count_stat_cpus(stat), Ok(2));
        assert!(count_stat_cpus("cpu  1 2 3 4\n").is_err());
    }
}
