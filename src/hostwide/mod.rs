//! Cross-process coordination of cpuguards that judge one CPU budget.
//!
//! Pure rules, no I/O: what an entry in the coordination directory says and
//! when it is to be believed, which budget a load source judges, where the
//! directory is, and which process drains first. The files themselves (locks,
//! reads, writes) are in [`files`]; the element wires both into its sampler.
//!
//! Each guarded process keeps one small entry per budget (its pid, uid,
//! whole-process CPU and whether its policy wants a drain), locked while it
//! lives, and one drain lock per budget serializes drains across processes.
//! Everything read from the directory is validated here: an entry that is
//! malformed, oversized, stale or another user's is ignored, never trusted.

pub mod files;

use std::fmt;
use std::path::PathBuf;

/// Size every entry is written at (padded), so that a rewrite in place
/// never leaves a longer old tail behind.
pub const ENTRY_LEN: usize = 160;
/// Bytes read from an entry at most: anything longer is refused unread.
pub const MAX_ENTRY_LEN: usize = 256;
/// Size the drain lock's content is written at.
pub const DRAIN_LEN: usize = 64;

const ENTRY_MAGIC: &str = "cpuguard-entry/1";
const DRAIN_MAGIC: &str = "cpuguard-drain/1";
/// CPUs above this are not a real process's rate: the entry is refused.
const MAX_CPUS: f64 = 1.0e6;

/// The CPU budget a group of cpuguards judges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BudgetId {
    /// The whole host, named by its kernel boot id (the same in every
    /// container and mount namespace of one boot).
    Host(String),
    /// A host read under another root (`root` property) that has no boot id:
    /// named by the device and inode of that root's `proc` directory.
    Root { dev: u64, ino: u64 },
    /// A cgroup, named by its directory's device and inode: stable across
    /// cgroup namespaces, where the path a process sees differs.
    Cgroup { dev: u64, ino: u64 },
}

impl BudgetId {
    /// The host named by `/proc/sys/kernel/random/boot_id`; `None` if the
    /// text is not a boot id (a UUID in its 36-character form).
    pub fn host(boot_id: &str) -> Option<Self> {
        let id = boot_id.trim();
        let well_formed = id.len() == 36
            && id.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        well_formed.then(|| BudgetId::Host(id.to_ascii_lowercase()))
    }

    /// The name of the budget's subdirectory (safe: hex, digits and dashes).
    pub fn dir_name(&self) -> String {
        match self {
            BudgetId::Host(id) => format!("host-{id}"),
            BudgetId::Root { dev, ino } => format!("root-{dev}-{ino}"),
            BudgetId::Cgroup { dev, ino } => format!("cgroup-{dev}-{ino}"),
        }
    }

    /// What a cross-process choice on this budget spans, for the
    /// `cpuguard-drain` message's `scope`.
    pub fn scope(&self) -> Scope {
        match self {
            BudgetId::Host(_) | BudgetId::Root { .. } => Scope::Host,
            BudgetId::Cgroup { .. } => Scope::Cgroup,
        }
    }
}

impl fmt::Display for BudgetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dir_name())
    }
}

/// How far the victim choice reached (the `scope` field of `cpuguard-drain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only this process's cpuguards were compared (coordination off, not
    /// possible, or `load-source=process`).
    Process,
    /// Every guarded process judging the host's load.
    Host,
    /// Every guarded process judging one cgroup's load.
    Cgroup,
    /// No choice: the application asked (`drain` action).
    Request,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::Host => "host",
            Scope::Cgroup => "cgroup",
            Scope::Request => "request",
        }
    }
}

/// Where coordination files go: the `coordination-dir` setting resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirSettingError {
    #[error(
        "coordination-dir must be `auto`, `none` or an absolute path, got {0:?} (a relative \
         path would depend on each process's working directory)"
    )]
    Relative(String),
    #[error(
        "CPUGUARD_COORDINATION_DIR (followed by coordination-dir=auto) must be `none` or an \
         absolute path, got {0:?}"
    )]
    Env(String),
}

/// Environment variable that `auto` follows first (also `cpuguard-run`'s
/// `--coordination-dir`): one setting for every process of a container.
pub const DIR_ENV: &str = "CPUGUARD_COORDINATION_DIR";

/// `auto` → `$CPUGUARD_COORDINATION_DIR` when set (to `none` or a path), else
/// `/run/cpuguard` for root, else `$XDG_RUNTIME_DIR/cpuguard`, else
/// `/tmp/cpuguard-<uid>`; `none` or empty → `None` (coordination off); an
/// absolute path → itself.
pub fn resolve_dir(
    setting: &str,
    uid: u32,
    xdg_runtime_dir: Option<&str>,
    env_dir: Option<&str>,
) -> Result<Option<PathBuf>, DirSettingError> {
    let setting = setting.trim();
    if setting.is_empty() || setting.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if setting.eq_ignore_ascii_case("auto") {
        if let Some(env) = env_dir.map(str::trim).filter(|e| !e.is_empty())
            && !env.eq_ignore_ascii_case("auto")
        {
            return resolve_dir(env, uid, xdg_runtime_dir, None).map_err(|err| match err {
                DirSettingError::Relative(v) | DirSettingError::Env(v) => DirSettingError::Env(v),
            });
        }
        if uid == 0 {
            return Ok(Some(PathBuf::from("/run/cpuguard")));
        }
        // XDG says to ignore a relative value.
        if let Some(xdg) = xdg_runtime_dir.filter(|x| x.starts_with('/')) {
            return Ok(Some(PathBuf::from(xdg).join("cpuguard")));
        }
        return Ok(Some(PathBuf::from(format!("/tmp/cpuguard-{uid}"))));
    }
    if setting.starts_with('/') {
        Ok(Some(PathBuf::from(setting)))
    } else {
        Err(DirSettingError::Relative(setting.to_owned()))
    }
}

/// One process's entry in a budget's directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub pid: i32,
    pub uid: u32,
    /// Whole-process CPU rate in CPUs, smoothed (all threads).
    pub cpu: f64,
    /// Its policy says drain and it waits for its turn.
    pub wants: bool,
    /// Its sampling interval: how fresh the entry must be to count.
    pub interval_ms: u64,
    /// Incremented at every write.
    pub seq: u64,
    /// Wall clock of the write, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Why an entry was not believed; each kind is warned about once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Bigger than [`MAX_ENTRY_LEN`]: not read at all.
    Oversized,
    /// Not an entry (bad syntax, checksum, values out of range, pid not the
    /// one in its name).
    Malformed,
    /// Its process is gone (no lock held on it).
    Dead,
    /// Alive but not rewritten for several of its intervals (a hung process).
    Outdated,
    /// Written by, or owned by, another user.
    OtherUser,
    /// A symlink, or not a regular file.
    NotAFile,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Oversized,
        Rejection::Malformed,
        Rejection::Dead,
        Rejection::Outdated,
        Rejection::OtherUser,
        Rejection::NotAFile,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Rejection::Oversized => "an oversized entry",
            Rejection::Malformed => "a malformed entry",
            Rejection::Dead => "an entry of a dead process",
            Rejection::Outdated => "an entry not updated by its (hung?) process",
            Rejection::OtherUser => "an entry of another user",
            Rejection::NotAFile => "a symlink or non-regular entry",
        }
    }
}

/// FNV-1a, 32 bits: catches a torn or edited entry (not an attacker's
/// forgery: the directory's permissions and the uid checks do that).
fn checksum(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

impl Entry {
    /// The entry's bytes: one line padded with spaces to [`ENTRY_LEN`].
    pub fn encode(&self) -> Vec<u8> {
        let cpu = if self.cpu.is_finite() {
            self.cpu.clamp(0.0, MAX_CPUS)
        } else {
            0.0
        };
        let body = format!(
            "{ENTRY_MAGIC} pid={} uid={} cpu={cpu:.6} want={} interval={} seq={} at={}",
            self.pid,
            self.uid,
            u8::from(self.wants),
            self.interval_ms,
            self.seq,
            self.at_ms
        );
        let mut line = format!("{body} sum={:08x}", checksum(&body));
        if line.len() < ENTRY_LEN - 1 {
            line.push_str(&" ".repeat(ENTRY_LEN - 1 - line.len()));
        }
        line.push('\n');
        line.into_bytes()
    }

    /// Parses an entry's bytes (at most [`MAX_ENTRY_LEN`] of them).
    pub fn parse(bytes: &[u8]) -> Result<Entry, Rejection> {
        if bytes.len() > MAX_ENTRY_LEN {
            return Err(Rejection::Oversized);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Rejection::Malformed)?;
        let line = text.trim_end_matches([' ', '\n']);
        let (body, sum) = line.rsplit_once(" sum=").ok_or(Rejection::Malformed)?;
        let sum = u32::from_str_radix(sum, 16).map_err(|_| Rejection::Malformed)?;
        if sum != checksum(body) || sum_has_junk(line) {
            return Err(Rejection::Malformed);
        }
        let mut words = body.split(' ');
        if words.next() != Some(ENTRY_MAGIC) {
            return Err(Rejection::Malformed);
        }
        let mut field = |name: &str| -> Result<&str, Rejection> {
            let word = words.next().ok_or(Rejection::Malformed)?;
            word.strip_prefix(name)
                .and_then(|w| w.strip_prefix('='))
                .ok_or(Rejection::Malformed)
        };
        let num = |s: &str| s.parse::<u64>().map_err(|_| Rejection::Malformed);
        let pid = field("pid")?
            .parse::<i32>()
            .map_err(|_| Rejection::Malformed)?;
        let uid = field("uid")?
            .parse::<u32>()
            .map_err(|_| Rejection::Malformed)?;
        let cpu = field("cpu")?
            .parse::<f64>()
            .map_err(|_| Rejection::Malformed)?;
        let wants = match field("want")? {
            "0" => false,
            "1" => true,
            _ => return Err(Rejection::Malformed),
        };
        let interval_ms = num(field("interval")?)?;
        let seq = num(field("seq")?)?;
        let at_ms = num(field("at")?)?;
        if words.next().is_some()
            || pid <= 0
            || !cpu.is_finite()
            || !(0.0..=MAX_CPUS).contains(&cpu)
            || interval_ms == 0
        {
            return Err(Rejection::Malformed);
        }
        Ok(Entry {
            pid,
            uid,
            cpu,
            wants,
            interval_ms,
            seq,
            at_ms,
        })
    }

    /// Whether the entry, as read from the file named for `name_pid` and
    /// owned by `owner`, may be believed by a process of user `our_uid` at
    /// wall time `now_ms`. Liveness (the lock) is the caller's to check.
    pub fn check(
        &self,
        name_pid: i32,
        owner: u32,
        our_uid: u32,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        if self.pid != name_pid {
            return Err(Rejection::Malformed);
        }
        if owner != our_uid || self.uid != our_uid {
            return Err(Rejection::OtherUser);
        }
        if now_ms.saturating_sub(self.at_ms) > freshness_ms(self.interval_ms) {
            return Err(Rejection::Outdated);
        }
        Ok(())
    }
}

/// Only the trailing padding may follow the checksum.
fn sum_has_junk(line: &str) -> bool {
    line.rsplit_once(" sum=")
        .is_none_or(|(_, sum)| sum.len() != 8)
}

/// How old an entry may be before its process counts as hung: three of its
/// intervals (it rewrites at each), plus a second for scheduling delays on a
/// loaded host, which is exactly when this matters.
pub fn freshness_ms(interval_ms: u64) -> u64 {
    interval_ms.saturating_mul(3).saturating_add(1000)
}

/// Entry file name for `pid`, and the pid an entry file name stands for.
pub fn entry_name(pid: i32) -> String {
    format!("{pid}.entry")
}

pub fn pid_of_entry_name(name: &str) -> Option<i32> {
    let digits = name.strip_suffix(".entry")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 10 {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

/// The drain lock of one user on one budget: per uid, so that in a
/// group-shared directory another user can never hold ours.
pub fn drain_lock_name(uid: u32) -> String {
    format!("drain-{uid}.lock")
}

/// What the drain lock file says: which drain (a counter every drain start
/// increments, so others notice a drain that began and ended between two
/// of their samples) and who runs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainRecord {
    pub epoch: u64,
    pub pid: i32,
    /// Set by the drainer at its start, cleared at its end; a drainer that
    /// died leaves it set, which is why the lock itself is checked too.
    pub active: bool,
}

impl DrainRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut line = format!(
            "{DRAIN_MAGIC} epoch={} pid={} active={}",
            self.epoch,
            self.pid,
            u8::from(self.active)
        );
        if line.len() < DRAIN_LEN - 1 {
            line.push_str(&" ".repeat(DRAIN_LEN - 1 - line.len()));
        }
        line.push('\n');
        line.into_bytes()
    }

    /// `None` for anything else than a record (an empty new file included).
    pub fn parse(bytes: &[u8]) -> Option<DrainRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut words = text.trim_end_matches([' ', '\n']).split(' ');
        if words.next()? != DRAIN_MAGIC {
            return None;
        }
        let mut field = |name: &str| {
            words
                .next()?
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_owned)
        };
        let epoch = field("epoch")?.parse().ok()?;
        let pid = field("pid")?.parse().ok()?;
        let active = match field("active")?.as_str() {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        Some(DrainRecord { epoch, pid, active })
    }
}

/// A live process of the budget, as ranked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peer {
    pub pid: i32,
    pub cpu: f64,
    pub wants: bool,
}

impl Peer {
    /// Heavier: more CPU; on a tie, the lower pid (deterministic, the same
    /// answer in every process).
    pub fn outranks(&self, other: &Peer) -> bool {
        let (a, b) = (finite(self.cpu), finite(other.cpu));
        a > b || (a == b && self.pid < other.pid)
    }
}

fn finite(cpu: f64) -> f64 {
    if cpu.is_finite() { cpu } else { 0.0 }
}

/// What a process whose policy wants a drain should do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Choice {
    /// It is the heaviest that may go: take the drain lock and drain.
    Go,
    /// `to` goes first: it wants a drain too and is heavier, or it is heavier
    /// and has not had an interval to say whether it wants one.
    Yield { to: Peer },
}

/// The cross-process victim rule: the heaviest process among those whose
/// policy wants a drain goes first. A heavier process that does not (yet)
/// want one is waited for while `wait_for_heavier` (our first interval of
/// wanting): samples of different processes are out of phase, and it may
/// only be about to fire.
pub fn choose(me: &Peer, others: &[Peer], wait_for_heavier: bool) -> Choice {
    let heaviest = |wants: bool| {
        others
            .iter()
            .filter(|p| p.pid != me.pid && p.wants == wants && p.outranks(me))
            .fold(None::<&Peer>, |best, p| match best {
                Some(b) if b.outranks(p) => Some(b),
                _ => Some(p),
            })
    };
    if let Some(to) = heaviest(true) {
        return Choice::Yield { to: *to };
    }
    if wait_for_heavier && let Some(to) = heaviest(false) {
        return Choice::Yield { to: *to };
    }
    Choice::Go
}

/// "pid 12 1.52 CPUs (wants), pid 40 0.20 CPUs" for the decision log.
pub fn describe_peers(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| {
            let wants = if p.wants { " (wants)" } else { "" };
            format!("pid {} {:.3} CPUs{wants}", p.pid, p.cpu)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
