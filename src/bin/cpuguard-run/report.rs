//! The result of a run: one JSON object on stdout (and in `--report FILE`).
//! Field names and the status, state and reason strings are a public contract.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use gstcpuguard::drain_record::DrainRecord;
use gstcpuguard::load::LoadSourceKind;
use gstcpuguard::reason::EndReason;
use serde::{Deserialize, Serialize};

/// Why a run ended: a completed drain's own reason (`cpu-limit`,
/// `stop-requested`, an application's), or one the supervisor gives. The
/// result's `status`, `reason`, `end_reason` and exit code all follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunReason {
    /// The pipeline ended by itself (EOS without any drain).
    Eos,
    /// A drain completed (the pipeline's EOS came).
    Drained(EndReason),
    /// SIGINT stopped the pipeline at once.
    Interrupted,
    /// A pipeline ERROR.
    Error,
    /// A drain that did not complete in time.
    DrainTimeout,
    /// A multi-pipeline job that never started: the run was stopped first.
    NotStarted,
}

impl RunReason {
    pub fn as_str(&self) -> &str {
        match self {
            RunReason::Eos => "eos",
            RunReason::Drained(reason) => reason.as_str(),
            RunReason::Interrupted => "interrupted",
            RunReason::Error => "error",
            RunReason::DrainTimeout => "drain-timeout",
            RunReason::NotStarted => "not-started",
        }
    }

    /// The human text of `end_reason`.
    pub fn description(&self) -> String {
        match self {
            RunReason::Eos => "End of stream".to_owned(),
            RunReason::Drained(reason) => reason.description(),
            RunReason::Interrupted => "Interrupted (SIGINT): stopped without draining".to_owned(),
            RunReason::Error => "Pipeline error".to_owned(),
            RunReason::DrainTimeout => "Drain did not complete in time".to_owned(),
            RunReason::NotStarted => "Not started: the run was stopped first".to_owned(),
        }
    }

    /// COMPLETE when the stream ended with its EOS, else FAILED.
    pub fn status(&self) -> State {
        match self {
            RunReason::Eos | RunReason::Drained(_) => State::Complete,
            _ => State::Failed,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            RunReason::Eos | RunReason::Drained(_) => crate::exit::COMPLETE,
            RunReason::Interrupted => crate::exit::INTERRUPTED,
            _ => crate::exit::FAILED,
        }
    }
}

/// The run's phases, as LiveKit Egress names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// The pipeline is being started (not yet PLAYING).
    Starting,
    /// The pipeline is PLAYING.
    Active,
    /// A drain is under way: EOS sent, waiting for the pipeline's EOS.
    Ending,
    Complete,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "STARTING",
            State::Active => "ACTIVE",
            State::Ending => "ENDING",
            State::Complete => "COMPLETE",
            State::Failed => "FAILED",
        }
    }
}

/// A point in time, wall clock for the report and monotonic for durations.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Stamp {
    pub fn now() -> Self {
        Stamp {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// RFC 3339, UTC, millisecond precision.
    pub fn rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.wall).to_string()
    }

    /// Seconds from `self` to `later`, to the millisecond.
    pub fn seconds_until(&self, later: &Stamp) -> f64 {
        round_ms(
            later
                .mono
                .saturating_duration_since(self.mono)
                .as_secs_f64(),
        )
    }
}

pub fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Every load in a result: four decimals.
pub fn round_load(load: f64) -> f64 {
    (load * 10_000.0).round() / 10_000.0
}

/// Every capacity in a result: CPUs to three decimals.
pub fn round_cpus(cpus: f64) -> f64 {
    (cpus * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChange {
    pub state: State,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalReport {
    /// `SIGTERM`, `SIGINT` or `SIGHUP`.
    pub signal: String,
    pub at: String,
    /// What the signal did: `drain`, `stop`, `none (already draining)`, ...
    pub action: String,
}

impl SignalReport {
    /// `signal`, received or sent now, and what it did.
    pub fn now(signal: nix::sys::signal::Signal, action: &str) -> Self {
        SignalReport {
            signal: signal.as_str().to_owned(),
            at: Stamp::now().rfc3339(),
            action: action.to_owned(),
        }
    }
}

/// What crash safety did with one muxer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrashSafeReport {
    /// The muxer (`mux`, or `splitmuxsink0/muxer` inside a bin).
    pub element: String,
    pub factory: String,
    /// `configured`, `already-safe` or `left-alone`.
    pub action: String,
    /// The settings made (`fragment-duration=1000`), or why none were.
    pub detail: String,
    /// The bound in ms for a configured muxer, else null.
    pub interval_ms: Option<u32>,
    /// Whether a file cut off at any moment still plays.
    pub protected: bool,
    /// Set when the run ended without the file being finalized (FAILED: a
    /// drain timeout, SIGINT, an error, a killed worker): whether the file
    /// was kept playable. Null otherwise.
    pub file_kept: Option<bool>,
    /// With `file_kept`: the file plays at least up to this many seconds of
    /// the recording's running time, where known.
    pub kept_until_s: Option<f64>,
}

impl CrashSafeReport {
    pub fn from_decision(decision: &gstcpuguard::crashsafe::Decision) -> Self {
        use gstcpuguard::crashsafe::Plan;
        CrashSafeReport {
            element: decision.element.clone(),
            factory: decision.factory.clone(),
            action: decision.plan.action().to_owned(),
            detail: decision.detail(),
            interval_ms: matches!(decision.plan, Plan::Configure(_))
                .then_some(decision.interval_ms),
            protected: decision.plan.protected(),
            file_kept: None,
            kept_until_s: None,
        }
    }

    /// The run ended without finalizing the file: say whether it was kept.
    pub fn escalated(mut self, kept_until_s: Option<f64>) -> Self {
        self.file_kept = Some(self.protected);
        self.kept_until_s = if self.protected { kept_until_s } else { None };
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `COMPLETE` or `FAILED`.
    pub status: State,
    /// `eos`, `cpu-limit`, `stop-requested`, `interrupted`, `error`,
    /// `drain-timeout` (or an application's own drain reason).
    pub reason: String,
    /// Human text: "CPU limit reached", "Stop requested", "End of stream", ...
    pub end_reason: String,
    pub started_at: String,
    pub ended_at: String,
    pub duration_s: f64,
    /// Highest and last load from cpuguard's samples; null without samples.
    pub peak_load: Option<f64>,
    pub last_load: Option<f64>,
    /// The error text for reasons `error` and `drain-timeout`, else null.
    pub error: Option<String>,
    /// The element that posted the error, when one did.
    pub error_source: Option<String>,
    /// GStreamer's debug details for the error, when there are any.
    pub error_debug: Option<String>,
    pub exit_code: u8,
    /// The pipeline description as parsed.
    pub pipeline: String,
    /// Names of the cpuguard elements (empty: CPU guarding was off).
    pub cpuguard_elements: Vec<String>,
    /// The load source cpuguard measured (`system`, `cgroup`, ...).
    pub load_source: Option<LoadSourceKind>,
    /// CPUs the load was measured against (quota, else CPU request; affinity;
    /// online CPUs), as of the last sample; null without samples.
    pub capacity: Option<f64>,
    pub drain_requested_at: Option<String>,
    pub drain: Option<DrainRecord>,
    /// Every state the run went through, in order.
    pub states: Vec<StateChange>,
    /// Every handled signal received, in order.
    pub signals: Vec<SignalReport>,
    /// Crash safety per muxer; null when it was off (`--no-crash-safe`).
    #[serde(default)]
    pub crash_safe: Option<Vec<CrashSafeReport>>,
    /// Where `--metrics-addr` serves, with the port it really got (port 0
    /// picks one): also in the report file from the start of the run.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// The files the pipeline wrote (sinks' locations, splitmuxsink and HLS
    /// fragments, playlists), absolute, that exist at the end.
    #[serde(default)]
    pub files: Vec<String>,
    /// What `--on-end` did; null without it.
    #[serde(default)]
    pub on_end: Option<crate::onend::Outcome>,
    /// Webhook deliveries (`--webhook`); null without any.
    #[serde(default)]
    pub webhooks: Option<crate::webhook::Tally>,
}

impl Report {
    /// A result the supervisor makes itself, for a run that could not say (a
    /// worker killed or crashed, a job that never ran): what it did not see
    /// is null or empty. Its status and exit code follow from `reason`, as a
    /// run's own do (every caller's reason fails).
    pub fn unsaid(
        pipeline: &str,
        cpuguard_elements: &[String],
        reason: &RunReason,
        started: &Stamp,
        ended: &Stamp,
    ) -> Report {
        Report {
            status: reason.status(),
            reason: reason.as_str().to_owned(),
            end_reason: reason.description(),
            started_at: started.rfc3339(),
            ended_at: ended.rfc3339(),
            duration_s: started.seconds_until(ended),
            peak_load: None,
            last_load: None,
            error: None,
            error_source: None,
            error_debug: None,
            exit_code: reason.exit_code(),
            pipeline: pipeline.to_owned(),
            cpuguard_elements: cpuguard_elements.to_vec(),
            load_source: None,
            capacity: None,
            drain_requested_at: None,
            drain: None,
            states: Vec::new(),
            signals: Vec::new(),
            crash_safe: None,
            metrics_url: None,
            files: Vec::new(),
            on_end: None,
            webhooks: None,
        }
    }

    /// One line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|err| {
            // Serializing plain strings and numbers cannot fail; stay total anyway.
            format!(r#"{{"status":"FAILED","reason":"error","error":"report: {err}"}}"#)
        })
    }

    /// Prints the report on stdout; false if stdout is gone.
    pub fn print(&self) -> bool {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", self.to_line())
            .and_then(|()| out.flush())
            .is_ok()
    }
}

/// The `--report` file. Every write goes to a temporary file in the same
/// directory, synced, then renamed over the report: a reader (or a SIGKILL at
/// any moment) sees the previous complete JSON or the next one, never an
/// empty or cut-off file. Checked before the pipeline starts (a path that
/// cannot be written is a usage error rather than a lost result).
pub struct ReportFile {
    path: PathBuf,
}

impl ReportFile {
    pub fn create(path: &Path) -> Result<Self, String> {
        if path.is_dir() || path.file_name().is_none() {
            return Err(format!(
                "cannot write report file {}: is a directory",
                path.display()
            ));
        }
        let file = ReportFile {
            path: path.to_owned(),
        };
        // Proves the directory takes a temporary file and the rename, without
        // touching an existing report until there is something to say.
        let probe = file.temporary();
        File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|err| format!("cannot write report file {}: {err}", path.display()))?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `.NAME.PID.tmp` next to the report: same file system, so the rename is atomic.
    fn temporary(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "report".into(), |n| n.to_string_lossy().into_owned());
        self.path
            .with_file_name(format!(".{name}.{}.tmp", std::process::id()))
    }

    pub fn write(&self, report: &Report) -> Result<(), String> {
        self.write_value(report)
    }

    /// Any result (multi-pipeline mode writes its workers and summary), pretty JSON.
    pub fn write_value(&self, value: &impl Serialize) -> Result<(), String> {
        let text = serde_json::to_string_pretty(value).map_err(|err| err.to_string())?;
        let temporary = self.temporary();
        let written = File::create(&temporary)
            .and_then(|mut file| {
                writeln!(file, "{text}")?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .and_then(|()| {
                // The rename itself is durable once the directory is synced.
                match self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) => File::open(dir)?.sync_all(),
                    None => File::open(".")?.sync_all(),
                }
            });
        written.map_err(|err| {
            let _ = std::fs::remove_file(&temporary);
            format!("cannot write report file {}: {err}", self.path.display())
        })
    }
}

/// Prints one line on stdout and flushes it (a worker's result is read as it
/// comes); false if stdout is gone, which must not panic.
pub fn print_line(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Where the result goes, exactly once: stdout, and the report file if any.
/// Shared with the stop watchdog (see `supervise`), hence thread-safe.
pub struct Output {
    file: Mutex<Option<ReportFile>>,
    emitted: AtomicBool,
}

impl Output {
    pub fn new(file: Option<ReportFile>) -> Arc<Self> {
        Arc::new(Output {
            file: Mutex::new(file),
            emitted: AtomicBool::new(false),
        })
    }

    /// Writes the run's state so far to the report file (not stdout), so
    /// that a run killed before its end leaves its last known state on disk.
    /// `exit_code` is null in such a snapshot. Nothing once the result was emitted.
    pub fn update(&self, report: &Report) {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = file.as_ref() else {
            return;
        };
        if self.emitted.load(Ordering::SeqCst) {
            return;
        }
        let mut value = match serde_json::to_value(report) {
            Ok(value) => value,
            Err(_) => return,
        };
        value["exit_code"] = serde_json::Value::Null;
        if let Err(err) = file.write_value(&value) {
            crate::progress::line(format_args!("warning: {err}"));
        }
    }

    /// Prints `report` and writes the report file; does nothing if a report
    /// was already emitted. Problems are told on stderr, never panicked on.
    pub fn emit(&self, report: &Report) -> bool {
        if self.emitted.swap(true, Ordering::SeqCst) {
            return false;
        }
        if !report.print() {
            crate::progress::fatal_line(format_args!("cannot print the result on stdout"));
        }
        let file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(file) = file {
            let path = file.path().to_owned();
            match file.write(report) {
                Ok(()) => {
                    crate::progress::line(format_args!("report written to {}", path.display()))
                }
                Err(err) => crate::progress::fatal_line(format_args!("{err}")),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_reason_gives_its_status_strings_and_exit_code() {
        let cases = [
            (RunReason::Eos, "eos", "End of stream", State::Complete, 0),
            (
                RunReason::Drained(EndReason::CpuLimit),
                "cpu-limit",
                "CPU limit reached",
                State::Complete,
                0,
            ),
            (
                RunReason::Drained(EndReason::parse("maintenance").unwrap()),
                "maintenance",
                "Drain requested: maintenance",
                State::Complete,
                0,
            ),
            (
                RunReason::Interrupted,
                "interrupted",
                "Interrupted (SIGINT): stopped without draining",
                State::Failed,
                130,
            ),
            (
                RunReason::Error,
                "error",
                "Pipeline error",
                State::Failed,
                1,
            ),
            (
                RunReason::DrainTimeout,
                "drain-timeout",
                "Drain did not complete in time",
                State::Failed,
                1,
            ),
            (
                RunReason::NotStarted,
                "not-started",
                "Not started: the run was stopped first",
                State::Failed,
                1,
            ),
        ];
        for (reason, name, text, status, code) in cases {
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.description(), text);
            assert_eq!(reason.status(), status, "{name}");
            assert_eq!(reason.exit_code(), code, "{name}");
        }
    }
}
