//! Where host files live, and reading them without panicking.
//!
//! Everything is resolved under a root so that tests can point the meter at a
//! fixture tree; in production the root is `/`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::LoadError;

/// The root under which `/proc`, `/sys` and cgroup mount points are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    pub root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self::system()
    }
}

impl HostPaths {
    /// The real host.
    pub fn system() -> Self {
        Self::under("/")
    }

    /// A fake host rooted at `root` (a fixture directory in tests).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `root/proc/<rel>`.
    pub fn proc_file(&self, rel: &str) -> PathBuf {
        self.root.join("proc").join(rel)
    }

    /// `root/proc/<pid>/<name>`.
    pub fn pid_file(&self, pid: i32, name: &str) -> PathBuf {
        self.root.join("proc").join(pid.to_string()).join(name)
    }

    /// `root/proc/<pid>/task/<tid>/<name>`.
    pub fn task_file(&self, pid: i32, tid: i32, name: &str) -> PathBuf {
        self.pid_file(pid, "task").join(tid.to_string()).join(name)
    }

    /// Re-roots an absolute host path (a mount point from mountinfo) under `root`.
    ///
    /// `..` components are dropped rather than followed so a hostile or odd
    /// mount point cannot lead outside the root.
    pub fn reroot(&self, host_path: &Path) -> PathBuf {
        let mut out = self.root.clone();
        for component in host_path.components() {
            if let Component::Normal(part) = component {
                out.push(part);
            }
        }
        out
    }
}

/// Reads `path` into `buf` (cleared first), so a meter sampling every second
/// reuses one allocation.
pub(crate) fn read_into(path: &Path, buf: &mut String) -> Result<(), LoadError> {
    buf.clear();
    File::open(path)
        .and_then(|mut file| file.read_to_string(buf))
        .map(|_| ())
        .map_err(|error| LoadError::read(path, error))
}

/// Like [`read_into`], but reports a missing file as `Ok(false)`: some files
/// (cgroup quotas, the online CPU list) are legitimately absent.
pub(crate) fn read_if_present(path: &Path, buf: &mut String) -> Result<bool, LoadError> {
    buf.clear();
    match File::open(path).and_then(|mut file| file.read_to_string(buf)) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(LoadError::read(path, error)),
    }
}

/// Reads a whole small file into a fresh string (discovery only, not the sampling loop).
pub(crate) fn read_string(path: &Path) -> Result<String, LoadError> {
    let mut buf = String::new();
    read_into(path, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_resolved_under_the_root() {
        let paths = HostPaths::under("/fx");
        assert_eq!(paths.proc_file("stat"), Path::new("/fx/proc/stat"));
        assert_eq!(
            paths.pid_file(42, "cgroup"),
            Path::new("/fx/proc/42/cgroup")
        );
        assert_eq!(
            paths.task_file(42, 43, "stat"),
            Path::new("/fx/proc/42/task/43/stat")
        );
        assert_eq!(
            HostPaths::system().proc_file("pressure/cpu"),
            Path::new("/proc/pressure/cpu")
        );
    }

    #[test]
    fn reroot_keeps_the_path_inside_the_root() {
        let paths = HostPaths::under("/fx");
        assert_eq!(
            paths.reroot(Path::new("/sys/fs/cgroup/cpu,cpuacct")),
            Path::new("/fx/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(paths.reroot(Path::new("/../etc")), Path::new("/fx/etc"));
        assert_eq!(
            HostPaths::system().reroot(Path::new("/sys/fs/cgroup")),
            Path::new("/sys/fs/cgroup")
        );
    }

    #[test]
    fn read_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let mut buf = String::from("stale");
        let err = read_into(&missing, &mut buf).unwrap_err().to_string();
        assert!(err.starts_with("cannot read "), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(!read_if_present(&missing, &mut buf).unwrap());
        assert!(buf.is_empty());
    }
}
