//! One sampler shared by every cpuguard instance of the process.
//!
//! Instances that measure the same thing (same load source, root, CPU
//! request and interval) join one group: one thread, one [`LoadMeter`], one read of the
//! load files per interval, however many pipelines run. Within a group, the
//! instances with the same policy (thresholds, hold, release, dry-run) share
//! one [`Coordinator`], which picks the instance using the most CPU as the
//! victim and drains one at a time. Instances with different thresholds
//! still share the sample but are judged by their own coordinator, so each
//! policy can have its own drain in flight. Dry-run instances have their own
//! coordinators: they report which of them would drain and never hold up, or
//! stand in for, a real drain.
//!
//! Locks: the registry before a group's state before its monitor; no lock is
//! held while calling into an element (messages, drains), and elements never
//! call in here while holding their own state lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::crossproc::{self, Look, Participation};
use super::monitor::Monitor;
use super::threads::{CpuUse, StreamingThreads};
use crate::coordinator::{Candidate, Coordinator, Decision, Victim};
use crate::hostwide::Scope;
use crate::load::{CpuRequest, HostPaths, LoadError, LoadMeter, LoadSample, LoadSourceKind};
use crate::pipeline_eos::Surveys;
use crate::policy::{ConfigError, PolicyConfig, START_UP_SAMPLES, Verdict};

/// Name of every sampler thread (at most 15 bytes: what /proc shows as `comm`).
pub const SAMPLER_THREAD_NAME: &str = "cpuguard-meter";

/// What instances must agree on to share a sample.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SamplerKey {
    pub source: LoadSourceKind,
    pub root: String,
    pub interval: Duration,
    /// CPU request as f64 bits (hashable); `None` = unset.
    pub cpu_request: Option<u64>,
    /// Where drains are coordinated with other processes; `None` = only
    /// within this process.
    pub coordination_dir: Option<std::path::PathBuf>,
    pub group_shared: bool,
}

/// What instances must agree on to share a coordinator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct PolicyKey {
    pub config: PolicyConfig,
    pub dry_run: bool,
}

/// An instance's state as the sampler needs it, read before any group lock.
#[derive(Clone, Copy, Debug)]
pub(super) struct MemberFacts {
    /// Draining or past EOS: never a victim.
    pub ending: bool,
    /// Its drain completed or timed out.
    pub drain_finished: bool,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum RegisterError {
    #[error("{0}")]
    Policy(#[from] ConfigError),
    #[error("{0}")]
    Meter(#[from] LoadError),
    #[error("cannot start the sampling thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the sampler tells a member and asks of it. The element implements
/// it; the sampler knows nothing else of the element.
pub(super) trait Member {
    /// For the log.
    fn label(&self) -> String;
    /// Its state; `surveys` is the round's look at each pipeline, which
    /// every member in the same pipeline shares.
    fn facts(&self, surveys: &mut Surveys) -> MemberFacts;
    fn on_sample(&self, id: u64, sample: &LoadSample, cpu: f64);
    fn on_sample_error(&self, id: u64, err: &LoadError, first: bool);
    fn on_coordination_warning(&self, id: u64, text: &str);
    /// The member was chosen to drain (or, dry-run, would have been);
    /// whether its drain started.
    fn chosen(&self, chosen: &Chosen, source: LoadSourceKind) -> bool;
}

/// A member as the sampler holds it: weakly, so one that is gone is skipped
/// and the sampler never keeps an element alive.
pub(super) trait MemberRef: Send + Sync {
    fn upgrade(&self) -> Option<Box<dyn Member>>;
}

type Element = Box<dyn Member>;

struct Entry {
    id: u64,
    element: Box<dyn MemberRef>,
    policy: PolicyKey,
    threads: Arc<StreamingThreads>,
    cpu: CpuUse,
}

struct GroupState {
    meter: LoadMeter,
    members: Vec<Entry>,
    coordinators: Vec<(PolicyKey, Coordinator<u64>)>,
    due: Instant,
    failing: bool,
    cross: Cross,
}

/// The group's part in cross-process coordination.
enum Cross {
    /// Not looked at yet: joined at the first sample with a member that can
    /// drain (dry-run groups never take part).
    Pending,
    /// In-process only (turned off, `process` load, or the directory is unusable).
    Off,
    On(Arc<Participation>),
}

struct Group {
    key: SamplerKey,
    source: LoadSourceKind,
    description: String,
    state: Mutex<GroupState>,
    monitor: Mutex<Option<Monitor>>,
}

static REGISTRY: LazyLock<Mutex<HashMap<SamplerKey, Arc<Group>>>> = LazyLock::new(Mutex::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An instance's membership; leaving the group is dropping it. Drop it with
/// no element lock held: the last one out joins the sampler thread.
pub(super) struct Registration {
    group: Arc<Group>,
    id: u64,
}

impl Registration {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The resolved load source, never `Auto`.
    pub fn source(&self) -> LoadSourceKind {
        self.group.source
    }

    pub fn describe(&self) -> &str {
        &self.group.description
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let monitor = {
            let mut registry = lock(&REGISTRY);
            let mut state = lock(&self.group.state);
            let GroupState {
                members,
                coordinators,
                ..
            } = &mut *state;
            members.retain(|m| m.id != self.id);
            coordinators.retain(|(policy, _)| members.iter().any(|m| m.policy == *policy));
            if !members.is_empty() {
                return;
            }
            if let Cross::On(participation) = std::mem::replace(&mut state.cross, Cross::Off) {
                participation.leave(Arc::as_ptr(&self.group) as usize);
            }
            if registry
                .get(&self.group.key)
                .is_some_and(|g| Arc::ptr_eq(g, &self.group))
            {
                registry.remove(&self.group.key);
            }
            lock(&self.group.monitor).take()
        };
        if let Some(monitor) = monitor {
            monitor.stop();
        }
    }
}

/// Joins (or starts) the group for `key`. The group's first sample comes one
/// interval after it started, so it covers a full interval.
pub(super) fn register(
    element: Box<dyn MemberRef>,
    key: SamplerKey,
    policy: PolicyKey,
    threads: Arc<StreamingThreads>,
) -> Result<Registration, RegisterError> {
    let coordinator = Coordinator::new(policy.config)?.with_warm_up(START_UP_SAMPLES);
    let mut registry = lock(&REGISTRY);
    let group = match registry.get(&key) {
        Some(group) => group.clone(),
        None => {
            let group = Group::start(key.clone())?;
            registry.insert(key, group.clone());
            group
        }
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    {
        let mut state = lock(&group.state);
        if !state.coordinators.iter().any(|(p, _)| *p == policy) {
            state.coordinators.push((policy, coordinator));
        }
        state.members.push(Entry {
            id,
            element,
            policy,
            threads,
            cpu: CpuUse::default(),
        });
    }
    drop(registry);
    Ok(Registration { group, id })
}

/// One drain decision, carried out once the group lock is released: the
/// victim (its `id` is the member's), its CPU, and how far the choice reached.
pub(super) struct Chosen {
    pub victim: Victim<u64>,
    policy: PolicyKey,
    pub cpu: f64,
    /// Dry run: report that it would drain, never drain.
    pub dry_run: bool,
    /// How far the choice reached, and how many were compared.
    pub scope: Scope,
    pub candidates: usize,
}

enum Outcome {
    Sampled {
        sample: LoadSample,
        cpu: HashMap<u64, f64>,
        chosen: Vec<Chosen>,
        /// Once-only coordination warnings, for the bus.
        warnings: Vec<String>,
    },
    Failed {
        err: LoadError,
        first: bool,
    },
}

impl Group {
    fn start(key: SamplerKey) -> Result<Arc<Group>, RegisterError> {
        let paths = HostPaths::under(&key.root);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let request = key
            .cpu_request
            .and_then(|bits| CpuRequest::from_cpus(f64::from_bits(bits)));
        let meter = LoadMeter::with_request(key.source, &paths, pid, request)?;
        let interval = key.interval;
        let group = Arc::new(Group {
            source: meter.source(),
            description: meter.describe(),
            key,
            state: Mutex::new(GroupState {
                meter,
                members: Vec::new(),
                coordinators: Vec::new(),
                due: Instant::now() + interval,
                failing: false,
                cross: Cross::Pending,
            }),
            monitor: Mutex::new(None),
        });
        // Weak: the group lives as long as it has members, not as long as its thread.
        let weak = Arc::downgrade(&group);
        let monitor = Monitor::spawn(SAMPLER_THREAD_NAME, interval, move || {
            Weak::upgrade(&weak).map(|group| group.tick())
        })?;
        *lock(&group.monitor) = Some(monitor);
        Ok(group)
    }

    fn members(&self) -> Vec<(u64, Element)> {
        lock(&self.state)
            .members
            .iter()
            .filter_map(|m| Some((m.id, m.element.upgrade()?)))
            .collect()
    }

    /// One round of the thread: sample when due; returns how long to wait.
    /// Sampling keeps to its schedule so every sample covers a full
    /// interval. Drains follow their own deadlines (the element's clock ids).
    fn tick(&self) -> Duration {
        let now = Instant::now();
        if now >= lock(&self.state).due {
            let members = self.members();
            let mut surveys = Surveys::default();
            let facts: HashMap<u64, MemberFacts> = members
                .iter()
                .map(|(id, element)| (*id, element.facts(&mut surveys)))
                .collect();
            let outcome = lock(&self.state).sample(self, now, &facts);
            self.deliver(outcome, &members);
        }
        lock(&self.state)
            .due
            .saturating_duration_since(Instant::now())
    }

    fn deliver(&self, outcome: Outcome, members: &[(u64, Element)]) {
        let (sample, cpu, chosen, warnings) = match outcome {
            Outcome::Failed { err, first } => {
                for (id, element) in members {
                    element.on_sample_error(*id, &err, first);
                }
                return;
            }
            Outcome::Sampled {
                sample,
                cpu,
                chosen,
                warnings,
            } => (sample, cpu, chosen, warnings),
        };
        if let Some((id, element)) = members.first() {
            for text in &warnings {
                element.on_coordination_warning(*id, text);
            }
        }
        for (id, element) in members {
            let own = cpu.get(id).copied().unwrap_or(0.0);
            element.on_sample(*id, &sample, own);
        }
        for chosen in chosen {
            let id = chosen.victim.id;
            let started = members
                .iter()
                .find(|(member, _)| *member == id)
                .is_some_and(|(_, element)| element.chosen(&chosen, sample.source));
            if !started && !chosen.dry_run {
                // It stopped, or an application drain got there first: free the slot.
                self.finished(chosen.policy, id);
            }
        }
    }

    fn finished(&self, policy: PolicyKey, id: u64) {
        let mut state = lock(&self.state);
        if let Some((_, coordinator)) = state.coordinators.iter_mut().find(|(p, _)| *p == policy) {
            coordinator.finished(&id);
        }
    }
}

/// The element's name for the log (its id if it is gone).
fn name_of(members: &[Entry], id: u64) -> String {
    members
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| m.element.upgrade())
        .map_or_else(|| format!("instance {id}"), |e| e.label())
}

/// "cpuguard0 0.50, cpuguard1 0.12 (ending)" for the victim-choice log line.
fn describe(members: &[Entry], candidates: &[Candidate<u64>]) -> String {
    candidates
        .iter()
        .map(|c| {
            let ending = if c.ending { " (ending)" } else { "" };
            format!("{} {:.2}{ending}", name_of(members, c.id), c.cpu)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl GroupState {
    /// Joins the budget's cross-process coordination once a member that can
    /// drain is here.
    fn cross_join(&mut self, key: &SamplerKey, warnings: &mut Vec<String>) {
        if !matches!(self.cross, Cross::Pending) || self.members.iter().all(|m| m.policy.dry_run) {
            return;
        }
        let Some(dir) = &key.coordination_dir else {
            self.cross = Cross::Off;
            return;
        };
        self.cross = match crossproc::budget_of(&self.meter) {
            Ok(None) => {
                gst::debug!(
                    super::category::CAT,
                    "load-source=process judges this process alone: no cross-process coordination"
                );
                Cross::Off
            }
            Ok(Some(budget)) => {
                match crossproc::join(dir, key.group_shared, budget, key.interval, warnings) {
                    Some(p) => Cross::On(p),
                    None => Cross::Off,
                }
            }
            Err(err) => {
                warnings.push(format!(
                    "cpuguard cannot tell which CPU budget its load judges ({err}); drains are                      coordinated within this process only"
                ));
                Cross::Off
            }
        };
    }

    fn sample(
        &mut self,
        group: &Group,
        now: Instant,
        facts: &HashMap<u64, MemberFacts>,
    ) -> Outcome {
        let interval = group.key.interval;
        let gid = group as *const Group as usize;
        self.due = now + interval;
        let sample = match self.meter.sample(now) {
            Ok(sample) => sample,
            Err(err) => {
                let first = !self.failing;
                self.failing = true;
                return Outcome::Failed { err, first };
            }
        };
        if std::mem::take(&mut self.failing) {
            gst::info!(super::category::CAT, "Load readable again");
        }
        gst::debug!(
            super::category::CAT,
            "Sample: load {:.3} ({}, capacity {:.2} CPUs) for {} instances",
            sample.load,
            sample.source.as_str(),
            sample.capacity,
            self.members.len()
        );
        let mut cpu = HashMap::new();
        for member in &mut self.members {
            if facts.contains_key(&member.id) {
                cpu.insert(member.id, member.cpu.update(&member.threads, now));
            }
        }
        let mut warnings = Vec::new();
        self.cross_join(&group.key, &mut warnings);
        let participation = match &self.cross {
            Cross::On(p) => Some(p.clone()),
            _ => None,
        };
        let look = participation
            .as_ref()
            .map_or(Look::Clear, |p| p.look(gid, now, interval));
        let mut chosen = Vec::new();
        let (mut in_flight, mut wants) = (false, false);
        for (policy, coordinator) in &mut self.coordinators {
            if let Some(id) = coordinator.in_flight().copied()
                && facts.get(&id).is_some_and(|f| f.drain_finished)
            {
                coordinator.finished(&id);
            }
            if !policy.dry_run {
                match look {
                    Look::Busy { pid } => {
                        // As for a drain of ours: the load says nothing about
                        // the next victim until it is over.
                        gst::debug!(
                            super::category::CAT,
                            "Load {:.3}: waiting for the drain of pid {pid} (another process                              of this budget) to finish",
                            sample.load
                        );
                        in_flight |= coordinator.in_flight().is_some();
                        continue;
                    }
                    Look::Fresh => {
                        gst::debug!(
                            super::category::CAT,
                            "A drain ran in another process of this budget: fresh hold"
                        );
                        coordinator.restart();
                    }
                    Look::Clear => {}
                }
            }
            // Only members whose facts were read: one that joined since then
            // waits for the next sample.
            let candidates: Vec<Candidate<u64>> = self
                .members
                .iter()
                .filter(|m| m.policy == *policy)
                .filter_map(|m| {
                    let f = facts.get(&m.id)?;
                    Some(Candidate {
                        id: m.id,
                        cpu: m.cpu.last(),
                        ending: f.ending,
                    })
                })
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let decision = coordinator.observe(sample.load, &candidates);
            let (scope, verdict) = match (&decision, &participation) {
                (Decision::Drain(victim), Some(p)) if !policy.dry_run => {
                    match p.arbitrate(gid, now, &mut warnings) {
                        crossproc::Verdict::Go { scope, candidates } => (scope, Some(candidates)),
                        crossproc::Verdict::Wait => {
                            coordinator.defer(&victim.id, victim.trigger, victim.threshold);
                            wants = true;
                            gst::debug!(
                                super::category::CAT,
                                "Load {:.3} calls for a drain; another process of the budget                                  goes first",
                                sample.load
                            );
                            continue;
                        }
                    }
                }
                _ => (Scope::Process, None),
            };
            match decision {
                Decision::Drain(victim) => {
                    gst::info!(
                        super::category::CAT,
                        "Load {:.3} reached the {} threshold {}: choosing {}, the heaviest of \
                         {} (CPUs of their streaming threads)",
                        victim.load,
                        victim.trigger,
                        victim.threshold,
                        name_of(&self.members, victim.id),
                        describe(&self.members, &candidates)
                    );
                    let dry_run = facts.get(&victim.id).is_some_and(|f| f.dry_run);
                    if dry_run {
                        // Nothing will drain: never let it block the next decision.
                        coordinator.finished(&victim.id);
                    }
                    let local = candidates.iter().filter(|c| !c.ending).count();
                    chosen.push(Chosen {
                        cpu: cpu.get(&victim.id).copied().unwrap_or(0.0),
                        victim,
                        policy: *policy,
                        dry_run,
                        scope,
                        candidates: verdict.unwrap_or(local),
                    });
                }
                Decision::Wait(Verdict::Rising { count, hold }) => {
                    gst::debug!(
                        super::category::CAT,
                        "Load {:.3} high for {count}/{hold} samples",
                        sample.load
                    );
                }
                Decision::Wait(Verdict::WarmingUp { left }) => {
                    gst::debug!(
                        super::category::CAT,
                        "Load {:.3} not judged: its window covers start-up ({left} more to skip)",
                        sample.load
                    );
                }
                Decision::InFlight(id) => {
                    gst::debug!(
                        super::category::CAT,
                        "Load {:.3}: waiting for the drain of {} to finish",
                        sample.load,
                        name_of(&self.members, id)
                    );
                }
                Decision::NoCandidate => {
                    gst::debug!(
                        super::category::CAT,
                        "Load {:.3} calls for a drain but every instance is already ending",
                        sample.load
                    );
                }
                Decision::Wait(verdict) => {
                    gst::log!(
                        super::category::CAT,
                        "Load {:.3}: {verdict:?}, nothing to do",
                        sample.load
                    );
                }
            }
        }
        for (policy, coordinator) in &self.coordinators {
            if !policy.dry_run {
                in_flight |= coordinator.in_flight().is_some();
                wants |= coordinator.armed();
            }
        }
        if let Some(p) = &participation {
            p.settle(gid, in_flight, wants);
        }
        Outcome::Sampled {
            sample,
            cpu,
            chosen,
            warnings,
        }
    }
}
