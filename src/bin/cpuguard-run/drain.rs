//! A drain as the supervisor follows it: the record every account of it
//! gives (`gstcpuguard::drain_record`), and where the supervisor is with it.

use std::ops::{Deref, DerefMut};

use gstcpuguard::drain_record::DrainRecord;
use gstcpuguard::messages;
use gstcpuguard::reason::EndReason;

use crate::report::Stamp;

/// A drain under way or done.
#[derive(Debug, Clone)]
pub struct Drain {
    pub record: DrainRecord,
    pub requested: Stamp,
    /// False while a stop request that every cpuguard refused (because one was
    /// already draining) waits for that drain's `cpuguard-drain` message.
    pub confirmed: bool,
    /// True while the `cpuguard-drain` message answering the supervisor's own
    /// request (which carries the load and source) has not been seen.
    pub awaiting_echo: bool,
    pub ended: Option<Stamp>,
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
            confirmed: true,
            awaiting_echo: false,
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
            source: Some(said.source.map_or("none", |s| s.as_str()).to_owned()),
            ..DrainRecord::requested(said.reason, requested.rfc3339())
        };
        Self::new(record, requested)
    }

    /// Details from cpuguard's message about a drain the supervisor asked for.
    pub fn fill_from(&mut self, other: Drain) {
        self.awaiting_echo = false;
        self.record.trigger = other.record.trigger.or(self.record.trigger);
        self.record.load = other.record.load;
        self.record.threshold = other.record.threshold;
        self.record.source = other.record.source;
    }

    /// The record as of `now`: the load rounded as every load of the result,
    /// the time taken so far (or in all, once ended) and the timeout applied.
    pub fn record_at(&self, now: &Stamp, timeout_ms: Option<u32>) -> DrainRecord {
        DrainRecord {
            load: self.record.load.map(|v| (v * 10_000.0).round() / 10_000.0),
            requested_at: self.requested.rfc3339(),
            duration_s: self.requested.seconds_until(&self.ended.unwrap_or(*now)),
            timeout_ms,
            ..self.record.clone()
        }
    }
}
