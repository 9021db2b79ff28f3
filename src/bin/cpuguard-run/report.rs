//! The result of a run: one JSON object on stdout (and in `--report FILE`).
//! Field names and the status, state and reason strings are a public contract.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Reasons the supervisor reports besides the drain reasons of
/// [`gstcpuguard::reason::EndReason`] (`cpu-limit`, `stop-requested`, custom).
pub mod reasons {
    /// The pipeline ended by itself (EOS without any drain).
    pub const EOS: &str = "eos";
    pub const EOS_TEXT: &str = "End of stream";
    /// SIGINT stopped the pipeline at once.
    pub const INTERRUPTED: &str = "interrupted";
    pub const INTERRUPTED_TEXT: &str = "Interrupted (SIGINT): stopped without draining";
    /// A pipeline ERROR message.
    pub const ERROR: &str = "error";
    pub const ERROR_TEXT: &str = "Pipeline error";
    /// A drain that did not complete in time.
    pub const DRAIN_TIMEOUT: &str = "drain-timeout";
    pub const DRAIN_TIMEOUT_TEXT: &str = "Drain did not complete in time";
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReport {
    /// The drain reason (`cpu-limit`, `stop-requested`, ...).
    pub reason: String,
    /// Its human text ("CPU limit reached").
    pub description: String,
    /// `soft`, `hard` or `request` (from cpuguard), or `eos` when the
    /// supervisor sent EOS itself because the pipeline has no cpuguard.
    pub trigger: Option<String>,
    /// The cpuguard element that drained.
    pub element: Option<String>,
    /// The load and threshold cpuguard reported when draining.
    pub load: Option<f64>,
    pub threshold: Option<f64>,
    pub source: Option<String>,
    pub requested_at: String,
    /// True when the pipeline reached EOS.
    pub completed: bool,
    /// From the drain request to the pipeline's EOS, or to giving up.
    pub duration_s: f64,
    /// The drain timeout applied, null when waiting forever.
    pub timeout_ms: Option<u32>,
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
    pub load_source: Option<String>,
    /// CPUs the load was measured against (quota, else CPU request; affinity;
    /// online CPUs), as of the last sample; null without samples.
    pub capacity: Option<f64>,
    pub drain_requested_at: Option<String>,
    pub drain: Option<DrainReport>,
    /// Every state the run went through, in order.
    pub states: Vec<StateChange>,
    /// Every handled signal received, in order.
    pub signals: Vec<SignalReport>,
}

impl Report {
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

/// The `--report` file, created before the pipeline starts so that a path
/// that cannot be written is a usage error rather than a lost result.
pub struct ReportFile {
    path: PathBuf,
    file: File,
}

impl ReportFile {
    pub fn create(path: &Path) -> Result<Self, String> {
        let file = File::create(path)
            .map_err(|err| format!("cannot write report file {}: {err}", path.display()))?;
        Ok(ReportFile {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(self, report: &Report) -> Result<(), String> {
        self.write_value(report)
    }

    /// Any result (multi-pipeline mode writes its workers and summary), pretty JSON.
    pub fn write_value(mut self, value: &impl Serialize) -> Result<(), String> {
        let text = serde_json::to_string_pretty(value).map_err(|err| err.to_string())?;
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| writeln!(self.file, "{text}"))
            .and_then(|()| self.file.sync_all())
            .map_err(|err| format!("cannot write report file {}: {err}", self.path.display()))
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
