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

use gstcpuguard::drain_record::DrainRecord;
use gstcpuguard::load::LoadSourceKind;
use serde::{Deserialize, Serialize};

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
        drain: Option<DrainRecord>,
    },
    /// One sample of the worker's cpuguard: the load it judged, and the
    /// worker's whole-process CPU (what the elements rank processes by), for
    /// the parent's log, metrics and timeline (the parent no longer samples
    /// for itself).
    Load {
        load: f64,
        capacity: f64,
        source: LoadSourceKind,
        process_cpu: Option<f64>,
    },
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
        let drain = DrainRecord {
            trigger: Some(gstcpuguard::messages::DrainTrigger::Soft),
            element: Some("cpuguard0".to_owned()),
            load: Some(0.9),
            threshold: Some(0.5),
            source: Some(LoadSourceKind::System),
            ..DrainRecord::requested(
                gstcpuguard::reason::EndReason::CpuLimit,
                "2026-12-03T06:00:04.290Z".to_owned(),
            )
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
            drain.cause().as_deref(),
            Some("load 0.900 (system) reached the soft threshold 0.5")
        );
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
            source: LoadSourceKind::System,
            process_cpu: None,
        };
        assert_eq!(WorkerEvent::parse(&load.to_line()).unwrap().unwrap(), load);
    }
}
