//! After the end: what the outside is told, and when. The state changes go
//! to `--webhook` as they happen; once the pipeline has ended, `--on-end`
//! runs and then the final event (with the whole result) is delivered, both
//! within one budget, `--finish-timeout`.
//!
//! The budget: `--finish-timeout` from the moment the pipeline has stopped,
//! or by default the rest of a 30 s window that starts at the drain request
//! (30 s after a run that ended without a drain), at least 5 s. So by default
//! a drain and everything after it fit in 30 s plus the final delivery's
//! last chance ([`crate::webhook::LAST_CHANCE`]).
//!
//! Events are state-change notices (JSON): nothing here knows GStreamer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::onend;
use crate::progress::progress;
use crate::report::{Report, State};
use crate::signals::Router;
use crate::webhook::{self, Delivery, Webhooks};

/// The default window a drain and the finish share.
const WINDOW: Duration = Duration::from_secs(30);
/// The least the default budget leaves after a long drain.
const MIN_BUDGET: Duration = Duration::from_secs(5);

/// The options, checked before anything runs.
pub struct Settings {
    pub webhooks: Option<webhook::Config>,
    pub on_end: Option<String>,
    pub finish_timeout: Option<Duration>,
    /// The worker id in multi-pipeline mode: in every event.
    pub worker: Option<u32>,
}

/// Tells the outside about the run.
pub struct Notifier {
    webhooks: Option<Webhooks>,
    on_end: Option<String>,
    finish_timeout: Option<Duration>,
    pipeline: String,
    worker: Option<u32>,
    sequence: u32,
}

impl Notifier {
    pub fn start(
        settings: Settings,
        pipeline: String,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, String> {
        let webhooks = settings
            .webhooks
            .map(|config| {
                Webhooks::start(config, move |delivery, what| {
                    if let Some(m) = &metrics {
                        m.webhook(delivery);
                    }
                    match delivery {
                        Delivery::Delivered => progress!("webhook: delivered {what}"),
                        Delivery::Retrying | Delivery::Failed => {
                            progress!("webhook: {what}")
                        }
                    }
                })
            })
            .transpose()?;
        Ok(Notifier {
            webhooks,
            on_end: settings.on_end,
            finish_timeout: settings.finish_timeout,
            pipeline,
            worker: settings.worker,
            sequence: 0,
        })
    }

    fn event(&mut self, state: State, at: &str) -> Value {
        self.sequence += 1;
        json!({
            "event": "state",
            "sequence": self.sequence,
            "state": state.as_str(),
            "at": at,
            "pipeline": self.pipeline,
            "worker": self.worker,
        })
    }

    /// ACTIVE, or ENDING with the drain's reason and its text.
    pub fn state(&mut self, state: State, at: &str, drain: Option<(&str, &str)>) {
        if self.webhooks.is_none() {
            return;
        }
        let mut event = self.event(state, at);
        if let Some((reason, description)) = drain {
            event["reason"] = json!(reason);
            event["end_reason"] = json!(description);
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(&event);
        }
    }

    /// The run is over and the pipeline stopped: runs the hook, delivers the
    /// final event, and adds what they did to `report`. `drain_requested`
    /// starts the default window.
    pub fn finish(
        mut self,
        report: &mut Report,
        drain_requested: Option<Instant>,
        router: &Router,
    ) {
        if self.webhooks.is_none() && self.on_end.is_none() {
            return;
        }
        let now = Instant::now();
        let budget = self.finish_timeout.unwrap_or_else(|| {
            let used = drain_requested.map_or(Duration::ZERO, |at| now.duration_since(at));
            WINDOW.saturating_sub(used).max(MIN_BUDGET)
        });
        let mut deadline = now + budget;
        progress!("finish budget {:.3} s", budget.as_secs_f64());
        if let Some(command) = self.on_end.take() {
            let outcome = run_hook(&command, self.worker, report, deadline, router);
            if outcome.interrupted {
                // SIGINT: the final event gets its one last chance, no retries.
                deadline = Instant::now();
            }
            report.on_end = Some(outcome);
        }
        if let Some(webhooks) = self.webhooks.take() {
            let mut event = self.event(report.status, &report.ended_at);
            event["reason"] = json!(report.reason);
            event["end_reason"] = json!(report.end_reason);
            event["result"] = serde_json::to_value(&*report).unwrap_or(Value::Null);
            let cutter = webhooks.cutter();
            let tally = on_loop(
                router,
                "the final webhook delivery",
                move || webhooks.finish(&event, deadline),
                move || cutter.cut(),
            )
            .unwrap_or_default();
            progress!(
                "webhooks: {} delivered, {} failed",
                tally.delivered,
                tally.failed
            );
            report.webhooks = Some(tally);
        }
    }
}

/// Runs `work` on a thread of its own while this thread runs the GLib main
/// loop, so that signals keep arriving: SIGINT calls `interrupt` (which must
/// make `work` end soon), SIGTERM and SIGHUP are only told about.
fn on_loop<T: Send + 'static>(
    router: &Router,
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
    interrupt: impl Fn() + 'static,
) -> Option<T> {
    let main_loop = glib::MainLoop::new(None, false);
    let quit = main_loop.clone();
    let spawned = std::thread::Builder::new()
        .name("cpuguard-finish".to_owned())
        .spawn(move || {
            let result = work();
            // Quits from the loop's own thread, so never before it runs.
            glib::MainContext::default().invoke(move || quit.quit());
            result
        });
    let thread = match spawned {
        Ok(thread) => thread,
        Err(err) => {
            progress!("warning: cannot run {what}: no thread: {err}");
            return None;
        }
    };
    router.set_handler(move |signal| match signal {
        Signal::SIGINT => {
            progress!("SIGINT: stopping {what}");
            interrupt();
        }
        other => progress!("{other}: the run has ended; {what} goes on (SIGINT stops it)"),
    });
    main_loop.run();
    thread.join().ok()
}

/// Runs `--on-end` (see [`on_loop`] for signals).
fn run_hook(
    command: &str,
    worker: Option<u32>,
    report: &Report,
    deadline: Instant,
    router: &Router,
) -> onend::Outcome {
    let json = serde_json::to_string(report).unwrap_or_default();
    let mut env = vec![
        ("CPUGUARD_STATUS", report.status.as_str().to_owned()),
        ("CPUGUARD_REASON", report.reason.clone()),
        ("CPUGUARD_END_REASON", report.end_reason.clone()),
        ("CPUGUARD_FILES", report.files.join("\n")),
    ];
    if let Some(worker) = worker {
        env.push(("CPUGUARD_WORKER", worker.to_string()));
    }
    progress!(
        "on-end: running {command} ({} s left)",
        deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    );
    let running = onend::start(
        onend::Input {
            command: command.to_owned(),
            json,
            env,
        },
        deadline,
    );
    let interrupter = running.interrupter();
    let outcome = on_loop(
        router,
        "the on-end hook",
        move || running.wait(),
        move || interrupter.interrupt(),
    )
    .unwrap_or_else(|| onend::Outcome::not_run(command, "no thread to run it on"));
    let how = match (&outcome.error, outcome.timed_out, outcome.interrupted) {
        (Some(err), _, _) => format!("failed: {err}"),
        (None, true, _) => "killed: the finish budget was spent".to_owned(),
        (None, _, true) => "killed: SIGINT".to_owned(),
        _ => match (outcome.exit_code, &outcome.signal) {
            (Some(code), _) => format!("exited {code}"),
            (None, Some(signal)) => format!("ended by {signal}"),
            (None, None) => "ended".to_owned(),
        },
    };
    progress!("on-end: {how} after {:.3} s", outcome.duration_s);
    outcome
}
