//! Where a multi run's workers coordinate their drains: the user's
//! `--coordination-dir` (or `$CPUGUARD_COORDINATION_DIR`), else a private
//! directory made for the run.
//!
//! Private by default, not the host-wide `auto`: a multi run must coordinate
//! its own workers whatever else runs on the host, and two runs (two users,
//! or tests in parallel with simulated loads) must not hold each other's
//! drains through `/run/cpuguard`. `--coordination-dir auto` joins the
//! host-wide directory; `none` lets every worker judge alone.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The directory the workers are given; a private one is removed on drop.
#[derive(Debug)]
pub enum Coordination {
    /// The user's setting (`auto`, `none` or a path), passed on as it is.
    Given(String),
    Private(PathBuf),
}

impl Coordination {
    /// The user's setting, or a new 0700 directory under the temporary
    /// directory (`cpuguard-run-<pid>-<n>`, `n` from 0 until one is free).
    pub fn new(given: Option<&str>) -> Result<Self, String> {
        if let Some(given) = given {
            return Ok(Coordination::Given(given.to_owned()));
        }
        let base = std::env::temp_dir();
        let pid = std::process::id();
        for n in 0..100 {
            let path = base.join(format!("cpuguard-run-{pid}-{n}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Coordination::Private(path)),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(format!(
                        "cannot create the workers' coordination directory {}: {err}",
                        path.display()
                    ));
                }
            }
        }
        Err(format!(
            "cannot create the workers' coordination directory: every \
             cpuguard-run-{pid}-N in {} exists",
            base.display()
        ))
    }

    /// The value of the workers' `--coordination-dir`.
    pub fn setting(&self) -> String {
        match self {
            Coordination::Given(given) => given.clone(),
            Coordination::Private(path) => path.display().to_string(),
        }
    }

    pub fn private_path(&self) -> Option<&Path> {
        match self {
            Coordination::Private(path) => Some(path),
            Coordination::Given(_) => None,
        }
    }
}

impl Drop for Coordination {
    fn drop(&mut self) {
        if let Coordination::Private(path) = self {
            // Only the workers' entries are in it, and they have all exited.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_given_setting_is_passed_on() {
        let given = Coordination::new(Some("none")).unwrap();
        assert_eq!(given.setting(), "none");
        assert!(given.private_path().is_none());
    }

    #[test]
    fn the_private_directory_is_0700_distinct_and_removed() {
        let first = Coordination::new(None).unwrap();
        let second = Coordination::new(None).unwrap();
        let path = first.private_path().unwrap().to_owned();
        assert_ne!(Some(path.as_path()), second.private_path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(first.setting(), path.display().to_string());
        std::fs::write(path.join("entry"), "x").unwrap();
        drop(first);
        assert!(!path.exists());
    }
}
