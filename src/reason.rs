//! Why a stream ended: the machine-readable reason and the words a person reads.

use std::fmt;

/// The reason attached to a drain. The string forms are a public contract
/// (bus messages, tags, EOS fields and supervisor reports all carry them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    CpuLimit,
    StopRequested,
    /// An application-defined reason passed to the `drain` action.
    Custom(String),
}

impl EndReason {
    pub const CPU_LIMIT: &'static str = "cpu-limit";
    pub const STOP_REQUESTED: &'static str = "stop-requested";

    /// Parses a reason given by an application; rejects empty or blank text,
    /// since an end reason nobody can read defeats the purpose.
    pub fn parse(text: &str) -> Result<Self, EmptyReason> {
        let text = text.trim();
        match text {
            "" => Err(EmptyReason),
            Self::CPU_LIMIT => Ok(EndReason::CpuLimit),
            Self::STOP_REQUESTED => Ok(EndReason::StopRequested),
            other => Ok(EndReason::Custom(other.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EndReason::CpuLimit => Self::CPU_LIMIT,
            EndReason::StopRequested => Self::STOP_REQUESTED,
            EndReason::Custom(s) => s,
        }
    }

    /// Human-readable text, as LiveKit Egress shows it ("CPU limit reached").
    pub fn description(&self) -> String {
        match self {
            EndReason::CpuLimit => "CPU limit reached".to_owned(),
            EndReason::StopRequested => "Stop requested".to_owned(),
            EndReason::Custom(s) => format!("Drain requested: {s}"),
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drain reason must not be empty")]
pub struct EmptyReason;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_reasons_round_trip() {
        for text in ["cpu-limit", "stop-requested", "operator-maintenance"] {
            assert_eq!(EndReason::parse(text).unwrap().as_str(), text);
        }
        assert_eq!(
            EndReason::parse(" cpu-limit ").unwrap(),
            EndReason::CpuLimit
        );
    }

    #[test]
    fn descriptions_are_human() {
        assert_eq!(EndReason::CpuLimit.description(), "CPU limit reached");
        assert_eq!(EndReason::StopRequested.description(), "Stop requested");
        assert_eq!(
            EndReason::parse("maintenance").unwrap().description(),
            "Drain requested: maintenance"
        );
    }

    #[test]
    fn empty_reason_is_rejected() {
        assert_eq!(EndReason::parse("  "), Err(EmptyReason));
    }
}
