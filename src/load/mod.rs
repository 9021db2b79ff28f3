//! CPU load measurement, without GStreamer.
//!
//! A [`LoadMeter`] follows one cumulative counter (process CPU time, cgroup
//! usage, host busy time or PSI stall time) and turns the difference between
//! two reads into a load where 1.0 means "all the CPU we may use".
//!
//! Two failures of the system this is modelled on shape the code: a window in
//! which nothing could be measured must be an error, never a load of 0 (a
//! saturated host read 0), and a host whose cgroup cannot be found must not
//! silently be measured as a whole (hybrid cgroup hosts).

mod capacity;
mod cgroup;
mod cgroup_file;
mod error;
mod mountinfo;
mod paths;
mod proc_stat;
mod process;
mod psi;
mod request;
mod share;
mod throttle;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use capacity::{Capacity, Limits};
use cgroup::{Cgroups, CpuCgroup, UsageFile};

pub use error::LoadError;
use paths::HostFile;
pub use paths::HostPaths;
pub use process::{
    CpuRate, own_process_cpu_time, own_thread_cpu_time, process_and_reaped_cpu_seconds,
    process_cpu_seconds, thread_cpu_seconds,
};
pub use request::{CpuRequest, CpuRequestError};
pub use share::{WEIGHT_MAPPING, WeightMapping};
pub use throttle::{SATURATED_MIN_USED, SATURATED_THROTTLED_SHARE, Throttling};

/// Which counter a [`LoadMeter`] follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadSourceKind {
    /// `Cgroup` when the process is in a CPU-limited cgroup, else `System`.
    Auto,
    /// This process's CPU time over its capacity.
    Process,
    /// The process's cgroup usage over its capacity.
    Cgroup,
    /// Whole-host busy share from `/proc/stat`.
    System,
    /// Share of wall time in which some task waited for CPU.
    Psi,
}

impl LoadSourceKind {
    pub const ALL: [Self; 5] = [
        Self::Auto,
        Self::Process,
        Self::Cgroup,
        Self::System,
        Self::Psi,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Process => "process",
            Self::Cgroup => "cgroup",
            Self::System => "system",
            Self::Psi => "psi",
        }
    }
}

impl fmt::Display for LoadSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LoadSourceKind {
    type Err = LoadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| LoadError::UnknownSource {
                value: s.to_owned(),
            })
    }
}

/// On the wire (the JSON result, worker events) a source is its name, as in
/// the `load-source` property and the bus messages.
impl serde::Serialize for LoadSourceKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for LoadSourceKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadSample {
    /// Share of `capacity` used over the window; 1.0 (or a bit more) is
    /// saturation. For `psi`, the share of the window in which some task
    /// waited for a CPU instead: 1.0 is waiting all the time, which a
    /// saturated quota need not reach.
    pub load: f64,
    /// CPUs available to the process (for `system`: online CPUs).
    pub capacity: f64,
    /// The resolved source, never `Auto`.
    pub source: LoadSourceKind,
    /// CFS throttling over the window of the group whose quota binds;
    /// `None` without a quota or a second read of the same group. For
    /// `cgroup`, a saturated window already raised `load` to at least 1.0
    /// (see [`Throttling::apply`]).
    pub throttling: Option<Throttling>,
}

/// Follows one load counter between samples.
pub struct LoadMeter {
    /// What the meter was asked for, to find the cgroup again if it goes away.
    origin: Origin,
    /// The cgroup directories the counter or the capacity depend on.
    cgroup_dirs: Vec<PathBuf>,
    source: LoadSourceKind,
    counter: Counter,
    limits: Limits,
    baseline: Option<Baseline>,
    capacity: Capacity,
    description: String,
    /// Reused for every file read.
    buf: String,
}

impl fmt::Debug for LoadMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadMeter")
            .field("source", &self.source)
            .field("description", &self.describe())
            .finish_non_exhaustive()
    }
}

impl LoadMeter {
    /// Resolves `Auto`, locates files, reads the first baseline. Errors if the
    /// chosen source is unavailable.
    pub fn new(kind: LoadSourceKind, paths: &HostPaths, pid: i32) -> Result<Self, LoadError> {
        Self::new_at(kind, paths, pid, Instant::now())
    }

    /// [`LoadMeter::new`] with the baseline's wall time given by the caller.
    pub fn new_at(
        kind: LoadSourceKind,
        paths: &HostPaths,
        pid: i32,
        now: Instant,
    ) -> Result<Self, LoadError> {
        Self::with_request_at(kind, paths, pid, None, now)
    }

    /// [`LoadMeter::new`] for a workload promised `request` CPUs: without a
    /// CPU quota the request is the capacity (`process`, `cgroup`, `psi`),
    /// and `auto` then follows the cgroup (else the process) rather than the
    /// whole host, whose idle CPUs were never promised. `system` stays a
    /// whole-host share.
    pub fn with_request(
        kind: LoadSourceKind,
        paths: &HostPaths,
        pid: i32,
        request: Option<CpuRequest>,
    ) -> Result<Self, LoadError> {
        Self::with_request_at(kind, paths, pid, request, Instant::now())
    }

    /// [`LoadMeter::with_request`] with the baseline's wall time given by the caller.
    pub fn with_request_at(
        kind: LoadSourceKind,
        paths: &HostPaths,
        pid: i32,
        request: Option<CpuRequest>,
        now: Instant,
    ) -> Result<Self, LoadError> {
        let mut buf = String::new();
        let (cgroups, cpu_cgroup) = match Cgroups::read(paths, pid) {
            Ok(cgroups) => {
                let cpu_cgroup = CpuCgroup::locate(paths, &cgroups);
                (Some(cgroups), cpu_cgroup)
            }
            Err(err) => (None, Err(err)),
        };
        let origin = Origin {
            kind,
            paths: paths.clone(),
            pid,
            request,
        };
        let cgroup_dirs: Vec<PathBuf> = match &cpu_cgroup {
            Ok(c) => std::iter::once(c.dir())
                .chain(c.usage.as_ref().ok().and_then(|u| u.path.parent()))
                .map(Path::to_owned)
                .collect(),
            Err(_) => Vec::new(),
        };
        let (source, why) = match kind {
            LoadSourceKind::Auto => {
                let (source, why) = choose_auto(&cpu_cgroup, request, &mut buf)?;
                (source, Some(why))
            }
            other => (other, None),
        };
        // Each source: what it counts, how capacity is known, which cgroup
        // directories a rescan must watch, and the words that describe it.
        let process_limits = |cpu_cgroup: Result<CpuCgroup, LoadError>, what: String| {
            // Process and psi: capacity still honours the cgroup quota when known.
            match cpu_cgroup {
                Ok(c) => {
                    let what = format!("{what}; quota chain of {}", c.describe());
                    let limits = Limits::process(paths, pid, Some(c.quota))
                        .with_request(request)
                        .with_shares(c.shares);
                    (limits, what)
                }
                Err(err) => (
                    Limits::process(paths, pid, None).with_request(request),
                    format!("{what}; no cgroup quota known ({err})"),
                ),
            }
        };
        let (counter, limits, what, cgroup_dirs) = match source {
            // This very process on the real host: its CPU clock, exact to
            // the nanosecond, where /proc counts whole 10 ms ticks (steps of
            // 0.025 at interval=200, and sometimes 0).
            LoadSourceKind::Process
                if paths.root == Path::new("/")
                    && u32::try_from(pid).ok() == Some(std::process::id()) =>
            {
                let (limits, what) = process_limits(
                    cpu_cgroup,
                    "CPU time of this process from its CPU clock (CLOCK_PROCESS_CPUTIME_ID)"
                        .to_owned(),
                );
                (Counter::OwnProcessClock, limits, what, cgroup_dirs)
            }
            LoadSourceKind::Process => {
                let stat = paths.pid_file(pid, "stat");
                let (limits, what) = process_limits(
                    cpu_cgroup,
                    format!("CPU time of pid {pid} from {}", stat.display()),
                );
                let counter = Counter::Process {
                    stat: HostFile::new(paths, stat),
                    ticks_per_second: process::ticks_per_second()?,
                };
                (counter, limits, what, cgroup_dirs)
            }
            LoadSourceKind::Psi => {
                let pressure = psi::locate(paths, cgroups.as_ref())?;
                let (limits, what) = process_limits(
                    cpu_cgroup,
                    format!("`some` stall time from {}", pressure.display()),
                );
                (Counter::Psi { pressure }, limits, what, cgroup_dirs)
            }
            LoadSourceKind::Cgroup => {
                let cpu_cgroup = cpu_cgroup?;
                let what = cpu_cgroup.describe();
                let CpuCgroup {
                    quota,
                    usage,
                    shares,
                    ..
                } = cpu_cgroup;
                let usage = usage?;
                let what = format!("usage of {what} from {}", usage.path.display());
                let limits = Limits::process(paths, pid, Some(quota))
                    .with_request(request)
                    .with_shares(shares);
                (Counter::Cgroup(usage), limits, what, cgroup_dirs)
            }
            LoadSourceKind::System | LoadSourceKind::Auto => {
                let stat = paths.proc_file("stat");
                let what = format!("host busy/idle time from {}", stat.display());
                let counter = Counter::System {
                    stat: HostFile::new(paths, stat),
                };
                // Host figures do not depend on any cgroup.
                (counter, Limits::host(paths), what, Vec::new())
            }
        };
        Self::start(
            origin,
            cgroup_dirs,
            source,
            counter,
            limits,
            what,
            why,
            buf,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        origin: Origin,
        cgroup_dirs: Vec<PathBuf>,
        source: LoadSourceKind,
        counter: Counter,
        limits: Limits,
        what: String,
        why: Option<String>,
        mut buf: String,
        now: Instant,
    ) -> Result<Self, LoadError> {
        let counts = counter.read(&mut buf).map_err(|err| match counter {
            Counter::Psi { .. } => psi::unavailable(err),
            _ => err,
        })?;
        let capacity = limits.read(&mut buf)?;
        let description = match why {
            Some(why) => format!("source={source} ({why}): {what}"),
            None => format!("source={source}: {what}"),
        };
        Ok(Self {
            origin,
            cgroup_dirs,
            source,
            counter,
            limits,
            baseline: Some(Baseline {
                at: now,
                counts,
                throttle: capacity
                    .throttle
                    .map(|t| (capacity.quota.map(|q| q.level), t)),
            }),
            capacity,
            description,
            buf,
        })
    }

    /// The resolved source, never `Auto`.
    pub fn source(&self) -> LoadSourceKind {
        self.source
    }

    /// The cgroup directory whose usage or pressure this meter follows;
    /// `None` when it follows the host (`system`, host-wide `psi`) or only
    /// this process. This is the CPU budget the load judges.
    pub fn measured_cgroup(&self) -> Option<&Path> {
        match &self.counter {
            Counter::Cgroup(usage) => usage.path.parent(),
            Counter::Psi { pressure } if pressure.ends_with("cpu.pressure") => pressure.parent(),
            _ => None,
        }
    }

    /// The root the meter reads `/proc` and `/sys` under.
    pub fn paths(&self) -> &HostPaths {
        &self.origin.paths
    }

    /// CPUs available, as of the last read.
    pub fn capacity(&self) -> f64 {
        self.capacity.cpus
    }

    /// One line for logs: source, files, capacity and, for `Auto`, why.
    pub fn describe(&self) -> String {
        format!(
            "{}; capacity {}",
            self.description,
            self.limits.describe(&self.capacity)
        )
    }

    /// Reads the counters at `now` and returns the load since the previous
    /// successful read.
    ///
    /// Errors are warnings for the caller and never stand in for a load: a
    /// counter that went backwards re-baselines; an unreadable or malformed
    /// file drops the baseline (the next successful read takes a new one and
    /// reports [`LoadError::Rebaselined`]); a window with no elapsed time, or
    /// (for `process`) shorter than 10 clock ticks, keeps the previous baseline
    /// so the next call measures a longer window.
    ///
    /// When the cgroup followed disappears (the process was moved and the
    /// cgroup removed), the meter finds the process's cgroup again, as at
    /// start, and reports [`LoadError::Relocated`]; samples resume at the next call.
    pub fn sample(&mut self, now: Instant) -> Result<LoadSample, LoadError> {
        match self.sample_here(now) {
            Err(err) if self.cgroup_dirs.iter().any(|dir| !dir.is_dir()) => {
                self.relocate(now).unwrap_or(Err(err))
            }
            result => result,
        }
    }

    /// A new meter on the process's current cgroup, replacing this one.
    fn relocate(&mut self, now: Instant) -> Option<Result<LoadSample, LoadError>> {
        let Origin {
            kind,
            paths,
            pid,
            request,
        } = &self.origin;
        let moved = Self::with_request_at(*kind, paths, *pid, *request, now).ok()?;
        let gone = self
            .cgroup_dirs
            .iter()
            .find(|dir| !dir.is_dir())
            .cloned()
            .unwrap_or_default();
        *self = moved;
        Some(Err(LoadError::Relocated {
            gone,
            now: self.describe(),
        }))
    }

    fn sample_here(&mut self, now: Instant) -> Result<LoadSample, LoadError> {
        let counts = match self.counter.read(&mut self.buf) {
            Ok(counts) => counts,
            Err(err) => {
                self.baseline = None;
                return Err(err);
            }
        };
        let mut fresh = Baseline {
            at: now,
            counts,
            throttle: None,
        };
        let Some(base) = self.baseline else {
            self.baseline = Some(fresh);
            return Err(LoadError::Rebaselined {
                path: self.counter.path().to_owned(),
            });
        };
        let delta = match self.counter.delta(base.counts, counts) {
            Ok(delta) => delta,
            Err(err) => {
                self.baseline = Some(fresh);
                return Err(err);
            }
        };
        let wall = now.saturating_duration_since(base.at);
        if wall.is_zero() {
            return Err(self.no_time_elapsed());
        }
        let min = self.counter.min_window();
        if wall < min {
            return Err(LoadError::WindowTooShort {
                path: self.counter.path().to_owned(),
                elapsed: wall,
                min,
            });
        }
        let capacity = match self.limits.read(&mut self.buf) {
            Ok(capacity) => capacity,
            Err(err) => {
                self.baseline = Some(fresh);
                return Err(err);
            }
        };
        self.capacity = capacity;
        fresh.throttle = capacity
            .throttle
            .map(|t| (capacity.quota.map(|q| q.level), t));
        // Only a window over one and the same group means anything: after a
        // resize moved the binding quota to another level, wait a sample.
        let throttling = match (base.throttle, fresh.throttle, capacity.quota) {
            (Some((old_level, old)), Some((new_level, new)), Some(quota))
                if old_level == new_level =>
            {
                throttle::window(old, new, wall, Duration::from_micros(quota.period_us))
            }
            _ => None,
        };
        let usage_load = self
            .counter
            .load(delta, wall, capacity.cpus)
            .ok_or_else(|| self.no_time_elapsed())?;
        // One rule for element and supervisor: a cgroup whose every period
        // was throttled used its whole quota (see `throttle`).
        let load = match (&self.counter, throttling) {
            (Counter::Cgroup(_), Some(throttling)) => throttling.apply(usage_load),
            _ => usage_load,
        };
        self.baseline = Some(fresh);
        Ok(LoadSample {
            load,
            capacity: capacity.cpus,
            source: self.source,
            throttling,
        })
    }

    fn no_time_elapsed(&self) -> LoadError {
        LoadError::NoTimeElapsed {
            path: self.counter.path().to_owned(),
        }
    }
}

/// `Cgroup` when a quota (or, without one, a CPU request) limits the
/// process, else `System`; with the reason.
fn choose_auto(
    cpu_cgroup: &Result<CpuCgroup, LoadError>,
    request: Option<CpuRequest>,
    buf: &mut String,
) -> Result<(LoadSourceKind, String), LoadError> {
    let cpu_cgroup = match (cpu_cgroup, request) {
        (Ok(cpu_cgroup), _) => cpu_cgroup,
        (Err(err), Some(request)) => {
            return Ok((
                LoadSourceKind::Process,
                format!("auto: CPU request {request} but no CPU cgroup to follow ({err})"),
            ));
        }
        (Err(err), None) => {
            return Ok((
                LoadSourceKind::System,
                format!("auto: no CPU cgroup to follow: {err}"),
            ));
        }
    };
    let what = cpu_cgroup.describe();
    let request = match (request, &cpu_cgroup.shares) {
        (Some(request), _) => Some(request),
        (None, Some(shares)) => shares.read(buf)?,
        (None, None) => None,
    };
    Ok(
        match (cpu_cgroup.quota.read(buf)?, &cpu_cgroup.usage, request) {
            (None, Ok(_), Some(request)) => (
                LoadSourceKind::Cgroup,
                format!("auto: {what} has no CPU quota; its CPU request is {request}"),
            ),
            (None, Err(err), Some(request)) => (
                LoadSourceKind::Process,
                format!(
                    "auto: {what} has no CPU quota and its usage is unreadable ({err}); \
                 CPU request {request}"
                ),
            ),
            (None, _, None) => (
                LoadSourceKind::System,
                format!("auto: {what} has no CPU quota up to the mount root"),
            ),
            (Some(limit), Ok(_), _) => (
                LoadSourceKind::Cgroup,
                format!("auto: {what} is limited to {:.2} CPUs", limit.cpus),
            ),
            // Host figures would hide throttling by the quota: measure our own
            // CPU time against it instead.
            (Some(limit), Err(err), _) => (
                LoadSourceKind::Process,
                format!(
                    "auto: {what} is limited to {:.2} CPUs but its usage is unreadable ({err})",
                    limit.cpus
                ),
            ),
        },
    )
}

/// The arguments a meter was created with.
struct Origin {
    kind: LoadSourceKind,
    paths: HostPaths,
    pid: i32,
    request: Option<CpuRequest>,
}

/// Cumulative counters. `idle` is only used by the `system` source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    used: u64,
    idle: u64,
}

#[derive(Clone, Copy, Debug)]
struct Baseline {
    at: Instant,
    counts: Counts,
    /// Throttling counters and the quota level they were read at.
    throttle: Option<(Option<usize>, throttle::ThrottleCounts)>,
}

enum Counter {
    /// utime+stime in clock ticks.
    Process {
        stat: HostFile,
        ticks_per_second: f64,
    },
    /// This process's CPU clock, in ns.
    OwnProcessClock,
    /// cgroup usage in the file's unit.
    Cgroup(UsageFile),
    /// Host busy and idle jiffies.
    System { stat: HostFile },
    /// `some` stall time in µs.
    Psi { pressure: PathBuf },
}

/// Ticks at which a process window is resolved to about ±10-20 %: utime and
/// stime are each truncated to whole ticks, so shorter windows can read far
/// above the truth and trigger a false drain.
const MIN_PROCESS_TICKS: f64 = 10.0;

impl Counter {
    fn path(&self) -> &Path {
        match self {
            Self::Process { stat, .. } | Self::System { stat } => stat.path(),
            Self::OwnProcessClock => Path::new("CLOCK_PROCESS_CPUTIME_ID"),
            Self::Cgroup(usage) => &usage.path,
            Self::Psi { pressure } => pressure,
        }
    }

    fn read(&self, buf: &mut String) -> Result<Counts, LoadError> {
        let used = match self {
            Self::Process { stat, .. } => {
                stat.read_into(buf)?;
                process::parse_cpu_ticks(buf).map_err(|d| LoadError::malformed(stat.path(), d))?
            }
            Self::OwnProcessClock => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
                    .map_err(|err| LoadError::malformed(self.path(), err.to_string()))?;
                u64::try_from(Duration::from(now).as_nanos()).unwrap_or(u64::MAX)
            }
            Self::Cgroup(usage) => usage.read(buf)?,
            Self::System { stat } => {
                stat.read_into(buf)?;
                let times = proc_stat::parse_cpu_times(buf)
                    .map_err(|d| LoadError::malformed(stat.path(), d))?;
                return Ok(Counts {
                    used: times.busy,
                    idle: times.idle,
                });
            }
            Self::Psi { pressure } => {
                paths::read_into(pressure, buf)?;
                psi::parse_some_total(buf).map_err(|d| LoadError::malformed(pressure, d))?
            }
        };
        Ok(Counts { used, idle: 0 })
    }

    fn delta(&self, old: Counts, new: Counts) -> Result<Counts, LoadError> {
        let backwards = |old: u64, new: u64| LoadError::CounterWentBackwards {
            path: self.path().to_owned(),
            old,
            new,
        };
        Ok(Counts {
            used: new
                .used
                .checked_sub(old.used)
                .ok_or_else(|| backwards(old.used, new.used))?,
            idle: new
                .idle
                .checked_sub(old.idle)
                .ok_or_else(|| backwards(old.idle, new.idle))?,
        })
    }

    fn min_window(&self) -> Duration {
        match self {
            Self::Process {
                ticks_per_second, ..
            } => Duration::try_from_secs_f64(MIN_PROCESS_TICKS / ticks_per_second)
                .unwrap_or(Duration::ZERO),
            _ => Duration::ZERO,
        }
    }

    /// `None` when a denominator is zero: nothing was measured, which must not
    /// read as an idle 0.
    fn load(&self, delta: Counts, wall: Duration, capacity: f64) -> Option<f64> {
        let share = |used: u64, units_per_second: f64| {
            used as f64 / units_per_second / (wall.as_secs_f64() * capacity)
        };
        let load = match self {
            Self::Process {
                ticks_per_second, ..
            } => share(delta.used, *ticks_per_second),
            Self::OwnProcessClock => share(delta.used, 1e9),
            Self::Cgroup(usage) => share(delta.used, usage.units_per_second()),
            Self::System { .. } => {
                let total = delta.used.checked_add(delta.idle)?;
                if total == 0 {
                    return None;
                }
                delta.used as f64 / total as f64
            }
            Self::Psi { .. } => psi::share(delta.used, wall.as_secs_f64() * 1e6),
        };
        (load.is_finite() && load >= 0.0).then_some(load)
    }
}
