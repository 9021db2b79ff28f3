//! What multi-pipeline mode runs: every job and setting read and checked
//! before any worker starts.

use std::ffi::OsString;
use std::time::Duration;

use gst::prelude::*;
use gstcpuguard::load::{HostPaths, LoadMeter};

use super::coordination::Coordination;

use crate::cli::Cli;
use crate::guard;
use crate::observe::Observer;
use crate::pipeline;
use crate::progress::progress;
use crate::report::ReportFile;
use crate::timeline::Thresholds;

/// One pipeline to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// 1-based, in the order given: `--pipeline`s first, then the jobs file.
    pub id: u32,
    pub description: String,
    /// Where it came from, for error messages ("--pipeline 2", "jobs.txt line 4").
    pub origin: String,
    /// This worker's drain deadline: `--drain-timeout`, else the longest its
    /// cpuguard elements allow, else the element default; `None` = forever.
    pub drain_timeout_ms: Option<u32>,
    pub cpuguard_elements: Vec<String>,
    /// What crash safety does with the job's muxers (the worker applies the
    /// same rules); null when off.
    pub crash_safe: Option<Vec<crate::report::CrashSafeReport>>,
}

/// Everything the parent needs, checked before any worker starts.
pub struct Plan {
    pub jobs: Vec<Job>,
    pub interval: Duration,
    pub meter: LoadMeter,
    pub max_utilization: Option<f64>,
    /// Options every worker gets, before `--worker ID -- DESC`.
    pub worker_args: Vec<OsString>,
    /// Kept for the run: a private directory is removed when it ends.
    pub coordination: Coordination,
    pub report: Option<ReportFile>,
    pub observer: Observer,
}

/// Reads and checks every description and setting; the error names the bad one.
pub fn plan(cli: &Cli) -> Result<Plan, String> {
    let mut sources: Vec<(String, String)> = cli
        .pipelines
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("--pipeline {}", i + 1), d.clone()))
        .collect();
    if let Some(path) = &cli.jobs {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read jobs file {}: {err}", path.display()))?;
        let before = sources.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                sources.push((
                    format!("{} line {}", path.display(), n + 1),
                    line.to_owned(),
                ));
            }
        }
        if sources.len() == before {
            return Err(format!(
                "jobs file {} holds no pipeline description",
                path.display()
            ));
        }
    }

    let given = &cli.settings;
    let mut jobs = Vec::with_capacity(sources.len());
    let mut alone_checked = false;
    for (origin, description) in sources {
        let id = u32::try_from(jobs.len() + 1).map_err(|_| "too many pipelines".to_owned())?;
        let (pipeline, _) = pipeline::build(std::slice::from_ref(&description))
            .map_err(|err| format!("invalid pipeline ({origin}): {err}\n  in: {description}"))?;
        let guards = guard::find(&pipeline);
        if guards.is_empty() && !alone_checked {
            guard::validate_alone(given)?;
            alone_checked = true;
        }
        for guard in &guards {
            guard::apply(given, guard).map_err(|err| format!("{origin}: {err}"))?;
        }
        let drain_timeout_ms = guard::drain_timeout_ms(given, &guards);
        // Planned here on the parsed pipeline, never started: the worker
        // decides the same for its own copy.
        let crash_safe = cli.crash_safe().map(|interval| {
            gstcpuguard::crashsafe::protect(pipeline.upcast_ref(), interval, |_| {})
                .decisions()
                .iter()
                .map(crate::report::CrashSafeReport::from_decision)
                .collect()
        });
        jobs.push(Job {
            crash_safe,
            id,
            description,
            origin,
            drain_timeout_ms: (drain_timeout_ms > 0).then_some(drain_timeout_ms),
            // A worker adds one to a description without (see `guard`).
            cpuguard_elements: if guards.is_empty() {
                vec![guard::WORKER_GUARD.to_owned()]
            } else {
                guards.iter().map(|g| g.name().to_string()).collect()
            },
        });
    }

    let policy = given.policy();
    policy
        .validate()
        .map_err(|err| format!("invalid settings: {err}"))?;

    let kind = given.load_source();
    let host = given
        .text("root")
        .map_or_else(HostPaths::system, HostPaths::under);
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let meter = LoadMeter::with_request(kind, &host, me, given.cpu_request())
        .map_err(|err| format!("cannot measure load (load-source {kind}): {err}"))?;

    let report = cli.report.as_deref().map(ReportFile::create).transpose()?;

    // Workers get the same settings, judge the load for real through the
    // same coordination directory, and never give up a drain themselves: the
    // parent's timer does, and kills the whole worker, which a worker stuck
    // in a drain may need.
    let coordination = Coordination::new(given.text("coordination-dir"))?;
    let mut worker_given = given.clone();
    for (name, text) in [
        ("coordination-dir", coordination.setting()),
        ("drain-timeout", "0".to_owned()),
    ] {
        let value = gstcpuguard::settings::find(name)
            .ok_or_else(|| format!("no setting {name}"))?
            .parse(&text)?;
        worker_given.set(name, value)?;
    }
    let mut worker_args: Vec<OsString> = worker_given
        .to_args()
        .into_iter()
        .map(OsString::from)
        .collect();
    worker_args.push(format!("--crash-safe-interval={}ms", cli.crash_safe_interval).into());
    if cli.crash_safe().is_none() {
        worker_args.push("--no-crash-safe".into());
    }
    // Each worker tells its own webhooks (its events carry its worker id and
    // pipeline) and runs its own on-end hook with its own files, within its
    // own finish budget, as soon as its pipeline has ended.
    for url in &cli.webhooks {
        worker_args.push(format!("--webhook={url}").into());
    }
    if let Some(file) = &cli.webhook_secret_file {
        let mut arg = OsString::from("--webhook-secret-file=");
        arg.push(file);
        worker_args.push(arg);
    }
    if let Some(command) = &cli.on_end {
        worker_args.push(format!("--on-end={command}").into());
    }
    if let Some(timeout) = cli.finish_timeout {
        worker_args.push(format!("--finish-timeout={}ms", timeout.as_millis()).into());
    }
    let interval_ms = match given.value("interval") {
        gstcpuguard::settings::Value::UInt(ms) => ms,
        _ => gstcpuguard::settings::DEFAULT_INTERVAL_MS,
    };
    progress!(
        "multi-pipeline mode: {} pipelines; soft-threshold {}, hard-threshold {}, hold {}, \
         release {}, interval {interval_ms} ms, max-utilization {}",
        jobs.len(),
        policy.soft,
        policy.hard,
        policy.hold,
        policy.release,
        cli.max_utilization
            .map_or_else(|| "none".to_owned(), |m| m.to_string()),
    );
    progress!("load: {}", meter.describe());
    match coordination.private_path() {
        Some(path) => progress!(
            "workers coordinate their drains in {} (private to this run)",
            path.display()
        ),
        None => progress!(
            "workers coordinate their drains with coordination-dir {}",
            coordination.setting()
        ),
    }
    let observer = Observer::start(
        cli.metrics_addr,
        cli.timeline.as_deref(),
        Thresholds {
            soft: policy.soft,
            hard: policy.hard,
            hold: policy.hold,
            release: policy.release,
        },
    )?;
    Ok(Plan {
        jobs,
        interval: Duration::from_millis(u64::from(interval_ms)),
        meter,
        max_utilization: cli.max_utilization,
        worker_args,
        coordination,
        report,
        observer,
    })
}
