//! Errors of the load meter. Each message names the file involved, because the
//! caller logs them as warnings and an operator must be able to act on them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(thiserror::Error, Debug)]
pub enum LoadError {
    /// The io error is part of the message (not a `source`) so a one-line log
    /// shows it without walking the error chain.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },

    #[error("malformed {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },

    #[error("counter went backwards in {} ({old} -> {new}); re-baselining", path.display())]
    CounterWentBackwards { path: PathBuf, old: u64, new: u64 },

    #[error("no cpu controller found for pid {pid} in {}", path.display())]
    NoCpuController { pid: i32, path: PathBuf },

    #[error("cgroup {cgroup} of pid {pid} not found at {}: {detail}", path.display())]
    CgroupNotFound {
        pid: i32,
        cgroup: String,
        path: PathBuf,
        detail: String,
    },

    #[error("psi not available: {} ({detail})", path.display())]
    PsiUnavailable { path: PathBuf, detail: String },

    #[error("no time elapsed since the previous sample of {}; no load computed", path.display())]
    NoTimeElapsed { path: PathBuf },

    #[error(
        "only {elapsed:?} elapsed since the previous sample of {} (need {min:?} for a \
         meaningful reading); keeping the previous baseline",
        path.display()
    )]
    WindowTooShort {
        path: PathBuf,
        elapsed: Duration,
        min: Duration,
    },

    #[error(
        "took a new baseline from {} after an earlier error; load is available from the next sample",
        path.display()
    )]
    Rebaselined { path: PathBuf },

    #[error(
        "cgroup directory {} is gone; found the process's cgroup again: {now}; \
         load is available from the next sample",
        gone.display()
    )]
    Relocated { gone: PathBuf, now: String },

    #[error("unknown load source {value:?}; valid values: auto, process, cgroup, system, psi")]
    UnknownSource { value: String },
}

impl LoadError {
    pub(crate) fn read(path: &Path, error: io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            error,
        }
    }

    pub(crate) fn malformed(path: &Path, detail: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }
}
