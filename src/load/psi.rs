//! CPU pressure (PSI): the share of wall time in which some task waited for CPU.
//!
//! The `some` line is parsed here rather than with `procfs::CpuPressure`,
//! which rejects files without a `full` line (kernels before 5.13), and
//! `procfs::parse_pressure_record`, which slices the line and can panic on a
//! truncated one.

use std::path::PathBuf;

use super::LoadError;
use super::cgroup::Cgroups;
use super::paths::HostPaths;

/// PSI totals and our wall clock are read at slightly different instants, so
/// a fully stalled window can read a hair above 1.
const ROUNDING_SLACK: f64 = 0.02;

/// The pressure file to follow: the pid's cgroup2 `cpu.pressure` when it
/// exists (it is tracked on hybrid hosts too, cpu controller or not), else
/// the host's `/proc/pressure/cpu`.
pub(crate) fn locate(paths: &HostPaths, cgroups: Option<&Cgroups>) -> Result<PathBuf, LoadError> {
    if let Some(file) = cgroups
        .and_then(|c| c.unified_dir(paths))
        .map(|dir| dir.join("cpu.pressure"))
        .filter(|file| file.is_file())
    {
        return Ok(file);
    }
    let host = paths.proc_file("pressure/cpu");
    if host.is_file() {
        Ok(host)
    } else {
        Err(LoadError::PsiUnavailable {
            path: host,
            detail: "no such file (kernel without CONFIG_PSI?)".to_owned(),
        })
    }
}

/// Recasts the error of the first read: a pressure file that exists but
/// cannot be read (`psi=0` on the kernel command line) means PSI is off.
pub(crate) fn unavailable(err: LoadError) -> LoadError {
    match err {
        LoadError::Read { path, error } => LoadError::PsiUnavailable {
            path,
            detail: error.to_string(),
        },
        LoadError::Malformed { path, detail } => LoadError::PsiUnavailable { path, detail },
        other => other,
    }
}

/// The `total=` (µs) of the `some` line.
pub(crate) fn parse_some_total(text: &str) -> Result<u64, String> {
    let fields = text
        .lines()
        .find_map(|line| line.strip_prefix("some "))
        .ok_or("no `some` line")?;
    let total = fields
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))
        .ok_or("no total= in the `some` line")?;
    total
        .parse()
        .map_err(|_| format!("bad total {total:?} in the `some` line"))
}

/// Stall share over a window; only rounding noise above 1 is clamped.
pub(crate) fn share(stalled_us: u64, wall_us: f64) -> f64 {
    let share = stalled_us as f64 / wall_us;
    if share > 1.0 && share <= 1.0 + ROUNDING_SLACK {
        1.0
    } else {
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_some_and_full_files() {
        let text = "some avg10=7.15 avg60=5.76 avg300=2.03 total=9712633\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_some_total(text), Ok(9_712_633));
    }

    #[test]
    fn parses_some_only_files() {
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";
        assert_eq!(parse_some_total(text), Ok(42));
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(parse_some_total("").is_err());
        assert!(parse_some_total("some").is_err());
        assert!(parse_some_total("some avg10=1\n").is_err());
        assert!(parse_some_total("some total=x\n").is_err());
        assert!(parse_some_total("full avg10=0 total=3\n").is_err());
    }

    #[test]
    fn share_clamps_rounding_only() {
        assert_eq!(share(500_000, 1e6), 0.5);
        assert_eq!(share(1_010_000, 1e6), 1.0);
        assert_eq!(share(1_500_000, 1e6), 1.5);
    }
}
