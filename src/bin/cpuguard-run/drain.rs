//! A drain as the supervisor follows it: who asked, why, and what cpuguard
//! reported about it (`cpuguard-drain` element messages).

use gstcpuguard::reason::EndReason;

use crate::report::Stamp;

/// A drain under way or done.
#[derive(Debug, Clone)]
pub struct Drain {
    pub reason: String,
    pub description: String,
    pub trigger: Option<String>,
    pub element: Option<String>,
    pub load: Option<f64>,
    pub threshold: Option<f64>,
    pub source: Option<String>,
    pub requested: Stamp,
    /// False while a stop request that every cpuguard refused (because one was
    /// already draining) waits for that drain's `cpuguard-drain` message.
    pub confirmed: bool,
    /// True while the `cpuguard-drain` message answering the supervisor's own
    /// request (which carries the load and source) has not been seen.
    pub awaiting_echo: bool,
    pub completed: bool,
    /// The stop came when every source had already sent its own EOS: the
    /// run ends as a natural end (reason eos), not as this drain.
    pub natural_end: bool,
    pub ended: Option<Stamp>,
}

impl Drain {
    /// A drain the supervisor asks for (SIGTERM/SIGHUP), before it is sent.
    pub fn requested(reason: &EndReason) -> Self {
        Drain {
            reason: reason.as_str().to_owned(),
            description: reason.description(),
            trigger: None,
            element: None,
            load: None,
            threshold: None,
            source: None,
            requested: Stamp::now(),
            confirmed: true,
            awaiting_echo: false,
            completed: false,
            natural_end: false,
            ended: None,
        }
    }

    /// From a `cpuguard-drain` element message.
    pub fn from_message(s: &gst::StructureRef, element: String) -> Self {
        let reason = s
            .get::<String>("reason")
            .unwrap_or_else(|_| EndReason::CPU_LIMIT.to_owned());
        let description = s.get::<String>("description").unwrap_or_else(|_| {
            EndReason::parse(&reason)
                .map(|r| r.description())
                .unwrap_or_else(|_| reason.clone())
        });
        Drain {
            reason,
            description,
            trigger: s.get::<String>("trigger").ok(),
            element: Some(element),
            load: s.get::<f64>("load").ok(),
            threshold: s.get::<f64>("threshold").ok(),
            source: s.get::<String>("source").ok(),
            requested: Stamp::now(),
            confirmed: true,
            awaiting_echo: false,
            completed: false,
            natural_end: false,
            ended: None,
        }
    }

    /// Details from cpuguard's message about a drain the supervisor asked for.
    pub fn fill_from(&mut self, other: Drain) {
        self.awaiting_echo = false;
        self.trigger = other.trigger.or(self.trigger.take());
        self.load = other.load;
        self.threshold = other.threshold;
        self.source = other.source;
    }

    pub fn summary(&self) -> String {
        let mut text = format!("{} ({})", self.description, self.reason);
        if let (Some(trigger), Some(load)) = (&self.trigger, self.load)
            && trigger != "request"
        {
            let threshold = self.threshold.map_or(String::new(), |t| format!(" {t}"));
            let source = self
                .source
                .as_deref()
                .map_or(String::new(), |s| format!(", source {s}"));
            text.push_str(&format!(
                ": load {load:.3} reached the {trigger} threshold{threshold}{source}"
            ));
        }
        text
    }
}
