//! The worker → parent channel of multi-pipeline mode: what a worker says
//! about itself, as JSON lines on its stdout behind [`PREFIX`].
//!
//! Stdout rather than stderr because stderr is for people (the parent
//! forwards it as it is) and its wording may change; a prefix rather than
//! bare JSON because the worker's last stdout line is its result (a single
//! run's report, unchanged), which the parent reads as before. The parent
//! needs from the events: when the worker is ACTIVE, when and why it started
//! draining (to time the drain and escalate), and its load samples (for
//! `--metrics-addr` and `--timeline`).

use serde::{Deserialize, Serialize};

use crate::drain::Drain;
use crate::report::State;

/// Marks an event line on a worker's stdout.
pub const PREFIX: &str = "@cpuguard-worker ";

/// One event of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum WorkerEvent {
    /// The worker entered `state` (RFC 3339 `at`). With `ENDING`: the drain
    /// as the worker knew it then (a stop request's details may come later,
    /// in the result).
    State {
        state: State,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drain: Option<DrainEvent>,
    },
    /// One sample of the worker's cpuguard: the load it judged, and the
    /// worker's whole-process CPU (what the elements rank processes by), for
    /// the parent's log, metrics and timeline (the parent no longer samples
    /// for itself).
    Load {
        load: f64,
        capacity: f64,
        source: String,
        process_cpu: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainEvent {
    pub reason: String,
    /// `soft`, `hard`, `request`, ... (null until cpuguard said).
    pub trigger: Option<String>,
    pub element: Option<String>,
    pub load: Option<f64>,
    pub threshold: Option<f64>,
    pub source: Option<String>,
    pub requested_at: String,
}

impl DrainEvent {
    pub fn of(drain: &Drain) -> Self {
        DrainEvent {
            reason: drain.reason.clone(),
            trigger: drain.trigger.clone(),
            element: drain.element.clone(),
            load: drain.load.map(|l| (l * 10_000.0).round() / 10_000.0),
            threshold: drain.threshold,
            source: drain.source.clone(),
            requested_at: drain.requested.rfc3339(),
        }
    }

    /// "load 0.900 (system) reached the soft threshold 0.5", for a drain the
    /// load triggered.
    pub fn trigger_text(&self) -> Option<String> {
        let (Some(trigger), Some(load)) = (&self.trigger, self.load) else {
            return None;
        };
        if trigger == "request" {
            return None;
        }
        let source = self
            .source
            .as_deref()
            .map_or(String::new(), |s| format!(" ({s})"));
        let threshold = self.threshold.map_or(String::new(), |t| format!(" {t}"));
        Some(format!(
            "load {load:.3}{source} reached the {trigger} threshold{threshold}"
        ))
    }
}

impl WorkerEvent {
    /// The line a worker prints.
    pub fn to_line(&self) -> String {
        // Plain strings, numbers and enums: serializing cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{PREFIX}{json}")
    }

    /// An event line, or `None` for any other line (the result, or output of
    /// the pipeline itself). A prefixed line that does not parse is `Err`.
    pub fn parse(line: &str) -> Option<Result<Self, serde_json::Error>> {
        line.strip_prefix(PREFIX).map(serde_json::from_str)
    }
}

/// Prints `event` for the parent; a closed stdout is the parent's problem
/// (it then sees the worker exit), never a reason to panic here.
pub fn send(event: &WorkerEvent) {
    crate::report::print_line(&event.to_line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_round_trips_through_its_line() {
        let drain = DrainEvent {
            reason: "cpu-limit".to_owned(),
            trigger: Some("soft".to_owned()),
            element: Some("cpuguard0".to_owned()),
            load: Some(0.9),
            threshold: Some(0.5),
            source: Some("system".to_owned()),
            requested_at: "2026-12-03T06:00:04.290Z".to_owned(),
        };
        let event = WorkerEvent::State {
            state: State::Ending,
            at: "2026-12-03T06:00:04.300Z".to_owned(),
            drain: Some(drain.clone()),
        };
        let line = event.to_line();
        assert!(line.starts_with(PREFIX), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(WorkerEvent::parse(&line).unwrap().unwrap(), event);
        assert_eq!(
            drain.trigger_text().as_deref(),
            Some("load 0.900 (system) reached the soft threshold 0.5")
        );
        let requested = DrainEvent {
            trigger: Some("request".to_owned()),
            ..drain
        };
        assert_eq!(requested.trigger_text(), None);
    }

    #[test]
    fn other_lines_are_not_events() {
        assert!(WorkerEvent::parse(r#"{"status":"COMPLETE"}"#).is_none());
        assert!(WorkerEvent::parse("").is_none());
        assert!(WorkerEvent::parse(&format!("{PREFIX}{{\"state\":")).is_some_and(|r| r.is_err()));
        let active = WorkerEvent::parse(&format!(
            r#"{PREFIX}{{"event":"state","state":"ACTIVE","at":"2026-12-03T06:00:00.000Z"}}"#
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            active,
            WorkerEvent::State {
                state: State::Active,
                at: "2026-12-03T06:00:00.000Z".to_owned(),
                drain: None
            }
        );
        let load = WorkerEvent::Load {
            load: 0.5,
            capacity: 2.0,
            source: "system".to_owned(),
            process_cpu: None,
        };
        assert_eq!(WorkerEvent::parse(&load.to_line()).unwrap().unwrap(), load);
    }
}
