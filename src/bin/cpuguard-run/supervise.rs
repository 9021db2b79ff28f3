//! The run itself: the pipeline's bus, the signals and the drain timer, all
//! handled on one GLib main loop, and the STARTING → ACTIVE → ENDING →
//! COMPLETE/FAILED state flow of LiveKit Egress.
//!
//! - SIGTERM/SIGHUP: drain through cpuguard's `drain` action (reason
//!   stop-requested), or by sending EOS to the pipeline when it has no
//!   cpuguard; wait for the pipeline's EOS; COMPLETE. Repeats are ignored.
//! - SIGUSR1: the same drain with reason cpu-limit (a multi-pipeline parent
//!   chose this run to relieve the CPU).
//! - SIGINT: pipeline to NULL at once; FAILED, reason interrupted.
//! - cpuguard's own drain (`cpuguard-drain` message): ENDING, same wait.
//! - A drain not done within the drain timeout, or cpuguard's own
//!   drain-timeout ERROR: pipeline to NULL; FAILED, reason drain-timeout.
//! - Any other ERROR: FAILED, reason error. EOS without a drain: COMPLETE, eos.
//!   An ERROR during a drain first lets the branches it did not cut off finish
//!   (their sinks get EOS, their files are finalized), within the drain timeout.
//!
//! Whatever ends the run first wins; later events are ignored. Before giving
//! up on a drain (timer) or interrupting it (SIGINT), the messages already on
//! the bus are handled first, so an EOS that arrived in time is never reported
//! as a failure (the LiveKit Egress bug where the timer fired after the EOS).

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use gst::prelude::*;
use gstcpuguard::load::LoadSourceKind;
use gstcpuguard::messages::{self, DrainTrigger, Message};
use gstcpuguard::reason::EndReason;
use nix::sys::signal::Signal;

use crate::branches::SinkWatch;
use crate::channel::{self, WorkerEvent};
use crate::drain::{Answer, Drain, Merged};
use crate::finish::Notifier;
use crate::flow::{self, Action, End, Event, Flow, Ignored, Phase};
use crate::guard;
use crate::log::CAT;
use crate::observe::Observer;
use crate::outputs::Outputs;
use crate::progress::progress;
use crate::report::{
    CrashSafeReport, Output, Report, RunReason, SignalReport, Stamp, State, StateChange,
    round_cpus, round_load, round_ms,
};
use crate::signals::Router;

/// How long setting the pipeline to NULL may take before the result is
/// emitted anyway and the process exits (an element that ignores unlock must
/// not keep a container from stopping).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the other branches are checked after an error during a drain.
const BRANCH_POLL: Duration = Duration::from_millis(20);

type ErrorDetails = (String, Option<String>, Option<String>);

/// An ERROR that came in the middle of a drain: the run will fail with it,
/// once the branches it did not reach have finished.
struct ErrorInDrain {
    error: ErrorDetails,
    /// Elements that posted an error; their downstream sinks are not waited for.
    failed: Vec<gst::Element>,
    poll: Option<glib::SourceId>,
}

pub struct Setup {
    pub pipeline: gst::Pipeline,
    pub description: String,
    pub guards: Vec<gst::Element>,
    /// The supervisor's drain deadline in ms; `None` waits forever.
    pub drain_timeout_ms: Option<u32>,
    /// Worker of a multi-pipeline parent: it tells the parent its states and
    /// samples (`channel`), and the parent times its drains.
    pub worker: bool,
    pub observer: Observer,
    /// The muxers made crash-safe; `None` with `--no-crash-safe`.
    pub protection: Option<gstcpuguard::crashsafe::Protection>,
    /// Webhooks and the on-end hook.
    pub notifier: Notifier,
}

/// How often the report file is refreshed with the latest load while running
/// (state changes are written at once).
const REPORT_REFRESH: Duration = Duration::from_secs(5);

/// How the run ended, and when.
#[derive(Debug, Clone)]
struct Outcome {
    reason: RunReason,
    error: Option<ErrorDetails>,
    at: Stamp,
}

struct Supervisor {
    pipeline: gst::Pipeline,
    description: String,
    guards: Vec<gst::Element>,
    drain_timeout_ms: Option<u32>,
    worker: bool,
    observer: Observer,
    protection: Option<gstcpuguard::crashsafe::Protection>,
    /// When the report file was last refreshed.
    reported: std::time::Instant,
    main_loop: glib::MainLoop,
    output: Arc<Output>,
    me: Weak<RefCell<Supervisor>>,

    started: Stamp,
    /// Every state entered, in order; the last is where the run is.
    states: Vec<StateChange>,
    signals: Vec<SignalReport>,
    drain: Option<Drain>,
    timer: Option<glib::SourceId>,
    outcome: Option<Outcome>,
    /// Where the run is, and what each event does to it (flow.rs).
    flow: Flow,
    peak_load: Option<f64>,
    last_load: Option<f64>,
    load_source: Option<LoadSourceKind>,
    capacity: Option<f64>,
    sinks: SinkWatch,
    error_in_drain: Option<ErrorInDrain>,
    /// A worker's CPU, told to its parent with each sample.
    process_cpu: gstcpuguard::load::CpuRate,
    /// Taken when the run is over (see `finish`).
    notifier: Option<Notifier>,
    outputs: Outputs,
}

/// Runs the pipeline until it ends; emits the result through `output` and
/// returns the exit code.
pub fn run(setup: Setup, router: &Router, output: Arc<Output>) -> u8 {
    let main_loop = glib::MainLoop::new(None, false);
    let sinks = SinkWatch::install(&setup.pipeline);
    let outputs = Outputs::of(&setup.pipeline);
    let supervisor = Rc::new_cyclic(|me| {
        RefCell::new(Supervisor {
            pipeline: setup.pipeline,
            description: setup.description,
            guards: setup.guards,
            drain_timeout_ms: setup.drain_timeout_ms,
            worker: setup.worker,
            observer: setup.observer,
            protection: setup.protection,
            reported: std::time::Instant::now(),
            main_loop: main_loop.clone(),
            output,
            me: me.clone(),
            started: Stamp::now(),
            states: Vec::new(),
            signals: Vec::new(),
            drain: None,
            timer: None,
            outcome: None,
            flow: Flow::default(),
            peak_load: None,
            last_load: None,
            load_source: None,
            capacity: None,
            sinks,
            error_in_drain: None,
            process_cpu: gstcpuguard::load::CpuRate::default(),
            notifier: Some(setup.notifier),
            outputs,
        })
    });

    // The bus watch lives as long as this guard, i.e. until the loop is done.
    let bus = supervisor.borrow().pipeline.bus();
    let watch = match bus {
        Some(bus) => {
            let weak = Rc::downgrade(&supervisor);
            bus.add_watch_local(move |_, message| {
                if let Some(supervisor) = weak.upgrade() {
                    supervisor.borrow_mut().on_message(message);
                }
                glib::ControlFlow::Continue
            })
            .map_err(|err| format!("cannot watch the pipeline's bus: {err}"))
        }
        None => Err("the pipeline has no bus".to_owned()),
    };

    {
        let mut s = supervisor.borrow_mut();
        let detail = format!(": {}", s.description);
        s.enter(State::Starting, &detail);
        match &watch {
            Ok(_) => s.start(),
            Err(text) => s.fail_to_start(text),
        }
    }
    // Signals reach the supervisor only once the pipeline was started.
    {
        let weak = Rc::downgrade(&supervisor);
        router.set_handler(move |signal| {
            if let Some(supervisor) = weak.upgrade() {
                supervisor.borrow_mut().on_signal(signal);
            }
        });
    }

    if supervisor.borrow().outcome.is_none() {
        main_loop.run();
    }
    drop(watch);
    let (mut report, notifier, drain_requested, output) = {
        let mut s = supervisor.borrow_mut();
        let drain_requested = s.drain.as_ref().map(|d| d.requested.mono);
        (
            s.report(),
            s.notifier.take(),
            drain_requested,
            s.output.clone(),
        )
    };
    if let Some(notifier) = notifier {
        // The final status is on disk before the hook runs, whatever it does.
        output.update(&report);
        notifier.finish(&mut report, drain_requested, router);
    }
    output.emit(&report);
    supervisor
        .borrow()
        .observer
        .finish(&format!("{} ({})", report.end_reason, report.reason));
    report.exit_code
}

impl Supervisor {
    fn enter(&mut self, state: State, detail: &str) {
        let now = Stamp::now();
        self.states.push(StateChange {
            state,
            at: now.rfc3339(),
        });
        progress!("state {}{detail}", state.as_str());
        if matches!(state, State::Active | State::Ending) {
            let drain = self
                .drain
                .as_ref()
                .map(|d| (d.reason.as_str(), d.description.as_str()));
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.state(state, &now.rfc3339(), drain);
            }
        }
        if self.worker {
            channel::send(&WorkerEvent::State {
                state,
                at: now.rfc3339(),
                drain: (state == State::Ending)
                    .then(|| {
                        self.drain
                            .as_ref()
                            .map(|d| d.record_at(&now, self.drain_timeout_ms))
                    })
                    .flatten(),
            });
        }
        self.refresh_report();
    }

    /// Writes the state so far to the report file, so that a SIGKILL leaves
    /// the last known state on disk. The final result is written by `emit`.
    fn refresh_report(&mut self) {
        if self.outcome.is_none() {
            self.reported = std::time::Instant::now();
            let snapshot = self.report_with(None);
            self.output.update(&snapshot);
        }
    }

    fn start(&mut self) {
        for guard in &self.guards {
            progress!("{}", describe_guard(guard));
        }
        if self.guards.is_empty() && !self.worker {
            progress!(
                "warning: the pipeline has no cpuguard element: CPU guarding is off; \
                 SIGTERM/SIGHUP still drain it with EOS, SIGINT still stops it"
            );
        }
        match self.drain_timeout_ms {
            Some(ms) => progress!("drain timeout {ms} ms"),
            // A worker's drains are timed, and escalated, by its parent.
            None if self.worker => progress!("drain timeout: enforced by the parent"),
            None => progress!("drain timeout: none (a drain may take forever)"),
        }
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            // The reason is usually an ERROR message already on the bus.
            self.handle_pending();
            self.fail_to_start("the pipeline could not be set to PLAYING");
        }
    }

    fn fail_to_start(&mut self, text: &str) {
        if flow::step(&mut self.flow, Event::StartFailed) == [Action::Finish(End::Error)] {
            progress!("error: {text}");
            self.finish(RunReason::Error, Some((text.to_owned(), None, None)));
        }
    }

    /// Handles the messages already on the bus, in order, until the run ends.
    fn handle_pending(&mut self) {
        let Some(bus) = self.pipeline.bus() else {
            return;
        };
        while self.outcome.is_none() {
            match bus.pop() {
                Some(message) => self.on_message(&message),
                None => break,
            }
        }
    }

    fn is_pipeline(&self, object: Option<&gst::Object>) -> bool {
        object.is_some_and(|o| o == self.pipeline.upcast_ref::<gst::Object>())
    }

    fn is_guard(&self, object: Option<&gst::Object>) -> bool {
        object.is_some_and(|o| {
            self.guards
                .iter()
                .any(|g| g.upcast_ref::<gst::Object>() == o)
        })
    }

    fn on_message(&mut self, message: &gst::Message) {
        if self.outcome.is_some() {
            return;
        }
        use gst::MessageView;
        let src = message.src();
        match message.view() {
            MessageView::Eos(_) => self.on_eos(),
            MessageView::Error(err) => {
                let text = err.error().to_string();
                let debug = err.debug().map(|d| d.to_string());
                let source = src.map(|s| s.name().to_string());
                // cpuguard's own drain-timeout ERROR.
                let drain_timeout =
                    self.is_guard(src) && err.error().matches(gst::StreamError::Failed);
                for action in flow::step(&mut self.flow, Event::Error { drain_timeout }) {
                    let details = (text.clone(), source.clone(), debug.clone());
                    match action {
                        Action::Finish(End::DrainTimeout) => {
                            progress!("{}: {text}", source.as_deref().unwrap_or("cpuguard"));
                            self.finish(RunReason::DrainTimeout, Some(details));
                        }
                        Action::WatchBranches => {
                            let failed =
                                src.and_then(|s| s.downcast_ref::<gst::Element>()).cloned();
                            self.on_error_in_drain(details, failed);
                        }
                        Action::Finish(_) => {
                            progress!(
                                "error from {}: {text}",
                                source.as_deref().unwrap_or("the pipeline")
                            );
                            self.finish(RunReason::Error, Some(details));
                        }
                        _ => {}
                    }
                }
            }
            MessageView::Warning(w) => {
                let source =
                    src.map_or_else(|| "the pipeline".to_owned(), |s| s.name().to_string());
                progress!("warning from {source}: {}", w.error());
            }
            MessageView::StateChanged(change) if self.is_pipeline(src) => {
                let playing = change.current() == gst::State::Playing;
                for action in flow::step(&mut self.flow, Event::Playing(playing)) {
                    match action {
                        Action::Enter(Phase::Active) => {
                            self.observer.running(1);
                            self.enter(State::Active, ": pipeline PLAYING");
                        }
                        Action::SendStop => self.send_stop("pipeline PLAYING"),
                        _ => {}
                    }
                }
            }
            MessageView::Element(element) => {
                let Some(s) = element.structure() else { return };
                let source = src.map_or_else(String::new, |s| s.name().to_string());
                self.outputs.on_message(s);
                match messages::Message::from_structure(s) {
                    Ok(Some(Message::Load(load))) => self.on_load(&load),
                    Ok(Some(Message::Drain(said))) => {
                        self.on_guard_drain(Drain::from_said(said, source))
                    }
                    Ok(Some(Message::WouldDrain(said))) => {
                        let would = Drain::from_said(said, source.clone());
                        progress!("dry run: {source} would drain: {}", would.summary())
                    }
                    Ok(_) => {}
                    Err(err) => progress!("warning: {source}: {err}"),
                }
            }
            MessageView::Latency(_) => {
                // As gst-launch-1.0 does: live pipelines need it.
                let _ = self.pipeline.recalculate_latency();
            }
            MessageView::ClockLost(_) => {
                // As gst-launch-1.0 does: select a new clock.
                let _ = self.pipeline.set_state(gst::State::Paused);
                let _ = self.pipeline.set_state(gst::State::Playing);
            }
            _ => {}
        }
    }

    fn on_load(&mut self, sample: &messages::Load) {
        let (load, capacity) = (sample.load, sample.capacity);
        if !load.is_finite() {
            return;
        }
        let source = sample.source;
        self.last_load = Some(load);
        self.peak_load = Some(self.peak_load.map_or(load, |peak| peak.max(load)));
        self.load_source = Some(source);
        self.capacity = Some(capacity);
        gst::debug!(
            CAT,
            "cpuguard-run: sample: load {load:.3} ({source}), capacity {capacity:.2} CPUs"
        );
        if self.worker {
            channel::send(&WorkerEvent::Load {
                load,
                capacity,
                source,
                process_cpu: self
                    .process_cpu
                    .update_own_process(std::time::Instant::now()),
            });
        }
        if self.reported.elapsed() >= REPORT_REFRESH {
            self.refresh_report();
        }
        self.observer
            .sample(std::time::Instant::now(), load, capacity, source);
        if let Some(t) = sample.throttled
            && t.ratio.is_finite()
            && t.seconds.is_finite()
            && t.seconds >= 0.0
        {
            self.observer.throttling(t.ratio, t.seconds);
        }
    }

    fn on_guard_drain(&mut self, reported: Drain) {
        let element = reported.element.clone().unwrap_or_default();
        let mut reported = Some(reported);
        for action in flow::step(&mut self.flow, Event::GuardDrained) {
            match action {
                Action::AdoptGuardDrain => {
                    let Some(reported) = reported.take() else {
                        continue;
                    };
                    progress!("{element} drains: {}", reported.summary());
                    let label = match (reported.trigger, reported.load) {
                        (Some(trigger @ (DrainTrigger::Soft | DrainTrigger::Hard)), Some(load)) => {
                            format!(
                                "drain: {} ({trigger} threshold, load {load:.2})",
                                reported.reason
                            )
                        }
                        _ => format!("drain: {}", reported.reason),
                    };
                    self.observer
                        .drain_started(reported.requested.mono, &reported.reason, label);
                    self.drain = Some(reported);
                }
                Action::MergeGuardDrain => {
                    if let Some(reported) = reported.take() {
                        self.merge_guard_drain(reported, &element);
                    }
                }
                Action::Enter(Phase::Ending) => self.enter(State::Ending, ""),
                Action::StartTimer => self.start_timer(),
                _ => {}
            }
        }
    }

    /// cpuguard's drain message when the run already has a drain: the one a
    /// refused stop request waits for, the answer to the supervisor's own
    /// request, or another element draining too.
    fn merge_guard_drain(&mut self, reported: Drain, element: &str) {
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        let (summary, reason) = (reported.summary(), reported.reason.clone());
        match drain.merge(reported) {
            Merged::Joined => {
                progress!("{element} was already draining: {summary} (the stop request joins it)")
            }
            Merged::Filled => {}
            Merged::AlsoDrained => progress!(
                "{element} also drained ({reason}); the run keeps reason {}",
                drain.reason
            ),
        }
    }

    /// An ERROR while draining: remembered, and the run fails with it as soon
    /// as every sink it did not cut off has EOS (or at the drain timeout).
    fn on_error_in_drain(&mut self, error: ErrorDetails, failed: Option<gst::Element>) {
        let source = error.1.clone().unwrap_or_else(|| "the pipeline".to_owned());
        let pending = self.error_in_drain.get_or_insert_with(|| {
            progress!("error from {source} during the drain: {}", error.0);
            ErrorInDrain {
                error,
                failed: Vec::new(),
                poll: None,
            }
        });
        // Unknown source: assume everything is cut off.
        pending
            .failed
            .push(failed.unwrap_or_else(|| self.pipeline.clone().upcast()));
        let polling = self
            .error_in_drain
            .as_ref()
            .is_some_and(|p| p.poll.is_some());
        if !self.finish_if_branches_done() && !polling {
            let me = self.me.clone();
            let poll = glib::timeout_add_local(BRANCH_POLL, move || {
                let Some(supervisor) = me.upgrade() else {
                    return glib::ControlFlow::Break;
                };
                let mut s = supervisor.borrow_mut();
                if s.finish_if_branches_done() {
                    glib::ControlFlow::Break
                } else {
                    glib::ControlFlow::Continue
                }
            });
            if let Some(pending) = self.error_in_drain.as_mut() {
                pending.poll = Some(poll);
            }
        }
    }

    /// Fails the run with the error from the drain once no branch is left
    /// finishing; true when the run has ended.
    fn finish_if_branches_done(&mut self) -> bool {
        if self.outcome.is_some() {
            return true;
        }
        let Some(pending) = self.error_in_drain.as_ref() else {
            return false;
        };
        let waiting = self.sinks.still_finishing(&pending.failed);
        if !waiting.is_empty() {
            return false;
        }
        progress!("the branches the error did not reach have finished");
        if flow::step(&mut self.flow, Event::BranchesDone)
            == [Action::Finish(End::DrainError { timed_out: false })]
        {
            self.fail_with_drain_error(None);
        }
        true
    }

    fn fail_with_drain_error(&mut self, note: Option<&str>) {
        let Some(mut pending) = self.error_in_drain.take() else {
            return;
        };
        if let Some(poll) = pending.poll.take() {
            poll.remove();
        }
        if let Some(note) = note {
            pending.error.0 = format!("{}; {note}", pending.error.0);
        }
        self.finish(RunReason::Error, Some(pending.error));
    }

    fn on_eos(&mut self) {
        for action in flow::step(&mut self.flow, Event::Eos) {
            let Action::Finish(end) = action else {
                continue;
            };
            // The EOS came: the drain finished, unless an error decides the run.
            if !matches!(end, End::DrainError { .. })
                && let Some(drain) = self.drain.as_mut()
            {
                drain.completed = true;
            }
            match (end, self.drain.as_ref()) {
                (End::DrainError { .. }, _) => self.fail_with_drain_error(None),
                (End::Drained, Some(drain)) => {
                    let reason = RunReason::Drained(drain.reason.clone());
                    progress!(
                        "pipeline reached EOS: drain completed in {:.3} s",
                        drain.requested.seconds_until(&Stamp::now())
                    );
                    self.finish(reason, None);
                }
                (_, Some(_)) => {
                    progress!(
                        "pipeline reached EOS by itself (a stop request came during its end)"
                    );
                    self.finish(RunReason::Eos, None);
                }
                (_, None) => {
                    progress!("pipeline reached EOS by itself");
                    self.finish(RunReason::Eos, None);
                }
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        // Recorded first, so a report made while stopping already lists it.
        let index = self.signals.len();
        self.signals.push(SignalReport::now(signal, ""));
        self.observer.signal(signal.as_str());
        let action = if self.flow.phase == Phase::Ended {
            "none (the run had already ended)".to_owned()
        } else {
            match signal {
                Signal::SIGINT => self.interrupt(),
                Signal::SIGUSR1 => self.stop(signal, EndReason::CpuLimit),
                _ => self.stop(signal, EndReason::StopRequested),
            }
        };
        gst::info!(CAT, "cpuguard-run: {signal} received: {action}");
        if let Some(record) = self.signals.get_mut(index) {
            record.action = action;
        }
    }

    /// SIGINT: no drain, pipeline to NULL at once.
    fn interrupt(&mut self) -> String {
        // An EOS (or ERROR) already on the bus came first: report it as it happened.
        self.handle_pending();
        if flow::step(&mut self.flow, Event::Interrupt) != [Action::Finish(End::Interrupted)] {
            progress!("SIGINT: the run had already ended");
            return "none (the run had already ended)".to_owned();
        }
        let during = match &self.drain {
            Some(drain) => format!(" (interrupting the drain: {})", drain.reason),
            None => String::new(),
        };
        progress!("SIGINT: stopping at once, no drain{during}");
        if let Some(record) = self.signals.last_mut() {
            record.action = "stop".to_owned();
        }
        self.finish(RunReason::Interrupted, None);
        "stop".to_owned()
    }

    /// SIGTERM or SIGHUP: drain with reason stop-requested; SIGUSR1: cpu-limit.
    fn stop(&mut self, signal: Signal, reason: EndReason) -> String {
        self.handle_pending();
        for action in flow::step(&mut self.flow, Event::Stop) {
            match action {
                Action::Ignore(Ignored::AlreadyDraining) => {
                    let reason = self.drain.as_ref().map(|d| d.reason.to_string());
                    progress!(
                        "{signal}: a drain ({}) is already under way; still waiting for it \
                         (SIGINT stops at once)",
                        reason.unwrap_or_default()
                    );
                    return "none (already draining)".to_owned();
                }
                Action::Ignore(_) => {
                    progress!("{signal}: the run had already ended");
                    return "none (the run had already ended)".to_owned();
                }
                Action::StartDrain => {
                    progress!("{signal}: graceful stop, draining ({})", reason.as_str());
                    let drain = Drain::requested(&reason);
                    self.observer.drain_started(
                        drain.requested.mono,
                        &drain.reason,
                        format!("{signal}: drain ({})", drain.reason),
                    );
                    self.drain = Some(drain);
                }
                Action::Enter(Phase::Ending) => self.enter(State::Ending, ""),
                Action::StartTimer => self.start_timer(),
                Action::SendStop => self.send_stop(signal.as_str()),
                // An EOS sent while the sources are still starting is lost:
                // it goes once the pipeline plays (or the drain timeout ends it).
                Action::DeferStop => progress!(
                    "{signal}: the pipeline is not playing yet; draining as soon as it is"
                ),
                _ => {}
            }
        }
        "drain".to_owned()
    }

    /// Sends the stop request: cpuguard's `drain` action (reason
    /// stop-requested), or EOS to the pipeline when there is no cpuguard.
    fn send_stop(&mut self, why: &str) {
        let drainable: Vec<gst::Element> = self
            .guards
            .iter()
            .filter(|g| guard::can_drain(g))
            .cloned()
            .collect();
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        if gstcpuguard::pipeline_eos::natural_end_under_way(self.pipeline.upcast_ref()) {
            // The EOS is already on its way to the sinks: a drain now would
            // only cut off what is queued behind it, and the run is a natural
            // end (the drain timeout still bounds the wait).
            flow::step(&mut self.flow, Event::NaturalEnd);
            progress!(
                "{why}: the pipeline is already ending by itself (its sources sent EOS); \
                 waiting for its EOS"
            );
            return;
        }
        if drainable.is_empty() {
            // No cpuguard: EOS from every source, as gst-launch-1.0 -e does on
            // Ctrl-C, but the way cpuguard sends it (IDLE probes from a pool
            // thread): a pipeline-level send_event holds the pipeline's state
            // lock while a blocked sink keeps it waiting, and NULL would then
            // deadlock.
            drain.trigger = Some(DrainTrigger::Eos);
            progress!("{why}: no cpuguard: EOS sent to the pipeline's sources");
            let sources = gstcpuguard::pipeline_eos::push_eos_from_sources(
                self.pipeline.upcast_ref(),
                |pad| {
                    crate::progress::line(format_args!(
                        "warning: {} refused EOS; waiting for the pipeline to end anyway \
                         (SIGINT stops at once)",
                        pad.name()
                    ))
                },
            );
            if sources == 0 {
                progress!("warning: the pipeline has no source to send EOS from");
            }
            return;
        }
        // One accepted request is enough: cpuguard sends EOS to the whole pipeline.
        let accepted = drainable.iter().find(|g| {
            g.emit_by_name_with_values("drain", &[drain.reason.as_str().to_value()])
                .and_then(|v| v.get::<bool>().ok())
                .unwrap_or(false)
        });
        match accepted {
            Some(guard) => {
                drain.element = Some(guard.name().to_string());
                drain.answer = Answer::Awaiting;
                progress!("{why}: drain requested through {}", guard.name());
            }
            None => {
                // Every cpuguard has drained already: its message is on its way.
                drain.answer = Answer::JoinsOther;
                progress!("{why}: cpuguard is already draining; waiting for it");
            }
        }
    }

    fn start_timer(&mut self) {
        let Some(ms) = self.drain_timeout_ms else {
            return;
        };
        if self.timer.is_some() {
            return;
        }
        let me = self.me.clone();
        self.timer = Some(glib::timeout_add_local(
            Duration::from_millis(u64::from(ms)),
            move || {
                if let Some(supervisor) = me.upgrade() {
                    let mut s = supervisor.borrow_mut();
                    // This source ends now: never remove it again.
                    s.timer = None;
                    s.on_drain_timeout(ms);
                }
                glib::ControlFlow::Break
            },
        ));
    }

    fn on_drain_timeout(&mut self, ms: u32) {
        // An EOS already on the bus arrived in time.
        self.handle_pending();
        let Some(Action::Finish(end)) = flow::step(&mut self.flow, Event::DrainTimeout).pop()
        else {
            return;
        };
        let reason = self
            .drain
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |d| d.reason.to_string());
        let text = format!("Drain ({reason}) did not complete within the drain timeout ({ms} ms)");
        if end == (End::DrainError { timed_out: true }) {
            let waiting = self
                .error_in_drain
                .as_ref()
                .map(|p| self.sinks.still_finishing(&p.failed).join(", "))
                .unwrap_or_default();
            progress!("{text}: stopping the pipeline (still finishing: {waiting})");
            let note = format!("{waiting} did not finish within the drain timeout ({ms} ms)");
            self.fail_with_drain_error(Some(&note));
            return;
        }
        progress!("{text}: stopping the pipeline");
        self.finish(RunReason::DrainTimeout, Some((text, None, None)));
    }

    /// Ends the run once: cancels the drain timer, stops the pipeline, enters
    /// the final state and quits the main loop.
    fn finish(&mut self, reason: RunReason, error: Option<ErrorDetails>) {
        if self.outcome.is_some() {
            return;
        }
        if let Some(timer) = self.timer.take() {
            timer.remove();
        }
        if let Some(poll) = self.error_in_drain.as_mut().and_then(|p| p.poll.take()) {
            poll.remove();
        }
        let (status, exit_code) = (reason.status(), reason.exit_code());
        let (name, text) = (reason.as_str().to_owned(), reason.description());
        self.outcome = Some(Outcome {
            reason,
            error,
            at: Stamp::now(),
        });
        if let Some(drain) = self.drain.as_mut() {
            let ended = Stamp::now();
            drain.ended = Some(ended);
            self.observer
                .drain_ended(&drain.reason, drain.requested.seconds_until(&ended));
        }
        self.observer.result(status.as_str(), &name);

        self.stop_pipeline();
        if let Some(outcome) = self.outcome.as_mut() {
            outcome.at = Stamp::now();
        }
        let detail = format!(
            ": {text} ({name}) after {:.3} s; exit {exit_code}",
            self.started.seconds_until(&Stamp::now())
        );
        self.enter(status, &detail);
        self.main_loop.quit();
    }

    /// Pipeline to NULL. Setting NULL unblocks sinks waiting in render or
    /// preroll; if an element still hangs, a watchdog emits the result and
    /// exits after [`STOP_GRACE`] so the process never outlives its drain
    /// timeout by more than that.
    fn stop_pipeline(&mut self) {
        let mut report = self.report();
        let (done, waiting) = mpsc::channel::<()>();
        let output = self.output.clone();
        let watchdog = std::thread::Builder::new()
            .name("cpuguard-run-stop".to_owned())
            .spawn(move || {
                if waiting.recv_timeout(STOP_GRACE) == Err(mpsc::RecvTimeoutError::Timeout) {
                    let note = format!(
                        "the pipeline did not stop within {} s",
                        STOP_GRACE.as_secs()
                    );
                    crate::progress::line(format_args!("{note}: exiting anyway"));
                    report.error = Some(match report.error.take() {
                        Some(text) => format!("{text}; {note}"),
                        None => note,
                    });
                    // The outcome stands (a finished drain stays COMPLETE):
                    // only the teardown hung.
                    report.states.push(StateChange {
                        state: report.status,
                        at: Stamp::now().rfc3339(),
                    });
                    output.emit(&report);
                    std::process::exit(i32::from(report.exit_code));
                }
            });
        // Sinks first, each on its own. An EOS being sent to the pipeline (by
        // cpuguard's drain, or by us) holds the pipeline's state lock while the
        // sources wait for their streaming threads, and a blocked sink keeps
        // those threads: setting the pipeline itself to NULL would wait on that
        // lock forever. A sink leaving PLAYING unblocks its streaming thread.
        for sink in self.pipeline.iterate_sinks().into_iter().flatten() {
            let _ = sink.set_state(gst::State::Ready);
        }
        if self.pipeline.set_state(gst::State::Null).is_err() {
            progress!("warning: the pipeline did not stop cleanly");
        }
        let _ = done.send(());
        if let Ok(watchdog) = watchdog {
            let _ = watchdog.join();
        }
    }

    fn report(&self) -> Report {
        let ended = self.outcome.clone().unwrap_or_else(|| Outcome {
            // Only reachable if the main loop stopped without an outcome.
            reason: RunReason::Error,
            error: Some(("the run ended without an outcome".to_owned(), None, None)),
            at: Stamp::now(),
        });
        self.report_with(Some(ended))
    }

    /// The final report for `outcome`, or with `None` the state so far (its
    /// reason empty until the run ends).
    fn report_with(&self, outcome: Option<Outcome>) -> Report {
        let now = Stamp::now();
        let (status, reason, end_reason, exit_code) = match &outcome {
            Some(o) => (
                o.reason.status(),
                o.reason.as_str().to_owned(),
                o.reason.description(),
                o.reason.exit_code(),
            ),
            None => (
                self.states.last().map_or(State::Starting, |c| c.state),
                String::new(),
                String::new(),
                0,
            ),
        };
        let at = outcome.as_ref().map_or(now, |o| o.at);
        let (error, error_source, error_debug) = match outcome.and_then(|o| o.error) {
            Some((text, source, debug)) => (Some(text), source, debug),
            None => (None, None, None),
        };
        // FAILED: the pipeline went to NULL without the muxers finalizing
        // (or not all of them): say which files were kept, and up to when.
        let escalated = status == State::Failed;
        let crash_safe = self.protection.as_ref().map(|protection| {
            protection
                .decisions()
                .iter()
                .map(|d| {
                    let entry = CrashSafeReport::from_decision(d);
                    if escalated {
                        entry.escalated(d.kept_until_s())
                    } else {
                        entry
                    }
                })
                .collect()
        });
        let drain = self
            .drain
            .as_ref()
            .map(|d| d.record_at(&now, self.drain_timeout_ms));
        Report {
            status,
            reason,
            end_reason,
            started_at: self.started.rfc3339(),
            ended_at: at.rfc3339(),
            duration_s: round_ms(self.started.seconds_until(&at)),
            peak_load: self.peak_load.map(round_load),
            last_load: self.last_load.map(round_load),
            error,
            error_source,
            error_debug,
            exit_code,
            pipeline: self.description.clone(),
            cpuguard_elements: self.guards.iter().map(|g| g.name().to_string()).collect(),
            load_source: self.load_source,
            capacity: self.capacity.map(round_cpus),
            drain_requested_at: self.drain.as_ref().map(|d| d.requested.rfc3339()),
            drain,
            states: self.states.clone(),
            signals: self.signals.clone(),
            crash_safe,
            metrics_url: self.observer.metrics_url(),
            files: self.outputs.existing(),
            on_end: None,
            webhooks: None,
        }
    }
}

/// One line with a cpuguard element's effective settings.
fn describe_guard(guard: &gst::Element) -> String {
    let soft: f64 = guard.property("soft-threshold");
    let hard: f64 = guard.property("hard-threshold");
    let hold: u32 = guard.property("hold");
    let interval: u32 = guard.property("interval");
    let timeout: u32 = guard.property("drain-timeout");
    let dry_run: bool = guard.property("dry-run");
    let source = glib::EnumValue::from_value(&guard.property_value("load-source"))
        .map_or_else(|| "?".to_owned(), |(_, v)| v.nick().to_owned());
    format!(
        "cpuguard {}: soft-threshold {soft}, hard-threshold {hard}, hold {hold}, \
         interval {interval} ms, load-source {source}, drain-timeout {timeout} ms{}",
        guard.name(),
        if dry_run { ", dry-run" } else { "" }
    )
}
