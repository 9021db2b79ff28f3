//! The worker → parent channel of multi-pipeline mode: what a worker says
//! about itself, as JSON lines on its stdout behind [`PREFIX`].
//!
//! Stdout rather than stderr because stderr is for people (the parent
//! forwards it as it is) and its wording may change; a prefix rather than
//! bare JSON because the worker's last stdout line is its result (a single
//! run's report, unchanged), which the parent reads as before. The parent
//! needs two things from the events: when the worker is ACTIVE, and when
//! and why it started draining (to time the drain and escalate).

use serde::{Deserialize, Serialize};

use crate::drain::Drain;
use crate::report::State;

/// Marks an event line on a worker's stdout.
pub const PREFIX: &str = "@cpuguard-worker ";

/// One event of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    pub state: State,
    /// RFC 3339, when the worker entered the state.
    pub at: String,
    /// With `ENDING`: the drain that ended the run, as the worker knew it
    /// then (a stop request's details may come later, in the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainEvent>,
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

    /// "reason cpu-limit, soft threshold 0.5, load 0.900 (system)".
    pub fn describe(&self) -> String {
        let mut text = format!("reason {}", self.reason);
        if let (Some(trigger), Some(load)) = (&self.trigger, self.load)
            && trigger != "request"
        {
            let threshold = self.threshold.map_or(String::new(), |t| format!(" {t}"));
            text.push_str(&format!(", {trigger} threshold{threshold}, load {load:.3}"));
            if let Some(source) = &self.source {
                text.push_str(&format!(" ({source})"));
            }
        }
        if let Some(element) = &self.element {
            text.push_str(&format!(", by {element}"));
        }
        text
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
        let event = WorkerEvent {
            state: State::Ending,
            at: "2026-12-03T06:00:04.300Z".to_owned(),
            drain: Some(DrainEvent {
                reason: "cpu-limit".to_owned(),
                trigger: Some("soft".to_owned()),
                element: Some("cpuguard0".to_owned()),
                load: Some(0.9),
                threshold: Some(0.5),
                source: Some("system".to_owned()),
                requested_at: "2026-12-03T06:00:04.290Z".to_owned(),
            }),
        };
        let line = event.to_line();
        assert!(line.starts_with(PREFIX), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(WorkerEvent::parse(&line).unwrap().unwrap(), event);
        assert_eq!(
            event.drain.unwrap().describe(),
            "reason cpu-limit, soft threshold 0.5, load 0.900 (system), by cpuguard0"
        );
    }

    #[test]
    fn other_lines_are_not_events() {
        assert!(WorkerEvent::parse(r#"{"status":"COMPLETE"}"#).is_none());
        assert!(WorkerEvent::parse("").is_none());
        assert!(WorkerEvent::parse(&format!("{PREFIX}{{\"state\":")).is_some_and(|r| r.is_err()));
        let active = WorkerEvent::parse(&format!(
            r#"{PREFIX}{{"state":"ACTIVE","at":"2026-12-03T06:00:00.000Z"}}"#
        ))
        .unwrap()
        .unwrap();
        assert_eq!((active.state, active.drain), (State::Active, None));
    }
}
