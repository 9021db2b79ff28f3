//! The run's flow, STARTING → ACTIVE → ENDING → COMPLETE/FAILED (LiveKit
//! Egress's states), as a pure function: [`step`] takes what happened and
//! says what to do. `supervise.rs` turns bus messages, signals and timers
//! into [`Event`]s and carries out the [`Action`]s; what a drain or an error
//! says in detail stays there.

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Starting,
    Active,
    Ending,
    Ended,
}

#[derive(Debug, Default)]
pub struct Flow {
    pub phase: Phase,
    /// The pipeline's last state change said PLAYING.
    playing: bool,
    /// A stop came before PLAYING: an EOS sent while the sources are still
    /// starting is lost, so it is sent once the pipeline plays.
    stop_deferred: bool,
    /// A drain is under way (asked for by a signal, or cpuguard's own).
    draining: bool,
    /// The stop came when every source had already sent its own EOS: the run
    /// ends as a natural end (reason eos), not as the drain.
    natural_end: bool,
    /// An ERROR came during the drain: the run fails with it once the
    /// branches it did not cut off have finished.
    error_in_drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The pipeline's state changed: PLAYING now, or not.
    Playing(bool),
    /// SIGTERM, SIGHUP or SIGUSR1: drain.
    Stop,
    /// SIGINT: stop at once.
    Interrupt,
    /// A cpuguard posted `cpuguard-drain`.
    GuardDrained,
    /// Sending the stop found the pipeline already ending by itself.
    NaturalEnd,
    /// The pipeline's EOS.
    Eos,
    /// An ERROR; `drain_timeout` when it is cpuguard's own drain-timeout
    /// error (a stream error from a cpuguard while draining).
    Error { drain_timeout: bool },
    /// After an error during the drain: every branch it did not reach has
    /// its EOS.
    BranchesDone,
    /// The supervisor's drain timer fired.
    DrainTimeout,
    /// The pipeline could not be set to PLAYING.
    StartFailed,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// COMPLETE, reason eos: the stream ended by itself.
    ByItself,
    /// COMPLETE with the drain's reason.
    Drained,
    /// FAILED, drain-timeout: the supervisor's timer or cpuguard's error.
    DrainTimeout,
    /// FAILED with the error that came during the drain; `timed_out` when
    /// the drain timeout came before the other branches finished.
    DrainError { timed_out: bool },
    /// FAILED, error.
    Error,
    /// FAILED, interrupted (SIGINT), exit 130.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Enter ACTIVE or ENDING (the final states come with [`Action::Finish`]).
    Enter(Phase),
    /// Make the supervisor's own drain record (signal, reason).
    StartDrain,
    /// cpuguard's drain is the run's drain.
    AdoptGuardDrain,
    /// A drain is already the run's: merge what cpuguard said into it (or
    /// note that another element drained too).
    MergeGuardDrain,
    /// Start the drain timer (once).
    StartTimer,
    /// Ask cpuguard (or, without one, the sources) to drain now.
    SendStop,
    /// The pipeline is not playing yet: the stop waits for PLAYING.
    DeferStop,
    /// Remember the error and watch the branches it did not cut off.
    WatchBranches,
    /// End the run: stop the pipeline, enter the final state, quit.
    Finish(End),
    /// Nothing to do, and why (for the signal's `action` and the log).
    Ignore(Ignored),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    AlreadyEnded,
    AlreadyDraining,
    /// A late event that needs nothing (a timer after the end, a repeated
    /// natural end, ...).
    Nothing,
}

/// The run ends with `end`: nothing after this changes how.
fn finish(flow: &mut Flow, end: End) -> Vec<Action> {
    flow.phase = Phase::Ended;
    vec![Action::Finish(end)]
}

/// What `event` does to the run.
pub fn step(flow: &mut Flow, event: Event) -> Vec<Action> {
    use Action::*;
    if flow.phase == Phase::Ended {
        // Whatever ends the run first wins; the rest is only recorded.
        if let Event::Playing(playing) = event {
            flow.playing = playing;
        }
        return vec![Ignore(Ignored::AlreadyEnded)];
    }
    match event {
        Event::Playing(playing) => {
            flow.playing = playing;
            let mut actions = Vec::new();
            if playing && flow.phase == Phase::Starting {
                flow.phase = Phase::Active;
                actions.push(Enter(Phase::Active));
            }
            if playing && flow.stop_deferred {
                flow.stop_deferred = false;
                actions.push(SendStop);
            }
            actions
        }
        Event::Stop if flow.draining => vec![Ignore(Ignored::AlreadyDraining)],
        Event::Stop => {
            flow.draining = true;
            flow.phase = Phase::Ending;
            let send = if flow.playing {
                SendStop
            } else {
                flow.stop_deferred = true;
                DeferStop
            };
            // The drain timeout counts from the signal, whatever happens next.
            vec![StartDrain, Enter(Phase::Ending), StartTimer, send]
        }
        Event::Interrupt => finish(flow, End::Interrupted),
        Event::GuardDrained if flow.draining => vec![MergeGuardDrain],
        Event::GuardDrained => {
            flow.draining = true;
            flow.phase = Phase::Ending;
            vec![AdoptGuardDrain, Enter(Phase::Ending), StartTimer]
        }
        Event::NaturalEnd => {
            flow.natural_end = true;
            Vec::new()
        }
        Event::Eos if flow.error_in_drain => finish(flow, End::DrainError { timed_out: false }),
        Event::Eos if flow.draining && !flow.natural_end => finish(flow, End::Drained),
        Event::Eos => finish(flow, End::ByItself),
        Event::Error {
            drain_timeout: true,
        } if flow.draining => finish(flow, End::DrainTimeout),
        Event::Error { .. } if flow.phase == Phase::Ending => {
            flow.error_in_drain = true;
            vec![WatchBranches]
        }
        Event::Error { .. } => finish(flow, End::Error),
        Event::BranchesDone if flow.error_in_drain => {
            finish(flow, End::DrainError { timed_out: false })
        }
        Event::BranchesDone => vec![Ignore(Ignored::Nothing)],
        Event::DrainTimeout if flow.phase != Phase::Ending => vec![Ignore(Ignored::Nothing)],
        Event::DrainTimeout if flow.error_in_drain => {
            finish(flow, End::DrainError { timed_out: true })
        }
        Event::DrainTimeout => finish(flow, End::DrainTimeout),
        Event::StartFailed => finish(flow, End::Error),
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::*;

    /// Runs `events` from a fresh flow; the actions of each.
    fn run(events: &[Event]) -> (Flow, Vec<Vec<Action>>) {
        let mut flow = Flow::default();
        let actions = events.iter().map(|e| step(&mut flow, *e)).collect();
        (flow, actions)
    }

    fn last(events: &[Event]) -> Vec<Action> {
        run(events).1.pop().unwrap_or_default()
    }

    #[test]
    fn playing_makes_the_run_active_once() {
        let (flow, actions) = run(&[
            Event::Playing(true),
            Event::Playing(false),
            Event::Playing(true),
        ]);
        assert_eq!(flow.phase, Phase::Active);
        assert_eq!(actions, [vec![Enter(Phase::Active)], vec![], vec![]]);
    }

    #[test]
    fn a_stop_while_playing_drains_and_the_eos_completes_it() {
        let (flow, actions) = run(&[Event::Playing(true), Event::Stop, Event::Eos]);
        assert_eq!(
            actions[1],
            [StartDrain, Enter(Phase::Ending), StartTimer, SendStop]
        );
        assert_eq!(actions[2], [Finish(End::Drained)]);
        assert_eq!(flow.phase, Phase::Ended);
    }

    #[test]
    fn a_stop_before_playing_waits_for_playing_and_the_timer_still_runs() {
        let (_, actions) = run(&[Event::Stop, Event::Playing(true)]);
        assert_eq!(
            actions[0],
            [StartDrain, Enter(Phase::Ending), StartTimer, DeferStop]
        );
        // Still ENDING: PLAYING only sends the stop.
        assert_eq!(actions[1], [SendStop]);
        // Never played at all: the drain timeout ends it.
        assert_eq!(
            last(&[Event::Stop, Event::DrainTimeout]),
            [Finish(End::DrainTimeout)]
        );
    }

    #[test]
    fn repeated_stops_join_the_drain_under_way() {
        for first in [Event::Stop, Event::GuardDrained] {
            assert_eq!(
                last(&[Event::Playing(true), first, Event::Stop]),
                [Ignore(Ignored::AlreadyDraining)]
            );
        }
    }

    #[test]
    fn cpuguards_own_drain_ends_the_run_and_a_second_message_merges() {
        let (_, actions) = run(&[
            Event::Playing(true),
            Event::GuardDrained,
            Event::GuardDrained,
            Event::Eos,
        ]);
        assert_eq!(
            actions[1],
            [AdoptGuardDrain, Enter(Phase::Ending), StartTimer]
        );
        assert_eq!(actions[2], [MergeGuardDrain]);
        assert_eq!(actions[3], [Finish(End::Drained)]);
        // The answer to the supervisor's own request merges too.
        assert_eq!(
            last(&[Event::Playing(true), Event::Stop, Event::GuardDrained]),
            [MergeGuardDrain]
        );
    }

    #[test]
    fn eos_without_a_drain_or_during_a_natural_end_is_a_natural_end() {
        assert_eq!(
            last(&[Event::Playing(true), Event::Eos]),
            [Finish(End::ByItself)]
        );
        assert_eq!(
            last(&[
                Event::Playing(true),
                Event::Stop,
                Event::NaturalEnd,
                Event::Eos
            ]),
            [Finish(End::ByItself)]
        );
    }

    #[test]
    fn an_error_before_the_drain_fails_at_once() {
        for before in [&[][..], &[Event::Playing(true)][..]] {
            let mut events = before.to_vec();
            events.push(Event::Error {
                drain_timeout: false,
            });
            assert_eq!(last(&events), [Finish(End::Error)], "{before:?}");
        }
        assert_eq!(last(&[Event::StartFailed]), [Finish(End::Error)]);
    }

    #[test]
    fn an_error_during_the_drain_waits_for_the_other_branches() {
        let error = Event::Error {
            drain_timeout: false,
        };
        let during = [Event::Playing(true), Event::Stop, error];
        assert_eq!(last(&during), [WatchBranches]);
        let mut done = during.to_vec();
        done.push(Event::BranchesDone);
        assert_eq!(last(&done), [Finish(End::DrainError { timed_out: false })]);
        // Or the pipeline's EOS comes first: the error still decides.
        let mut eos = during.to_vec();
        eos.push(Event::Eos);
        assert_eq!(last(&eos), [Finish(End::DrainError { timed_out: false })]);
        // Or the drain timeout: the error, noting what did not finish.
        let mut timeout = during.to_vec();
        timeout.push(Event::DrainTimeout);
        assert_eq!(
            last(&timeout),
            [Finish(End::DrainError { timed_out: true })]
        );
        // Without an error, branches finishing means nothing.
        assert_eq!(
            last(&[Event::Playing(true), Event::BranchesDone]),
            [Ignore(Ignored::Nothing)]
        );
    }

    #[test]
    fn cpuguards_drain_timeout_error_fails_as_a_drain_timeout() {
        let guard_timeout = Event::Error {
            drain_timeout: true,
        };
        assert_eq!(
            last(&[Event::Playing(true), Event::GuardDrained, guard_timeout]),
            [Finish(End::DrainTimeout)]
        );
        // Not draining: an error like any other.
        assert_eq!(
            last(&[Event::Playing(true), guard_timeout]),
            [Finish(End::Error)]
        );
    }

    #[test]
    fn the_drain_timer_fails_an_unfinished_drain_only() {
        assert_eq!(
            last(&[Event::Playing(true), Event::Stop, Event::DrainTimeout]),
            [Finish(End::DrainTimeout)]
        );
        assert_eq!(
            last(&[Event::Playing(true), Event::DrainTimeout]),
            [Ignore(Ignored::Nothing)]
        );
    }

    #[test]
    fn sigint_stops_at_once_even_during_a_drain() {
        for before in [
            &[][..],
            &[Event::Playing(true)][..],
            &[Event::Playing(true), Event::Stop][..],
        ] {
            let mut events = before.to_vec();
            events.push(Event::Interrupt);
            assert_eq!(last(&events), [Finish(End::Interrupted)], "{before:?}");
        }
    }

    #[test]
    fn the_first_end_wins() {
        let ended = [Event::Playing(true), Event::Eos];
        for late in [
            Event::Stop,
            Event::Interrupt,
            Event::GuardDrained,
            Event::Eos,
            Event::Error {
                drain_timeout: false,
            },
            Event::DrainTimeout,
            Event::BranchesDone,
            Event::StartFailed,
        ] {
            let mut events = ended.to_vec();
            events.push(late);
            assert_eq!(last(&events), [Ignore(Ignored::AlreadyEnded)], "{late:?}");
        }
    }
}
