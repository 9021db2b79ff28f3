//! A worker process: this program re-executed in single mode with
//! `--worker ID`, in its own process group, its output read by threads that
//! turn it into [`Event`]s for the parent loop.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use nix::sys::signal::Signal;

use super::inbox::{Event, Outbox};
use crate::channel::WorkerEvent;
use crate::report::Report;

/// Starts worker `id` on `description`; returns its pid (also its process
/// group). `args` are the options every worker gets.
pub fn spawn(
    exe: &Path,
    id: u32,
    args: &[OsString],
    description: &str,
    events: &Outbox,
) -> std::io::Result<i32> {
    let mut command = Command::new(exe);
    command
        .arg("--worker")
        .arg(id.to_string())
        .args(args)
        .arg("--")
        .arg(description)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a terminal's Ctrl-C reaches only the parent, which
        // decides, and an escalation kills the worker's helpers with it.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // A parent killed outright must not leave recordings running
            // unsupervised: the workers then drain (SIGTERM) by themselves.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let stderr = child.stderr.take();
    let stdout = child.stdout.take();

    let tx = events.clone();
    std::thread::Builder::new()
        .name(format!("worker-{id}-stderr"))
        .spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !tx.send(Event::Stderr(id, line)) {
                    break;
                }
            }
        })?;
    let tx = events.clone();
    std::thread::Builder::new()
        .name(format!("worker-{id}-stdout"))
        .spawn(move || {
            let mut text = String::new();
            for line in stdout.into_iter().flat_map(|s| BufReader::new(s).lines()) {
                let Ok(line) = line else { break };
                match WorkerEvent::parse(&line) {
                    Some(Ok(event)) => {
                        let _ = tx.send(Event::Said(id, event));
                    }
                    Some(Err(err)) => {
                        let _ = tx.send(Event::Stderr(id, format!("bad channel line: {err}")));
                    }
                    None => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
            let _ = tx.send(Event::Stdout(id, text));
        })?;
    let tx = events.clone();
    std::thread::Builder::new()
        .name(format!("worker-{id}-wait"))
        .spawn(move || {
            if let Ok((status, cpu_s)) = reap(&mut child) {
                let _ = tx.send(Event::Exited(id, status, cpu_s));
            }
        })?;
    Ok(pid)
}

/// Waits for the worker to exit without reaping it (`waitid` with
/// `WNOWAIT`), reads the CPU seconds (user + system, with the children it
/// reaped: what `wait4`'s rusage gives) from its zombie's `/proc` stat, then
/// reaps it. The CPU is `None` when it could not be read; the exit status is
/// always the one `wait` gives.
fn reap(child: &mut std::process::Child) -> std::io::Result<(ExitStatus, Option<f64>)> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let exited = loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.is_ok(),
        }
    };
    let cpu = exited
        .then(|| {
            gstcpuguard::load::process_and_reaped_cpu_seconds(
                &gstcpuguard::load::HostPaths::default(),
                pid.as_raw(),
            )
            .ok()
        })
        .flatten();
    Ok((child.wait()?, cpu))
}

/// The worker's result: the last JSON line it printed, if it got that far.
pub fn parse_report(stdout: &str) -> Option<Report> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str(line).ok()
}

/// "worker killed by SIGKILL", "worker exited with status 3": for a worker
/// that left no result.
pub fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("worker exited with status {code} without a result"),
        (None, Some(signal)) => format!("worker killed by {}", signal_name(signal)),
        _ => format!("worker ended without a result ({status})"),
    }
}

/// The exit code a shell would show: the code, or 128 + the signal.
pub fn shell_code(status: &ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(u8::MAX),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        _ => u8::MAX,
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.to_string())
}

/// A worker's stderr line without its own `cpuguard-run [  1.234s] ` prefix:
/// the parent adds its own, with the worker id.
pub fn strip_prefix(line: &str) -> &str {
    if let Some(rest) = line.strip_prefix("cpuguard-run [")
        && let Some((_, text)) = rest.split_once("] ")
    {
        return text;
    }
    line.strip_prefix("cpuguard-run: ").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_prefixes_are_stripped() {
        assert_eq!(
            strip_prefix("cpuguard-run [   0.050s] state ACTIVE: pipeline PLAYING"),
            "state ACTIVE: pipeline PLAYING"
        );
        assert_eq!(strip_prefix("cpuguard-run: bad"), "bad");
        assert_eq!(strip_prefix("(gst:1): CRITICAL"), "(gst:1): CRITICAL");
    }

    #[test]
    fn exits_are_described() {
        let killed = ExitStatus::from_raw(9);
        assert_eq!(describe_exit(&killed), "worker killed by SIGKILL");
        assert_eq!(shell_code(&killed), 137);
        let exited = ExitStatus::from_raw(3 << 8);
        assert!(describe_exit(&exited).contains("status 3"));
        assert_eq!(shell_code(&exited), 3);
    }

    #[test]
    fn the_last_json_line_is_the_report() {
        // What a worker prints: the one result line, last (here after a
        // stray line, and followed by blank ones).
        let line = r#"{"status":"COMPLETE","reason":"cpu-limit","end_reason":"CPU limit reached","started_at":"2026-12-03T06:00:00.000Z","ended_at":"2026-12-03T06:00:04.500Z","duration_s":4.5,"peak_load":0.97,"last_load":0.97,"error":null,"error_source":null,"error_debug":null,"exit_code":0,"pipeline":"videotestsrc ! cpuguard ! fakesink","cpuguard_elements":["cpuguard0"],"load_source":"system","capacity":2.0,"drain_requested_at":"2026-12-03T06:00:04.300Z","drain":{"reason":"cpu-limit","description":"CPU limit reached","trigger":"hard","element":"cpuguard0","load":0.97,"threshold":0.95,"source":"system","requested_at":"2026-12-03T06:00:04.300Z","completed":true,"duration_s":0.2,"timeout_ms":30000},"states":[{"state":"STARTING","at":"2026-12-03T06:00:00.000Z"},{"state":"COMPLETE","at":"2026-12-03T06:00:04.500Z"}],"signals":[],"crash_safe":[]}"#;
        let report = parse_report(&format!("{{\"stray\": 1}}\n{line}\n\n")).expect("report");
        assert_eq!(report.status, crate::report::State::Complete);
        assert_eq!(report.reason, "cpu-limit");
        assert_eq!(report.capacity, Some(2.0));
        let drain = report.drain.expect("drain");
        assert_eq!(
            (drain.trigger.map(|t| t.as_str()), drain.completed),
            (Some("hard"), true)
        );
        assert_eq!(report.states.len(), 2);
        // Printed back, every field of the line is kept (fields added since
        // come out as null), and that line reads back the same.
        let again = parse_report(line).unwrap().to_line();
        let (printed, given): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&again).unwrap(),
            serde_json::from_str(line).unwrap(),
        );
        for (key, value) in given.as_object().unwrap() {
            assert_eq!(&printed[key], value, "{key}");
        }
        assert_eq!(parse_report(&again).unwrap().to_line(), again);

        assert!(parse_report("").is_none());
        assert!(parse_report("not json\n").is_none());
        // A result cut off mid-line (the worker was killed while printing),
        // or one followed by something else, is no result.
        assert!(parse_report(&line[..line.len() / 2]).is_none());
        assert!(parse_report(&format!("{line}\nnot json\n")).is_none());
    }
}
