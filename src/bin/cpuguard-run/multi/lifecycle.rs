//! One worker's life as the parent sees it, as a pure function: [`step`]
//! takes what happened to the worker and says what to do to it. The parent
//! loop (`parent.rs`) turns signals, the worker's events, its exit and the
//! clock into [`Input`]s and carries out the [`Do`]s; what it prints and
//! reports stays there.
//!
//! The worker's drain deadline is checked on every tick, whatever the load:
//! LiveKit Egress escalates only on high-load ticks, so a drain stuck after
//! the load came down was never killed.

use std::time::{Duration, Instant};

/// How long a worker's stdout may stay open after it exited (a helper
/// process that inherited it) before its result is made without it.
pub const STDOUT_GRACE: Duration = Duration::from_secs(2);

/// What the parent asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// SIGTERM: drain with reason stop-requested.
    Drain,
    /// SIGINT: stop at once.
    Stop,
}

/// Why the parent killed a worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its drain did not complete within the drain timeout.
    DrainTimeout,
    /// SIGINT came before its signal handlers were up: nothing to save.
    SigintBeforeStart,
    /// Still running when the grace after SIGINT ended.
    StillRunningAfterSigint,
    /// A second SIGINT.
    SigintAgain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The worker said something on its channel: its signal handlers are up.
    Spoke,
    /// The parent asks the worker (deferred until it has spoken: before
    /// that a SIGTERM would kill it).
    Ask(Ask),
    /// SIGINT to the run: stop at once, or, not started yet, kill.
    Interrupt,
    /// A drain is timed from now (the parent asked, or the worker announced
    /// its own); `None` waits forever.
    Drains { deadline: Option<Instant> },
    /// The worker said COMPLETE or FAILED: its pipeline has ended, and what
    /// it does next (its hook, its final webhook) runs within its own
    /// finish budget, never into a drain deadline.
    PipelineEnded,
    /// Kill its process group now (once).
    Kill(Why),
    /// The process ended (reaped).
    Exited { at: Instant },
    /// Its stdout closed; the result in it is read.
    StdoutClosed,
    /// The clock: deadlines due at `now` act.
    Tick { now: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Do {
    /// Send the signal for this ask now.
    Send(Ask),
    /// SIGKILL the worker's process group.
    Kill(Why),
    /// Its stdout stayed open past [`STDOUT_GRACE`] after it exited: the
    /// result is made without it.
    GiveUpStdout,
    /// It exited and its stdout is read: make its result.
    Finalize,
}

#[derive(Debug, Default)]
pub struct Life {
    /// It spoke: its signal handlers are installed.
    ready: bool,
    /// Asked before it was ready: sent when it is.
    deferred: Option<Ask>,
    /// When its drain is overdue.
    deadline: Option<Instant>,
    killed: Option<Why>,
    /// SIGINT reached the run while it ran.
    interrupted: bool,
    exited: Option<Instant>,
    stdout_closed: bool,
}

impl Life {
    /// Exited or killed: nothing more to ask of it.
    pub fn gone(&self) -> bool {
        self.exited.is_some() || self.killed.is_some()
    }

    pub fn killed(&self) -> Option<Why> {
        self.killed
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    pub fn exited(&self) -> Option<Instant> {
        self.exited
    }

    /// The next time a [`Input::Tick`] would act.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.exited, self.killed) {
            (Some(at), _) if !self.stdout_closed => Some(at + STDOUT_GRACE),
            (None, None) => self.deadline,
            _ => None,
        }
    }

    fn finalize_if_done(&self) -> Vec<Do> {
        if self.exited.is_some() && self.stdout_closed {
            vec![Do::Finalize]
        } else {
            Vec::new()
        }
    }

    fn kill(&mut self, why: Why) -> Vec<Do> {
        if self.gone() {
            return Vec::new();
        }
        self.killed = Some(why);
        self.deferred = None;
        vec![Do::Kill(why)]
    }
}

/// What `input` does to the worker.
pub fn step(life: &mut Life, input: Input) -> Vec<Do> {
    match input {
        Input::Spoke => {
            life.ready = true;
            life.deferred.take().map(Do::Send).into_iter().collect()
        }
        Input::Ask(_) if life.gone() => Vec::new(),
        Input::Ask(ask) if life.ready => vec![Do::Send(ask)],
        Input::Ask(ask) => {
            life.deferred = Some(ask);
            Vec::new()
        }
        Input::Interrupt if life.gone() => Vec::new(),
        Input::Interrupt => {
            life.interrupted = true;
            if life.ready {
                vec![Do::Send(Ask::Stop)]
            } else {
                life.kill(Why::SigintBeforeStart)
            }
        }
        Input::Drains { deadline } => {
            life.deadline = deadline;
            Vec::new()
        }
        Input::PipelineEnded => {
            life.deadline = None;
            Vec::new()
        }
        Input::Kill(why) => life.kill(why),
        Input::Exited { at } => {
            life.exited = Some(at);
            life.finalize_if_done()
        }
        // Given up on already: its result is made.
        Input::StdoutClosed if life.stdout_closed => Vec::new(),
        Input::StdoutClosed => {
            life.stdout_closed = true;
            life.finalize_if_done()
        }
        Input::Tick { now } => match life.exited {
            Some(at) if !life.stdout_closed && now >= at + STDOUT_GRACE => {
                life.stdout_closed = true;
                vec![Do::GiveUpStdout, Do::Finalize]
            }
            Some(_) => Vec::new(),
            None if life.deadline.is_some_and(|d| now >= d) => life.kill(Why::DrainTimeout),
            None => Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Life {
        let mut life = Life::default();
        step(&mut life, Input::Spoke);
        life
    }

    #[test]
    fn an_ask_before_the_worker_spoke_waits_for_it() {
        let mut life = Life::default();
        assert_eq!(step(&mut life, Input::Ask(Ask::Drain)), []);
        assert_eq!(step(&mut life, Input::Spoke), [Do::Send(Ask::Drain)]);
        assert_eq!(step(&mut life, Input::Spoke), [], "sent once");
        assert_eq!(
            step(&mut life, Input::Ask(Ask::Drain)),
            [Do::Send(Ask::Drain)]
        );
    }

    #[test]
    fn nothing_is_asked_of_a_worker_that_is_gone() {
        let mut life = ready();
        step(&mut life, Input::Exited { at: Instant::now() });
        assert_eq!(step(&mut life, Input::Ask(Ask::Drain)), []);
        assert_eq!(step(&mut life, Input::Interrupt), []);
        assert_eq!(step(&mut life, Input::Kill(Why::SigintAgain)), []);
        assert!(!life.interrupted());
    }

    #[test]
    fn a_drain_past_its_deadline_is_killed_once() {
        let t0 = Instant::now();
        let mut life = ready();
        let deadline = t0 + Duration::from_secs(30);
        step(
            &mut life,
            Input::Drains {
                deadline: Some(deadline),
            },
        );
        assert_eq!(life.next_deadline(), Some(deadline));
        let early = deadline - Duration::from_millis(1);
        assert_eq!(step(&mut life, Input::Tick { now: early }), []);
        assert_eq!(
            step(&mut life, Input::Tick { now: deadline }),
            [Do::Kill(Why::DrainTimeout)]
        );
        assert_eq!(life.killed(), Some(Why::DrainTimeout));
        assert_eq!(life.next_deadline(), None);
        let later = deadline + Duration::from_secs(1);
        assert_eq!(step(&mut life, Input::Tick { now: later }), []);
    }

    #[test]
    fn a_drain_without_a_timeout_is_never_killed() {
        let mut life = ready();
        step(&mut life, Input::Drains { deadline: None });
        let far = Instant::now() + Duration::from_secs(86_400);
        assert_eq!(step(&mut life, Input::Tick { now: far }), []);
        assert_eq!(life.next_deadline(), None);
    }

    #[test]
    fn an_ended_pipeline_is_not_killed_by_its_drain_deadline() {
        let t0 = Instant::now();
        let mut life = ready();
        let deadline = t0 + Duration::from_secs(1);
        step(
            &mut life,
            Input::Drains {
                deadline: Some(deadline),
            },
        );
        // The worker runs its on-end hook past the drain deadline.
        step(&mut life, Input::PipelineEnded);
        assert_eq!(step(&mut life, Input::Tick { now: deadline }), []);
        assert_eq!(life.killed(), None);
    }

    #[test]
    fn an_exit_on_its_way_is_never_turned_into_a_kill() {
        let t0 = Instant::now();
        let mut life = ready();
        step(&mut life, Input::Drains { deadline: Some(t0) });
        step(&mut life, Input::Exited { at: t0 });
        assert_eq!(step(&mut life, Input::Tick { now: t0 }), []);
        assert_eq!(life.killed(), None);
    }

    #[test]
    fn the_result_is_made_once_it_exited_and_its_stdout_closed() {
        let t0 = Instant::now();
        let mut life = ready();
        assert_eq!(step(&mut life, Input::StdoutClosed), []);
        assert_eq!(step(&mut life, Input::Exited { at: t0 }), [Do::Finalize]);
        let mut life = ready();
        assert_eq!(step(&mut life, Input::Exited { at: t0 }), []);
        assert_eq!(step(&mut life, Input::StdoutClosed), [Do::Finalize]);
    }

    #[test]
    fn a_stdout_held_open_after_the_exit_is_given_up_after_the_grace() {
        let t0 = Instant::now();
        let mut life = ready();
        step(&mut life, Input::Exited { at: t0 });
        assert_eq!(life.next_deadline(), Some(t0 + STDOUT_GRACE));
        let early = t0 + STDOUT_GRACE - Duration::from_millis(1);
        assert_eq!(step(&mut life, Input::Tick { now: early }), []);
        assert_eq!(
            step(
                &mut life,
                Input::Tick {
                    now: t0 + STDOUT_GRACE
                }
            ),
            [Do::GiveUpStdout, Do::Finalize]
        );
        assert_eq!(life.next_deadline(), None);
        assert_eq!(step(&mut life, Input::StdoutClosed), []);
    }

    #[test]
    fn sigint_stops_a_ready_worker_and_kills_one_not_started() {
        let mut life = ready();
        assert_eq!(step(&mut life, Input::Interrupt), [Do::Send(Ask::Stop)]);
        assert!(life.interrupted());
        assert_eq!(life.killed(), None);

        let mut life = Life::default();
        step(&mut life, Input::Ask(Ask::Drain));
        assert_eq!(
            step(&mut life, Input::Interrupt),
            [Do::Kill(Why::SigintBeforeStart)]
        );
        assert!(life.interrupted());
        // A drain asked earlier is not sent to a killed worker.
        assert_eq!(step(&mut life, Input::Spoke), []);
    }

    #[test]
    fn a_second_kill_does_nothing() {
        let mut life = ready();
        assert_eq!(
            step(&mut life, Input::Kill(Why::StillRunningAfterSigint)),
            [Do::Kill(Why::StillRunningAfterSigint)]
        );
        assert_eq!(step(&mut life, Input::Kill(Why::SigintAgain)), []);
        assert_eq!(life.killed(), Some(Why::StillRunningAfterSigint));
    }
}
