//! The one harness for driving the real `cpuguard-run` binary: spawn it, read
//! its stdout and stderr line by line as they come, signal it, wait for it to
//! exit within a bound that only catches hangs.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cpuguard-run");
/// Upper bound for anything that should happen "soon": only catches hangs.
pub const HANG: Duration = Duration::from_secs(60);
/// How long the readers may take to see the pipes close once the process has
/// exited (workers of a killed parent may hold them a little longer).
const PIPES_CLOSE: Duration = Duration::from_secs(5);
/// How long a run left behind by a failed assertion gets to stop on SIGINT
/// (a multi-pipeline parent then stops and reaps its workers) before SIGKILL.
const CLEANUP_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A running `cpuguard-run`.
pub struct Run {
    pub child: Child,
    events: Receiver<(Stream, String)>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// How a run ended.
pub struct Ended {
    pub status: ExitStatus,
    /// Everything printed on stdout, line by line as printed.
    pub stdout: String,
    pub stderr: String,
    /// When the process was seen to exit.
    pub at: Instant,
}

impl Ended {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The non-blank stdout lines.
    pub fn stdout_lines(&self) -> Vec<&str> {
        non_blank(&self.stdout)
    }

    /// The one JSON object a single run printed on stdout.
    pub fn json(&self) -> Value {
        let lines = self.stdout_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected one JSON line on stdout, got {:?}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        parse_json(lines[0])
    }

    /// Multi-pipeline mode: every worker's result, sorted by worker id, and
    /// the summary (the last line).
    pub fn results(&self) -> (Vec<Value>, Value) {
        let mut values: Vec<Value> = self.stdout_lines().into_iter().map(parse_json).collect();
        let summary = values.pop().expect("a summary line");
        assert_eq!(summary["summary"], true, "last line is the summary");
        values.sort_by_key(|v| v["worker"].as_u64());
        (values, summary)
    }
}

fn non_blank(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn parse_json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// The command for `cpuguard-run args...`, pipes set up for [`spawn_command`].
pub fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        // The binary registers cpuguard statically: it must not need the path.
        .env_remove("GST_PLUGIN_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

pub fn spawn(args: &[String]) -> Run {
    spawn_command(command(args))
}

/// Starts `cmd` (stdout and stderr piped) and reads both as they come.
pub fn spawn_command(mut cmd: Command) -> Run {
    let mut child = cmd.spawn().expect("cpuguard-run starts");
    let (tx, events) = channel();
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let out_pipe = child.stdout.take().expect("stdout piped");
    let err_pipe = child.stderr.take().expect("stderr piped");
    read_lines(out_pipe, Stream::Stdout, stdout.clone(), tx.clone());
    read_lines(err_pipe, Stream::Stderr, stderr.clone(), tx);
    Run {
        child,
        events,
        stdout,
        stderr,
    }
}

fn read_lines(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    log: Arc<Mutex<String>>,
    tx: Sender<(Stream, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
            let _ = tx.send((stream, line));
        }
    });
}

impl Run {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Multi-pipeline mode: the pid the parent printed for worker `id`.
    pub fn worker_pid(&self, id: u32) -> i32 {
        let stderr = self.stderr_so_far();
        let needle = format!("worker {id} started: pid ");
        let line = stderr
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no start line for worker {id}:\n{stderr}"));
        let rest = &line[line.find(&needle).unwrap() + needle.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The non-blank stdout lines printed so far.
    pub fn stdout_so_far(&self) -> Vec<String> {
        non_blank(&self.stdout.lock().unwrap())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a line on `stream` for which `pred` holds; fails (and kills
    /// the run) after `timeout` or when the output closes first.
    #[track_caller]
    pub fn wait_line(
        &mut self,
        stream: Stream,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((s, line)) if s == stream && pred(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {stream:?} line as expected within {timeout:?}; stderr:\n{}",
                        self.stderr_so_far()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "output closed first ({status:?}); stderr:\n{}",
                        self.stderr_so_far()
                    );
                }
            }
        }
    }

    /// Waits until a stderr line contains `needle`.
    #[track_caller]
    pub fn wait_stderr(&mut self, needle: &str) -> String {
        self.wait_line(Stream::Stderr, HANG, |l| l.contains(needle))
    }

    /// A single run's pipeline is PLAYING: signals now act on a running recording.
    #[track_caller]
    pub fn wait_active(&mut self) {
        self.wait_stderr("state ACTIVE");
    }

    /// Multi-pipeline mode: waits until every worker in `ids` says it is
    /// PLAYING (in any order).
    pub fn wait_workers_active(&mut self, ids: &[u32]) {
        let deadline = Instant::now() + HANG;
        while !ids.iter().all(|id| {
            self.stderr_so_far()
                .contains(&format!("worker {id}: state ACTIVE"))
        }) {
            assert!(
                Instant::now() < deadline,
                "workers {ids:?} not all ACTIVE:\n{}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Multi-pipeline mode: the result line of worker `id`, as soon as it is printed.
    #[track_caller]
    pub fn wait_result(&mut self, id: u64) -> Value {
        let line = self.wait_line(Stream::Stdout, HANG, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v["worker"] == id)
        });
        parse_json(&line)
    }

    pub fn signal(&self, signal: Signal) -> Instant {
        kill(self.pid(), signal).expect("signal sent");
        Instant::now()
    }

    /// Waits for the process to exit, then for its output; kills it and fails
    /// after `timeout`.
    #[track_caller]
    pub fn wait_exit(mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cpuguard-run did not exit within {timeout:?}:\n{}",
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let at = Instant::now();
        // The readers finish once the pipes close.
        while self.events.recv_timeout(PIPES_CLOSE).is_ok() {}
        Ended {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr_so_far(),
            at,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed assertion must not leave recorders running: SIGINT makes a
        // multi-pipeline parent stop (and reap) its workers.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGINT);
            let deadline = Instant::now() + CLEANUP_GRACE;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Splits a gst-launch style description into arguments, as a shell would.
pub fn args_of(description: &str) -> Vec<String> {
    description.split_whitespace().map(str::to_owned).collect()
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn assert_no_panic(ended: &Ended) {
    assert!(
        !ended.stderr.contains("panicked"),
        "panic:\n{}",
        ended.stderr
    );
}

pub fn str_field<'a>(json: &'a Value, name: &str) -> &'a str {
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {json}"))
}

/// The names of the states a result went through, in order.
pub fn states(json: &Value) -> Vec<String> {
    json["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| s["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}
