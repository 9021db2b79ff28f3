//! Multi-pipeline mode: `--pipeline DESC` (repeated) and/or `--jobs FILE`.
//!
//! Every pipeline runs in a worker process (this program with `--worker ID`,
//! in single mode). Workers on one host see the same load, so left alone
//! they would all drain at once; their cpuguard elements coordinate as those
//! of any cpuguard processes do, through one coordination directory (see
//! `coordination`): one drain at a time, the heaviest process first. The
//! parent starts the workers, forwards signals, admits jobs, hears each
//! worker's states on its channel (`crate::channel`), escalates a drain past
//! its timeout, and collects the results.
//!
//! Modules: `parent` (the loop: signals, events, drain timing, escalation,
//! results), `lifecycle` (what each event does to one worker), `worker`
//! (spawning a worker and reading its output), `inbox` (its events into the
//! parent's GLib main loop),
//! `coordination` (the workers' coordination directory), `admission`
//! (`--max-utilization`), `timing` (what admission sampling costs), `plan`
//! (the jobs and settings, checked before any worker starts).

mod admission;
mod coordination;
mod inbox;
mod lifecycle;
mod parent;
mod plan;
mod timing;
mod worker;

use crate::cli::Cli;
use crate::exit;
use crate::progress::fatal;
use crate::signals::Router;

/// Runs multi-pipeline mode to the end; returns the exit code.
pub fn run(cli: &Cli, router: &Router) -> u8 {
    let plan = match plan::plan(cli) {
        Ok(plan) => plan,
        Err(err) => {
            fatal!("{err}");
            return exit::USAGE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            fatal!("cannot find this program to start workers: {err}");
            return exit::FAILED;
        }
    };

    parent::run(plan, exe, router).unwrap_or_else(|err| {
        fatal!("{err}");
        exit::FAILED
    })
}
