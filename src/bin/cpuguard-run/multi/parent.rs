//! The parent loop, on the GLib main loop single mode runs on too: it reacts
//! to signals and to what workers say as it comes, times every drain (the
//! worker's own, announced by its ENDING event, or a stop the parent asked
//! for) and escalates an overdue one, and, with `--max-utilization` only,
//! samples the load to admit waiting jobs.
//! Which worker drains is not decided here: the workers' cpuguard elements
//! coordinate through the coordination directory. What each event does to a
//! worker is decided by `lifecycle.rs`; this loop carries it out and keeps
//! the record its result is made from.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use gstcpuguard::drain_record::DrainRecord;
use gstcpuguard::load::{LoadMeter, LoadSourceKind};
use gstcpuguard::messages::DrainTrigger;
use gstcpuguard::reason::EndReason;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Serialize;

use super::admission::Admission;
use super::inbox::{Event, Inbox, Outbox};
use super::lifecycle::{self, Ask, Do, Input, Life, Why};
use super::plan::{Job, Plan};
use super::timing::SampleTiming;
use super::worker;
use crate::channel::WorkerEvent;
use crate::exit;
use crate::log::CAT;
use crate::observe::Observer;
use crate::progress::progress;
use crate::report::{
    Report, ReportFile, RunReason, SignalReport, Stamp, State, StateChange, print_line, round_cpus,
    round_load, round_ms,
};
use crate::signals::Router;

/// After SIGINT, how long workers get to stop before their groups are killed:
/// a worker's own stop grace plus a margin.
const INTERRUPT_GRACE: Duration = Duration::from_secs(6);

/// A drain the parent times: one it asked for (a stop), or one the worker
/// announced (its cpuguard drained).
#[derive(Debug, Clone)]
struct ParentDrain {
    reason: EndReason,
    /// When the parent asked, or heard of it: the drain timeout counts from here.
    requested: Stamp,
    timeout_ms: Option<u32>,
    /// What the worker said about it, if it did.
    said: Option<DrainRecord>,
}

struct Worker {
    job: Job,
    pid: i32,
    started: Stamp,
    /// Where it is, and what each event does to it.
    life: Life,
    /// States as the worker announced them on stderr.
    states: Vec<StateChange>,
    sent: Vec<SignalReport>,
    drain: Option<ParentDrain>,
    status: Option<ExitStatus>,
    /// CPU seconds it used, from its rusage once reaped.
    cpu_s: Option<f64>,
    /// Its stdout once closed (empty if given up on).
    stdout: String,
}

impl Worker {
    fn send(&mut self, signal: Signal, action: &'static str) {
        self.sent.push(SignalReport::now(signal, action));
        let result = if signal == Signal::SIGKILL {
            killpg(Pid::from_raw(self.pid), signal)
        } else {
            kill(Pid::from_raw(self.pid), signal)
        };
        if let Err(err) = result {
            // Already gone: its exit is on its way to the loop.
            progress!("worker {}: cannot send {signal}: {err}", self.job.id);
        }
    }

    /// Why it was killed, as its result says.
    fn killed_text(&self, why: Why) -> String {
        match why {
            Why::DrainTimeout => {
                let (reason, ms) = self.drain.as_ref().map_or_else(
                    || (String::new(), 0),
                    |d| (d.reason.to_string(), d.timeout_ms.unwrap_or_default()),
                );
                format!(
                    "Drain ({reason}) did not complete within the drain timeout ({ms} ms): \
                     worker killed (SIGKILL to its process group)"
                )
            }
            Why::SigintBeforeStart => "SIGINT before it started".to_owned(),
            Why::StillRunningAfterSigint => "still running after SIGINT".to_owned(),
            Why::SigintAgain => "SIGINT again".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM/SIGHUP: every worker drains.
    Drain,
    /// SIGINT: every worker stops at once.
    Interrupt,
}

/// One worker's result line: the worker's own report with its id and pid.
#[derive(Debug, Serialize)]
struct WorkerResult {
    worker: u32,
    pid: Option<i32>,
    /// CPU seconds the worker used (its rusage when reaped: itself and the
    /// children it reaped).
    cpu_s: Option<f64>,
    #[serde(flatten)]
    report: Report,
}

#[derive(Debug, Serialize)]
struct Summary {
    summary: bool,
    workers: usize,
    complete: usize,
    failed: usize,
    by_reason: BTreeMap<String, usize>,
    status: State,
    exit_code: u8,
    started_at: String,
    ended_at: String,
    duration_s: f64,
    peak_load: Option<f64>,
    load_source: LoadSourceKind,
    /// CPUs the load is measured against, as of the last sample (the
    /// workers', else the parent's).
    capacity: f64,
    signals: Vec<SignalReport>,
    /// Time each admission sample took (none without `--max-utilization`).
    sampling: SampleTiming,
    /// Where `--metrics-addr` serves (see the single-run result).
    metrics_url: Option<String>,
}

#[derive(Serialize)]
struct ReportFileContents<'a> {
    workers: &'a [WorkerResult],
    summary: &'a Summary,
}

pub struct Parent {
    exe: PathBuf,
    worker_args: Vec<OsString>,
    /// Lives as long as the workers (a private directory goes with it).
    _coordination: super::coordination::Coordination,
    interval: Duration,
    meter: LoadMeter,
    admission: Admission,
    report_file: Option<ReportFile>,
    outbox: Outbox,
    inbox: Inbox,
    main_loop: glib::MainLoop,
    me: Weak<RefCell<Parent>>,
    /// The one timer: the next deadline or admission sample.
    timer: Option<glib::SourceId>,
    next_sample: Instant,
    waiting: VecDeque<Job>,
    workers: BTreeMap<u32, Worker>,
    results: Vec<WorkerResult>,
    stopping: Option<Stop>,
    interrupt_deadline: Option<Instant>,
    signals: Vec<SignalReport>,
    started: Stamp,
    /// Highest load sampled, by the parent or a worker.
    peak_load: Option<f64>,
    /// The last capacity a worker reported.
    capacity: Option<f64>,
    /// The last load warning, told once until it changes.
    load_warning: Option<String>,
    /// The last admission note, told once until it changes.
    note: Option<String>,
    observer: Observer,
    sampling: SampleTiming,
}

/// Runs every job to its end on the GLib main loop of this thread (the one
/// signals arrive on); returns the exit code.
pub fn run(plan: Plan, exe: PathBuf, router: &Router) -> Result<u8, String> {
    let context = glib::MainContext::default();
    // Sources are added from this thread only: own the context for the run.
    let _owner = context
        .acquire()
        .map_err(|err| format!("cannot own the main context: {err}"))?;
    let (outbox, inbox) =
        super::inbox::channel().map_err(|err| format!("cannot make the event channel: {err}"))?;
    let main_loop = glib::MainLoop::new(Some(&context), false);
    let fd = inbox.fd();
    let parent = Rc::new_cyclic(|me| {
        RefCell::new(Parent {
            exe,
            worker_args: plan.worker_args,
            _coordination: plan.coordination,
            interval: plan.interval,
            meter: plan.meter,
            admission: Admission::new(plan.max_utilization),
            report_file: plan.report,
            outbox,
            inbox,
            main_loop: main_loop.clone(),
            me: me.clone(),
            timer: None,
            next_sample: Instant::now() + plan.interval,
            waiting: plan.jobs.into(),
            workers: BTreeMap::new(),
            results: Vec::new(),
            stopping: None,
            interrupt_deadline: None,
            signals: Vec::new(),
            started: Stamp::now(),
            peak_load: None,
            capacity: None,
            load_warning: None,
            note: None,
            observer: plan.observer,
            sampling: SampleTiming::default(),
        })
    });
    parent.borrow_mut().begin();
    let weak = Rc::downgrade(&parent);
    let watch = glib_unix::unix_fd_add_local(fd, glib::IOCondition::IN, move |_, _| {
        if let Some(parent) = weak.upgrade() {
            parent.borrow_mut().wake(None);
        }
        glib::ControlFlow::Continue
    });
    let weak = Rc::downgrade(&parent);
    router.set_handler(move |signal| {
        if let Some(parent) = weak.upgrade() {
            parent.borrow_mut().wake(Some(signal));
        }
    });
    if !parent.borrow().done() {
        main_loop.run();
    }
    watch.remove();
    let parent = Rc::try_unwrap(parent)
        .map_err(|_| "the parent is still in use after its loop".to_owned())?
        .into_inner();
    Ok(parent.finish())
}

impl Parent {
    fn begin(&mut self) {
        if self.admission.max().is_none() {
            self.start_waiting(self.waiting.len());
        }
        self.refresh_report();
        self.rearm();
    }

    fn done(&self) -> bool {
        self.waiting.is_empty() && self.workers.is_empty()
    }

    /// A signal, events from the workers or the timer. Whatever already
    /// happened counts before a deadline acts on it: an exit on its way is
    /// never turned into an escalation.
    fn wake(&mut self, signal: Option<Signal>) {
        for event in self.inbox.take() {
            self.on_event(event);
        }
        if let Some(signal) = signal {
            self.on_signal(signal);
        }
        let now = Instant::now();
        self.tick(now);
        if now >= self.next_sample {
            if !self.waiting.is_empty() && self.stopping.is_none() {
                self.admit(now);
                self.sampling.record(now.elapsed());
            }
            self.next_sample = (self.next_sample + self.interval).max(now);
        }
        if self.done() {
            if let Some(timer) = self.timer.take() {
                timer.remove();
            }
            self.main_loop.quit();
        } else {
            self.rearm();
        }
    }

    /// Sets the one timer to the next deadline (or admission sample).
    fn rearm(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.remove();
        }
        let admitting = !self.waiting.is_empty() && self.stopping.is_none();
        let sample = admitting.then_some(self.next_sample);
        let Some(at) = self.next_deadline().into_iter().chain(sample).min() else {
            return;
        };
        let me = self.me.clone();
        let wait = at.saturating_duration_since(Instant::now());
        self.timer = Some(glib::timeout_add_local_once(wait, move || {
            if let Some(parent) = me.upgrade() {
                let mut parent = parent.borrow_mut();
                // This source ends now: never remove it again.
                parent.timer = None;
                parent.wake(None);
            }
        }));
    }

    /// The earliest escalation, interrupt or stdout deadline.
    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().filter_map(|w| w.life.next_deadline());
        self.interrupt_deadline.into_iter().chain(workers).min()
    }

    /// What `input` does to worker `id`, carried out.
    fn step(&mut self, id: u32, input: Input) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        for action in lifecycle::step(&mut w.life, input) {
            match action {
                Do::Send(Ask::Drain) => w.send(Signal::SIGTERM, "drain"),
                Do::Send(Ask::Stop) => w.send(Signal::SIGINT, "stop"),
                Do::Kill(why) => {
                    if why == Why::DrainTimeout {
                        let ms = w.drain.as_ref().and_then(|d| d.timeout_ms);
                        progress!("worker {id}: {}", w.killed_text(why));
                        gst::warning!(
                            CAT,
                            "cpuguard-run: escalation: worker {id} (pid {}) still draining \
                             after {} ms: SIGKILL to its process group",
                            w.pid,
                            ms.unwrap_or_default()
                        );
                        self.observer.escalated();
                    } else if why == Why::StillRunningAfterSigint {
                        progress!(
                            "worker {id}: still running {} s after SIGINT: killing it",
                            INTERRUPT_GRACE.as_secs()
                        );
                    }
                    w.send(Signal::SIGKILL, "kill");
                }
                Do::GiveUpStdout => progress!(
                    "worker {id}: exited but its stdout stays open; result made without it"
                ),
                Do::Finalize => {
                    self.finalize(id);
                    return;
                }
            }
        }
    }

    /// Every worker, `input`.
    fn step_all(&mut self, input: Input) {
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            self.step(id, input);
        }
    }

    fn start_waiting(&mut self, count: usize) {
        for _ in 0..count {
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            let id = job.id;
            let started = Stamp::now();
            match worker::spawn(
                &self.exe,
                id,
                &self.worker_args,
                &job.description,
                &self.outbox,
            ) {
                Ok(pid) => {
                    progress!("worker {id} started: pid {pid} ({})", job.origin);
                    self.workers.insert(
                        id,
                        Worker {
                            job,
                            pid,
                            started,
                            life: Life::default(),
                            states: Vec::new(),
                            sent: Vec::new(),
                            drain: None,
                            status: None,
                            cpu_s: None,
                            stdout: String::new(),
                        },
                    );
                }
                Err(err) => {
                    let text = format!("cannot start worker {id}: {err}");
                    gst::error!(CAT, "cpuguard-run: {text}");
                    progress!("{text}");
                    let report = unstarted_report(&job, RunReason::Error, text);
                    self.emit(job.id, None, None, report);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        self.observer.running(self.workers.len());
        match event {
            Event::Stderr(id, line) => {
                progress!("worker {id}: {}", worker::strip_prefix(&line));
            }
            Event::Said(id, event) => {
                // Its first event comes once its signal handlers are up.
                self.step(id, Input::Spoke);
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                match event {
                    WorkerEvent::State { state, at, drain } => {
                        w.states.push(StateChange { state, at });
                        if matches!(state, State::Complete | State::Failed) {
                            self.step(id, Input::PipelineEnded);
                        }
                        if state == State::Ending {
                            self.on_worker_drain(id, drain);
                        }
                    }
                    WorkerEvent::Load {
                        load,
                        capacity,
                        source,
                        process_cpu,
                    } => {
                        let now = Instant::now();
                        gst::debug!(
                            CAT,
                            "cpuguard-run: worker {id} (pid {}) CPU {}: load {load:.3} \
                             ({source}), capacity {capacity:.2} CPUs",
                            w.pid,
                            process_cpu.map_or_else(|| "unknown".to_owned(), |c| format!("{c:.3}"))
                        );
                        self.peak_load = Some(self.peak_load.map_or(load, |p| p.max(load)));
                        self.capacity = Some(capacity);
                        self.observer.sample(now, load, capacity, source);
                        if let Some(cpu) = process_cpu {
                            self.observer.worker_cpu(now, id, cpu);
                        }
                    }
                }
            }
            Event::Stdout(id, text) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.stdout = text;
                    self.step(id, Input::StdoutClosed);
                }
            }
            Event::Exited(id, status, cpu_s) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.status = Some(status);
                    w.cpu_s = cpu_s;
                    self.step(id, Input::Exited { at: Instant::now() });
                }
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        self.observer.signal(signal.as_str());
        let action = match (signal, self.stopping) {
            (Signal::SIGINT, Some(Stop::Interrupt)) => {
                progress!("SIGINT again: killing every worker now");
                self.step_all(Input::Kill(Why::SigintAgain));
                "kill"
            }
            (Signal::SIGINT, _) => {
                progress!("SIGINT: stopping every worker at once, no drain");
                self.stopping = Some(Stop::Interrupt);
                self.interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
                self.abandon_waiting();
                self.step_all(Input::Interrupt);
                "stop"
            }
            (Signal::SIGTERM | Signal::SIGHUP, None) => {
                progress!("{signal}: graceful stop, draining every worker (stop-requested)");
                self.stopping = Some(Stop::Drain);
                self.abandon_waiting();
                let ids: Vec<u32> = self.workers.keys().copied().collect();
                for id in ids {
                    let Some(w) = self.workers.get(&id) else {
                        continue;
                    };
                    if w.life.gone() {
                        continue;
                    }
                    if let Some(drain) = &w.drain {
                        progress!(
                            "worker {id} is already draining ({}); still waiting for it",
                            drain.reason
                        );
                        continue;
                    }
                    self.request_drain(id);
                }
                "drain"
            }
            (Signal::SIGTERM | Signal::SIGHUP, Some(_)) => {
                progress!("{signal}: already stopping; still waiting (SIGINT stops at once)");
                "none (already stopping)"
            }
            _ => {
                progress!(
                    "{signal}: ignored; in multi-pipeline mode the workers' cpuguard elements \
                     choose which worker drains"
                );
                "none"
            }
        };
        gst::info!(CAT, "cpuguard-run: {signal} received: {action}");
        self.signals.push(SignalReport::now(signal, action));
    }

    /// Jobs still waiting for admission will not run: each gets its result.
    fn abandon_waiting(&mut self) {
        for job in std::mem::take(&mut self.waiting) {
            progress!("job {} ({}) not started", job.id, job.origin);
            let report = unstarted_report(&job, RunReason::NotStarted, String::new());
            self.emit(job.id, None, None, report);
        }
    }

    /// Worker `id` said ENDING. A drain the parent did not ask for is the
    /// worker's own (its cpuguard won the coordination, or someone signalled
    /// the worker directly): the parent times it from now.
    fn on_worker_drain(&mut self, id: u32, said: Option<DrainRecord>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if let Some(drain) = w.drain.as_mut() {
            // The parent's stop crossed the worker's own drain: the worker's
            // is the one its result will name.
            if drain.said.is_none()
                && let Some(said) = said
            {
                drain.reason = said.reason.clone();
                drain.said = Some(said);
            }
            return;
        }
        let reason = said
            .as_ref()
            .map_or(EndReason::CpuLimit, |d| d.reason.clone());
        let cause = said.as_ref().and_then(DrainRecord::cause);
        match &cause {
            Some(cause) => progress!(
                "{cause}: draining worker {id} (pid {}), reason {reason}, as its cpuguard decided",
                w.pid
            ),
            None => progress!("draining worker {id} (pid {}), reason {reason}", w.pid),
        }
        gst::info!(
            CAT,
            "cpuguard-run: victim: worker {id} (pid {}), chosen by the workers' cpuguard \
             elements: reason {reason}{}",
            w.pid,
            cause.map_or_else(String::new, |c| format!(", {c}"))
        );
        self.start_drain(id, reason, said, false);
    }

    /// Asks worker `id` to drain with reason stop-requested (SIGTERM).
    fn request_drain(&mut self, id: u32) {
        self.start_drain(id, EndReason::StopRequested, None, true);
    }

    /// Starts timing a drain of worker `id`, and asks for it when the parent
    /// is the one asking.
    fn start_drain(&mut self, id: u32, reason: EndReason, said: Option<DrainRecord>, ask: bool) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let now = Stamp::now();
        let timeout_ms = w.job.drain_timeout_ms;
        gst::info!(
            CAT,
            "cpuguard-run: drain start: worker {id} (pid {}), reason {reason}, {}, timeout {}",
            w.pid,
            if ask {
                "SIGTERM"
            } else {
                "announced by the worker"
            },
            timeout_ms.map_or_else(|| "none".to_owned(), |ms| format!("{ms} ms"))
        );
        self.observer
            .drain_started(now.mono, &reason, format!("worker {id}: {reason}"));
        w.drain = Some(ParentDrain {
            reason,
            requested: now,
            timeout_ms,
            said,
        });
        let deadline = timeout_ms.map(|ms| now.mono + Duration::from_millis(u64::from(ms)));
        self.step(id, Input::Drains { deadline });
        if ask {
            self.step(id, Input::Ask(Ask::Drain));
        }
    }

    /// Deadlines due at `now`: the grace after SIGINT, and each worker's.
    fn tick(&mut self, now: Instant) {
        if self.interrupt_deadline.is_some_and(|d| now >= d) {
            self.interrupt_deadline = None;
            self.step_all(Input::Kill(Why::StillRunningAfterSigint));
        }
        self.step_all(Input::Tick { now });
    }

    /// One admission sample: waiting jobs start while the load is below
    /// `--max-utilization`.
    fn admit(&mut self, now: Instant) {
        let load = match self.meter.sample(now) {
            Ok(sample) => {
                gst::debug!(
                    CAT,
                    "cpuguard-run: sample: load {:.3} ({}), capacity {:.2} CPUs",
                    sample.load,
                    sample.source,
                    sample.capacity
                );
                self.observer
                    .sample(now, sample.load, sample.capacity, sample.source);
                self.load_warning = None;
                self.peak_load = Some(self.peak_load.map_or(sample.load, |p| p.max(sample.load)));
                Some(sample.load)
            }
            Err(err) => {
                // Never a load: nothing is admitted on a window nobody measured.
                let text = err.to_string();
                gst::warning!(CAT, "cpuguard-run: no load sample: {text}");
                self.observer.sample_error();
                if self.load_warning.as_deref() != Some(&text) {
                    progress!("warning: no load sample: {text}");
                    self.load_warning = Some(text);
                }
                None
            }
        };
        let admit = self.admission.admit(load, self.waiting.len());
        if admit > 0 {
            self.note = None;
            self.start_waiting(admit);
        } else if let Some(max) = self.admission.max() {
            let load = load.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.3}"));
            self.tell_once(format!(
                "admission: load {load} is not below max-utilization {max}: {} job(s) waiting",
                self.waiting.len()
            ));
        }
    }

    fn tell_once(&mut self, text: String) {
        if self.note.as_deref() != Some(&text) {
            progress!("{text}");
            self.note = Some(text);
        }
    }

    /// A worker is done (it exited and its stdout is read): its result.
    fn finalize(&mut self, id: u32) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        let report = result_of(&w);
        progress!(
            "worker {id} (pid {}) ended: {} ({})",
            w.pid,
            report.status.as_str(),
            report.reason
        );
        self.emit(id, Some(w.pid), w.cpu_s, report);
    }

    fn emit(&mut self, id: u32, pid: Option<i32>, cpu_s: Option<f64>, report: Report) {
        self.observer.worker_gone(id);
        self.observer.result(report.status.as_str(), &report.reason);
        if let Some(drain) = &report.drain {
            self.observer.drain_ended(&drain.reason, drain.duration_s);
        }
        self.observer.running(self.workers.len());
        let result = WorkerResult {
            worker: id,
            pid,
            cpu_s: cpu_s.map(round_ms),
            report,
        };
        let line = serde_json::to_string(&result);
        self.results.push(result);
        // The report file first: once the line is out, the file has it too.
        self.refresh_report();
        match line {
            Ok(line) => {
                if !print_line(&line) {
                    crate::progress::fatal_line(format_args!("cannot print a result on stdout"));
                }
            }
            Err(err) => progress!("worker {id}: cannot serialize its result: {err}"),
        }
    }

    /// The summary of the results so far.
    fn summary(&self, ended: Stamp) -> Summary {
        let complete = self
            .results
            .iter()
            .filter(|r| r.report.status == State::Complete)
            .count();
        let mut by_reason = BTreeMap::new();
        for r in &self.results {
            *by_reason.entry(r.report.reason.clone()).or_insert(0) += 1;
        }
        let all_complete = complete == self.results.len();
        let exit_code = match self.stopping {
            Some(Stop::Interrupt) => exit::INTERRUPTED,
            _ if all_complete => exit::COMPLETE,
            _ => exit::FAILED,
        };
        Summary {
            summary: true,
            workers: self.results.len(),
            complete,
            failed: self.results.len() - complete,
            by_reason,
            status: if all_complete {
                State::Complete
            } else {
                State::Failed
            },
            exit_code,
            started_at: self.started.rfc3339(),
            ended_at: ended.rfc3339(),
            duration_s: self.started.seconds_until(&ended),
            peak_load: self.peak_load.map(round_load),
            load_source: self.meter.source(),
            capacity: round_cpus(self.capacity.unwrap_or_else(|| self.meter.capacity())),
            signals: self.signals.clone(),
            sampling: self.sampling.clone(),
            metrics_url: self.observer.metrics_url(),
        }
    }

    /// Writes the results so far to the report file, with the summary's
    /// status `ACTIVE` (`ENDING` once stopping) and a null exit code, so that
    /// a parent killed before its end leaves what it knew. The final
    /// contents replace it.
    fn refresh_report(&self) {
        let Some(file) = &self.report_file else {
            return;
        };
        let mut summary = self.summary(Stamp::now());
        summary.status = if self.stopping.is_some() {
            State::Ending
        } else {
            State::Active
        };
        let Ok(mut summary) = serde_json::to_value(&summary) else {
            return;
        };
        summary["exit_code"] = serde_json::Value::Null;
        let contents = serde_json::json!({"workers": &self.results, "summary": summary});
        if let Err(err) = file.write_value(&contents) {
            progress!("warning: {err}");
        }
    }

    fn finish(self) -> u8 {
        let ended = Stamp::now();
        let summary = self.summary(ended);
        let (complete, exit_code) = (summary.complete, summary.exit_code);
        if let Ok(line) = serde_json::to_string(&summary) {
            print_line(&line);
        }
        progress!(
            "all workers ended: {complete} of {} COMPLETE; exit {exit_code}",
            self.results.len()
        );
        let reasons: Vec<String> = summary
            .by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        self.observer.finish(&format!(
            "{complete} of {} workers COMPLETE ({})",
            self.results.len(),
            reasons.join(", ")
        ));
        if let Some(file) = self.report_file {
            let path = file.path().to_owned();
            let contents = ReportFileContents {
                workers: &self.results,
                summary: &summary,
            };
            match file.write_value(&contents) {
                Ok(()) => progress!("report written to {}", path.display()),
                Err(err) => crate::progress::fatal_line(format_args!("{err}")),
            }
        }
        exit_code
    }
}

/// The worker's own report when it has one and nothing overrides it, else
/// one made from what the parent saw.
fn result_of(w: &Worker) -> Report {
    let parsed = worker::parse_report(&w.stdout);
    let status = w.status;
    if let Some(why) = w.life.killed() {
        // A result printed before the kill came in time (the LiveKit Egress
        // bug: a late timer marking a finished recording FAILED).
        if let Some(report) = parsed.filter(|r| r.status == State::Complete) {
            return with_parent_drain(report, w);
        }
        let reason = if w.life.interrupted() {
            RunReason::Interrupted
        } else {
            RunReason::DrainTimeout
        };
        return made_report(w, &reason, w.killed_text(why), status);
    }
    match parsed {
        Some(report) => with_parent_drain(report, w),
        None => {
            let text = status.map_or_else(
                || "worker ended without a result".to_owned(),
                |s| worker::describe_exit(&s),
            );
            progress!("worker {}: {text}", w.job.id);
            made_report(w, &RunReason::Error, text, status)
        }
    }
}

/// The worker runs with no drain timeout of its own: the parent's deadline
/// is what its drain should say.
fn with_parent_drain(mut report: Report, w: &Worker) -> Report {
    if let (Some(drain), Some(parent)) = (report.drain.as_mut(), w.drain.as_ref())
        && drain.reason == parent.reason
    {
        drain.timeout_ms = parent.timeout_ms;
    }
    report
}

fn made_report(
    w: &Worker,
    reason: &RunReason,
    error: String,
    status: Option<ExitStatus>,
) -> Report {
    let ended = w.life.exited().map_or_else(Stamp::now, |at| Stamp {
        wall: std::time::SystemTime::now() - at.elapsed(),
        mono: at,
    });
    let mut states = w.states.clone();
    states.push(StateChange {
        state: State::Failed,
        at: ended.rfc3339(),
    });
    let drain = w.drain.as_ref().map(|d| {
        let reason = d.reason.clone();
        // What the worker said of it, else a drain the parent asked for.
        let said = d
            .said
            .clone()
            .unwrap_or_else(|| DrainRecord::requested(reason.clone(), String::new()));
        DrainRecord {
            description: reason.description(),
            reason,
            trigger: Some(said.trigger.unwrap_or(DrainTrigger::Request)),
            requested_at: d.requested.rfc3339(),
            completed: false,
            duration_s: d.requested.seconds_until(&ended),
            timeout_ms: d.timeout_ms,
            ..said
        }
    });
    Report {
        error: Some(error),
        exit_code: status.map_or(exit::FAILED, |s| worker::shell_code(&s)),
        drain_requested_at: w.drain.as_ref().map(|d| d.requested.rfc3339()),
        drain,
        states,
        signals: w.sent.clone(),
        // Killed or crashed: the worker could not say; what the same rules
        // decided for its pipeline tells whether its files were kept.
        crash_safe: w
            .job
            .crash_safe
            .as_ref()
            .map(|muxers| muxers.iter().map(|m| m.clone().escalated(None)).collect()),
        // A worker serves no metrics: the parent's summary says where it does.
        ..Report::unsaid(
            &w.job.description,
            &w.job.cpuguard_elements,
            reason,
            &w.started,
            &ended,
        )
    }
}

/// The result of a job that never ran (not admitted before a stop, or its
/// process could not be started).
fn unstarted_report(job: &Job, reason: RunReason, error: String) -> Report {
    let now = Stamp::now();
    Report {
        error: (!error.is_empty()).then_some(error),
        crash_safe: job.crash_safe.clone(),
        ..Report::unsaid(
            &job.description,
            &job.cpuguard_elements,
            &reason,
            &now,
            &now,
        )
    }
}
