//! A real cgroup v1 `cpu` (+ `cpuacct`) group with a CFS quota, removed when
//! its guard drops, also when the test fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct V1Cgroup {
    pub cpu: PathBuf,
    pub cpuacct: Option<PathBuf>,
}

/// The CFS period of the groups made here, in µs.
pub const PERIOD_US: u64 = 100_000;

impl V1Cgroup {
    /// A group limited to `cpus` CPUs, or why there can be none here.
    pub fn with_quota(name: &str, cpus: f64) -> Result<V1Cgroup, String> {
        Self::with_quota_period(name, cpus, PERIOD_US)
    }

    /// A group without a quota whose `cpu.shares` is `shares`, as
    /// Kubernetes sets them for a CPU request (name it `kubepods…`).
    pub fn with_shares(name: &str, shares: u64) -> Result<V1Cgroup, String> {
        let group = Self::create(name)?;
        group.set_shares(shares)?;
        Ok(group)
    }

    /// An in-place resize, as the kubelet does it on v1.
    pub fn set_shares(&self, shares: u64) -> Result<(), String> {
        std::fs::write(self.cpu.join("cpu.shares"), shares.to_string())
            .map_err(|e| format!("cpu.shares: {e}"))
    }

    /// A group limited to `cpus` CPUs per CFS period of `period_us`.
    pub fn with_quota_period(name: &str, cpus: f64, period_us: u64) -> Result<V1Cgroup, String> {
        let group = Self::create(name)?;
        let quota = (cpus * period_us as f64).round() as u64;
        std::fs::write(group.cpu.join("cpu.cfs_period_us"), period_us.to_string())
            .map_err(|e| format!("cpu.cfs_period_us: {e}"))?;
        std::fs::write(group.cpu.join("cpu.cfs_quota_us"), quota.to_string())
            .map_err(|e| format!("cpu.cfs_quota_us: {e}"))?;
        Ok(group)
    }

    fn create(name: &str) -> Result<V1Cgroup, String> {
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir(&cpu).map_err(|e| {
            format!(
                "cannot create {} ({e}): not root or no cgroup v1 cpu controller",
                cpu.display()
            )
        })?;
        let acct = Path::new("/sys/fs/cgroup/cpuacct").join(name);
        // A joint cpu,cpuacct mount has no separate cpuacct directory to make.
        let cpuacct = (!acct.exists() && std::fs::create_dir(&acct).is_ok()).then_some(acct);
        Ok(V1Cgroup { cpu, cpuacct })
    }

    /// Makes `command`'s process write itself into the group's
    /// `cgroup.procs` files between fork and exec, so it is a member by the
    /// time `spawn` returns (no waiting for it to move).
    pub fn join_before_exec(&self, command: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs: Vec<std::ffi::CString> = std::iter::once(&self.cpu)
            .chain(self.cpuacct.as_ref())
            .map(|dir| {
                let path = dir
                    .join("cgroup.procs")
                    .into_os_string()
                    .into_encoded_bytes();
                std::ffi::CString::new(path).expect("a cgroup path has no NUL")
            })
            .collect();
        // SAFETY: only async-signal-safe calls (open, write, close) on
        // memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                for path in &procs {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// A shell prefix that moves the shell (and what it execs) into the group.
    pub fn join_script(&self) -> String {
        let mut join = format!("echo $$ > {}/cgroup.procs", self.cpu.display());
        if let Some(acct) = &self.cpuacct {
            join += &format!(" && echo $$ > {}/cgroup.procs", acct.display());
        }
        join
    }
}

impl Drop for V1Cgroup {
    fn drop(&mut self) {
        // A group can only go once it is empty: the processes were killed by
        // their own guards, but may take a moment to leave.
        let dirs: Vec<&PathBuf> = std::iter::once(&self.cpu)
            .chain(self.cpuacct.as_ref())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in dirs {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Why cgroup v2 CPU quotas cannot be tried on this host, if they cannot.
pub fn v2_cpu_unavailable() -> Option<String> {
    let Some(root) = v2_root() else {
        return Some("no cgroup2 mount".to_owned());
    };
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        None
    } else {
        Some(format!(
            "the cpu controller is not available in the cgroup2 hierarchy at {} \
             (cgroup.controllers: {:?}); it is bound to the v1 hierarchy on this hybrid host",
            root.display(),
            controllers.trim()
        ))
    }
}

/// A cgroup v2 group with a `cpu.max` quota, for hosts whose cgroup2
/// hierarchy has the cpu controller (see [`v2_cpu_unavailable`]).
pub struct V2Cgroup {
    pub dir: PathBuf,
}

impl V2Cgroup {
    pub fn with_quota(root: &Path, name: &str, cpus: f64) -> Result<V2Cgroup, String> {
        // The parent must hand the cpu controller down to its children.
        std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
            .map_err(|e| format!("enabling +cpu in {}: {e}", root.display()))?;
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let group = V2Cgroup { dir };
        let quota = (cpus * PERIOD_US as f64).round() as u64;
        std::fs::write(group.dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
            .map_err(|e| format!("cpu.max: {e}"))?;
        Ok(group)
    }

    pub fn join_script(&self) -> String {
        format!("echo $$ > {}/cgroup.procs", self.dir.display())
    }
}

impl Drop for V2Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err()
            && self.dir.exists()
            && Instant::now() < deadline
        {
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The cgroup2 mount point, if any.
pub fn v2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}
