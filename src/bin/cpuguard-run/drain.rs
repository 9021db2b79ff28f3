//! A drain as the supervisor follows it: the record every account of it
//! gives (`gstcpuguard::drain_record`), and where the supervisor is with it.

use std::ops::{Deref, DerefMut};

use gstcpuguard::drain_record::DrainRecord;
use gstcpuguard::messages;
use gstcpuguard::reason::EndReason;

use crate::report::{Stamp, round_load};

/// A drain under way or done.
#[derive(Debug, Clone)]
pub struct Drain {
    pub record: DrainRecord,
    pub requested: Stamp,
    pub answer: Answer,
    pub ended: Option<Stamp>,
}

/// Where the run's drain stands against cpuguard's `cpuguard-drain` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The record is whole: cpuguard's own drain, or EOS sent without one.
    Settled,
    /// The supervisor asked the record's element: that element's message
    /// (which carries the load, threshold and source) completes the record.
    Awaiting,
    /// Every cpuguard refused the request, one being already under way: that
    /// drain's message becomes the run's drain.
    JoinsOther,
}

/// What a `cpuguard-drain` message did to the run's drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The run's drain is now the one that was already under way.
    Joined,
    /// The answer to the supervisor's request completed the record.
    Filled,
    /// Another drain, or a late message: the run keeps its own.
    AlsoDrained,
}

impl Deref for Drain {
    type Target = DrainRecord;

    fn deref(&self) -> &DrainRecord {
        &self.record
    }
}

impl DerefMut for Drain {
    fn deref_mut(&mut self) -> &mut DrainRecord {
        &mut self.record
    }
}

impl Drain {
    fn new(record: DrainRecord, requested: Stamp) -> Self {
        Drain {
            record,
            requested,
            answer: Answer::Settled,
            ended: None,
        }
    }

    /// A drain the supervisor asks for (SIGTERM/SIGHUP), before it is sent.
    pub fn requested(reason: &EndReason) -> Self {
        let requested = Stamp::now();
        Self::new(
            DrainRecord::requested(reason.clone(), requested.rfc3339()),
            requested,
        )
    }

    /// What a `cpuguard-drain` or `cpuguard-would-drain` message of
    /// `element` said.
    pub fn from_said(said: messages::Drain, element: String) -> Self {
        let requested = Stamp::now();
        let record = DrainRecord {
            trigger: Some(said.trigger),
            element: Some(element),
            load: Some(said.load),
            threshold: Some(said.threshold),
            source: said.source,
            ..DrainRecord::requested(said.reason, requested.rfc3339())
        };
        Self::new(record, requested)
    }

    /// A `cpuguard-drain` message (`reported`) that came while this drain
    /// is the run's.
    pub fn merge(&mut self, reported: Drain) -> Merged {
        match self.answer {
            Answer::JoinsOther => {
                *self = Drain {
                    requested: self.requested,
                    ..reported
                };
                Merged::Joined
            }
            Answer::Awaiting
                if self.record.element == reported.record.element
                    && self.record.reason == reported.record.reason =>
            {
                self.answer = Answer::Settled;
                self.record.trigger = reported.record.trigger.or(self.record.trigger);
                self.record.load = reported.record.load;
                self.record.threshold = reported.record.threshold;
                self.record.source = reported.record.source;
                Merged::Filled
            }
            Answer::Awaiting | Answer::Settled => Merged::AlsoDrained,
        }
    }

    /// The record as of `now`: the load rounded as every load of the result,
    /// the time taken so far (or in all, once ended) and the timeout applied.
    pub fn record_at(&self, now: &Stamp, timeout_ms: Option<u32>) -> DrainRecord {
        DrainRecord {
            load: self.record.load.map(round_load),
            requested_at: self.requested.rfc3339(),
            duration_s: self.requested.seconds_until(&self.ended.unwrap_or(*now)),
            timeout_ms,
            ..self.record.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstcpuguard::hostwide::Scope;
    use gstcpuguard::load::LoadSourceKind;
    use gstcpuguard::messages::DrainTrigger;

    fn said(element: &str, reason: EndReason, load: f64) -> Drain {
        let said = messages::Drain {
            reason,
            load,
            threshold: 0.95,
            trigger: DrainTrigger::Hard,
            source: Some(LoadSourceKind::System),
            cpu: 0.5,
            scope: Scope::Process,
            candidates: 1,
        };
        Drain::from_said(said, element.to_owned())
    }

    fn asked(element: &str) -> Drain {
        let mut drain = Drain::requested(&EndReason::StopRequested);
        drain.record.element = Some(element.to_owned());
        drain.answer = Answer::Awaiting;
        drain
    }

    #[test]
    fn the_asked_elements_answer_completes_the_record_once() {
        let mut drain = asked("guard0");
        assert_eq!(
            drain.merge(said("guard1", EndReason::StopRequested, 0.5)),
            Merged::AlsoDrained,
            "another element"
        );
        assert_eq!(
            drain.merge(said("guard0", EndReason::CpuLimit, 0.5)),
            Merged::AlsoDrained,
            "another reason: the element's own drain, not the answer"
        );
        assert_eq!(drain.answer, Answer::Awaiting);
        assert_eq!(
            drain.merge(said("guard0", EndReason::StopRequested, 0.97)),
            Merged::Filled
        );
        assert_eq!(drain.answer, Answer::Settled);
        assert_eq!(drain.record.load, Some(0.97));
        assert_eq!(drain.record.source, Some(LoadSourceKind::System));
        assert_eq!(drain.record.reason, EndReason::StopRequested);
        assert_eq!(
            drain.merge(said("guard0", EndReason::StopRequested, 0.1)),
            Merged::AlsoDrained,
            "answered already"
        );
        assert_eq!(drain.record.load, Some(0.97));
    }

    #[test]
    fn a_refused_request_joins_the_drain_under_way_and_keeps_its_time() {
        let mut drain = Drain::requested(&EndReason::StopRequested);
        drain.answer = Answer::JoinsOther;
        let asked_at = drain.requested.mono;
        assert_eq!(
            drain.merge(said("guard0", EndReason::CpuLimit, 0.99)),
            Merged::Joined
        );
        assert_eq!(drain.record.reason, EndReason::CpuLimit);
        assert_eq!(drain.record.element.as_deref(), Some("guard0"));
        assert_eq!(
            drain.requested.mono, asked_at,
            "the timeout counts from the request"
        );
        assert_eq!(drain.answer, Answer::Settled);
        assert_eq!(
            drain.merge(said("guard1", EndReason::CpuLimit, 0.99)),
            Merged::AlsoDrained
        );
    }
}
