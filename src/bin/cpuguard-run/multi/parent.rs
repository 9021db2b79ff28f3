//! The parent loop: one thread that reacts to signals and worker output as
//! they come, and at every interval samples the shared load and each
//! worker's CPU, lets the [`Coordinator`] choose, admits waiting jobs and
//! escalates overdue drains.
//!
//! Escalation is checked on every pass of the loop, not only on samples that
//! read high: LiveKit Egress escalates only on high ticks, so a drain stuck
//! after the load came down was never killed.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use gstcpuguard::coordinator::{Candidate, Coordinator, Decision, Victim};
use gstcpuguard::load::{HostPaths, LoadMeter};
use gstcpuguard::policy::{START_UP_SAMPLES, Verdict};
use gstcpuguard::reason::EndReason;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Serialize;

use super::admission::Admission;
use super::timing::SampleTiming;
use super::tree::{CpuUse, ProcessTable};
use super::worker::{self, Event};
use super::{Job, Plan};
use crate::exit;
use crate::log::CAT;
use crate::observe::Observer;
use crate::progress::progress;
use crate::report::{
    DrainReport, Report, ReportFile, SignalReport, Stamp, State, StateChange, print_line, reasons,
    round_ms,
};

/// After SIGINT, how long workers get to stop before their groups are killed:
/// a worker's own stop grace plus a margin.
const INTERRUPT_GRACE: Duration = Duration::from_secs(6);
/// How long a worker's stdout may stay open after it exited (a helper process
/// that inherited it) before its result is made without it.
const STDOUT_GRACE: Duration = Duration::from_secs(2);

/// Reason for a job that never started because the run was stopped first.
const NOT_STARTED: &str = "not-started";
const NOT_STARTED_TEXT: &str = "Not started: the run was stopped first";

/// A drain the parent asked a worker for.
#[derive(Debug, Clone)]
struct ParentDrain {
    reason: EndReason,
    requested: Stamp,
    deadline: Option<Instant>,
    timeout_ms: Option<u32>,
    /// The coordinator's decision, for a cpu-limit drain.
    victim: Option<Victim<u32>>,
    source: String,
}

struct Worker {
    job: Job,
    pid: i32,
    started: Stamp,
    /// States as the worker announced them on stderr.
    states: Vec<StateChange>,
    /// The worker printed something, so its signal handlers are installed:
    /// before that a SIGTERM or SIGUSR1 would kill it.
    ready: bool,
    deferred: Option<(Signal, &'static str)>,
    sent: Vec<SignalReport>,
    cpu: CpuUse,
    /// The worker said ENDING by itself (a signal sent to it directly).
    ending: bool,
    drain: Option<ParentDrain>,
    /// When the parent killed the worker's group, and why.
    killed: Option<(Stamp, String)>,
    interrupted: bool,
    exit: Option<(ExitStatus, Instant)>,
    stdout: Option<String>,
}

impl Worker {
    fn is_ending(&self) -> bool {
        self.ending || self.drain.is_some() || self.killed.is_some() || self.exit.is_some()
    }

    fn send(&mut self, signal: Signal, action: &'static str) {
        if !self.ready && signal != Signal::SIGKILL {
            self.deferred = Some((signal, action));
            return;
        }
        self.sent.push(SignalReport {
            signal: signal.as_str().to_owned(),
            at: Stamp::now().rfc3339(),
            action: action.to_owned(),
        });
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

    fn kill_group(&mut self, why: String) {
        if self.killed.is_none() && self.exit.is_none() {
            self.send(Signal::SIGKILL, "kill");
            self.killed = Some((Stamp::now(), why));
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
    /// CPU seconds of the worker's process tree, as last measured.
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
    load_source: String,
    /// CPUs the parent's load is measured against, as of its last sample.
    capacity: f64,
    signals: Vec<SignalReport>,
    /// Time each interval's work took (load, worker CPU, decision).
    sampling: SampleTiming,
}

#[derive(Serialize)]
struct ReportFileContents<'a> {
    workers: &'a [WorkerResult],
    summary: &'a Summary,
}

pub struct Parent {
    exe: PathBuf,
    worker_args: Vec<OsString>,
    interval: Duration,
    meter: LoadMeter,
    coordinator: Coordinator<u32>,
    admission: Admission,
    report_file: Option<ReportFile>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    waiting: VecDeque<Job>,
    workers: BTreeMap<u32, Worker>,
    results: Vec<WorkerResult>,
    stopping: Option<Stop>,
    interrupt_deadline: Option<Instant>,
    signals: Vec<SignalReport>,
    started: Stamp,
    peak_load: Option<f64>,
    /// The last load warning, told once until it changes.
    load_warning: Option<String>,
    /// The last admission or policy note, told once until it changes.
    note: Option<String>,
    proc: HostPaths,
    observer: Observer,
    sampling: SampleTiming,
}

impl Parent {
    pub fn new(plan: Plan, exe: PathBuf, events: Sender<Event>, inbox: Receiver<Event>) -> Self {
        let coordinator = Coordinator::new(plan.policy)
            .expect("policy validated by plan()")
            .with_warm_up(START_UP_SAMPLES);
        Parent {
            exe,
            worker_args: plan.worker_args,
            interval: plan.interval,
            meter: plan.meter,
            coordinator,
            admission: Admission::new(plan.max_utilization),
            report_file: plan.report,
            events,
            inbox,
            waiting: plan.jobs.into(),
            workers: BTreeMap::new(),
            results: Vec::new(),
            stopping: None,
            interrupt_deadline: None,
            signals: Vec::new(),
            started: Stamp::now(),
            peak_load: None,
            load_warning: None,
            note: None,
            proc: HostPaths::system(),
            observer: plan.observer,
            sampling: SampleTiming::default(),
        }
    }

    pub fn run(mut self) -> u8 {
        if self.admission.max().is_none() {
            self.start_waiting(self.waiting.len());
        }
        self.refresh_report();
        let mut next_sample = Instant::now() + self.interval;
        while !(self.waiting.is_empty() && self.workers.is_empty()) {
            let wake = self
                .next_deadline()
                .map_or(next_sample, |d| d.min(next_sample));
            match self
                .inbox
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                // Cannot happen while `self.events` lives; stay total anyway.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Whatever already happened counts before a timer acts on it: an
            // exit on its way is never turned into an escalation.
            while let Ok(event) = self.inbox.try_recv() {
                self.on_event(event);
            }
            let now = Instant::now();
            self.check_deadlines(now);
            if now >= next_sample {
                self.sample(now);
                self.sampling.record(now.elapsed());
                next_sample = (next_sample + self.interval).max(now);
            }
        }
        self.finish()
    }

    /// The earliest escalation, interrupt or stdout deadline.
    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = self.interrupt_deadline.into_iter().collect();
        for w in self.workers.values() {
            match (&w.exit, &w.drain, &w.killed) {
                (Some((_, at)), _, _) => deadlines.push(*at + STDOUT_GRACE),
                (None, Some(drain), None) => deadlines.extend(drain.deadline),
                _ => {}
            }
        }
        deadlines.into_iter().min()
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
                &self.events,
            ) {
                Ok(pid) => {
                    progress!("worker {id} started: pid {pid} ({})", job.origin);
                    self.workers.insert(
                        id,
                        Worker {
                            job,
                            pid,
                            started,
                            states: Vec::new(),
                            ready: false,
                            deferred: None,
                            sent: Vec::new(),
                            cpu: CpuUse::new(started.mono),
                            ending: false,
                            drain: None,
                            killed: None,
                            interrupted: false,
                            exit: None,
                            stdout: None,
                        },
                    );
                }
                Err(err) => {
                    let text = format!("cannot start worker {id}: {err}");
                    gst::error!(CAT, "cpuguard-run: {text}");
                    progress!("{text}");
                    let report = unstarted_report(&job, reasons::ERROR, reasons::ERROR_TEXT, text);
                    self.emit(job.id, None, None, report);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        self.observer.running(self.workers.len());
        match event {
            Event::Signal(signal) => self.on_signal(signal),
            Event::Stderr(id, line) => {
                progress!("worker {id}: {}", worker::strip_prefix(&line));
            }
            Event::Said(id, event) => {
                let Some(w) = self.workers.get_mut(&id) else {
                    return;
                };
                // Its first event comes once its signal handlers are up.
                w.ready = true;
                if let Some((signal, action)) = w.deferred.take() {
                    w.send(signal, action);
                }
                if event.state == State::Ending {
                    w.ending = true;
                    if w.drain.is_none()
                        && let Some(drain) = &event.drain
                    {
                        progress!("draining worker {id} (pid {}): {}", w.pid, drain.describe());
                    }
                }
                w.states.push(StateChange {
                    state: event.state,
                    at: event.at,
                });
            }
            Event::Stdout(id, text) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.stdout = Some(text);
                    self.maybe_finalize(id);
                }
            }
            Event::Exited(id, status) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.exit = Some((status, Instant::now()));
                    self.maybe_finalize(id);
                }
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        self.observer.signal(signal.as_str());
        let action = match (signal, self.stopping) {
            (Signal::SIGINT, Some(Stop::Interrupt)) => {
                progress!("SIGINT again: killing every worker now");
                for w in self.workers.values_mut() {
                    w.kill_group("SIGINT again".to_owned());
                }
                "kill"
            }
            (Signal::SIGINT, _) => {
                progress!("SIGINT: stopping every worker at once, no drain");
                self.stopping = Some(Stop::Interrupt);
                self.interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
                self.abandon_waiting();
                for w in self.workers.values_mut() {
                    if w.exit.is_some() || w.killed.is_some() {
                        continue;
                    }
                    w.interrupted = true;
                    if w.ready {
                        w.send(Signal::SIGINT, "stop");
                    } else {
                        // Not even its signal handlers are up: nothing to save.
                        w.kill_group("SIGINT before it started".to_owned());
                    }
                }
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
                    if w.exit.is_some() || w.killed.is_some() {
                        continue;
                    }
                    if let Some(drain) = &w.drain {
                        progress!(
                            "worker {id} is already draining ({}); still waiting for it",
                            drain.reason
                        );
                        continue;
                    }
                    self.request_drain(id, EndReason::StopRequested, None);
                }
                "drain"
            }
            (Signal::SIGTERM | Signal::SIGHUP, Some(_)) => {
                progress!("{signal}: already stopping; still waiting (SIGINT stops at once)");
                "none (already stopping)"
            }
            _ => {
                progress!(
                    "{signal}: ignored; in multi-pipeline mode the parent chooses which worker \
                     drains"
                );
                "none"
            }
        };
        gst::info!(CAT, "cpuguard-run: {signal} received: {action}");
        self.signals.push(SignalReport {
            signal: signal.as_str().to_owned(),
            at: Stamp::now().rfc3339(),
            action: action.to_owned(),
        });
    }

    /// Jobs still waiting for admission will not run: each gets its result.
    fn abandon_waiting(&mut self) {
        for job in std::mem::take(&mut self.waiting) {
            progress!("job {} ({}) not started", job.id, job.origin);
            let report = unstarted_report(&job, NOT_STARTED, NOT_STARTED_TEXT, String::new());
            self.emit(job.id, None, None, report);
        }
    }

    /// Asks worker `id` to drain: SIGUSR1 for cpu-limit, SIGTERM for a stop.
    fn request_drain(&mut self, id: u32, reason: EndReason, victim: Option<Victim<u32>>) {
        let source = self.meter.source().to_string();
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let now = Stamp::now();
        let timeout_ms = w.job.drain_timeout_ms;
        let signal = match reason {
            EndReason::CpuLimit => Signal::SIGUSR1,
            _ => Signal::SIGTERM,
        };
        gst::info!(
            CAT,
            "cpuguard-run: drain start: worker {id} (pid {}), reason {reason}, {signal}, \
             timeout {}",
            w.pid,
            timeout_ms.map_or_else(|| "none".to_owned(), |ms| format!("{ms} ms"))
        );
        self.observer
            .drain_started(now.mono, reason.as_str(), format!("worker {id}: {reason}"));
        w.drain = Some(ParentDrain {
            reason,
            requested: now,
            deadline: timeout_ms.map(|ms| now.mono + Duration::from_millis(u64::from(ms))),
            timeout_ms,
            victim,
            source,
        });
        w.send(signal, "drain");
    }

    fn check_deadlines(&mut self, now: Instant) {
        if self.interrupt_deadline.is_some_and(|d| now >= d) {
            self.interrupt_deadline = None;
            for w in self.workers.values_mut() {
                if w.exit.is_none() {
                    progress!(
                        "worker {}: still running {} s after SIGINT: killing it",
                        w.job.id,
                        INTERRUPT_GRACE.as_secs()
                    );
                    w.kill_group("still running after SIGINT".to_owned());
                }
            }
        }
        let mut overdue = Vec::new();
        for (id, w) in &mut self.workers {
            if let Some((_, exited)) = w.exit {
                if w.stdout.is_none() && now >= exited + STDOUT_GRACE {
                    progress!(
                        "worker {id}: exited but its stdout stays open; result made without it"
                    );
                    w.stdout = Some(String::new());
                    overdue.push(*id);
                }
                continue;
            }
            if w.killed.is_some() {
                continue;
            }
            let Some(drain) = &w.drain else { continue };
            if drain.deadline.is_some_and(|d| now >= d) {
                let ms = drain.timeout_ms.unwrap_or_default();
                let why = format!(
                    "Drain ({}) did not complete within the drain timeout ({ms} ms): \
                     worker killed (SIGKILL to its process group)",
                    drain.reason
                );
                progress!("worker {id}: {why}");
                gst::warning!(
                    CAT,
                    "cpuguard-run: escalation: worker {id} (pid {}) still draining after \
                     {ms} ms: SIGKILL to its process group",
                    w.pid
                );
                self.observer.escalated();
                w.kill_group(why);
            }
        }
        for id in overdue {
            self.maybe_finalize(id);
        }
    }

    /// One interval: shared load, each worker's CPU, then the coordinator's
    /// choice and admission.
    fn sample(&mut self, now: Instant) {
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
                    .sample(now, sample.load, sample.capacity, sample.source.as_str());
                self.load_warning = None;
                self.peak_load = Some(self.peak_load.map_or(sample.load, |p| p.max(sample.load)));
                Some(sample.load)
            }
            Err(err) => {
                // Never a load: a window nobody measured must not drain.
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
        let table = ProcessTable::scan(&self.proc);
        for w in self.workers.values_mut() {
            if w.exit.is_none()
                && let Some(seconds) = table.cpu_seconds(&self.proc, w.pid)
            {
                w.cpu.update(seconds, now);
                gst::debug!(
                    CAT,
                    "cpuguard-run: worker {} (pid {}) CPU {:.3} CPUs ({:.2} s in all)",
                    w.job.id,
                    w.pid,
                    w.cpu.rate,
                    w.cpu.total
                );
                self.observer.worker_cpu(now, w.job.id, w.cpu.rate);
            }
        }
        if self.stopping.is_some() {
            return;
        }
        if let Some(load) = load {
            self.decide(load);
        }
        let admit = self.admission.admit(load, self.waiting.len());
        if admit > 0 {
            self.note = None;
            self.start_waiting(admit);
        } else if let (Some(max), false) = (self.admission.max(), self.waiting.is_empty()) {
            let load = load.map_or_else(|| "unknown".to_owned(), |l| format!("{l:.3}"));
            self.tell_once(format!(
                "admission: load {load} is not below max-utilization {max}: {} job(s) waiting",
                self.waiting.len()
            ));
        }
    }

    fn decide(&mut self, load: f64) {
        let candidates: Vec<Candidate<u32>> = self
            .workers
            .values()
            .map(|w| Candidate {
                id: w.job.id,
                cpu: w.cpu.rate,
                ending: w.is_ending(),
            })
            .collect();
        if candidates.is_empty() {
            // Counting high samples with nobody to drain would drain the
            // first job admitted at once.
            return;
        }
        match self.coordinator.observe(load, &candidates) {
            Decision::Drain(victim) => {
                let cpus: Vec<String> = candidates
                    .iter()
                    .filter(|c| !c.ending)
                    .map(|c| format!("worker {} {:.2}", c.id, c.cpu))
                    .collect();
                let pid = self.workers.get(&victim.id).map_or(0, |w| w.pid);
                gst::info!(
                    CAT,
                    "cpuguard-run: victim: worker {} (pid {pid}), the heaviest of {} \
                     (CPUs: {}); load {:.3} reached the {} threshold {}",
                    victim.id,
                    cpus.len(),
                    cpus.join(", "),
                    victim.load,
                    victim.trigger,
                    victim.threshold
                );
                progress!(
                    "load {:.3} ({}) reached the {} threshold {}: draining worker {} (pid {pid}), \
                     the heaviest (CPUs: {}), reason cpu-limit",
                    victim.load,
                    self.meter.source(),
                    victim.trigger,
                    victim.threshold,
                    victim.id,
                    cpus.join(", ")
                );
                self.note = None;
                self.request_drain(victim.id, EndReason::CpuLimit, Some(victim));
            }
            Decision::Wait(Verdict::Rising { count, hold }) => {
                gst::debug!(
                    CAT,
                    "cpuguard-run: load {load:.3} at or above soft: {count}/{hold}"
                );
                progress!(
                    "load {load:.3} at or above soft-threshold {} ({count}/{hold})",
                    self.coordinator.config().soft
                );
            }
            Decision::Wait(Verdict::WarmingUp { left }) => {
                gst::debug!(
                    CAT,
                    "cpuguard-run: load {load:.3} not judged: its window covers the workers' \
                     start-up ({left} more to skip)"
                );
            }
            Decision::NoCandidate => {
                self.tell_once(format!(
                    "load {load:.3} is high but every worker is already ending"
                ));
            }
            Decision::Wait(_) | Decision::InFlight(_) => {}
        }
    }

    fn tell_once(&mut self, text: String) {
        if self.note.as_deref() != Some(&text) {
            progress!("{text}");
            self.note = Some(text);
        }
    }

    /// A worker is done once it exited and its stdout is read.
    fn maybe_finalize(&mut self, id: u32) {
        let ready = self
            .workers
            .get(&id)
            .is_some_and(|w| w.exit.is_some() && w.stdout.is_some());
        if !ready {
            return;
        }
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.coordinator.finished(&id);
        let report = result_of(&w);
        progress!(
            "worker {id} (pid {}) ended: {} ({})",
            w.pid,
            report.status.as_str(),
            report.reason
        );
        self.emit(id, Some(w.pid), Some(w.cpu.total), report);
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
            peak_load: self.peak_load.map(|l| (l * 10_000.0).round() / 10_000.0),
            load_source: self.meter.source().to_string(),
            capacity: (self.meter.capacity() * 1000.0).round() / 1000.0,
            signals: self.signals.clone(),
            sampling: self.sampling.clone(),
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
    let parsed = w.stdout.as_deref().and_then(worker::parse_report);
    let status = w.exit.as_ref().map(|(status, _)| *status);
    if let Some((_, why)) = &w.killed {
        // A result printed before the kill came in time (the LiveKit Egress
        // bug: a late timer marking a finished recording FAILED).
        if let Some(report) = parsed.filter(|r| r.status == State::Complete) {
            return with_parent_drain(report, w);
        }
        let (reason, text) = if w.interrupted {
            (reasons::INTERRUPTED, reasons::INTERRUPTED_TEXT)
        } else {
            (reasons::DRAIN_TIMEOUT, reasons::DRAIN_TIMEOUT_TEXT)
        };
        return made_report(w, reason, text, why.clone(), status);
    }
    match parsed {
        Some(report) => with_parent_drain(report, w),
        None => {
            let text = status.map_or_else(
                || "worker ended without a result".to_owned(),
                |s| worker::describe_exit(&s),
            );
            progress!("worker {}: {text}", w.job.id);
            made_report(w, reasons::ERROR, reasons::ERROR_TEXT, text, status)
        }
    }
}

/// The worker only saw a request: the parent's deadline, and for a
/// cpu-limit drain the parent's decision, are what its drain should say.
fn with_parent_drain(mut report: Report, w: &Worker) -> Report {
    if let (Some(drain), Some(parent)) = (report.drain.as_mut(), w.drain.as_ref())
        && drain.reason == parent.reason.as_str()
    {
        drain.timeout_ms = parent.timeout_ms;
        if let Some(victim) = &parent.victim {
            drain.trigger = Some(victim.trigger.as_str().to_owned());
            drain.load = Some((victim.load * 10_000.0).round() / 10_000.0);
            drain.threshold = Some(victim.threshold);
            drain.source = Some(parent.source.clone());
        }
    }
    report
}

fn made_report(
    w: &Worker,
    reason: &str,
    end_reason: &str,
    error: String,
    status: Option<ExitStatus>,
) -> Report {
    let ended = w.exit.as_ref().map_or_else(Stamp::now, |(_, at)| Stamp {
        wall: std::time::SystemTime::now() - at.elapsed(),
        mono: *at,
    });
    let mut states = w.states.clone();
    states.push(StateChange {
        state: State::Failed,
        at: ended.rfc3339(),
    });
    let drain = w.drain.as_ref().map(|d| DrainReport {
        reason: d.reason.as_str().to_owned(),
        description: d.reason.description(),
        trigger: Some(
            d.victim
                .as_ref()
                .map_or("request", |v| v.trigger.as_str())
                .to_owned(),
        ),
        element: None,
        load: d
            .victim
            .as_ref()
            .map(|v| (v.load * 10_000.0).round() / 10_000.0),
        threshold: d.victim.as_ref().map(|v| v.threshold),
        source: d.victim.as_ref().map(|_| d.source.clone()),
        requested_at: d.requested.rfc3339(),
        completed: false,
        duration_s: d.requested.seconds_until(&ended),
        timeout_ms: d.timeout_ms,
    });
    Report {
        status: State::Failed,
        reason: reason.to_owned(),
        end_reason: end_reason.to_owned(),
        started_at: w.started.rfc3339(),
        ended_at: ended.rfc3339(),
        duration_s: w.started.seconds_until(&ended),
        peak_load: None,
        last_load: None,
        error: Some(error),
        error_source: None,
        error_debug: None,
        exit_code: status.map_or(exit::FAILED, |s| worker::shell_code(&s)),
        pipeline: w.job.description.clone(),
        cpuguard_elements: w.job.cpuguard_elements.clone(),
        load_source: None,
        capacity: None,
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
    }
}

/// The result of a job that never ran (not admitted before a stop, or its
/// process could not be started).
fn unstarted_report(job: &Job, reason: &str, end_reason: &str, error: String) -> Report {
    let now = Stamp::now();
    Report {
        status: State::Failed,
        reason: reason.to_owned(),
        end_reason: end_reason.to_owned(),
        started_at: now.rfc3339(),
        ended_at: now.rfc3339(),
        duration_s: 0.0,
        peak_load: None,
        last_load: None,
        error: (!error.is_empty()).then_some(error),
        error_source: None,
        error_debug: None,
        exit_code: exit::FAILED,
        pipeline: job.description.clone(),
        cpuguard_elements: job.cpuguard_elements.clone(),
        load_source: None,
        capacity: None,
        drain_requested_at: None,
        drain: None,
        states: Vec::new(),
        signals: Vec::new(),
        crash_safe: job.crash_safe.clone(),
    }
}
