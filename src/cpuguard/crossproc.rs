//! The element's side of cross-process coordination: one participation per
//! budget for the whole process, shared by every sampler group judging it.
//!
//! A group asks [`Participation::look`] at each sample whether another
//! process's drain is in flight (then its policy waits, as for an in-process
//! drain) or has ended since (then it starts a fresh hold), and
//! [`Participation::arbitrate`] when its policy says drain: the heaviest
//! process that wants a drain takes the budget's drain lock. The rules are in
//! [`crate::hostwide`]; this module only keeps the process's state and turns
//! what it finds into log lines and once-only warnings.
//!
//! Locks: a group's state before a participation's; nothing here calls into
//! an element.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hostwide::files::{BudgetFiles, CoordDir, DirError, Found};
use crate::hostwide::{self, BudgetId, Choice, Entry, Peer, Scope};
use crate::load::{CpuRate, LoadMeter, LoadSourceKind};

use super::category::CAT;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Warnings said once per process: each kind of bad entry, each unusable
/// directory. The log gets the details every time at DEBUG.
static WARNED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

fn warn_once(key: String, text: String, warnings: &mut Vec<String>) {
    if lock(&WARNED).insert(key) {
        gst::warning!(CAT, "{text}");
        warnings.push(text);
    }
}

/// What a group must do before judging this sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// Nothing from other processes.
    Clear,
    /// Another process's drain is in flight: wait, as for one of ours.
    Busy { pid: i32 },
    /// A drain started (and maybe ended) elsewhere since our last look:
    /// start a fresh hold.
    Fresh,
}

/// The answer to "may we drain now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// We hold the drain lock: drain. `candidates` live processes were ranked.
    Go { scope: Scope, candidates: usize },
    /// Not our turn (a heavier process goes first, or a drain is in flight).
    Wait,
}

#[derive(Debug)]
struct State {
    files: BudgetFiles,
    rate: CpuRate,
    cpu: f64,
    rate_at: Option<Instant>,
    seq: u64,
    /// Per group: the drain epoch at its last look, and whether another
    /// process's drain was in flight then (when it no longer is, that drain
    /// ended, also when its drainer died, which leaves the epoch as it was).
    seen: HashMap<usize, (u64, bool)>,
    /// Groups (by their key's address) with a drain of ours in flight under the lock.
    holders: HashSet<usize>,
    /// Groups whose policy wants a drain and waits for its turn.
    wanting: HashSet<usize>,
    wanting_since: Option<Instant>,
    interval: Duration,
}

/// This process's place in one budget.
#[derive(Debug)]
pub(super) struct Participation {
    id: BudgetId,
    state: Mutex<State>,
}

type Registry = HashMap<(PathBuf, BudgetId), Weak<Participation>>;
static PARTICIPATIONS: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// The budget a meter's load judges, or `None` (process load: nothing to share).
pub(super) fn budget_of(meter: &LoadMeter) -> Result<Option<BudgetId>, String> {
    let id_of = |path: &Path| -> Result<(u64, u64), String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        use std::os::unix::fs::MetadataExt;
        Ok((meta.dev(), meta.ino()))
    };
    let host = || -> Result<BudgetId, String> {
        let boot_id = meter.paths().proc_file("sys/kernel/random/boot_id");
        if let Some(id) = std::fs::read_to_string(&boot_id)
            .ok()
            .and_then(|t| BudgetId::host(&t))
        {
            return Ok(id);
        }
        // A fixture root without a boot id: that root is its own host.
        let (dev, ino) = id_of(&meter.paths().proc_file(""))?;
        Ok(BudgetId::Root { dev, ino })
    };
    match (meter.source(), meter.measured_cgroup()) {
        (LoadSourceKind::Process, _) => Ok(None),
        (_, Some(cgroup)) => {
            let (dev, ino) = id_of(cgroup)?;
            Ok(Some(BudgetId::Cgroup { dev, ino }))
        }
        _ => host().map(Some),
    }
}

/// Joins `budget` in the directory, or finds this process's participation
/// there. On failure, warns once and returns `None`: the caller coordinates
/// in-process only.
pub(super) fn join(
    dir: &Path,
    group_shared: bool,
    budget: BudgetId,
    interval: Duration,
    warnings: &mut Vec<String>,
) -> Option<Arc<Participation>> {
    let key = (dir.to_owned(), budget.clone());
    let mut registry = lock(&PARTICIPATIONS);
    registry.retain(|_, p| p.strong_count() > 0);
    if let Some(p) = registry.get(&key).and_then(Weak::upgrade) {
        return Some(p);
    }
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let joined = CoordDir::open(dir, group_shared).and_then(|d| d.join(&budget, pid));
    let files = match joined {
        Ok(files) => files,
        Err(err) => {
            let kind = match &err {
                DirError::Symlink(_) => "symlink",
                DirError::NotADirectory(_) => "not-dir",
                DirError::Owner { .. } => "owner",
                DirError::Mode { .. } => "mode",
                DirError::Io { .. } => "io",
            };
            warn_once(
                format!("dir {kind} {}", dir.display()),
                format!(
                    "cpuguard cannot coordinate with other processes: {err}; drains are \
                     coordinated within this process only"
                ),
                warnings,
            );
            return None;
        }
    };
    gst::info!(
        CAT,
        "Coordinating drains of budget {budget} with other processes in {}",
        files.path().display()
    );
    let participation = Arc::new(Participation {
        id: budget,
        state: Mutex::new(State {
            files,
            rate: CpuRate::default(),
            cpu: 0.0,
            rate_at: None,
            seq: 0,
            seen: HashMap::new(),
            holders: HashSet::new(),
            wanting: HashSet::new(),
            wanting_since: None,
            interval,
        }),
    });
    // Visible at once, not only after our first decision.
    Participation::publish_locked(&mut lock(&participation.state), false);
    registry.insert(key, Arc::downgrade(&participation));
    Some(participation)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Participation {
    pub fn scope(&self) -> Scope {
        self.id.scope()
    }

    /// At each sample of group `group`, before its policy judges it. Also
    /// refreshes the process's CPU rate (at most every half `interval`, so
    /// several groups sharing the participation do not shorten its window).
    pub fn look(&self, group: usize, now: Instant, interval: Duration) -> Look {
        let mut state = lock(&self.state);
        state.interval = state.interval.min(interval);
        let due = state
            .rate_at
            .is_none_or(|at| now.saturating_duration_since(at) >= interval / 2);
        if due {
            state.cpu = state.rate.update_own_process(now).unwrap_or(0.0);
            state.rate_at = Some(now);
        }
        let (record, in_flight) = match state.files.drain_state() {
            Ok(found) => found,
            // Unreadable now: nothing is known to be in flight.
            Err(err) => {
                gst::debug!(CAT, "Cannot read the drain lock of {}: {err}", self.id);
                return Look::Clear;
            }
        };
        let held_by_us = state.files.drain_held();
        let busy = in_flight && !held_by_us;
        let fresh = state
            .seen
            .insert(group, (record.epoch, busy))
            .is_some_and(|(epoch, was_busy)| epoch != record.epoch || (was_busy && !busy));
        if held_by_us {
            Look::Clear
        } else if in_flight {
            Look::Busy { pid: record.pid }
        } else if fresh {
            Look::Fresh
        } else {
            Look::Clear
        }
    }

    /// Group `group`'s policy says drain: may it? `warnings` gets the
    /// once-only warnings about bad entries seen.
    pub fn arbitrate(&self, group: usize, now: Instant, warnings: &mut Vec<String>) -> Verdict {
        let mut state = lock(&self.state);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        if state.files.drain_held() {
            // One of our groups already drains: our other groups' drains run
            // under the same lock (they were independent in-process before).
            state.holders.insert(group);
            return Verdict::Go {
                scope: self.scope(),
                candidates: 1,
            };
        }
        state.wanting.insert(group);
        let since = *state.wanting_since.get_or_insert(now);
        let me = Peer {
            pid,
            cpu: state.cpu,
            wants: true,
        };
        // Say we want before looking, so a process deciding at the same
        // moment sees us too.
        Self::publish_locked(&mut state, true);
        let found = match state.files.scan(now_ms()) {
            Ok(found) => found,
            Err(err) => {
                gst::debug!(CAT, "Cannot list {}: {err}", state.files.path().display());
                Vec::new()
            }
        };
        let mut peers = Vec::new();
        for f in found {
            match f {
                Found::Entry(e) => peers.push(Peer {
                    pid: e.pid,
                    cpu: e.cpu,
                    wants: e.wants,
                }),
                Found::Rejected { name, why } => {
                    gst::debug!(
                        CAT,
                        "Ignoring {} {}: {}",
                        state.files.path().display(),
                        name,
                        why.describe()
                    );
                    warn_once(
                        format!("entry {why:?}"),
                        format!(
                            "cpuguard ignores {} in {} ({name}); it neither causes nor \
                             blocks a drain (said once per kind)",
                            why.describe(),
                            state.files.path().display()
                        ),
                        warnings,
                    );
                }
            }
        }
        let wait_for_heavier = now.saturating_duration_since(since) < state.interval;
        let choice = hostwide::choose(&me, &peers, wait_for_heavier);
        let mut all = vec![me];
        all.extend(peers.iter().copied());
        let candidates = all.len();
        let verdict = match choice {
            Choice::Yield { to } => {
                gst::debug!(
                    CAT,
                    "Cross-process ({} {}): pid {} yields to pid {} ({:.3} CPUs, {}); candidates: {}",
                    self.scope().as_str(),
                    self.id,
                    pid,
                    to.pid,
                    to.cpu,
                    if to.wants {
                        "wants a drain"
                    } else {
                        "heavier, given an interval to decide"
                    },
                    hostwide::describe_peers(&all)
                );
                Verdict::Wait
            }
            Choice::Go => match state.files.take_drain() {
                Ok(Some(record)) => {
                    // Our own drain is no news to any of our groups.
                    for seen in state.seen.values_mut() {
                        *seen = (record.epoch, false);
                    }
                    state.holders.insert(group);
                    state.wanting.clear();
                    state.wanting_since = None;
                    gst::info!(
                        CAT,
                        "Cross-process ({} {}): pid {} is the heaviest of {} wanting a drain; \
                         took drain {} (candidates: {})",
                        self.scope().as_str(),
                        self.id,
                        pid,
                        all.iter().filter(|p| p.wants).count(),
                        record.epoch,
                        hostwide::describe_peers(&all)
                    );
                    Verdict::Go {
                        scope: self.scope(),
                        candidates,
                    }
                }
                Ok(None) => {
                    gst::debug!(
                        CAT,
                        "Cross-process ({} {}): pid {} would go but another process holds the \
                         drain lock; candidates: {}",
                        self.scope().as_str(),
                        self.id,
                        pid,
                        hostwide::describe_peers(&all)
                    );
                    Verdict::Wait
                }
                Err(err) => {
                    // The lock cannot be used: never block our own drain on it.
                    warn_once(
                        format!("drain lock {}", self.id),
                        format!(
                            "cpuguard cannot take the drain lock in {}: {err}; draining \
                             without it",
                            state.files.path().display()
                        ),
                        warnings,
                    );
                    Verdict::Go {
                        scope: Scope::Process,
                        candidates,
                    }
                }
            },
        };
        let wants = !state.wanting.is_empty();
        Self::publish_locked(&mut state, wants);
        verdict
    }

    /// After a group's sample: whether it still has a drain in flight and
    /// whether it still wants one. Releases the drain lock when no group of
    /// ours drains any more, and rewrites our entry.
    pub fn settle(&self, group: usize, in_flight: bool, wants: bool) {
        self.settle_or_leave(group, in_flight, wants, false);
    }

    fn settle_or_leave(&self, group: usize, in_flight: bool, wants: bool, leaving: bool) {
        let mut state = lock(&self.state);
        if !in_flight {
            state.holders.remove(&group);
        }
        if leaving {
            state.seen.remove(&group);
        }
        if !wants {
            state.wanting.remove(&group);
        }
        if state.wanting.is_empty() {
            state.wanting_since = None;
        }
        if state.holders.is_empty() && state.files.drain_held() {
            state.files.release_drain();
            gst::info!(
                CAT,
                "Cross-process ({}): our drain ended; released the drain lock",
                self.id
            );
        }
        let wants = !state.wanting.is_empty();
        Self::publish_locked(&mut state, wants);
    }

    /// A group leaves (its last member stopped).
    pub fn leave(&self, group: usize) {
        self.settle_or_leave(group, false, false, true);
    }

    fn publish_locked(state: &mut State, wants: bool) {
        state.seq = state.seq.wrapping_add(1);
        let entry = Entry {
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            uid: state.files.uid(),
            cpu: state.cpu,
            wants,
            interval_ms: u64::try_from(state.interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            seq: state.seq,
            at_ms: now_ms(),
        };
        if let Err(err) = state.files.publish(&entry) {
            gst::debug!(CAT, "Cannot write our entry: {err}");
        }
    }
}
