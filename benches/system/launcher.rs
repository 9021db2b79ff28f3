//! Peak RSS of a command, read from a small process.
//!
//! A child's `ru_maxrss` starts from the high-water RSS of the image it
//! replaced at exec, and a child spawned with vfork (std's `Command` here)
//! replaces its parent's: every command this bench spawns would show at
//! least the bench's own peak, which pipelines run in-process raise past a
//! recorder's. So the bench runs itself again as a launcher (a fresh image,
//! a few MiB, before GStreamer is set up), which spawns the command and
//! reports its `ru_maxrss`.
//!
//! The launcher writes two lines to stdout: `pid <pid>` once the command
//! runs, and `exit <wait status> <ru_maxrss KiB> <launcher VmHWM KiB>` once
//! it was reaped. Its own peak lets the reader check the figure is the
//! command's.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};

/// Set in the launcher's environment: the rest of argv is the command.
const MODE: &str = "CPUGUARD_BENCH_LAUNCHER";

/// In the launcher (the bench binary started by [`Launched::spawn`]): runs
/// the command and reports; `None` in the bench itself.
pub fn run_if_launcher() -> Option<ExitCode> {
    std::env::var_os(MODE)?;
    let mut args = std::env::args_os().skip(1);
    let program = args.next()?;
    Some(match launch(program, args.collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench launcher: {err}");
            ExitCode::FAILURE
        }
    })
}

fn launch(program: OsString, args: Vec<OsString>) -> Result<(), String> {
    let child = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))?;
    let pid = child.id() as i32;
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {pid}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    let (status, max_rss_kib) = wait_with_rusage(pid)?;
    // Reaped above; dropping the handle neither waits nor kills.
    drop(child);
    let own = own_hwm_kib()?;
    writeln!(out, "exit {status} {max_rss_kib} {own}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

/// This process's own high-water RSS (its image only, unlike `ru_maxrss`).
fn own_hwm_kib() -> Result<i64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_owned())
}

/// Reaps `pid` and returns its wait status and peak RSS (KiB). std's `wait`
/// gives no rusage, and /proc/<pid>/status is gone once the process exits.
fn wait_with_rusage(pid: i32) -> Result<(i32, i64), String> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills; both pointers are valid
    // for the duration of the call.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()));
    }
    Ok((status, usage.ru_maxrss))
}

/// A command running under a launcher.
pub struct Launched {
    launcher: Child,
    lines: BufReader<ChildStdout>,
    /// The command's pid, to signal it.
    pub pid: i32,
}

/// How a launched command ended.
pub struct Ended {
    pub status: i32,
    pub max_rss_kib: i64,
}

impl Launched {
    pub fn spawn(program: &OsString, args: &[OsString]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
        let mut launcher = Command::new(exe)
            .env(MODE, "1")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the launcher: {e}"))?;
        let stdout = launcher.stdout.take().ok_or("the launcher has no stdout")?;
        let mut lines = BufReader::new(stdout);
        let pid = next_line(&mut lines)?
            .strip_prefix("pid ")
            .and_then(|pid| pid.parse().ok())
            .ok_or("the launcher did not say the pid")?;
        Ok(Launched {
            launcher,
            lines,
            pid,
        })
    }

    /// Waits for the command to end (bounded by the command itself: the
    /// caller has signalled it).
    pub fn wait(mut self) -> Result<Ended, String> {
        let line = next_line(&mut self.lines)?;
        let _ = self.launcher.wait();
        let fields: Vec<i64> = line
            .strip_prefix("exit ")
            .map(|rest| rest.split(' ').filter_map(|f| f.parse().ok()).collect())
            .unwrap_or_default();
        let [status, max_rss_kib, launcher_kib] = fields[..] else {
            return Err(format!("the launcher said {line:?}"));
        };
        if max_rss_kib <= launcher_kib {
            return Err(format!(
                "peak RSS cannot be read: the launcher's own peak ({launcher_kib} KiB) is at \
                 or above the command's ru_maxrss ({max_rss_kib} KiB)"
            ));
        }
        Ok(Ended {
            status: i32::try_from(status).map_err(|e| e.to_string())?,
            max_rss_kib,
        })
    }
}

fn next_line(lines: &mut BufReader<ChildStdout>) -> Result<String, String> {
    let mut line = String::new();
    match lines.read_line(&mut line) {
        Ok(0) => Err("the launcher ended without a word (see its stderr)".to_owned()),
        Ok(_) => Ok(line.trim_end().to_owned()),
        Err(e) => Err(format!("reading the launcher: {e}")),
    }
}
