//! A Kubernetes CPU request as capacity. Media pods often run without a CPU
//! limit (no quota: throttling drops frames), so their only statement of how
//! much CPU they may count on is the request, which the Downward API hands
//! in as millicores.

use std::fmt;
use std::str::FromStr;

/// CPUs a workload was promised; always finite and above zero.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct CpuRequest(f64);

/// Why a CPU request was refused; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid CPU request {value:?}: {why} (give CPUs as in Kubernetes, e.g. \"500m\", \"0.5\" or \"2\")"
)]
pub struct CpuRequestError {
    pub value: String,
    pub why: &'static str,
}

impl CpuRequest {
    /// `cpus` when it is a usable request (finite, above zero).
    pub fn from_cpus(cpus: f64) -> Option<Self> {
        (cpus.is_finite() && cpus > 0.0).then_some(Self(cpus))
    }

    pub fn cpus(self) -> f64 {
        self.0
    }
}

impl fmt::Display for CpuRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} CPUs", self.0)
    }
}

/// The forms Kubernetes writes CPU quantities in: a decimal number of CPUs
/// ("2", "0.5") or of millicores ("500m", which the Downward API gives with
/// `divisor: 1m`). Exponents and binary suffixes are valid Kubernetes
/// quantities but never describe CPUs in practice, so they are refused rather
/// than guessed at.
impl FromStr for CpuRequest {
    type Err = CpuRequestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| CpuRequestError {
            value: text.to_owned(),
            why,
        };
        let trimmed = text.trim();
        let (number, scale) = match trimmed.strip_suffix('m') {
            Some(millis) => (millis, 1000.0),
            None => (trimmed, 1.0),
        };
        if number.is_empty() {
            return Err(err("no number"));
        }
        if number.starts_with('-') {
            return Err(err("a CPU request cannot be negative"));
        }
        // Only plain decimals: f64's parser would also take "inf", "NaN" and "1e3".
        let decimal = number.strip_prefix('+').unwrap_or(number);
        let mut dots = 0;
        for c in decimal.chars() {
            match c {
                '0'..='9' => {}
                '.' => dots += 1,
                _ => return Err(err("not a decimal number of CPUs or millicores (m)")),
            }
        }
        if dots > 1 || decimal == "." {
            return Err(err("not a decimal number of CPUs or millicores (m)"));
        }
        let value: f64 = decimal
            .parse()
            .map_err(|_| err("not a decimal number of CPUs or millicores (m)"))?;
        Self::from_cpus(value / scale).ok_or_else(|| err("a CPU request must be above zero"))
    }
}
