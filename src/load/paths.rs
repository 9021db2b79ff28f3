//! Where host files live, and reading them without panicking.
//!
//! Everything is resolved under a root so that tests can point the meter at a
//! fixture tree; in production the root is `/`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

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

    /// Whether this is the real host's root, whose `/proc` and `/sys` files
    /// are generated afresh by every read from offset 0.
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
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

/// A file read at every sample. On the real host (`root` is `/`) it is
/// opened once and re-read with one `pread` at offset 0, which makes the
/// kernel generate its content afresh: one syscall a sample instead of
/// open, statx, lseek, reads and close. Elsewhere (fixtures, a host mount
/// whose files a test may replace) it is opened at every read, as before.
/// A failed read closes the held file, so the next read opens the path again.
pub(crate) struct HostFile {
    path: PathBuf,
    /// `None`: open at every read.
    held: Option<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    file: Option<File>,
    bytes: Vec<u8>,
}

/// Largest content read through a held file (`/proc/stat` of a big host is
/// some tens of KiB).
const MAX_HELD_BYTES: usize = 16 << 20;

impl HostFile {
    pub fn new(paths: &HostPaths, path: PathBuf) -> Self {
        Self {
            path,
            held: paths.is_system().then(Mutex::default),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Like [`read_into`].
    pub fn read_into(&self, buf: &mut String) -> Result<(), LoadError> {
        self.read(buf)
            .map_err(|error| LoadError::read(&self.path, error))
    }

    /// Like [`read_if_present`].
    pub fn read_if_present(&self, buf: &mut String) -> Result<bool, LoadError> {
        match self.read(buf) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                buf.clear();
                Ok(false)
            }
            Err(error) => Err(LoadError::read(&self.path, error)),
        }
    }

    fn read(&self, buf: &mut String) -> io::Result<()> {
        buf.clear();
        let Some(held) = &self.held else {
            return File::open(&self.path)
                .and_then(|mut file| file.read_to_string(buf))
                .map(|_| ());
        };
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        let Held { file, bytes } = &mut *held;
        let opened = match file {
            Some(file) => file,
            None => file.insert(File::open(&self.path)?),
        };
        match pread_whole(opened, bytes) {
            Ok(len) => {
                let text = std::str::from_utf8(&bytes[..len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                buf.push_str(text);
                Ok(())
            }
            Err(error) => {
                *file = None;
                Err(error)
            }
        }
    }
}

/// Reads the whole file from offset 0 in one `pread` when `bytes` is large
/// enough; otherwise grows it and reads again from 0 (a consistent copy,
/// never two halves of different generations). Returns the length.
fn pread_whole(file: &File, bytes: &mut Vec<u8>) -> io::Result<usize> {
    if bytes.is_empty() {
        bytes.resize(4096, 0);
    }
    loop {
        let len = loop {
            match file.read_at(bytes, 0) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if len < bytes.len() {
            return Ok(len);
        }
        if bytes.len() >= MAX_HELD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_HELD_BYTES} bytes"),
            ));
        }
        bytes.resize(bytes.len() * 2, 0);
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
    fn held_files_read_fresh_kernel_content() {
        // /proc/uptime moves every 10 ms: a held file must not serve a stale copy.
        let file = HostFile::new(&HostPaths::system(), "/proc/uptime".into());
        assert!(file.held.is_some());
        let mut first = String::new();
        file.read_into(&mut first).unwrap();
        let mut next = String::new();
        let start = std::time::Instant::now();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(20));
            file.read_into(&mut next).unwrap();
            if next != first {
                break;
            }
            assert!(start.elapsed().as_secs() < 5, "{first:?} never changed");
        }
        assert!(
            next.ends_with('\n') && next.split_whitespace().count() == 2,
            "{next:?}"
        );
    }

    #[test]
    fn held_files_grow_their_buffer_and_reopen_after_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let big = "x".repeat(10_000);
        std::fs::write(&path, &big).unwrap();
        // Force holding on a regular file to exercise the pread path.
        let file = HostFile {
            path: path.clone(),
            held: Some(Mutex::default()),
        };
        let mut buf = String::new();
        file.read_into(&mut buf).unwrap();
        assert_eq!(buf, big);
        std::fs::write(&path, "short\n").unwrap();
        file.read_into(&mut buf).unwrap();
        assert_eq!(buf, "short\n");
        let missing = HostFile {
            path: dir.path().join("nope"),
            held: Some(Mutex::default()),
        };
        assert!(!missing.read_if_present(&mut buf).unwrap());
        let err = missing.read_into(&mut buf).unwrap_err().to_string();
        assert!(err.contains("nope: No such file"), "{err}");
        std::fs::write(dir.path().join("nope"), "1\n").unwrap();
        assert!(missing.read_if_present(&mut buf).unwrap());
        assert_eq!(buf, "1\n");
    }

    #[test]
    fn fixture_files_are_opened_at_every_read() {
        let dir = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(dir.path());
        let path = dir.path().join("f");
        std::fs::write(&path, "a").unwrap();
        let file = HostFile::new(&paths, path.clone());
        assert!(file.held.is_none());
        let mut buf = String::new();
        file.read_into(&mut buf).unwrap();
        // Replaced by rename, as a test may do: the new file is read.
        let tmp = dir.path().join("g");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        file.read_into(&mut buf).unwrap();
        assert_eq!(buf, "b");
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
