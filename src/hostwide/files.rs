//! The coordination directory's files: opening the directory safely, one
//! locked entry per process and budget, the drain lock.
//!
//! Everything below the directory is opened relative to its file descriptor
//! with `O_NOFOLLOW`, so a symlink planted in it (or swapped for it after the
//! checks) is never followed. Locks are `flock`s, which the kernel drops when
//! the process dies: a SIGKILLed drainer never blocks the budget.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::{
    BudgetId, DRAIN_LEN, DrainRecord, Entry, MAX_ENTRY_LEN, Rejection, drain_lock_name, entry_name,
    pid_of_entry_name,
};

/// Why the directory cannot be used; the caller falls back to in-process
/// coordination.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("coordination-dir {0} is a symlink; refusing it")]
    Symlink(PathBuf),
    #[error("coordination-dir {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "coordination-dir {path} belongs to uid {owner}, not to us (uid {ours}); refusing it \
         (set coordination-group-shared for a directory shared on purpose)"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error(
        "coordination-dir {path} has mode {mode:04o}; it must be 0700 (with \
         coordination-group-shared: no access for others)"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("coordination-dir {path}: cannot {what}: {err}")]
    Io {
        path: PathBuf,
        what: &'static str,
        err: io::Error,
    },
}

fn fstat(fd: &impl AsFd) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// Opens `name` in `dir`, never following a symlink there.
fn openat(dir: &impl AsFd, name: &str, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?)
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// The kind of lock, and whether to wait for it.
#[derive(Clone, Copy)]
enum Lock {
    ExclusiveNow,
    SharedNow,
    Unlock,
}

/// `Ok(false)` when the lock is held by someone else.
fn flock(fd: &impl AsFd, lock: Lock) -> io::Result<bool> {
    let op = match lock {
        Lock::ExclusiveNow => FlockOperation::NonBlockingLockExclusive,
        Lock::SharedNow => FlockOperation::NonBlockingLockShared,
        Lock::Unlock => FlockOperation::Unlock,
    };
    match rustix::fs::flock(fd, op) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks an opened directory: ours, and writable by nobody else unless
/// shared on purpose (then at least not by everybody).
fn check_dir(
    fd: &OwnedFd,
    path: &Path,
    group_shared: bool,
    uid: u32,
    any_owner: bool,
) -> Result<(), DirError> {
    let st = fstat(fd).map_err(|err| DirError::Io {
        path: path.to_owned(),
        what: "stat it",
        err,
    })?;
    if !is_dir(&st) {
        return Err(DirError::NotADirectory(path.to_owned()));
    }
    // A group-shared directory may be root's (made by an admin or a mount).
    let owner_ok = st.st_uid == uid || (group_shared && (st.st_uid == 0 || any_owner));
    if !owner_ok {
        return Err(DirError::Owner {
            path: path.to_owned(),
            owner: st.st_uid,
            ours: uid,
        });
    }
    let mode = st.st_mode & 0o7777;
    let foreign_write = if group_shared { 0o007 } else { 0o077 };
    if mode & foreign_write != 0 {
        return Err(DirError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Opens (creating it if missing, mode 0700, or 0770 when group-shared)
/// `path`, never following a symlink at its last component.
fn open_dir_at(
    parent: Option<&OwnedFd>,
    path: &Path,
    name: &str,
    group_shared: bool,
    uid: u32,
) -> Result<OwnedFd, DirError> {
    // In a group-shared directory, a budget subdirectory may have been made
    // by another member of the group; the directory itself must be ours or root's.
    let any_owner = parent.is_some();
    let io_err = |what, err| DirError::Io {
        path: path.to_owned(),
        what,
        err,
    };
    let mode = if group_shared { 0o770 } else { 0o700 };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open = || -> io::Result<OwnedFd> {
        Ok(match parent {
            Some(parent) => rustix::fs::openat(parent, name, flags, Mode::empty())?,
            None => rustix::fs::open(path, flags, Mode::empty())?,
        })
    };
    let mkdir = || -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        let made = match parent {
            Some(parent) => rustix::fs::mkdirat(parent, name, mode),
            None => rustix::fs::mkdir(path, mode),
        };
        match made {
            Ok(()) => Ok(()),
            // Another process made it meanwhile: fine, it is checked below.
            Err(Errno::EXIST) => Ok(()),
            Err(err) => Err(err.into()),
        }
    };
    let fd = match open() {
        Ok(fd) => fd,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            mkdir().map_err(|err| io_err("create it", err))?;
            open().map_err(|err| io_err("open it", err))?
        }
        Err(err) if err.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
            return Err(DirError::Symlink(path.to_owned()));
        }
        Err(err) if err.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
            // O_NOFOLLOW|O_DIRECTORY on a symlink to a directory gives ENOTDIR
            // on some kernels: tell the two apart.
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(if is_link {
                DirError::Symlink(path.to_owned())
            } else {
                DirError::NotADirectory(path.to_owned())
            });
        }
        Err(err) => return Err(io_err("open it", err)),
    };
    check_dir(&fd, path, group_shared, uid, any_owner)?;
    Ok(fd)
}

/// The coordination directory, checked.
#[derive(Debug)]
pub struct CoordDir {
    fd: OwnedFd,
    path: PathBuf,
    group_shared: bool,
    uid: u32,
}

impl CoordDir {
    pub fn open(path: &Path, group_shared: bool) -> Result<CoordDir, DirError> {
        let uid = euid();
        let fd = open_dir_at(None, path, "", group_shared, uid)?;
        Ok(CoordDir {
            fd,
            path: path.to_owned(),
            group_shared,
            uid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Joins `budget` as `pid`: creates and locks our entry and opens the
    /// budget's drain lock. Fails when the directory is read-only or
    /// otherwise unusable.
    pub fn join(&self, budget: &BudgetId, pid: i32) -> Result<BudgetFiles, DirError> {
        let name = budget.dir_name();
        let path = self.path.join(&name);
        let dir = open_dir_at(Some(&self.fd), &path, &name, self.group_shared, self.uid)?;
        let io_err = |what, err| DirError::Io {
            path: path.clone(),
            what,
            err,
        };
        let entry_name = entry_name(pid);
        let mut attempts = 0;
        let entry = loop {
            attempts += 1;
            if attempts > 100 {
                // Only another opener of the same name in this very process
                // (the same directory under two paths) holds it this long.
                return Err(io_err(
                    "lock our entry",
                    io::Error::from(io::ErrorKind::WouldBlock),
                ));
            }
            let fd = openat(&dir, &entry_name, OFlags::RDWR | OFlags::CREATE, 0o600)
                .map_err(|err| io_err("create our entry", err))?;
            // Exclusive while we live: readers test with LOCK_SH|LOCK_NB,
            // which fails until the kernel drops our lock at our death.
            if !flock(&fd, Lock::ExclusiveNow).map_err(|err| io_err("lock our entry", err))? {
                // A reader testing it as a stale file holds it for an instant.
                std::thread::yield_now();
                continue;
            }
            // A reader may have unlinked the file as stale between our open
            // and our lock: make sure the name is still this file.
            let ours = fstat(&fd).map_err(|err| io_err("stat our entry", err))?;
            match lstat_at(&dir, &entry_name) {
                Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => {
                    break File::from(fd);
                }
                _ => continue,
            }
        };
        entry
            .set_len(0)
            .map_err(|err| io_err("write our entry", err))?;
        let drain = openat(
            &dir,
            &drain_lock_name(self.uid),
            OFlags::RDWR | OFlags::CREATE,
            0o600,
        )
        .map_err(|err| io_err("open the drain lock", err))?;
        let drain = File::from(drain);
        let st = fstat(&drain).map_err(|err| io_err("stat the drain lock", err))?;
        if st.st_uid != self.uid || !is_file(&st) {
            return Err(DirError::Owner {
                path: path.join(drain_lock_name(self.uid)),
                owner: st.st_uid,
                ours: self.uid,
            });
        }
        Ok(BudgetFiles {
            dir,
            path,
            entry,
            entry_name,
            drain,
            drain_held: false,
            pid,
            uid: self.uid,
        })
    }
}

fn lstat_at(dir: &impl AsFd, name: &str) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// One entry as found in the directory.
#[derive(Debug)]
pub enum Found {
    Entry(Entry),
    Rejected { name: String, why: Rejection },
}

/// This process's files in one budget's directory.
#[derive(Debug)]
pub struct BudgetFiles {
    dir: OwnedFd,
    path: PathBuf,
    entry: File,
    entry_name: String,
    drain: File,
    drain_held: bool,
    pid: i32,
    uid: u32,
}

impl BudgetFiles {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Rewrites our entry in place (one write of a fixed size).
    pub fn publish(&self, entry: &Entry) -> io::Result<()> {
        self.entry.write_all_at(&entry.encode(), 0)
    }

    /// Every other process's entry, read and checked (but for freshness and
    /// ownership, which [`Entry::check`] judges).
    pub fn scan(&self, now_ms: u64) -> io::Result<Vec<Found>> {
        // Reads a fresh descriptor of the directory, so from its start.
        let mut dir = rustix::fs::Dir::read_from(&self.dir)?;
        let mut found = Vec::new();
        while let Some(ent) = dir.read() {
            let ent = ent?;
            let Ok(name) = ent.file_name().to_str() else {
                continue;
            };
            let Some(pid) = pid_of_entry_name(name) else {
                continue;
            };
            if pid == self.pid {
                continue;
            }
            found.extend(self.read_entry(name, pid, now_ms));
        }
        Ok(found)
    }

    /// `None` when the entry went away while we looked (its process ended).
    fn read_entry(&self, name: &str, pid: i32, now_ms: u64) -> Option<Found> {
        let rejected = |why| {
            Some(Found::Rejected {
                name: name.to_owned(),
                why,
            })
        };
        let fd = match openat(&self.dir, name, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                return rejected(Rejection::NotAFile);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(_) => return rejected(Rejection::Malformed),
        };
        let Ok(st) = fstat(&fd) else {
            return rejected(Rejection::Malformed);
        };
        if !is_file(&st) {
            return rejected(Rejection::NotAFile);
        }
        if st.st_uid != self.uid {
            return rejected(Rejection::OtherUser);
        }
        if st.st_size > MAX_ENTRY_LEN as i64 {
            return rejected(Rejection::Oversized);
        }
        let file = File::from(fd);
        let mut buf = [0u8; MAX_ENTRY_LEN + 1];
        // One retry: a read can meet a rewrite half-done.
        let mut parsed = Err(Rejection::Malformed);
        for _ in 0..2 {
            parsed = match read_upto(&file, &mut buf) {
                // Its process has joined but not written yet.
                Ok(0) => return None,
                Ok(n) => Entry::parse(&buf[..n]),
                Err(_) => Err(Rejection::Malformed),
            };
            if parsed.is_ok() {
                break;
            }
        }
        let entry = match parsed {
            Ok(entry) => entry,
            Err(why) => return rejected(why),
        };
        // Live processes hold theirs exclusively: if we get it, nobody does.
        match flock(&file, Lock::SharedNow) {
            Ok(true) => {
                let _ = flock(&file, Lock::Unlock);
                // Remove it so it is warned about once, not at every look;
                // its owner (if one is starting) re-checks after locking.
                self.unlink_if_same(name, &st);
                return rejected(Rejection::Dead);
            }
            Ok(false) => {}
            Err(_) => return rejected(Rejection::Malformed),
        }
        match entry.check(pid, st.st_uid, self.uid, now_ms) {
            Ok(()) => Some(Found::Entry(entry)),
            Err(why) => rejected(why),
        }
    }

    fn unlink_if_same(&self, name: &str, st: &Stat) {
        if lstat_at(&self.dir, name).is_ok_and(|now| now.st_ino == st.st_ino) {
            // Failure is harmless: the next scan tries again.
            let _ = rustix::fs::unlinkat(&self.dir, name, AtFlags::empty());
        }
    }

    /// The drain lock's record and whether a drain is in flight now (the
    /// record says so and the lock is really held: a dead drainer's lock is
    /// gone even though its record says active).
    pub fn drain_state(&self) -> io::Result<(DrainRecord, bool)> {
        let mut buf = [0u8; DRAIN_LEN + 1];
        let n = read_upto(&self.drain, &mut buf)?;
        let record = DrainRecord::parse(&buf[..n]).unwrap_or_default();
        if self.drain_held {
            return Ok((record, true));
        }
        if !record.active {
            return Ok((record, false));
        }
        let held = !flock(&self.drain, Lock::ExclusiveNow)?;
        if !held {
            let _ = flock(&self.drain, Lock::Unlock);
        }
        Ok((record, held))
    }

    /// Takes the drain lock if nobody holds it, marking a new drain (epoch
    /// + 1). Returns the new record, or `None` when another process holds it.
    pub fn take_drain(&mut self) -> io::Result<Option<DrainRecord>> {
        if self.drain_held {
            let (record, _) = self.drain_state()?;
            return Ok(Some(record));
        }
        if !flock(&self.drain, Lock::ExclusiveNow)? {
            return Ok(None);
        }
        self.drain_held = true;
        let mut buf = [0u8; DRAIN_LEN + 1];
        let n = read_upto(&self.drain, &mut buf)?;
        let old = DrainRecord::parse(&buf[..n]).unwrap_or_default();
        let record = DrainRecord {
            epoch: old.epoch.wrapping_add(1),
            pid: self.pid,
            active: true,
        };
        self.drain.write_all_at(&record.encode(), 0)?;
        Ok(Some(record))
    }

    /// Ends our drain: the record says inactive (the epoch stays, so others
    /// see a drain happened) and the lock is released.
    pub fn release_drain(&mut self) {
        if !self.drain_held {
            return;
        }
        let mut buf = [0u8; DRAIN_LEN + 1];
        if let Ok(n) = read_upto(&self.drain, &mut buf) {
            let mut record = DrainRecord::parse(&buf[..n]).unwrap_or_default();
            record.active = false;
            let _ = self.drain.write_all_at(&record.encode(), 0);
        }
        let _ = flock(&self.drain, Lock::Unlock);
        self.drain_held = false;
    }

    pub fn drain_held(&self) -> bool {
        self.drain_held
    }
}

impl Drop for BudgetFiles {
    fn drop(&mut self) {
        self.release_drain();
        if let Ok(st) = fstat(&self.entry) {
            self.unlink_if_same(&self.entry_name.clone(), &st);
        }
    }
}

fn read_upto(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    //! `flock` locks belong to open files, so two joins in one process
    //! behave like two processes: enough to test the lock protocol here.

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn budget() -> BudgetId {
        BudgetId::Root { dev: 7, ino: 8 }
    }

    fn entry(pid: i32, uid: u32) -> Entry {
        Entry {
            pid,
            uid,
            cpu: 0.5,
            wants: true,
            interval_ms: 1000,
            seq: 1,
            at_ms: 1_000_000,
        }
    }

    #[test]
    fn drain_lock_serializes_and_counts_drains() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CoordDir::open(&tmp.path().join("c"), false).unwrap();
        let mut a = dir.join(&budget(), 101).unwrap();
        let mut b = dir.join(&budget(), 102).unwrap();
        assert!(!b.drain_state().unwrap().1);
        let first = a.take_drain().unwrap().expect("free lock");
        assert_eq!((first.epoch, first.pid, first.active), (1, 101, true));
        // Held: B cannot take it and sees it in flight.
        assert_eq!(b.take_drain().unwrap(), None);
        assert_eq!(b.drain_state().unwrap(), (first, true));
        a.release_drain();
        let (record, in_flight) = b.drain_state().unwrap();
        assert_eq!((record.epoch, record.active, in_flight), (1, false, false));
        assert_eq!(b.take_drain().unwrap().unwrap().epoch, 2);
        // A drainer that goes away (dies) frees the lock though its record
        // still says active.
        drop(b);
        let (record, in_flight) = a.drain_state().unwrap();
        assert_eq!((record.epoch, in_flight), (2, false));
    }

    #[test]
    fn scan_sees_live_entries_and_clears_dead_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CoordDir::open(&tmp.path().join("c"), false).unwrap();
        let uid = euid();
        let a = dir.join(&budget(), 201).unwrap();
        let b = dir.join(&budget(), 202).unwrap();
        // Joined but not written yet: not an entry, not a warning.
        assert!(a.scan(1_000_000).unwrap().is_empty());
        b.publish(&entry(202, uid)).unwrap();
        let found = a.scan(1_000_000).unwrap();
        assert!(
            matches!(found.as_slice(), [Found::Entry(e)] if e.pid == 202),
            "{found:?}"
        );
        // A well-formed entry nobody holds: its process died.
        let path = a.path().join("203.entry");
        std::fs::write(&path, entry(203, uid).encode()).unwrap();
        let found = a.scan(1_000_000).unwrap();
        assert!(
            found.iter().any(|f| matches!(
                f,
                Found::Rejected {
                    why: Rejection::Dead,
                    ..
                }
            )),
            "{found:?}"
        );
        assert!(!path.exists(), "the dead entry is cleared away");
        // B leaves: its entry goes with it.
        drop(b);
        assert!(a.scan(1_000_000).unwrap().is_empty());
    }

    /// A symlink planted as an entry is never followed (O_NOFOLLOW), even
    /// to a well-formed entry of ours.
    #[test]
    fn symlinked_entry_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CoordDir::open(&tmp.path().join("c"), false).unwrap();
        let a = dir.join(&budget(), 301).unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, entry(302, euid()).encode()).unwrap();
        std::os::unix::fs::symlink(&target, a.path().join("302.entry")).unwrap();
        let found = a.scan(1_000_000).unwrap();
        assert!(
            matches!(
                found.as_slice(),
                [Found::Rejected {
                    why: Rejection::NotAFile,
                    ..
                }]
            ),
            "{found:?}"
        );
    }

    #[test]
    fn directory_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = CoordDir::open(&path, false).unwrap_err();
        assert!(matches!(err, DirError::Mode { mode: 0o770, .. }), "{err}");
        // Shared with the group on purpose: accepted; open to others: never.
        assert!(CoordDir::open(&path, true).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            CoordDir::open(&path, true).unwrap_err(),
            DirError::Mode { .. }
        ));
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            CoordDir::open(&link, true).unwrap_err(),
            DirError::Symlink(_)
        ));
        // Missing: created 0700.
        let fresh = tmp.path().join("new");
        CoordDir::open(&fresh, false).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }
}
