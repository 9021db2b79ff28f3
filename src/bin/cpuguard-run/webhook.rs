//! `--webhook URL`: one JSON POST per state change (ACTIVE, ENDING, then the
//! final COMPLETE or FAILED with the whole result), signed with HMAC-SHA256
//! when `--webhook-secret-file` is given.
//!
//! A leaf: an event (JSON) goes in, a delivery outcome comes out. Each URL
//! has a delivery thread of its own, so a slow or dead receiver never holds
//! up the GLib main loop, a drain or another URL; events reach each URL in
//! order. Each is retried
//! with bounded exponential backoff; once the final event is queued, earlier
//! events get no more retries (the final one carries everything they said)
//! and every retry ends at the finish deadline. A failed delivery is counted,
//! never a reason to change the recording's status.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Cpuguard-Signature";
/// First retry after this; doubled each time up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts for an event that is not the final one (about 6 s of retries).
const ATTEMPTS_EARLY: u32 = 6;
/// One request may take this long at most (connect, send, response).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The final event gets one attempt of this length even when the finish
/// budget is already spent (a hook used all of it).
pub const LAST_CHANCE: Duration = Duration::from_secs(2);

/// Deliveries of this run, in the result as `webhooks`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Events (times URLs) the receiver accepted with a 2xx answer.
    pub delivered: u32,
    /// Events (times URLs) given up on after their retries.
    pub failed: u32,
}

/// What the delivery thread reports after each event and URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// An attempt failed; another follows after the backoff.
    Retrying,
    Failed,
}

/// Checked settings, read before anything runs.
#[derive(Clone)]
pub struct Config {
    urls: Vec<String>,
    secret: Option<Vec<u8>>,
}

impl Config {
    /// `None` without any URL. Every problem names its option.
    pub fn new(urls: &[String], secret_file: Option<&Path>) -> Result<Option<Self>, String> {
        if urls.is_empty() {
            return match secret_file {
                Some(_) => Err("--webhook-secret-file needs --webhook URL".to_owned()),
                None => Ok(None),
            };
        }
        for url in urls {
            check_url(url)?;
        }
        let secret = secret_file.map(read_secret).transpose()?;
        Ok(Some(Config {
            urls: urls.to_vec(),
            secret,
        }))
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        if !cfg!(feature = "tls") {
            return Err(format!(
                "--webhook {url}: https needs cpuguard-run built with the `tls` feature \
                 (cargo build --features tls)"
            ));
        }
        rest
    } else {
        return Err(format!("--webhook {url}: not an http:// or https:// URL"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--webhook {url}: no host"));
    }
    Ok(())
}

/// The shared secret: the file's bytes less one trailing newline. The file
/// must be ours (or root's) and writable by nobody else, since whoever can
/// change it can forge events.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let name = |what: String| format!("--webhook-secret-file {}: {what}", path.display());
    let mut file = File::options()
        .read(true)
        // Symlinks are followed: a Kubernetes Secret volume is one (..data/);
        // the checks below are on what was opened. O_NONBLOCK: a FIFO never hangs us.
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| name(err.to_string()))?;
    let meta = file.metadata().map_err(|err| name(err.to_string()))?;
    if !meta.is_file() {
        return Err(name("not a regular file".to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(name(format!(
            "owned by uid {}, not by this user or root",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(name(format!(
            "writable by group or others (mode {:o}); chmod go-w it",
            meta.mode() & 0o777
        )));
    }
    let mut secret = Vec::new();
    (&mut file)
        .take(64 * 1024 + 1)
        .read_to_end(&mut secret)
        .map_err(|err| name(err.to_string()))?;
    if secret.len() > 64 * 1024 {
        return Err(name("larger than 64 KiB".to_owned()));
    }
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(name("empty".to_owned()));
    }
    Ok(secret)
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

struct Event {
    body: String,
    /// Its state, for messages.
    label: String,
    last: bool,
}

impl Event {
    fn of(event: &serde_json::Value, last: bool) -> Self {
        Event {
            body: event.to_string(),
            label: event["state"].as_str().unwrap_or("event").to_owned(),
            last,
        }
    }
}

/// The finish deadline, once the final event is queued; brought forward by
/// [`Cutter`], which wakes a backoff wait through the condvar.
#[derive(Default)]
struct DeadlineInner {
    at: Mutex<Option<Instant>>,
    moved: Condvar,
}

type Deadline = Arc<DeadlineInner>;

impl DeadlineInner {
    fn get(&self) -> Option<Instant> {
        *self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, at: Instant) {
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        self.moved.notify_all();
    }

    /// Waits until `until`, or less if the deadline is brought forward.
    fn wait_until(&self, until: Instant) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let end = at.map_or(until, |d| d.min(until));
            let Some(left) = end.checked_duration_since(now).filter(|l| !l.is_zero()) else {
                return;
            };
            at = match self.moved.wait_timeout(at, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Ends the retries now (SIGINT): the final event keeps its one last attempt.
#[derive(Clone)]
pub struct Cutter(Deadline);

impl Cutter {
    pub fn cut(&self) {
        self.0.set(Instant::now());
    }
}

/// Who hears each delivery outcome.
type Told = dyn Fn(Delivery, &str) + Send + Sync;

/// One delivery thread and queue per URL: a dead receiver never delays
/// another's events, and each URL gets its events in order.
pub struct Webhooks {
    queues: Vec<Sender<Event>>,
    deadline: Deadline,
    threads: Vec<JoinHandle<Tally>>,
}

impl Webhooks {
    /// Starts the delivery threads; `told` hears each outcome (metrics, stderr).
    pub fn start(
        config: Config,
        told: impl Fn(Delivery, &str) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let told: Arc<Told> = Arc::new(told);
        let deadline = Deadline::default();
        let secret: Option<Arc<[u8]>> = config.secret.map(Into::into);
        let mut webhooks = Webhooks {
            queues: Vec::new(),
            deadline,
            threads: Vec::new(),
        };
        for url in config.urls {
            let (queue, events) = mpsc::channel();
            let (deadline, told, secret) =
                (webhooks.deadline.clone(), told.clone(), secret.clone());
            let thread = std::thread::Builder::new()
                .name("cpuguard-webhook".to_owned())
                .spawn(move || deliver_all(&url, secret.as_deref(), &events, &deadline, &*told))
                .map_err(|err| format!("cannot start a webhook thread: {err}"))?;
            webhooks.queues.push(queue);
            webhooks.threads.push(thread);
        }
        Ok(webhooks)
    }

    /// Queues a state change; returns at once.
    pub fn send(&self, event: &serde_json::Value) {
        for queue in &self.queues {
            let _ = queue.send(Event::of(event, false));
        }
    }

    pub fn cutter(&self) -> Cutter {
        Cutter(self.deadline.clone())
    }

    /// Queues the final event and waits until every event was delivered or
    /// given up on; retries end at `deadline`.
    pub fn finish(self, event: &serde_json::Value, deadline: Instant) -> Tally {
        if self.deadline.get().is_none_or(|at| deadline < at) {
            self.deadline.set(deadline);
        }
        for queue in self.queues {
            let _ = queue.send(Event::of(event, true));
        }
        let mut tally = Tally::default();
        for thread in self.threads {
            if let Ok(one) = thread.join() {
                tally.delivered += one.delivered;
                tally.failed += one.failed;
            }
        }
        tally
    }
}

/// Delivers `url`'s events in order until the queue closes; the tally.
fn deliver_all(
    url: &str,
    secret: Option<&[u8]>,
    events: &Receiver<Event>,
    deadline: &Deadline,
    told: &dyn Fn(Delivery, &str),
) -> Tally {
    let agent = ureq::AgentBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .redirects(0)
        .user_agent(concat!("cpuguard-run/", env!("CARGO_PKG_VERSION")))
        .build();
    let mut tally = Tally::default();
    // Events queued behind the one being retried tell whether the final one
    // is among them (then the retries of the earlier ones stop).
    let mut backlog = VecDeque::new();
    loop {
        let event = match backlog.pop_front() {
            Some(event) => event,
            None => match events.recv() {
                Ok(event) => event,
                Err(_) => return tally,
            },
        };
        let mut retrying = Retrying {
            url,
            events,
            backlog: &mut backlog,
            deadline,
            told,
        };
        match retrying.deliver(&agent, &event, secret) {
            Ok(()) => {
                tally.delivered += 1;
                told(Delivery::Delivered, &format!("{} to {url}", event.label));
            }
            Err(error) => {
                tally.failed += 1;
                told(
                    Delivery::Failed,
                    &format!("{} to {url}: gave up: {error}", event.label),
                );
            }
        }
    }
}

/// What one event's attempts share.
struct Retrying<'a> {
    url: &'a str,
    events: &'a Receiver<Event>,
    backlog: &'a mut VecDeque<Event>,
    deadline: &'a Deadline,
    told: &'a dyn Fn(Delivery, &str),
}

impl Retrying<'_> {
    /// Posts `event` until a 2xx answer, or gives up (with the last error).
    fn deliver(
        &mut self,
        agent: &ureq::Agent,
        event: &Event,
        secret: Option<&[u8]>,
    ) -> Result<(), String> {
        let url = self.url;
        let signature = secret.map(|secret| signature(secret, event.body.as_bytes()));
        let mut wait = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = Instant::now();
            let timeout = match self.deadline.get() {
                Some(end) if end > now => REQUEST_TIMEOUT.min(end - now),
                Some(_) if event.last && attempt == 1 => LAST_CHANCE,
                Some(_) => return Err("the finish budget is spent".to_owned()),
                None => REQUEST_TIMEOUT,
            };
            let mut request = agent
                .post(url)
                .timeout(timeout)
                .set("Content-Type", "application/json");
            if let Some(signature) = &signature {
                request = request.set(SIGNATURE_HEADER, signature);
            }
            let error = match request.send_string(&event.body) {
                Ok(_) => return Ok(()),
                Err(ureq::Error::Status(code, _)) => format!("HTTP {code}"),
                Err(err) => err.to_string(),
            };
            // Is the final event queued by now?
            self.backlog.extend(self.events.try_iter());
            let final_waits = self.backlog.iter().any(|e| e.last);
            if !event.last && (attempt >= ATTEMPTS_EARLY || final_waits) {
                return Err(error);
            }
            if self
                .deadline
                .get()
                .is_some_and(|end| Instant::now() + wait >= end)
            {
                return Err(format!("{error}; no time left for a retry"));
            }
            (self.told)(
                Delivery::Retrying,
                &format!(
                    "{} to {url}: attempt {attempt} failed ({error}); retrying in {} ms",
                    event.label,
                    wait.as_millis()
                ),
            );
            self.back_off(wait);
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits `wait` on the queue: a final event queued meanwhile is seen (and
    /// ends an earlier event's retries); once everything is queued, a cut
    /// deadline (SIGINT) ends the wait.
    fn back_off(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(next) => self.backlog.push_back(next),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    self.deadline.wait_until(until);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn signature_matches_rfc_4231_test_case_2() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn secret_with(text: &[u8], mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn secret_loses_one_trailing_newline_only() {
        let (_dir, path) = secret_with(b"key\r\n", 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"key");
        let (_dir, path) = secret_with(b"key\n\n", 0o400);
        assert_eq!(read_secret(&path).unwrap(), b"key\n");
    }

    #[test]
    fn unsafe_or_empty_secrets_are_refused_by_name() {
        for (text, mode, why) in [
            (&b"\n"[..], 0o600, "empty"),
            (b"key", 0o620, "writable by group or others"),
            (b"key", 0o602, "writable by group or others"),
        ] {
            let (_dir, path) = secret_with(text, mode);
            let err = read_secret(&path).unwrap_err();
            assert!(err.starts_with("--webhook-secret-file "), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn urls_are_checked_before_anything_runs() {
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        for bad in ["ftp://host/", "http://", "http:///path", "127.0.0.1:80"] {
            let err = check_url(bad).unwrap_err();
            assert!(err.starts_with("--webhook "), "{err}");
        }
        assert_eq!(check_url("https://host/").is_ok(), cfg!(feature = "tls"));
    }
}
