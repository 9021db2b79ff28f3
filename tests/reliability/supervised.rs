//! `cpuguard-run` as a container platform drives it: the real binary, a real
//! signal, its JSON result; bounded so a hang fails instead of blocking CI.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_cpuguard-run");

pub struct Supervised {
    child: Child,
}

pub struct Finished {
    pub code: Option<i32>,
    pub json: Value,
    pub stderr: String,
}

impl Supervised {
    pub fn spawn(args: &[&str], description: &str) -> Supervised {
        let child = Command::new(BIN)
            .args(args)
            .arg(description)
            .env_remove("GST_PLUGIN_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpuguard-run starts");
        Supervised { child }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal sent");
    }

    /// Waits up to `limit` for the run to end; a run still going is killed and
    /// reported as a hang.
    pub fn finish(mut self, limit: Duration) -> Result<Finished, String> {
        let deadline = Instant::now() + limit;
        // Pipes are drained on threads: a chatty child must not block on a full pipe.
        let mut out = self.child.stdout.take().expect("stdout");
        let mut err = self.child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        let Some(status) = status else {
            return Err(format!("cpuguard-run hung for {limit:?}:\n{stderr}"));
        };
        let line = stdout
            .lines()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| format!("no JSON on stdout:\n{stderr}"))?;
        let json =
            serde_json::from_str(line).map_err(|e| format!("bad JSON {line:?}: {e}\n{stderr}"))?;
        Ok(Finished {
            code: status.code(),
            json,
            stderr,
        })
    }
}

/// An RFC 3339 stamp of the report as a point in time.
pub fn stamp(json: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339(json.as_str()?).ok()
}

/// When the run entered `state` (e.g. `ACTIVE`).
pub fn state_at(report: &Value, state: &str) -> Option<SystemTime> {
    report["states"]
        .as_array()?
        .iter()
        .find(|s| s["state"] == state)
        .and_then(|s| stamp(&s["at"]))
}
