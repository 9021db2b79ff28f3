//! Shared helpers for the integration tests: plugin set-up, a simulated host
//! whose /proc/stat reports a load the test chooses, and bus helpers.
#![allow(dead_code)]

pub mod machine;
pub mod receiver;
pub mod run;

use gst::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Tests whose CPU figures would be spoiled by another one's burner (or that
/// oversubscribe the host themselves) run one at a time within a test binary.
pub fn exclusive_cpu() -> std::sync::MutexGuard<'static, ()> {
    static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The seed of a randomized test: `CPUGUARD_SEED` replays a run, else the clock.
pub fn seed() -> u64 {
    std::env::var("CPUGUARD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gst::init().expect("GStreamer initializes");
        gstcpuguard::plugin_register_static().expect("cpuguard registers");
    });
}

/// A fake host root: /proc/stat counters advance in a background thread so that
/// any two reads see the busy share set by `set_load`.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
    load: Arc<AtomicU64>,
    fault: Arc<AtomicU8>,
    rewind: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).expect("fixture written");
    fs::rename(&tmp, path).expect("fixture renamed");
}

impl FakeHost {
    pub fn new(initial_load: f64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pid = std::process::id();
        let proc_pid = root.join(format!("proc/{pid}"));
        fs::create_dir_all(&proc_pid).unwrap();
        fs::create_dir_all(root.join("proc/pressure")).unwrap();
        fs::create_dir_all(root.join("sys/devices/system/cpu")).unwrap();
        fs::write(root.join("sys/devices/system/cpu/online"), "0-1\n").unwrap();
        fs::write(
            proc_pid.join("stat"),
            format!(
                "{pid} (cpuguard-test) S 1 1 1 0 -1 4194304 100 0 0 0 50 25 0 0 20 0 4 0 100 \
                 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
        fs::write(
            proc_pid.join("status"),
            "Name:\tcpuguard-test\nCpus_allowed_list:\t0-1\n",
        )
        .unwrap();
        fs::write(proc_pid.join("cgroup"), "0::/\n").unwrap();
        fs::write(
            proc_pid.join("mountinfo"),
            "25 1 0:22 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        let load = Arc::new(AtomicU64::new(initial_load.to_bits()));
        let fault = Arc::new(AtomicU8::new(StatFault::None as u8));
        let rewind = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let stat = root.join("proc/stat");
        write_atomically(&stat, &proc_stat(0, 0));
        let thread = {
            let (load, stop) = (load.clone(), stop.clone());
            let (fault, rewind) = (fault.clone(), rewind.clone());
            std::thread::spawn(move || {
                let (mut busy, mut idle) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    if rewind.swap(false, Ordering::SeqCst) {
                        (busy, idle) = (0, 0);
                    }
                    // 1000 ticks a round: the busy share is exact at any read.
                    let share = f64::from_bits(load.load(Ordering::SeqCst)).clamp(0.0, 1.0);
                    let b = (share * 1000.0).round() as u64;
                    busy += b;
                    idle += 1000 - b;
                    // The counters run on during a fault, as the kernel's do.
                    StatFault::from_u8(fault.load(Ordering::SeqCst)).write(&stat, busy, idle);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        FakeHost {
            dir,
            load,
            fault,
            rewind,
            stop,
            thread: Some(thread),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn root_str(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    pub fn set_load(&self, load: f64) {
        self.load.store(load.to_bits(), Ordering::SeqCst);
    }

    /// Breaks /proc/stat until set back to [`StatFault::None`].
    pub fn set_fault(&self, fault: StatFault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// The /proc/stat counters restart from zero: they go backwards once.
    pub fn rewind(&self) {
        self.rewind.store(true, Ordering::SeqCst);
    }

    pub fn stat_path(&self) -> PathBuf {
        self.root().join("proc/stat")
    }
}

/// What is wrong with the fake /proc/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StatFault {
    None,
    /// The file is gone.
    Vanished,
    /// Reading it fails (a directory stands in its place: root ignores file modes).
    Unreadable,
    /// It holds no counters.
    Garbage,
}

impl StatFault {
    fn from_u8(value: u8) -> Self {
        [Self::None, Self::Vanished, Self::Unreadable, Self::Garbage]
            .into_iter()
            .find(|f| *f as u8 == value)
            .unwrap_or(Self::None)
    }

    fn write(self, stat: &Path, busy: u64, idle: u64) {
        if self != Self::Unreadable && stat.is_dir() {
            let _ = fs::remove_dir(stat);
        }
        match self {
            Self::None => write_atomically(stat, &proc_stat(busy, idle)),
            Self::Vanished => {
                let _ = fs::remove_file(stat);
            }
            Self::Unreadable => {
                if !stat.is_dir() {
                    let _ = fs::remove_file(stat);
                    let _ = fs::create_dir(stat);
                }
            }
            Self::Garbage => write_atomically(stat, "cpu  garbage\n"),
        }
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// /proc/stat with `busy` split over user and system and idle over idle and iowait.
fn proc_stat(busy: u64, idle: u64) -> String {
    let user = busy / 2;
    let system = busy - user;
    let iowait = idle / 10;
    let idle = idle - iowait;
    format!(
        "cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\n\
         cpu0 {user} 0 {system} {idle} {iowait} 0 0 0 0 0\n\
         cpu1 0 0 0 0 0 0 0 0 0 0\n\
         intr 0\nctxt 0\nbtime 0\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n"
    )
}

/// Waits for a message matching `pred` on `bus`, up to `timeout`.
pub fn wait_for<F>(bus: &gst::Bus, timeout: Duration, mut pred: F) -> Option<gst::Message>
where
    F: FnMut(&gst::Message) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let msg = bus.timed_pop(gst::ClockTime::from_nseconds(left.as_nanos() as u64))?;
        if pred(&msg) {
            return Some(msg);
        }
    }
}

/// True for an element message whose structure is named `name`.
pub fn is_element_message(msg: &gst::Message, name: &str) -> bool {
    matches!(msg.view(), gst::MessageView::Element(e) if e.structure().is_some_and(|s| s.name() == name))
}

pub fn structure_of(msg: &gst::Message) -> gst::Structure {
    msg.structure().expect("message has a structure").to_owned()
}

/// Asserts that `messages` (as [`run_until_end`] collects them) end with EOS,
/// not with an ERROR or a timeout; `what` says what that EOS stands for.
#[track_caller]
pub fn assert_ends_with_eos(messages: &[gst::Message], what: &str) {
    assert!(
        matches!(
            messages.last().map(|m| m.view()),
            Some(gst::MessageView::Eos(_))
        ),
        "{what}: {:?}",
        messages.last()
    );
}

/// Runs `pipeline` until EOS or ERROR (or `timeout`), collecting every message seen.
pub fn run_until_end(pipeline: &gst::Pipeline, timeout: Duration) -> Vec<gst::Message> {
    let bus = pipeline.bus().expect("pipeline bus");
    let mut seen = Vec::new();
    let deadline = Instant::now() + timeout;
    while let Some(msg) = bus.timed_pop(gst::ClockTime::from_nseconds(
        deadline
            .saturating_duration_since(Instant::now())
            .as_nanos() as u64,
    )) {
        let end = matches!(
            msg.view(),
            gst::MessageView::Eos(_) | gst::MessageView::Error(_)
        );
        seen.push(msg);
        if end {
            break;
        }
    }
    seen
}

/// The directory holding the built plugin (`libgstcpuguard.so`), next to the
/// test binary. `cargo test` links the rlib but need not rebuild the cdylib
/// that gst-launch-1.0 loads, so make sure it is current first (a no-op when it is).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "--lib", "--quiet", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if dir.file_name().is_some_and(|p| p == "release") {
            cargo.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cargo.arg("--target-dir").arg(target);
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "building the plugin failed");
    });
    assert!(
        dir.join("libgstcpuguard.so").is_file(),
        "no libgstcpuguard.so in {}",
        dir.display()
    );
    dir
}

/// Checks that an MP4 file is finalized and lists its streams' caps names,
/// by demuxing it fully (an MP4 without `moov` fails here).
pub fn mp4_streams(path: &Path) -> Result<Vec<String>, String> {
    init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path.to_string_lossy().as_ref())
        .build()
        .map_err(|e| e.to_string())?;
    let demux = gst::ElementFactory::make("qtdemux")
        .build()
        .map_err(|e| e.to_string())?;
    pipeline
        .add_many([&src, &demux])
        .map_err(|e| e.to_string())?;
    src.link(&demux).map_err(|e| e.to_string())?;
    let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
    let pipeline_weak = pipeline.downgrade();
    let found = streams.clone();
    demux.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad
            .current_caps()
            .map(|c| c.structure(0).map(|s| s.name().to_string()));
        found
            .lock()
            .unwrap()
            .push(caps.flatten().unwrap_or_default());
        // async=false: a sink prerolling on the first stream would block the
        // demuxer's thread before the second stream's sink exists.
        let sink = gst::ElementFactory::make("fakesink")
            .property("sync", false)
            .property("async", false)
            .build()
            .unwrap();
        pipeline.add(&sink).unwrap();
        sink.sync_state_with_parent().unwrap();
        pad.link(&sink.static_pad("sink").unwrap()).unwrap();
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot play {}: {e}", path.display()))?;
    let msgs = run_until_end(&pipeline, Duration::from_secs(60));
    let _ = pipeline.set_state(gst::State::Null);
    match msgs.last().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(streams.lock().unwrap().clone()),
        Some(gst::MessageView::Error(e)) => Err(format!("{}: {}", path.display(), e.error())),
        _ => Err(format!("{}: demuxing did not finish", path.display())),
    }
}

/// The playability check of the briefs: qtdemux reads the MP4 to its end
/// (bounded: qtdemux on a broken file can hang).
pub fn plays(path: &Path) -> bool {
    std::process::Command::new("timeout")
        .arg("60")
        .arg("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", path.display()))
        .args(["!", "qtdemux", "!", "h264parse", "!", "fakesink"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
