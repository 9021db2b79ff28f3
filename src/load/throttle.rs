//! CFS throttling counters of the cgroup whose quota binds, and the rule
//! that turns them into "this window was saturated".
//!
//! Why usage alone is not enough: the kernel hands a quota out per CFS
//! period (100 ms by default) and a 250 ms sample window holds two or three
//! of those periods' worth of usage depending on where it falls. On
//! saturated v1 quotas here, usage over 250 ms windows read 0.75–1.23 and
//! half the samples fell below 0.95; the throttling counters named every
//! one of them saturated (README "Throttling" has the figures).
//!
//! Why not `nr_throttled / nr_periods` alone: `nr_periods` only counts the
//! periods in which the group asked for CPU (the period timer stops while
//! it is idle), so a bursty load that is throttled in each of its bursts
//! reads 1.00 over a window it mostly idled through (measured: 0.5 CPU
//! quota, 50 ms period, 1 s windows, usage 0.13–0.60, ratio up to 1.00).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LoadError;
use super::cgroup_file::{CgroupVersion, parse_u64};
use super::paths::read_if_present;

/// Share of the window's whole CFS periods in which the group must have been
/// throttled for the window to count as saturated: a group asking for more
/// than its quota is throttled in every period (measured: every window of
/// every saturated case in which the host had CPU to spare), a steady load
/// at 60 % of its quota never came near (its short overruns throttled at
/// most half the periods of a window), and a bursty load only in windows
/// spent inside a burst. 0.9 lets one period in ten escape, e.g. the one a
/// window's edge cuts.
pub const SATURATED_THROTTLED_SHARE: f64 = 0.9;

/// Share of the quota of the window's whole periods that the group must
/// also have used. The kernel hands runtime to each CPU in slices, so under
/// host contention a group spread over several CPUs can be throttled on one
/// while runtime it was handed sits unused on another: measured here, a 1.5
/// CPU quota on the busy 2-core host was throttled in every period of
/// 500 ms windows while using 0.78 of its quota. That is not a saturated
/// quota. A truly saturated window uses at least the quota of its whole
/// periods, give or take timer jitter (lowest measured: 0.72 of the window's
/// quota at 250 ms / 100 ms, whose whole periods cover 0.8 of it, i.e. 0.9).
pub const SATURATED_MIN_USED: f64 = 0.85;

/// Cumulative counters from `cpu.stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThrottleCounts {
    pub periods: u64,
    pub throttled: u64,
    /// Time the group spent throttled, in ns (v2 reports µs: scaled here).
    pub throttled_ns: u64,
}

/// Throttling over one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttling {
    /// `Δnr_throttled / Δnr_periods`: the share of the periods in which the
    /// group ran that ended throttled; 0 when it never ran.
    pub ratio: f64,
    /// `Δnr_periods`: CFS periods in which the group ran.
    pub periods: u64,
    /// `Δnr_throttled`.
    pub throttled: u64,
    /// Whole CFS periods that fit in the window's wall time.
    pub window_periods: u64,
    /// Share of the window's wall time those whole periods cover (0.8 for
    /// 250 ms and 100 ms).
    pub covered: f64,
    /// Seconds the group spent throttled in the window. Summed over CPUs by
    /// the kernel, so it can exceed the wall time of the window.
    pub seconds: f64,
}

impl Throttling {
    /// Whether the group was throttled in (nearly) every CFS period of the
    /// window, i.e. used its whole quota throughout. Never for a window
    /// shorter than one period: there the usage alone decides.
    pub fn saturated(&self) -> bool {
        self.window_periods > 0
            && self.throttled as f64 >= SATURATED_THROTTLED_SHARE * self.window_periods as f64
    }

    /// The load to report: a saturated window that used the quota of its
    /// whole periods ([`SATURATED_MIN_USED`]) reads at least 1.0 (its usage
    /// may have caught one period fewer than the quota was spent in); any
    /// other window keeps its usage load.
    pub fn apply(&self, usage_load: f64) -> f64 {
        if self.saturated() && usage_load >= SATURATED_MIN_USED * self.covered {
            usage_load.max(1.0)
        } else {
            usage_load
        }
    }
}

/// The `cpu.stat` of one cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ThrottleFile {
    pub path: PathBuf,
    version: CgroupVersion,
}

impl ThrottleFile {
    pub fn new(dir: &Path, version: CgroupVersion) -> Self {
        Self {
            path: dir.join("cpu.stat"),
            version,
        }
    }

    /// `None` when the file or its throttling lines are absent (no CFS
    /// bandwidth control in this kernel, or a fixture without them).
    pub fn read(&self, buf: &mut String) -> Result<Option<ThrottleCounts>, LoadError> {
        if !read_if_present(&self.path, buf)? {
            return Ok(None);
        }
        parse_cpu_stat(buf, self.version).map_err(|d| LoadError::malformed(&self.path, d))
    }
}

/// The throttling lines of a v1 or v2 `cpu.stat`.
pub(crate) fn parse_cpu_stat(
    text: &str,
    version: CgroupVersion,
) -> Result<Option<ThrottleCounts>, String> {
    let field = |name: &str| -> Result<Option<u64>, String> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| parse_u64(v.trim()).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (time_field, ns_per_unit) = match version {
        CgroupVersion::V1 => ("throttled_time", 1),
        CgroupVersion::V2 => ("throttled_usec", 1_000),
    };
    let (Some(periods), Some(throttled), Some(time)) = (
        field("nr_periods")?,
        field("nr_throttled")?,
        field(time_field)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(ThrottleCounts {
        periods,
        throttled,
        throttled_ns: time.saturating_mul(ns_per_unit),
    }))
}

/// Throttling between two reads of the same file `wall` apart, with a CFS
/// period of `period`; `None` when a counter went backwards (the group was
/// recreated) or more periods were throttled than ran (not the kernel's
/// writing).
pub(crate) fn window(
    old: ThrottleCounts,
    new: ThrottleCounts,
    wall: Duration,
    period: Duration,
) -> Option<Throttling> {
    let periods = new.periods.checked_sub(old.periods)?;
    let throttled = new.throttled.checked_sub(old.throttled)?;
    let ns = new.throttled_ns.checked_sub(old.throttled_ns)?;
    if throttled > periods {
        return None;
    }
    let ratio = if periods == 0 {
        0.0
    } else {
        throttled as f64 / periods as f64
    };
    let window_periods = if period.is_zero() {
        0
    } else {
        u64::try_from(wall.as_nanos() / period.as_nanos()).unwrap_or(u64::MAX)
    };
    let covered = if wall.is_zero() {
        0.0
    } else {
        (window_periods as f64 * period.as_secs_f64() / wall.as_secs_f64()).min(1.0)
    };
    Some(Throttling {
        ratio,
        periods,
        throttled,
        window_periods,
        covered,
        seconds: ns as f64 / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_files() {
        let v1 = "nr_periods 30\nnr_throttled 12\nthrottled_time 2500000000\nnr_bursts 0\n";
        assert_eq!(
            parse_cpu_stat(v1, CgroupVersion::V1),
            Ok(Some(ThrottleCounts {
                periods: 30,
                throttled: 12,
                throttled_ns: 2_500_000_000
            }))
        );
        let v2 = "usage_usec 5\nuser_usec 4\nsystem_usec 1\nnr_periods 10\n\
                  nr_throttled 9\nthrottled_usec 700\n";
        assert_eq!(
            parse_cpu_stat(v2, CgroupVersion::V2),
            Ok(Some(ThrottleCounts {
                periods: 10,
                throttled: 9,
                throttled_ns: 700_000
            }))
        );
    }

    #[test]
    fn missing_lines_are_none_and_bad_numbers_errors() {
        assert_eq!(
            parse_cpu_stat("usage_usec 5\n", CgroupVersion::V2),
            Ok(None)
        );
        // v1 names its time throttled_time: a v2 file read as v1 has none.
        let v2 = "nr_periods 1\nnr_throttled 1\nthrottled_usec 7\n";
        assert_eq!(parse_cpu_stat(v2, CgroupVersion::V1), Ok(None));
        let err = parse_cpu_stat(
            "nr_periods x\nnr_throttled 1\nthrottled_time 1\n",
            CgroupVersion::V1,
        )
        .unwrap_err();
        assert!(err.contains("nr_periods"), "{err}");
        // A prefix of another name does not match.
        assert_eq!(
            parse_cpu_stat(
                "nr_periods_x 1\nnr_throttled 1\nthrottled_time 1\n",
                CgroupVersion::V1
            ),
            Ok(None)
        );
    }

    fn counts(periods: u64, throttled: u64, ns: u64) -> ThrottleCounts {
        ThrottleCounts {
            periods,
            throttled,
            throttled_ns: ns,
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn w(periods: u64, throttled: u64, wall_ms: u64, period_ms: u64) -> Throttling {
        window(
            counts(10, 2, 0),
            counts(10 + periods, 2 + throttled, 0),
            MS(wall_ms),
            MS(period_ms),
        )
        .unwrap()
    }

    #[test]
    fn window_ratio_periods_and_seconds() {
        let t = window(
            counts(10, 2, 0),
            counts(13, 5, 150_000_000),
            MS(250),
            MS(100),
        )
        .unwrap();
        assert_eq!(t.ratio, 1.0);
        assert_eq!((t.periods, t.throttled, t.window_periods), (3, 3, 2));
        assert_eq!(t.seconds, 0.15);
        let idle = w(0, 0, 1000, 100);
        assert_eq!(idle.ratio, 0.0);
        assert!(!idle.saturated());
        let back = window(counts(10, 2, 0), counts(9, 2, 0), MS(250), MS(100));
        assert_eq!(back, None);
        let more = window(counts(10, 2, 0), counts(11, 4, 0), MS(250), MS(100));
        assert_eq!(more, None);
    }

    #[test]
    fn saturated_windows_read_at_least_one() {
        // The scatter measured on a saturated quota at 250 ms / 100 ms: two
        // or three throttled periods, usage 0.75..1.23.
        for throttled in [2, 3] {
            let full = w(throttled, throttled, 250, 100);
            assert!(full.saturated(), "{full:?}");
            assert_eq!(full.apply(0.75), 1.0);
            assert_eq!(full.apply(1.23), 1.23);
        }
        // One period in ten escaped: still saturated.
        assert_eq!(w(10, 9, 1000, 100).apply(0.9), 1.0);
        // Steady 60 % of the quota: at most half its periods throttled.
        assert_eq!(w(2, 1, 250, 100).apply(0.6), 0.6);
        assert_eq!(w(20, 12, 1000, 50).apply(0.6), 0.6);
        // Bursty: throttled in every period it ran, but it ran in 6 of 20.
        let bursty = w(6, 6, 1000, 50);
        assert_eq!(bursty.ratio, 1.0);
        assert!(!bursty.saturated());
        assert_eq!(bursty.apply(0.4), 0.4);
        // A window shorter than a period cannot tell.
        assert!(!w(1, 1, 80, 100).saturated());
        // Throttled every period but runtime stranded on another CPU: the
        // contended 1.5 CPU quota used 0.78 of it.
        let stranded = w(5, 5, 500, 100);
        assert!(stranded.saturated());
        assert_eq!(stranded.apply(0.78), 0.78);
        assert_eq!(stranded.apply(0.86), 1.0);
        // The lowest saturated 250 ms window measured: 0.72.
        assert_eq!(w(2, 2, 250, 100).apply(0.72), 1.0);
        assert_eq!(w(2, 2, 250, 100).apply(0.6), 0.6);
    }
}
