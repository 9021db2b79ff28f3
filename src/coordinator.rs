//! Who drains first when several pipelines share one CPU budget.
//!
//! Pure logic, shared by the in-process coordinator (many cpuguard elements in
//! one process) and `cpuguard-run`'s multi-pipeline mode (many worker
//! processes): the host load goes through one [`Policy`]; when it says drain,
//! only the candidate using the most CPU is chosen, and no other is chosen
//! until that drain has finished. This is LiveKit Egress's kill policy, with a
//! soft/hard threshold pair and hysteresis from [`Policy`], and without its
//! weakness of escalating only on high ticks (escalation is the caller's timer).

use crate::policy::{ConfigError, Policy, PolicyConfig, Trigger, Verdict};

/// One pipeline (or worker) that could be drained.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<K> {
    pub id: K,
    /// CPU used since the previous sample, in any unit common to all candidates.
    pub cpu: f64,
    /// Already ending (drained or at EOS): never chosen again.
    pub ending: bool,
}

/// A decision to drain `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Victim<K> {
    pub id: K,
    pub trigger: Trigger,
    pub threshold: f64,
    pub load: f64,
}

/// What one sample led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<K> {
    /// Nothing to do (load calm, or still within hold).
    Wait(Verdict),
    /// A drain is in flight; the next one waits for it to finish.
    InFlight(K),
    /// The policy says drain but no candidate is left.
    NoCandidate,
    Drain(Victim<K>),
}

#[derive(Debug, Clone)]
pub struct Coordinator<K> {
    policy: Policy,
    in_flight: Option<K>,
    /// The policy said drain but the drain was deferred (another process
    /// of the budget goes first): the decision stands while load stays high.
    armed: Option<(Trigger, f64)>,
}

impl<K: Clone + PartialEq> Coordinator<K> {
    pub fn new(config: PolicyConfig) -> Result<Self, ConfigError> {
        Ok(Coordinator {
            policy: Policy::new(config)?,
            in_flight: None,
            armed: None,
        })
    }

    /// Leaves the first `samples` samples unjudged: see [`Policy::with_warm_up`].
    pub fn with_warm_up(mut self, samples: u32) -> Self {
        self.policy = self.policy.with_warm_up(samples);
        self
    }

    pub fn config(&self) -> &PolicyConfig {
        self.policy.config()
    }

    pub fn in_flight(&self) -> Option<&K> {
        self.in_flight.as_ref()
    }

    /// The drain of `id` is over (EOS, failure or escalation): the next victim
    /// may be chosen, after a fresh hold.
    pub fn finished(&mut self, id: &K) {
        if self.in_flight.as_ref() == Some(id) {
            self.in_flight = None;
            self.policy.reset();
        }
    }

    /// The drain just chosen for `id` may not start yet (another process of
    /// the same budget goes first, or holds the drain lock). The decision is
    /// kept: while the load stays at or above soft, each next sample chooses
    /// again at once, without a new hold.
    pub fn defer(&mut self, id: &K, trigger: Trigger, threshold: f64) {
        if self.in_flight.as_ref() == Some(id) {
            self.in_flight = None;
            self.armed = Some((trigger, threshold));
        }
    }

    /// A drain ended elsewhere (another process of the budget): start a fresh
    /// hold, as after our own drain.
    pub fn restart(&mut self) {
        self.policy.reset();
        self.armed = None;
    }

    /// Whether a deferred decision is waiting for its turn.
    pub fn armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Feeds one sample of the shared load with each candidate's CPU use.
    pub fn observe(&mut self, load: f64, candidates: &[Candidate<K>]) -> Decision<K> {
        if let Some(id) = &self.in_flight {
            if candidates.iter().any(|c| &c.id == id) {
                // Load while a drain is in flight says nothing about the next
                // victim: the drain itself is still releasing CPU.
                return Decision::InFlight(id.clone());
            }
            // The candidate vanished (its pipeline is gone): treat as finished.
            self.in_flight = None;
            self.policy.reset();
        }
        let verdict = self.policy.observe(load);
        let (trigger, threshold) = match (verdict, self.armed.take()) {
            (Verdict::Drain { trigger, threshold }, _) => (trigger, threshold),
            // Load fell back: the deferred decision lapses.
            (Verdict::Calm, Some(_)) | (_, None) => return Decision::Wait(verdict),
            (_, Some(armed)) => armed,
        };
        match heaviest(candidates) {
            Some(victim) => {
                self.in_flight = Some(victim.id.clone());
                Decision::Drain(Victim {
                    id: victim.id.clone(),
                    trigger,
                    threshold,
                    load,
                })
            }
            None => Decision::NoCandidate,
        }
    }
}

/// The live candidate with the most CPU; ties go to the first listed, so the
/// choice is stable from one sample to the next.
pub fn heaviest<K>(candidates: &[Candidate<K>]) -> Option<&Candidate<K>> {
    candidates
        .iter()
        .filter(|c| !c.ending && c.cpu.is_finite())
        .fold(None, |best: Option<&Candidate<K>>, c| match best {
            Some(b) if b.cpu >= c.cpu => Some(b),
            _ => Some(c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(hold: u32, release: u32) -> Coordinator<&'static str> {
        Coordinator::new(PolicyConfig {
            soft: 0.85,
            hard: 0.95,
            hold,
            release,
        })
        .unwrap()
    }

    fn jobs(cpus: &[(&'static str, f64)]) -> Vec<Candidate<&'static str>> {
        cpus.iter()
            .map(|&(id, cpu)| Candidate {
                id,
                cpu,
                ending: false,
            })
            .collect()
    }

    #[test]
    fn heaviest_is_chosen_after_hold() {
        let mut c = coordinator(2, 1);
        let j = jobs(&[("small", 0.1), ("big", 0.9), ("mid", 0.4)]);
        assert!(matches!(c.observe(0.9, &j), Decision::Wait(_)));
        let Decision::Drain(v) = c.observe(0.9, &j) else {
            panic!("expected a drain")
        };
        assert_eq!((v.id, v.trigger), ("big", Trigger::Soft));
    }

    #[test]
    fn one_drain_in_flight_then_next_after_fresh_hold() {
        let mut c = coordinator(2, 1);
        let j = jobs(&[("a", 0.5), ("b", 0.3)]);
        c.observe(0.9, &j);
        assert!(matches!(
            c.observe(0.9, &j),
            Decision::Drain(Victim { id: "a", .. })
        ));
        for _ in 0..5 {
            assert_eq!(c.observe(0.99, &j), Decision::InFlight("a"));
        }
        c.finished(&"a");
        let mut j = j;
        j[0].ending = true;
        assert!(matches!(c.observe(0.9, &j), Decision::Wait(_)));
        assert!(matches!(
            c.observe(0.9, &j),
            Decision::Drain(Victim { id: "b", .. })
        ));
    }

    #[test]
    fn hard_threshold_drains_at_once_and_again_when_still_critical() {
        let mut c = coordinator(5, 1);
        let mut j = jobs(&[("a", 0.2), ("b", 0.7)]);
        assert!(matches!(
            c.observe(0.97, &j),
            Decision::Drain(Victim {
                id: "b",
                trigger: Trigger::Hard,
                ..
            })
        ));
        c.finished(&"b");
        j[1].ending = true;
        assert!(matches!(
            c.observe(0.97, &j),
            Decision::Drain(Victim { id: "a", .. })
        ));
    }

    #[test]
    fn vanished_victim_counts_as_finished() {
        let mut c = coordinator(1, 1);
        let j = jobs(&[("a", 0.5), ("b", 0.3)]);
        assert!(matches!(
            c.observe(0.9, &j),
            Decision::Drain(Victim { id: "a", .. })
        ));
        let rest = jobs(&[("b", 0.3)]);
        assert!(matches!(
            c.observe(0.9, &rest),
            Decision::Drain(Victim { id: "b", .. })
        ));
    }

    #[test]
    fn deferred_decision_stands_while_high_and_lapses_when_calm() {
        let mut c = coordinator(3, 1);
        let j = jobs(&[("a", 0.5)]);
        c.observe(0.9, &j);
        c.observe(0.9, &j);
        let Decision::Drain(v) = c.observe(0.9, &j) else {
            panic!("expected a drain")
        };
        c.defer(&v.id, v.trigger, v.threshold);
        assert!(c.armed());
        // Still high: chosen again at once, no new hold.
        assert!(matches!(c.observe(0.86, &j), Decision::Drain(_)));
        c.defer(&"a", Trigger::Soft, 0.85);
        // Calm: the decision lapses, and a fresh hold is needed.
        assert!(matches!(c.observe(0.1, &j), Decision::Wait(Verdict::Calm)));
        assert!(!c.armed());
        assert!(matches!(c.observe(0.9, &j), Decision::Wait(_)));
        // A drain elsewhere: fresh hold too.
        c.observe(0.9, &j);
        c.restart();
        assert!(matches!(c.observe(0.9, &j), Decision::Wait(_)));
    }

    #[test]
    fn no_candidate_left() {
        let mut c = coordinator(1, 1);
        let mut j = jobs(&[("a", 0.5)]);
        j[0].ending = true;
        assert_eq!(c.observe(0.9, &j), Decision::NoCandidate);
    }

    #[test]
    fn hysteresis_stops_flapping_around_the_threshold() {
        // Load alternating just above and below soft: without hysteresis the
        // count never reaches hold; with release=5 it does, exactly once.
        let j = jobs(&[("a", 0.5)]);
        let mut plain = coordinator(3, 1);
        let mut sticky = coordinator(3, 5);
        let mut plain_drains = 0;
        let mut sticky_drains = 0;
        for i in 0..20 {
            let load = if i % 2 == 0 { 0.87 } else { 0.83 };
            if matches!(plain.observe(load, &j), Decision::Drain(_)) {
                plain_drains += 1;
            }
            if matches!(sticky.observe(load, &j), Decision::Drain(_)) {
                sticky_drains += 1;
            }
        }
        assert_eq!(plain_drains, 0);
        assert_eq!(sticky_drains, 1);
    }

    #[test]
    fn ties_and_nan_are_stable() {
        let j = vec![
            Candidate {
                id: "x",
                cpu: f64::NAN,
                ending: false,
            },
            Candidate {
                id: "first",
                cpu: 0.4,
                ending: false,
            },
            Candidate {
                id: "second",
                cpu: 0.4,
                ending: false,
            },
        ];
        assert_eq!(heaviest(&j).map(|c| c.id), Some("first"));
    }
}
