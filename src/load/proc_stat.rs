//! Whole-host busy/idle time from the first line of `/proc/stat`.

/// Cumulative jiffies across all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub busy: u64,
    pub idle: u64,
}

/// Parses the aggregate `cpu ` line:
/// `user nice system idle iowait irq softirq steal guest guest_nice`.
///
/// busy = user+nice+system+irq+softirq+steal; idle = idle+iowait. guest and
/// guest_nice are already counted in user and nice, so adding them would
/// count a VM host's guests twice.
pub(crate) fn parse_cpu_times(stat: &str) -> Result<CpuTimes, String> {
    let line = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .ok_or("no aggregate `cpu ` line")?;
    // Fields after idle appeared over kernel versions: missing ones count as 0.
    let values = line.split_whitespace();
    if values.clone().count() < 4 {
        return Err(format!("too few fields in `cpu {}`", line.trim()));
    }
    let mut fields = [0u64; 8];
    for (slot, text) in fields.iter_mut().zip(values) {
        *slot = text
            .parse()
            .map_err(|_| format!("bad number {text:?} in `cpu {}`", line.trim()))?;
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields;
    let sum = |values: &[u64]| {
        values
            .iter()
            .try_fold(0u64, |acc, v| acc.checked_add(*v))
            .ok_or_else(|| format!("overflow adding `cpu {}`", line.trim()))
    };
    Ok(CpuTimes {
        busy: sum(&[user, nice, system, irq, softirq, steal])?,
        idle: sum(&[idle, iowait])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_idle_exclude_guest() {
        let stat = "cpu  100 10 50 1000 20 5 7 3 40 4\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            parse_cpu_times(stat),
            Ok(CpuTimes {
                busy: 100 + 10 + 50 + 5 + 7 + 3,
                idle: 1000 + 20,
            })
        );
    }

    #[test]
    fn old_kernels_with_four_fields_parse() {
        assert_eq!(
            parse_cpu_times("cpu 1 2 3 4\n"),
            Ok(CpuTimes { busy: 6, idle: 4 })
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_cpu_times("").is_err());
        assert!(parse_cpu_times("cpu0 1 2 3 4\n").is_err());
        assert!(parse_cpu_times("cpu  1 2 3\n").is_err());
        assert!(parse_cpu_times("cpu  1 x 3 4\n").is_err());
        assert!(parse_cpu_times("cpu  -1 2 3 4\n").is_err());
        let max = u64::MAX;
        assert!(parse_cpu_times(&format!("cpu  {max} {max} 0 0\n")).is_err());
    }
}
