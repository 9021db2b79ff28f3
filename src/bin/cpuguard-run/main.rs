//! `cpuguard-run`: runs a GStreamer pipeline and turns signals into the right
//! ending. SIGTERM (and SIGHUP) drain it through cpuguard with reason
//! stop-requested and exit 0 once every file is finalized; SIGINT stops it at
//! once. One JSON result goes to stdout, progress to stderr.
//!
//! Modules, one job each: `branches` (which sinks finished, which an error
//! cut off), `channel` (what a worker tells its parent), `cli` (options), `drain` (a drain's details), `guard` (the cpuguard elements and
//! their settings), `pipeline` (parsing the description), `signals` (signals
//! on the main loop), `supervise` (the run and its state flow), `report` (the
//! JSON result), `progress` (stderr lines), `exit` (exit codes), `multi`
//! (multi-pipeline mode: one parent deciding for worker processes, each of
//! which is this same program in single mode with `--worker ID`), `observe`
//! (what `--metrics-addr` and `--timeline` are fed), `metrics` (Prometheus),
//! `timeline` (the SVG plot), `log` (the `cpuguard` GStreamer debug category),
//! `outputs` (the files the pipeline wrote), `finish` (after the end: the
//! finish budget), `webhook` (`--webhook` delivery), `onend` (`--on-end`).

mod branches;
mod channel;
mod cli;
mod drain;
mod exit;
mod finish;
mod flow;
mod guard;
mod log;
mod metrics;
mod multi;
mod observe;
mod onend;
mod outputs;
mod pipeline;
mod progress;
mod report;
mod signals;
mod supervise;
mod timeline;
mod webhook;

use std::process::ExitCode;

use gst::prelude::*;

use progress::{fatal, progress};

fn main() -> ExitCode {
    ExitCode::from(run())
}

fn run() -> u8 {
    progress::start_clock();
    // First of all: from here on SIGTERM, SIGINT and SIGHUP never take their
    // default action (which, as PID 1, would be to be ignored).
    let router = match signals::Router::install() {
        Ok(router) => router,
        Err(err) => {
            fatal!("cannot handle signals: {err}");
            return exit::FAILED;
        }
    };
    if let Err(err) = gst::init() {
        fatal!("cannot initialize GStreamer: {err}");
        return exit::FAILED;
    }
    // Static registration: no GST_PLUGIN_PATH needed, and this build's element
    // is the one used even when a cpuguard plugin is also found on the path.
    if let Err(err) = gstcpuguard::plugin_register_static() {
        fatal!("cannot register the cpuguard element: {err}");
        return exit::FAILED;
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout with exit 0; errors to stderr with 2.
            let _ = err.print();
            return u8::try_from(err.exit_code()).unwrap_or(exit::USAGE);
        }
    };
    if cli.finish_timeout.is_some() && cli.webhooks.is_empty() && cli.on_end.is_none() {
        progress!("warning: --finish-timeout has nothing to bound without --on-end or --webhook");
    }
    // Before anything runs: a bad URL or secret file is a usage error.
    let webhooks = match webhook::Config::new(&cli.webhooks, cli.webhook_secret_file.as_deref()) {
        Ok(webhooks) => webhooks,
        Err(err) => {
            fatal!("{err}");
            return exit::USAGE;
        }
    };
    for note in cli.gst_launch_notes() {
        progress!("note: {note}");
    }
    if cli.is_multi() {
        return multi::run(&cli, &router);
    }
    // A worker's elements judge for real: they coordinate with the other
    // workers through the coordination directory the parent gives them.
    let given = &cli.settings;

    let (pipeline, description) = match pipeline::build(&cli.pipeline) {
        Ok(built) => built,
        Err(err) => {
            let description = pipeline::describe(&cli.pipeline);
            if description.trim().is_empty() {
                fatal!("invalid pipeline: {err}");
            } else {
                fatal!("invalid pipeline: {err}\n  in: {description}");
            }
            return exit::USAGE;
        }
    };
    let mut guards = guard::find(&pipeline);
    if guards.is_empty() && cli.worker.is_some() {
        match guard::add_for_worker(&pipeline) {
            Ok(added) => guards.push(added),
            Err(err) => {
                fatal!("{err}");
                return exit::FAILED;
            }
        }
    }
    if guards.is_empty() {
        if let Err(err) = guard::validate_alone(given) {
            fatal!("{err}");
            return exit::USAGE;
        }
        let ignored = guard::given_element_settings(given);
        if !ignored.is_empty() && cli.worker.is_none() {
            progress!(
                "warning: no cpuguard element in the pipeline: {} ignored",
                ignored.join(", ")
            );
        }
    }
    for guard in &guards {
        if let Err(err) = guard::apply(given, guard) {
            fatal!("{err}");
            return exit::USAGE;
        }
    }

    // Crash safety for the whole pipeline, cpuguard or not; the elements'
    // own crash-safe property is then redundant (the first to configure a
    // muxer is the one that reports it).
    let protection = match cli.crash_safe() {
        Some(interval) => Some(gstcpuguard::crashsafe::protect(
            pipeline.upcast_ref(),
            interval,
            |decision| progress!("{}", decision.describe()),
        )),
        None => {
            progress!("crash-safe: off (--no-crash-safe): muxers are left as described");
            None
        }
    };

    let report_file = match cli.report.as_deref().map(report::ReportFile::create) {
        None => None,
        Some(Ok(file)) => Some(file),
        Some(Err(err)) => {
            fatal!("{err}");
            return exit::USAGE;
        }
    };

    let thresholds = match guards.first() {
        Some(guard) => timeline::Thresholds {
            soft: guard.property("soft-threshold"),
            hard: guard.property("hard-threshold"),
            hold: guard.property("hold"),
            release: guard.property("release"),
        },
        None => given.policy(),
    };
    let observer =
        match observe::Observer::start(cli.metrics_addr, cli.timeline.as_deref(), thresholds) {
            Ok(observer) => observer,
            Err(err) => {
                fatal!("{err}");
                return exit::USAGE;
            }
        };

    let drain_timeout_ms = guard::drain_timeout_ms(given, &guards);
    if (1..1000).contains(&drain_timeout_ms) {
        progress!(
            "warning: the drain timeout is {drain_timeout_ms} ms: a bare number is milliseconds \
             ({drain_timeout_ms}s for seconds); a drain usually takes hundreds of milliseconds, \
             so this one may fail and lose the recording"
        );
    }

    let notifier = match finish::Notifier::start(
        finish::Settings {
            webhooks,
            on_end: cli.on_end.clone(),
            finish_timeout: cli.finish_timeout,
            worker: cli.worker,
        },
        description.clone(),
        observer.metrics(),
    ) {
        Ok(notifier) => notifier,
        Err(err) => {
            fatal!("{err}");
            return exit::FAILED;
        }
    };

    supervise::run(
        supervise::Setup {
            pipeline,
            description,
            guards,
            drain_timeout_ms: (drain_timeout_ms > 0).then_some(drain_timeout_ms),
            worker: cli.worker.is_some(),
            observer,
            protection,
            notifier,
        },
        &router,
        report::Output::new(report_file),
    )
}
