use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::LoadSource;
use super::drain;
use super::monitor::Monitor;
use crate::load::{HostPaths, LoadMeter, LoadSample};
use crate::policy::{Policy, PolicyConfig, Verdict};
use crate::reason::EndReason;

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cpuguard",
        gst::DebugColorFlags::empty(),
        Some("Drains the pipeline on high CPU load"),
    )
});

const DEFAULT_SOFT: f64 = 0.85;
const DEFAULT_HARD: f64 = 0.95;
const DEFAULT_HOLD: u32 = 3;
const DEFAULT_INTERVAL_MS: u32 = 1000;
const MIN_INTERVAL_MS: u32 = 10;
const DEFAULT_DRAIN_TIMEOUT_MS: u32 = 30_000;
const DEFAULT_ROOT: &str = "/";

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    soft: f64,
    hard: f64,
    hold: u32,
    interval_ms: u32,
    load_source: LoadSource,
    drain_timeout_ms: u32,
    dry_run: bool,
    root: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            soft: DEFAULT_SOFT,
            hard: DEFAULT_HARD,
            hold: DEFAULT_HOLD,
            interval_ms: DEFAULT_INTERVAL_MS,
            load_source: LoadSource::default(),
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            dry_run: false,
            root: DEFAULT_ROOT.to_owned(),
        }
    }
}

impl Settings {
    fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            soft: self.soft,
            hard: self.hard,
            hold: self.hold,
            release: 1,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms.max(MIN_INTERVAL_MS)))
    }

    fn drain_timeout(&self) -> Option<Duration> {
        (self.drain_timeout_ms > 0).then(|| Duration::from_millis(u64::from(self.drain_timeout_ms)))
    }
}

/// What a drain in progress needs to remember.
#[derive(Debug)]
struct Drain {
    reason: EndReason,
    /// Where completion is checked; `None` when the element has no parent bin.
    top: Option<gst::Element>,
    deadline: Option<Instant>,
    timeout_ms: u32,
    completed: bool,
    timed_out: bool,
    /// Our own EOS (with tag and reason) has gone downstream.
    eos_forwarded: bool,
}

/// Sampling state, owned by whoever runs the tick.
struct Sampling {
    meter: LoadMeter,
    policy: Policy,
    sample_failing: bool,
    /// When the next sample is due.
    due: Instant,
}

#[derive(Default)]
struct State {
    sampling: Option<Sampling>,
    drain: Option<Drain>,
}

/// Everything a drain announcement carries (bus message fields).
struct DrainNotice {
    reason: EndReason,
    load: f64,
    threshold: f64,
    trigger: &'static str,
    source: &'static str,
}

pub struct CpuGuard {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    monitor: Mutex<Option<Monitor>>,
    /// Last load sample as f64 bits, readable without a lock by the `load` property.
    last_load: AtomicU64,
    /// Set when EOS must be injected from the streaming thread (no parent bin, or
    /// the sources refused the EOS). Checked per buffer, hence an atomic.
    inject_eos: AtomicBool,
}

impl Default for CpuGuard {
    fn default() -> Self {
        CpuGuard {
            settings: Mutex::default(),
            state: Mutex::default(),
            monitor: Mutex::default(),
            last_load: AtomicU64::new(0f64.to_bits()),
            inject_eos: AtomicBool::new(false),
        }
    }
}

/// Locks that survive a panic elsewhere: a poisoned settings mutex must not take
/// the pipeline down with a second panic across the FFI boundary.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CpuGuard {
    fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    fn last_load(&self) -> f64 {
        f64::from_bits(self.last_load.load(Ordering::Relaxed))
    }

    /// One round of the monitor thread; returns how long to sleep.
    /// A tick may come early (woken for a drain deadline); sampling keeps to
    /// its own schedule so every sample covers a full interval.
    fn tick(&self) -> Duration {
        let settings = self.settings();
        let now = Instant::now();
        let interval = settings.interval();
        let due = lock(&self.state).sampling.as_ref().map(|s| s.due);
        let mut next = match due {
            Some(due) if now < due => due - now,
            _ => {
                self.sample(&settings, now);
                interval
            }
        };
        if let Some(until_deadline) = self.check_drain(now) {
            next = next.min(until_deadline);
        }
        next
    }

    /// Follows a drain in progress: notes completion, or posts the drain-timeout
    /// ERROR once the deadline has passed. Returns the time left to the deadline
    /// when there is one still to wait for.
    fn check_drain(&self, now: Instant) -> Option<Duration> {
        let mut state = lock(&self.state);
        let drain = state.drain.as_mut()?;
        if drain.completed || drain.timed_out {
            return None;
        }
        drain.completed = match &drain.top {
            Some(top) => drain::all_sinks_eos(top),
            None => drain.eos_forwarded,
        };
        if drain.completed {
            gst::info!(CAT, imp = self, "Drain ({}) completed", drain.reason);
            return None;
        }
        let deadline = drain.deadline?;
        if now < deadline {
            return Some(deadline - now);
        }
        drain.timed_out = true;
        let (reason, timeout_ms) = (drain.reason.clone(), drain.timeout_ms);
        drop(state);
        gst::error!(
            CAT,
            imp = self,
            "Drain ({reason}) timed out after {timeout_ms} ms"
        );
        gst::element_imp_error!(
            self,
            gst::StreamError::Failed,
            (
                "Drain did not complete within drain-timeout ({} ms)",
                timeout_ms
            ),
            ["reason: {reason}; the pipeline did not reach EOS in time, tear it down"]
        );
        None
    }

    fn sample(&self, settings: &Settings, now: Instant) {
        let mut state = lock(&self.state);
        let draining = state.drain.is_some();
        let Some(sampling) = state.sampling.as_mut() else {
            return;
        };
        sampling.due = now + settings.interval();
        let sample = match sampling.meter.sample(now) {
            Ok(sample) => {
                if sampling.sample_failing {
                    sampling.sample_failing = false;
                    gst::info!(CAT, imp = self, "Load readable again");
                }
                sample
            }
            Err(err) => {
                let first = !sampling.sample_failing;
                sampling.sample_failing = true;
                drop(state);
                // One bus warning per failure streak; the log gets every one.
                gst::warning!(CAT, imp = self, "No load sample: {err}");
                if first {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::Read,
                        ("cpuguard cannot read CPU load: {}", err)
                    );
                }
                return;
            }
        };
        self.last_load
            .store(sample.load.to_bits(), Ordering::Relaxed);
        let verdict = if draining {
            None
        } else {
            Some(sampling.policy.observe(sample.load))
        };
        let count = sampling.policy.above_count();
        drop(state);

        gst::log!(
            CAT,
            imp = self,
            "load {:.3} ({}, capacity {:.2} CPUs), above-soft count {count}",
            sample.load,
            sample.source.as_str(),
            sample.capacity
        );
        self.post_load(&sample);

        if let Some(Verdict::Drain { trigger, threshold }) = verdict {
            let notice = DrainNotice {
                reason: EndReason::CpuLimit,
                load: sample.load,
                threshold,
                trigger: trigger.as_str(),
                source: sample.source.as_str(),
            };
            if settings.dry_run {
                gst::info!(
                    CAT,
                    imp = self,
                    "Dry run: would drain at load {:.3} ({trigger} threshold {threshold})",
                    sample.load
                );
                self.post_drain_message("cpuguard-would-drain", &notice);
            } else {
                gst::warning!(
                    CAT,
                    imp = self,
                    "Load {:.3} crossed the {trigger} threshold {threshold}: draining",
                    sample.load
                );
                self.start_drain(notice);
            }
        } else if let Some(Verdict::Rising { count, hold }) = verdict {
            gst::debug!(CAT, imp = self, "Load high for {count}/{hold} samples");
        }
    }

    fn post_load(&self, sample: &LoadSample) {
        let s = gst::Structure::builder("cpuguard-load")
            .field("load", sample.load)
            .field("source", sample.source.as_str())
            .field("capacity", sample.capacity)
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    fn post_drain_message(&self, name: &str, notice: &DrainNotice) {
        let s = gst::Structure::builder(name)
            .field("reason", notice.reason.as_str())
            .field("description", notice.reason.description())
            .field("load", notice.load)
            .field("threshold", notice.threshold)
            .field("trigger", notice.trigger)
            .field("source", notice.source)
            .build();
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// Starts the one drain this element may do. Returns false if one already ran.
    /// Never blocks: the EOS is sent from a GStreamer pool thread.
    fn start_drain(&self, notice: DrainNotice) -> bool {
        let settings = self.settings();
        let obj = self.obj();
        let top = drain::top_level(obj.upcast_ref());
        {
            let mut state = lock(&self.state);
            if let Some(drain) = &state.drain {
                gst::info!(
                    CAT,
                    imp = self,
                    "Drain ({}) already under way; ignoring drain ({})",
                    drain.reason,
                    notice.reason
                );
                return false;
            }
            state.drain = Some(Drain {
                reason: notice.reason.clone(),
                top: top.clone(),
                deadline: settings.drain_timeout().map(|t| Instant::now() + t),
                timeout_ms: settings.drain_timeout_ms,
                completed: false,
                timed_out: false,
                eos_forwarded: false,
            });
        }

        self.post_drain_message("cpuguard-drain", &notice);
        let tags = crate::tags::end_reason_tags(notice.reason.as_str());
        let _ = obj.post_message(gst::message::Tag::builder(tags).src(&*obj).build());

        let end_own_branch = match &top {
            Some(top) => {
                let weak = obj.downgrade();
                let asked = drain::push_eos_from_sources(top, move |pad| {
                    if let Some(obj) = weak.upgrade() {
                        gst::warning!(
                            CAT,
                            obj = obj,
                            "{} refused EOS; ending this branch from its streaming thread",
                            pad.name()
                        );
                        obj.imp().inject_eos.store(true, Ordering::SeqCst);
                    }
                });
                gst::debug!(CAT, imp = self, "EOS pushed from {asked} source pads");
                asked == 0
            }
            None => true,
        };
        if end_own_branch {
            self.inject_eos.store(true, Ordering::SeqCst);
        }
        // The drain deadline may be sooner than the next sample: wake the monitor.
        self.restart_monitor_wait();
        true
    }

    /// The monitor computes its wait at each tick; a drain deadline set since then
    /// may be sooner, so make it tick now and wait afresh.
    fn restart_monitor_wait(&self) {
        if let Some(monitor) = lock(&self.monitor).as_ref() {
            monitor.wake();
        }
    }

    /// Handles the `drain` action signal.
    fn drain_requested(&self, reason: Option<&str>) -> bool {
        let reason = match EndReason::parse(reason.unwrap_or("")) {
            Ok(reason) => reason,
            Err(err) => {
                gst::warning!(CAT, imp = self, "Ignoring drain action: {err}");
                return false;
            }
        };
        let settings = self.settings();
        let source = lock(&self.state)
            .sampling
            .as_ref()
            .map_or("none", |s| s.meter.source().as_str());
        gst::info!(
            CAT,
            imp = self,
            "Drain requested by the application: {reason}"
        );
        self.start_drain(DrainNotice {
            reason,
            load: self.last_load(),
            threshold: settings.soft,
            trigger: "request",
            source,
        })
    }

    /// The EOS that leaves this element: tag first so it reaches the sink before
    /// the stream ends, then EOS carrying the reason.
    fn forward_tagged_eos(&self, seqnum: Option<gst::Seqnum>) -> bool {
        let reason = {
            let mut state = lock(&self.state);
            match state.drain.as_mut() {
                Some(drain) if !drain.eos_forwarded => {
                    drain.eos_forwarded = true;
                    drain.reason.clone()
                }
                _ => return false,
            }
        };
        let tags = crate::tags::end_reason_tags(reason.as_str());
        let src = self.obj().static_pad("src");
        let Some(src) = src else { return false };
        src.push_event(gst::event::Tag::new(tags));
        let mut eos = gst::event::Eos::builder().other_field("reason", reason.as_str());
        if let Some(seqnum) = seqnum {
            eos = eos.seqnum(seqnum);
        }
        src.push_event(eos.build());
        true
    }
}

#[glib::object_subclass]
impl ObjectSubclass for CpuGuard {
    const NAME: &'static str = "GstCpuGuard";
    type Type = super::CpuGuard;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for CpuGuard {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecDouble::builder("soft-threshold")
                    .nick("Soft threshold")
                    .blurb("Load (0-1 of capacity) that, held for `hold` samples, drains the pipeline")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_SOFT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("hard-threshold")
                    .nick("Hard threshold")
                    .blurb("Load (0-1 of capacity) that drains the pipeline at once, without hold")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_HARD)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("hold")
                    .nick("Hold")
                    .blurb("Consecutive samples at or above soft-threshold before draining")
                    .minimum(1)
                    .maximum(100_000)
                    .default_value(DEFAULT_HOLD)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("interval")
                    .nick("Interval")
                    .blurb("Sampling period in milliseconds")
                    .minimum(MIN_INTERVAL_MS)
                    .maximum(3_600_000)
                    .default_value(DEFAULT_INTERVAL_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("load-source", LoadSource::default())
                    .nick("Load source")
                    .blurb("Where CPU load is measured")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("drain-timeout")
                    .nick("Drain timeout")
                    .blurb(
                        "Milliseconds a drain may take before an ERROR is posted (0 = wait forever)",
                    )
                    .minimum(0)
                    .maximum(u32::MAX)
                    .default_value(DEFAULT_DRAIN_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("dry-run")
                    .nick("Dry run")
                    .blurb(
                        "Measure and report (cpuguard-would-drain messages) but never drain on load; \
                         the drain action still works",
                    )
                    .default_value(false)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("load")
                    .nick("Load")
                    .blurb("Last load sample (share of capacity; can exceed 1 when saturated)")
                    .minimum(0.0)
                    .maximum(f64::MAX)
                    .default_value(0.0)
                    .read_only()
                    .build(),
                glib::ParamSpecString::builder("root")
                    .nick("Root")
                    .blurb("Directory under which /proc and /sys are read (host mounts, test fixtures)")
                    .default_value(Some(DEFAULT_ROOT))
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn signals() -> &'static [glib::subclass::Signal] {
        static SIGNALS: LazyLock<Vec<glib::subclass::Signal>> = LazyLock::new(|| {
            vec![
                glib::subclass::Signal::builder("drain")
                    .param_types([String::static_type()])
                    .return_type::<bool>()
                    .action()
                    .class_handler(|args| {
                        let started = args
                            .first()
                            .and_then(|v| v.get::<super::CpuGuard>().ok())
                            .is_some_and(|obj| {
                                let reason = args
                                    .get(1)
                                    .and_then(|v| v.get::<Option<String>>().ok())
                                    .flatten();
                                obj.imp().drain_requested(reason.as_deref())
                            });
                        Some(started.to_value())
                    })
                    .build(),
            ]
        });
        SIGNALS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        // GObject has already checked each value's type and range.
        match pspec.name() {
            "soft-threshold" => settings.soft = value.get().unwrap_or(DEFAULT_SOFT),
            "hard-threshold" => settings.hard = value.get().unwrap_or(DEFAULT_HARD),
            "hold" => settings.hold = value.get().unwrap_or(DEFAULT_HOLD),
            "interval" => settings.interval_ms = value.get().unwrap_or(DEFAULT_INTERVAL_MS),
            "load-source" => settings.load_source = value.get().unwrap_or_default(),
            "drain-timeout" => {
                settings.drain_timeout_ms = value.get().unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS)
            }
            "dry-run" => settings.dry_run = value.get().unwrap_or(false),
            "root" => {
                settings.root = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_ROOT.to_owned())
            }
            other => gst::warning!(CAT, imp = self, "No writable property {other}"),
        }
        gst::debug!(CAT, imp = self, "Settings now {:?}", *settings);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = lock(&self.settings);
        match pspec.name() {
            "soft-threshold" => settings.soft.to_value(),
            "hard-threshold" => settings.hard.to_value(),
            "hold" => settings.hold.to_value(),
            "interval" => settings.interval_ms.to_value(),
            "load-source" => settings.load_source.to_value(),
            "drain-timeout" => settings.drain_timeout_ms.to_value(),
            "dry-run" => settings.dry_run.to_value(),
            "load" => self.last_load().to_value(),
            "root" => settings.root.to_value(),
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // Passthrough from the start: buffers flow even before (or without) caps.
        self.obj().set_passthrough(true);
    }
}

impl GstObjectImpl for CpuGuard {}

impl ElementImpl for CpuGuard {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CPU guard",
                "Generic",
                "Pass-through that watches CPU load (process, cgroup, system or PSI) and, when it \
                 stays above soft-threshold for hold samples or reaches hard-threshold, drains the \
                 whole pipeline with EOS so muxers finalize their files. The end reason travels in \
                 a cpuguard-drain element message (reason, description, load, threshold, trigger, \
                 source), a cpuguard-end-reason tag pushed before EOS and posted on the bus, and a \
                 reason field on the EOS event. A cpuguard-load element message (load, source, \
                 capacity) is posted at every sample. Action signal drain(reason) drains on \
                 request. If the drain does not complete within drain-timeout, an ERROR is posted.",
                "cpuguard developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst::Caps::new_any();
            let templates = [
                ("src", gst::PadDirection::Src),
                ("sink", gst::PadDirection::Sink),
            ];
            templates
                .into_iter()
                .filter_map(|(name, direction)| {
                    gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps).ok()
                })
                .collect()
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for CpuGuard {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = true;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let policy = Policy::new(settings.policy_config()).map_err(|err| {
            gst::error_msg!(
                gst::LibraryError::Settings,
                ("Invalid cpuguard settings: {}", err)
            )
        })?;
        let paths = HostPaths::under(&settings.root);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let meter = LoadMeter::new(settings.load_source.into(), &paths, pid).map_err(|err| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "cpuguard cannot measure load with load-source={}: {}",
                    crate::load::LoadSourceKind::from(settings.load_source).as_str(),
                    err
                )
            )
        })?;
        gst::info!(CAT, imp = self, "Measuring load: {}", meter.describe());

        {
            let mut state = lock(&self.state);
            *state = State {
                sampling: Some(Sampling {
                    meter,
                    policy,
                    sample_failing: false,
                    due: Instant::now() + settings.interval(),
                }),
                drain: None,
            };
        }
        self.inject_eos.store(false, Ordering::SeqCst);
        self.last_load.store(0f64.to_bits(), Ordering::Relaxed);
        // Deactivation clears passthrough; caps-less streams (fakesrc) need it
        // again before the first buffer.
        self.obj().set_passthrough(true);

        let weak = self.obj().downgrade();
        let interval = settings.interval();
        // The baseline was just taken: the first sample comes one interval later,
        // so it covers a full interval.
        let monitor = Monitor::spawn(
            &format!("cpuguard:{}", self.obj().name()),
            interval,
            move || {
                let obj = weak.upgrade()?;
                Some(obj.imp().tick())
            },
        )
        .map_err(|err| {
            gst::error_msg!(
                gst::CoreError::Thread,
                ("cpuguard cannot start its sampling thread: {}", err)
            )
        })?;
        *lock(&self.monitor) = Some(monitor);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        // Take the monitor out first so no lock is held while it joins.
        let monitor = lock(&self.monitor).take();
        if let Some(monitor) = monitor {
            monitor.stop();
        }
        *lock(&self.state) = State::default();
        self.inject_eos.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Eos(eos) if self.has_drain() => {
                if self.forward_tagged_eos(Some(eos.seqnum())) {
                    return true;
                }
                // Our EOS already went out (injected): this one is redundant.
                if lock(&self.state)
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.eos_forwarded)
                {
                    return true;
                }
                self.parent_sink_event(event)
            }
            _ => self.parent_sink_event(event),
        }
    }

    fn transform_ip_passthrough(
        &self,
        _buf: &gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.inject_eos.load(Ordering::Relaxed) && self.inject_eos.swap(false, Ordering::SeqCst)
        {
            gst::info!(
                CAT,
                imp = self,
                "Ending the stream from the streaming thread"
            );
            self.forward_tagged_eos(None);
            return Err(gst::FlowError::Eos);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

impl CpuGuard {
    fn has_drain(&self) -> bool {
        lock(&self.state).drain.is_some()
    }
}
