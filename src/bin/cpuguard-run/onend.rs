//! `--on-end CMD`: one command run after the pipeline has ended and its files
//! are closed (an upload, a move, a notification).
//!
//! A leaf: the result goes in, the hook's outcome comes out. `sh -c CMD` runs
//! in a process group of its own with the result as JSON on stdin and the key
//! fields in `CPUGUARD_*` variables; its stdout joins our stderr (our stdout
//! carries only the JSON result). At the deadline, or when [`Interrupter`]
//! is used (SIGINT), the whole group is killed, so a hook's children (an
//! upload tool) go with it.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// What the hook did, in the result as `on_end`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub command: String,
    /// The hook's exit code; null when it was killed or did not start.
    pub exit_code: Option<i32>,
    /// The signal that ended it (`SIGKILL` when killed at the budget).
    pub signal: Option<String>,
    pub duration_s: f64,
    /// Killed because the finish budget (`--finish-timeout`) was spent.
    pub timed_out: bool,
    /// Killed because of SIGINT.
    pub interrupted: bool,
    /// Why it could not run (spawn failure), else null.
    pub error: Option<String>,
}

impl Outcome {
    /// A hook that could not be run at all.
    pub fn not_run(command: &str, why: &str) -> Self {
        Outcome {
            command: command.to_owned(),
            exit_code: None,
            signal: None,
            duration_s: 0.0,
            timed_out: false,
            interrupted: false,
            error: Some(why.to_owned()),
        }
    }
}

/// What the hook is given.
pub struct Input {
    pub command: String,
    /// The result, as JSON, for its stdin.
    pub json: String,
    /// `CPUGUARD_*` variables.
    pub env: Vec<(&'static str, String)>,
}

enum Wake {
    Exited(std::io::Result<std::process::ExitStatus>),
    Interrupt,
}

/// Stops a running hook (SIGINT): its process group is killed.
#[derive(Clone)]
pub struct Interrupter(Sender<Wake>);

impl Interrupter {
    pub fn interrupt(&self) {
        let _ = self.0.send(Wake::Interrupt);
    }
}

/// A hook under way.
pub struct Running {
    thread: Option<JoinHandle<Outcome>>,
    interrupter: Interrupter,
    command: String,
}

impl Running {
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Waits for the outcome (the hook ended, was killed, or never started).
    pub fn wait(mut self) -> Outcome {
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_else(|| Outcome::not_run(&self.command, "no thread to run it on"))
    }
}

/// Starts the hook; it is killed at `deadline`.
pub fn start(input: Input, deadline: Instant) -> Running {
    let (wake, woken) = mpsc::channel();
    let interrupter = Interrupter(wake.clone());
    let command = input.command.clone();
    let thread = std::thread::Builder::new()
        .name("cpuguard-on-end".to_owned())
        .spawn(move || supervise(input, deadline, wake, &woken))
        .ok();
    Running {
        thread,
        interrupter,
        command,
    }
}

fn supervise(
    input: Input,
    deadline: Instant,
    wake: Sender<Wake>,
    woken: &mpsc::Receiver<Wake>,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::not_run(&input.command, "");
    outcome.error = None;
    let finish = |mut outcome: Outcome| {
        // Whole milliseconds, as every duration of the result.
        outcome.duration_s = started.elapsed().as_millis() as f64 / 1000.0;
        outcome
    };
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from);
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&input.command)
        .envs(input.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(stdout.unwrap_or_else(|_| Stdio::null()))
        .stderr(Stdio::inherit())
        // Its own group: killing it reaches what it started.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return finish(Outcome::not_run(
                &input.command,
                &format!("cannot run /bin/sh -c: {err}"),
            ));
        }
    };
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Its own thread: a hook that does not read stdin must not block us.
    if let Some(mut stdin) = child.stdin.take() {
        let json = input.json;
        let _ = std::thread::Builder::new()
            .name("cpuguard-on-end-stdin".to_owned())
            .spawn(move || {
                // A hook that ignores stdin closes it: EPIPE is fine.
                let _ = writeln!(stdin, "{json}");
            });
    }
    let _ = std::thread::Builder::new()
        .name("cpuguard-on-end-wait".to_owned())
        .spawn(move || {
            let _ = wake.send(Wake::Exited(child.wait()));
        });
    let mut killed = false;
    loop {
        let woke = match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !killed => woken.recv_timeout(left),
            _ => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match woke {
            Ok(Wake::Exited(status)) => {
                match status {
                    Ok(status) => {
                        outcome.exit_code = status.code();
                        outcome.signal = status
                            .signal()
                            .and_then(|s| Signal::try_from(s).ok())
                            .map(|s| s.as_str().to_owned());
                    }
                    Err(err) => outcome.error = Some(format!("cannot wait for the hook: {err}")),
                }
                // Whatever it left behind in its group goes too.
                let _ = killpg(group, Signal::SIGKILL);
                return finish(outcome);
            }
            Ok(Wake::Interrupt) if !killed => {
                outcome.interrupted = true;
                killed = true;
                let _ = killpg(group, Signal::SIGKILL);
            }
            Ok(Wake::Interrupt) => {}
            Err(RecvTimeoutError::Timeout) => {
                outcome.timed_out = true;
                killed = true;
                let _ = killpg(group, Signal::SIGKILL);
            }
            Err(RecvTimeoutError::Disconnected) => {
                outcome.error = Some("lost track of the hook".to_owned());
                return finish(outcome);
            }
        }
    }
}
