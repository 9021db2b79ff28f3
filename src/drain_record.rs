//! One drain, as every account of it says it: the `drain` object of
//! cpuguard-run's JSON result (and so of the final webhook), and what a
//! multi-pipeline worker tells its parent when it starts ending. The reason,
//! the trigger and the load source are the core's types; on the wire they are
//! the strings of the public contract (`cpu-limit`, `soft`, `system`, ...).

use serde::{Deserialize, Serialize};

use crate::load::LoadSourceKind;
use crate::messages::DrainTrigger;
use crate::reason::EndReason;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// `cpu-limit`, `stop-requested`, or the application's own.
    #[serde(with = "reason_text")]
    pub reason: EndReason,
    /// Its human text ("CPU limit reached").
    pub description: String,
    /// `soft`, `hard` or `request` (from cpuguard), or `eos` when the
    /// supervisor sent EOS itself because the pipeline has no cpuguard; null
    /// until known.
    #[serde(with = "trigger_text")]
    pub trigger: Option<DrainTrigger>,
    /// The cpuguard element that drained.
    pub element: Option<String>,
    /// The load and threshold cpuguard reported when draining.
    pub load: Option<f64>,
    pub threshold: Option<f64>,
    /// The load source cpuguard measured; null until cpuguard said it, and
    /// when it drained with no source (its `cpuguard-drain` said `none`).
    pub source: Option<LoadSourceKind>,
    pub requested_at: String,
    /// True when the pipeline reached EOS.
    pub completed: bool,
    /// From the drain request to the pipeline's EOS, or to giving up.
    pub duration_s: f64,
    /// The drain timeout applied, null when waiting forever.
    pub timeout_ms: Option<u32>,
}

impl DrainRecord {
    /// A drain asked for with `reason` at `requested_at`, nothing known yet
    /// of how it went.
    pub fn requested(reason: EndReason, requested_at: String) -> Self {
        DrainRecord {
            description: reason.description(),
            reason,
            trigger: None,
            element: None,
            load: None,
            threshold: None,
            source: None,
            requested_at,
            completed: false,
            duration_s: 0.0,
            timeout_ms: None,
        }
    }

    /// The load that crossed a threshold, when a threshold (not a request)
    /// started the drain: (trigger, load).
    fn threshold_crossing(&self) -> Option<(DrainTrigger, f64)> {
        match (self.trigger, self.load) {
            (Some(trigger @ (DrainTrigger::Soft | DrainTrigger::Hard)), Some(load)) => {
                Some((trigger, load))
            }
            _ => None,
        }
    }

    /// "load 0.900 (system) reached the soft threshold 0.5", for a drain the
    /// load started.
    pub fn cause(&self) -> Option<String> {
        let (trigger, load) = self.threshold_crossing()?;
        let source = self.source.map_or(String::new(), |s| format!(" ({s})"));
        let threshold = self.threshold.map_or(String::new(), |t| format!(" {t}"));
        Some(format!(
            "load {load:.3}{source} reached the {trigger} threshold{threshold}"
        ))
    }

    /// "CPU limit reached (cpu-limit): load 0.970 reached the hard threshold
    /// 0.95, source system", for the progress lines.
    pub fn summary(&self) -> String {
        let mut text = format!("{} ({})", self.description, self.reason);
        if let Some((trigger, load)) = self.threshold_crossing() {
            let threshold = self.threshold.map_or(String::new(), |t| format!(" {t}"));
            let source = self
                .source
                .map_or(String::new(), |s| format!(", source {s}"));
            text.push_str(&format!(
                ": load {load:.3} reached the {trigger} threshold{threshold}{source}"
            ));
        }
        text
    }
}

/// The reason as its contract string; an empty one reads back as refused.
mod reason_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::reason::EndReason;

    pub fn serialize<S: Serializer>(reason: &EndReason, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(reason.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EndReason, D::Error> {
        let text = String::deserialize(d)?;
        EndReason::parse(&text).map_err(D::Error::custom)
    }
}

/// The trigger as its contract string, or null.
mod trigger_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::messages::DrainTrigger;

    pub fn serialize<S: Serializer>(
        trigger: &Option<DrainTrigger>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match trigger {
            Some(trigger) => s.serialize_str(trigger.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DrainTrigger>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => DrainTrigger::parse(&text)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("unknown drain trigger {text:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DrainRecord {
        DrainRecord {
            trigger: Some(DrainTrigger::Hard),
            element: Some("cpuguard0".to_owned()),
            load: Some(0.97),
            threshold: Some(0.95),
            source: Some(LoadSourceKind::System),
            completed: true,
            duration_s: 0.2,
            timeout_ms: Some(30_000),
            ..DrainRecord::requested(EndReason::CpuLimit, "2026-12-03T06:00:04.300Z".to_owned())
        }
    }

    #[test]
    fn the_json_is_the_reports_contract_and_reads_back() {
        let json = serde_json::to_string(&record()).unwrap();
        assert_eq!(
            json,
            r#"{"reason":"cpu-limit","description":"CPU limit reached","trigger":"hard","element":"cpuguard0","load":0.97,"threshold":0.95,"source":"system","requested_at":"2026-12-03T06:00:04.300Z","completed":true,"duration_s":0.2,"timeout_ms":30000}"#
        );
        assert_eq!(
            serde_json::from_str::<DrainRecord>(&json).unwrap(),
            record()
        );
        let eos = DrainRecord {
            trigger: Some(DrainTrigger::Eos),
            ..record()
        };
        let back: DrainRecord =
            serde_json::from_str(&serde_json::to_string(&eos).unwrap()).unwrap();
        assert_eq!(back.trigger, Some(DrainTrigger::Eos));
        let bad = json.replace(r#""hard""#, r#""sideways""#);
        let err = serde_json::from_str::<DrainRecord>(&bad).unwrap_err();
        assert!(err.to_string().contains("sideways"), "{err}");
        let bad = json.replace(r#""system""#, r#""gpu""#);
        let err = serde_json::from_str::<DrainRecord>(&bad).unwrap_err();
        assert!(err.to_string().contains("gpu"), "{err}");
        let unknown = json.replace(r#""system""#, "null");
        let back = serde_json::from_str::<DrainRecord>(&unknown).unwrap();
        assert_eq!(back.source, None);
    }

    #[test]
    fn only_a_threshold_has_a_cause() {
        assert_eq!(
            record().cause().as_deref(),
            Some("load 0.970 (system) reached the hard threshold 0.95")
        );
        assert_eq!(
            record().summary(),
            "CPU limit reached (cpu-limit): load 0.970 reached the hard threshold 0.95, source system"
        );
        let requested = DrainRecord {
            trigger: Some(DrainTrigger::Request),
            ..record()
        };
        assert_eq!(requested.cause(), None);
        assert_eq!(requested.summary(), "CPU limit reached (cpu-limit)");
    }
}
