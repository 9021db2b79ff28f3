//! The CPU request Kubernetes wrote into the cgroup: `cpu.shares` (v1) or
//! `cpu.weight` (v2). Unlike a request handed in through the Downward API,
//! which is fixed when the container starts, these follow an in-place
//! resize, so they are re-read at every sample.
//!
//! Kubernetes sets `cpu.shares = millicores × 1024 / 1000` (at least 2) on
//! the container's cgroup; on v2 the runtime turns shares into a weight,
//! with one of two mappings (see [`WeightMapping`]).

use std::path::{Component, Path, PathBuf};

use super::LoadError;
use super::cgroup_file::{CgroupVersion, parse_u64};
use super::paths::read_if_present;
use super::request::CpuRequest;

/// Shares Kubernetes writes for a request of 1 CPU, and the kernel's
/// bounds (`MIN_SHARES`, `MAX_SHARES`).
const SHARES_PER_CPU: f64 = 1024.0;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
/// cgroup v2 weight bounds.
const MAX_WEIGHT: u64 = 10_000;

/// How a v2 runtime mapped shares to `cpu.weight`.
///
/// Both map 2 → 1 and 262144 → 10000 and are increasing, so one weight
/// cannot tell them apart. cpuguard reads weights with the quadratic one:
/// it is what runc ≥ 1.3.2 and crun ≥ 1.23 write (the Kubernetes project
/// announced it in October 2025), and it keeps the defaults aligned (1 CPU
/// = 1024 shares = weight 100), where the linear one gives 1 CPU weight 39.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMapping {
    /// runc < 1.3.2, crun < 1.23: `weight = 1 + (shares − 2) × 9999 / 262142`.
    Linear,
    /// runc ≥ 1.3.2, crun ≥ 1.23: with `L = log2(shares)`,
    /// `weight = ⌈10^((L² + 125 L) / 612 − 7/34)⌉`.
    Quadratic,
}

impl WeightMapping {
    /// The weight a runtime writes for `shares` (the forward mapping, for
    /// tests and documentation).
    pub fn weight(self, shares: u64) -> u64 {
        let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
        match self {
            Self::Linear => 1 + (shares - MIN_SHARES) * 9999 / (MAX_SHARES - MIN_SHARES),
            Self::Quadratic => {
                let l = (shares as f64).log2();
                let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
                (10f64.powf(exponent).ceil() as u64).clamp(1, MAX_WEIGHT)
            }
        }
    }

    /// The largest shares that map to `weight`: of the few share values one
    /// weight stands for, the largest is the one a whole-CPU request (1024
    /// → 100 quadratic, → 39 linear) comes back as, and a capacity read a
    /// hair high never drains a recording that a hair low would.
    pub fn shares(self, weight: u64) -> u64 {
        let weight = weight.clamp(1, MAX_WEIGHT);
        let shares = match self {
            Self::Linear => {
                // Largest s with 1 + (s − 2) × 9999 / 262142 == weight.
                MIN_SHARES + (weight * (MAX_SHARES - MIN_SHARES)).div_ceil(9999) - 1
            }
            Self::Quadratic => {
                // Solve L² + 125 L − 612 (log10(weight) + 7/34) = 0 for L.
                let c = 612.0 * ((weight as f64).log10() + 7.0 / 34.0);
                let l = (-125.0 + (125.0f64 * 125.0 + 4.0 * c).sqrt()) / 2.0;
                let mut shares = 2f64.powf(l).round() as u64;
                // Rounding of the float pow: settle on the largest exact match.
                while shares < MAX_SHARES && self.weight(shares + 1) <= weight {
                    shares += 1;
                }
                while shares > MIN_SHARES && self.weight(shares) > weight {
                    shares -= 1;
                }
                shares
            }
        };
        shares.clamp(MIN_SHARES, MAX_SHARES)
    }
}

/// The mapping cpuguard reads `cpu.weight` with (see [`WeightMapping`]).
pub const WEIGHT_MAPPING: WeightMapping = WeightMapping::Quadratic;

/// Whether Kubernetes set this cgroup's shares: its path (as
/// `/proc/<pid>/cgroup` names it) runs through a `kubepods` cgroup (the
/// cgroupfs driver's `/kubepods/…`, the systemd driver's
/// `/kubepods.slice/…`), and not through the BestEffort class, whose pods
/// have no request (Kubernetes gives them the minimum, 2 shares).
pub(crate) fn set_by_kubernetes(cgroup: &str) -> bool {
    let mut kubepods = false;
    for component in Path::new(cgroup).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let name = name.to_string_lossy();
        kubepods |= name.starts_with("kubepods");
        if kubepods && name.contains("besteffort") {
            return false;
        }
    }
    kubepods
}

/// `cpu.shares` or `cpu.weight` of the pid's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ShareFile {
    pub path: PathBuf,
    version: CgroupVersion,
}

impl ShareFile {
    pub fn new(dir: &Path, version: CgroupVersion) -> Self {
        let name = match version {
            CgroupVersion::V1 => "cpu.shares",
            CgroupVersion::V2 => "cpu.weight",
        };
        Self {
            path: dir.join(name),
            version,
        }
    }

    /// The request the file states; `None` when the file is absent (cpu
    /// controller not enabled there) or holds the minimum (no request).
    pub fn read(&self, buf: &mut String) -> Result<Option<CpuRequest>, LoadError> {
        if !read_if_present(&self.path, buf)? {
            return Ok(None);
        }
        let value = parse_u64(buf.trim()).map_err(|d| LoadError::malformed(&self.path, d))?;
        request(value, self.version).map_err(|d| LoadError::malformed(&self.path, d))
    }
}

/// The request a `cpu.shares` (v1) or `cpu.weight` (v2) value stands for.
pub(crate) fn request(value: u64, version: CgroupVersion) -> Result<Option<CpuRequest>, String> {
    let shares = match version {
        CgroupVersion::V1 if (MIN_SHARES..=MAX_SHARES).contains(&value) => value,
        CgroupVersion::V1 => {
            return Err(format!(
                "cpu.shares {value} is outside the kernel's range {MIN_SHARES}..={MAX_SHARES}"
            ));
        }
        CgroupVersion::V2 if (1..=MAX_WEIGHT).contains(&value) => WEIGHT_MAPPING.shares(value),
        CgroupVersion::V2 => {
            return Err(format!(
                "cpu.weight {value} is outside the kernel's range 1..={MAX_WEIGHT}"
            ));
        }
    };
    if shares <= MIN_SHARES {
        return Ok(None);
    }
    Ok(CpuRequest::from_cpus(shares as f64 / SHARES_PER_CPU))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' own conversion (`MilliCPUToShares`).
    fn k8s_shares(millicores: u64) -> u64 {
        (millicores * 1024 / 1000).max(MIN_SHARES)
    }

    #[test]
    fn forward_mappings_match_the_runtimes() {
        for mapping in [WeightMapping::Linear, WeightMapping::Quadratic] {
            assert_eq!(mapping.weight(2), 1);
            assert_eq!(mapping.weight(262_144), 10_000);
        }
        assert_eq!(WeightMapping::Linear.weight(1024), 39);
        assert_eq!(WeightMapping::Linear.weight(2048), 79);
        assert_eq!(WeightMapping::Quadratic.weight(1024), 100);
        // runc issue 4896: --cpu-shares 2000 read 77 before, 170 after.
        assert_eq!(WeightMapping::Linear.weight(2000), 77);
        assert_eq!(WeightMapping::Quadratic.weight(2000), 170);
    }

    #[test]
    fn inverses_give_back_every_share_value_a_weight_stands_for() {
        for mapping in [WeightMapping::Linear, WeightMapping::Quadratic] {
            for shares in (2..=262_144).step_by(97) {
                let weight = mapping.weight(shares);
                let back = mapping.shares(weight);
                assert_eq!(mapping.weight(back), weight, "{mapping:?} {shares}");
                assert!(
                    back >= shares,
                    "{mapping:?}: {shares} -> {weight} -> {back}"
                );
                assert!(
                    back == MAX_SHARES || mapping.weight(back + 1) > weight,
                    "{mapping:?}: {back} is not the largest for {weight}"
                );
            }
        }
    }

    #[test]
    fn v1_shares_read_back_kubernetes_requests() {
        for millicores in [100u64, 250, 500, 1000, 1500, 4000] {
            let cpus = request(k8s_shares(millicores), CgroupVersion::V1)
                .unwrap()
                .unwrap()
                .cpus();
            assert!(
                (cpus - millicores as f64 / 1000.0).abs() < 0.001,
                "{millicores}m read {cpus}"
            );
        }
        // BestEffort (and requests of 1m or 2m): no request.
        assert_eq!(request(2, CgroupVersion::V1), Ok(None));
        assert!(request(1, CgroupVersion::V1).is_err());
        assert!(request(262_145, CgroupVersion::V1).is_err());
    }

    #[test]
    fn v2_weights_read_back_kubernetes_requests_with_the_quadratic_mapping() {
        for millicores in [100u64, 250, 500, 1000, 2000, 4000] {
            let weight = WeightMapping::Quadratic.weight(k8s_shares(millicores));
            let cpus = request(weight, CgroupVersion::V2).unwrap().unwrap().cpus();
            let want = millicores as f64 / 1000.0;
            // One weight stands for a few share values: small requests
            // read back up to 5 % high (250m: weight 35 = 256..=264 shares).
            assert!(
                cpus >= want - 0.001 && cpus <= want * 1.05,
                "{millicores}m -> weight {weight} read {cpus}"
            );
        }
        assert_eq!(
            request(100, CgroupVersion::V2).unwrap().unwrap().cpus(),
            1.0
        );
        assert_eq!(request(1, CgroupVersion::V2), Ok(None));
        assert!(request(0, CgroupVersion::V2).is_err());
        assert!(request(10_001, CgroupVersion::V2).is_err());
    }

    #[test]
    fn only_kubepods_cgroups_other_than_besteffort() {
        assert!(set_by_kubernetes("/kubepods/burstable/pod1/ctr"));
        assert!(set_by_kubernetes("/kubepods/pod1/ctr"));
        assert!(set_by_kubernetes(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-1.scope"
        ));
        assert!(!set_by_kubernetes("/kubepods/besteffort/pod1/ctr"));
        assert!(!set_by_kubernetes(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/x.scope"
        ));
        assert!(!set_by_kubernetes("/"));
        assert!(!set_by_kubernetes(
            "/user.slice/user-1000.slice/session-1.scope"
        ));
        assert!(!set_by_kubernetes("/system.slice/app.service"));
        assert!(!set_by_kubernetes("/docker/abc"));
    }
}
