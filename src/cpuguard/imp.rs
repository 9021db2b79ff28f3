use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::LoadSource;
use super::sampler::{self, Chosen, MemberFacts, PolicyKey, Registration, SamplerKey};
use super::stream::StreamPosition;
use super::threads::StreamingThreads;
use crate::hostwide::{self, DirSettingError, Scope};
use crate::load::{CpuRequest, LoadError, LoadSample, LoadSourceKind};
use crate::messages::{self, DrainTrigger, Refusal};
use crate::pipeline_eos as drain;
use crate::policy::{DEFAULT_RELEASE, Policy, PolicyConfig};
use crate::reason::EndReason;

use super::category::CAT;

use crate::policy::{DEFAULT_HARD, DEFAULT_HOLD, DEFAULT_SOFT};
use crate::settings::{
    DEFAULT_COORDINATION_DIR, DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_INTERVAL_MS, DEFAULT_ROOT,
    MIN_INTERVAL_MS,
};

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    soft: f64,
    hard: f64,
    hold: u32,
    release: u32,
    interval_ms: u32,
    load_source: LoadSource,
    drain_timeout_ms: u32,
    dry_run: bool,
    /// Load may drain a pipeline that is not live (a render, a transcode).
    drain_non_live: bool,
    root: String,
    /// CPUs; 0 = unset.
    cpu_request: f64,
    crash_safe: bool,
    crash_safe_interval_ms: u32,
    /// `auto`, `none` or an absolute path.
    coordination_dir: String,
    coordination_group_shared: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            soft: DEFAULT_SOFT,
            hard: DEFAULT_HARD,
            hold: DEFAULT_HOLD,
            release: DEFAULT_RELEASE,
            interval_ms: DEFAULT_INTERVAL_MS,
            load_source: LoadSource::default(),
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            dry_run: false,
            drain_non_live: false,
            root: DEFAULT_ROOT.to_owned(),
            cpu_request: 0.0,
            crash_safe: false,
            crash_safe_interval_ms: crate::crashsafe::DEFAULT_INTERVAL_MS,
            coordination_dir: DEFAULT_COORDINATION_DIR.to_owned(),
            coordination_group_shared: false,
        }
    }
}

impl Settings {
    fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            soft: self.soft,
            hard: self.hard,
            hold: self.hold,
            release: self.release,
        }
    }

    fn sampler_key(&self) -> Result<SamplerKey, DirSettingError> {
        let xdg = std::env::var("XDG_RUNTIME_DIR").ok();
        let env = std::env::var(hostwide::DIR_ENV).ok();
        let coordination_dir = hostwide::resolve_dir(
            &self.coordination_dir,
            hostwide::files::euid(),
            xdg.as_deref(),
            env.as_deref(),
        )?;
        Ok(SamplerKey {
            source: self.load_source.into(),
            root: self.root.clone(),
            interval: self.interval(),
            cpu_request: CpuRequest::from_cpus(self.cpu_request).map(|r| r.cpus().to_bits()),
            coordination_dir,
            group_shared: self.coordination_group_shared,
        })
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms.max(MIN_INTERVAL_MS)))
    }
}

/// What a drain in progress needs to remember.
#[derive(Debug)]
struct Drain {
    reason: EndReason,
    /// Where completion is checked; `None` when the element has no parent bin.
    top: Option<gst::Element>,
    started: Instant,
    /// The drain-timeout deadline, on the system clock: its callback posts
    /// the ERROR if the drain has not completed by then.
    deadline: Option<gst::SingleShotClockId>,
    timeout_ms: u32,
    /// How it ended; `None` while under way.
    ended: Option<DrainEnd>,
    /// Our own EOS (with tag and reason) has gone downstream.
    eos_forwarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainEnd {
    /// Every sink has the EOS (or, with no parent bin, ours went out).
    Completed,
    /// The deadline came first; the ERROR is posted.
    TimedOut,
}

impl Drain {
    /// Whether the drain is over, noting completion when it has come
    /// (`element`'s, for the log).
    fn finished(&mut self, element: &CpuGuard) -> bool {
        if self.ended.is_some() {
            return true;
        }
        let completed = match &self.top {
            Some(top) => drain::all_sinks_eos(top),
            None => self.eos_forwarded,
        };
        if completed {
            gst::info!(
                CAT,
                imp = element,
                "Drain ({}) completed in {} ms",
                self.reason,
                self.started.elapsed().as_millis()
            );
            self.ended = Some(DrainEnd::Completed);
            self.cancel_deadline();
        }
        completed
    }

    fn cancel_deadline(&mut self) {
        if let Some(deadline) = self.deadline.take() {
            deadline.unschedule();
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.cancel_deadline();
    }
}

/// What exists only while the element runs, from READY→PAUSED to
/// PAUSED→READY. Dropped with no lock held: leaving the sampler may join
/// its thread, which may be waiting for this lock.
struct State {
    /// Our membership in the shared sampler; its calls for any other id are
    /// stale (an earlier run) and ignored.
    registration: Registration,
    drain: Option<Drain>,
}

pub struct CpuGuard {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    /// `None` while stopped.
    state: Mutex<Option<State>>,
    threads: Arc<StreamingThreads>,
    /// Last load sample as f64 bits, readable without a lock by the `load` property.
    last_load: AtomicU64,
    /// Last CPU share of our streaming threads, as f64 bits.
    last_cpu: AtomicU64,
    /// EOS went through (natural end, or another element's drain): no victim any more.
    stream_ended: AtomicBool,
    /// Set when EOS must be injected from the streaming thread (no parent bin, or
    /// the sources refused the EOS). Checked per buffer, hence an atomic.
    inject_eos: AtomicBool,
    /// Segment, position and QoS of the stream passing through.
    stream: StreamPosition,
    /// Downstream sent a RECONFIGURE event: the caps are offered again
    /// before the next buffer. An atomic read per buffer, where asking the
    /// pad for its flag would take its object lock every time.
    reconfigure: AtomicBool,
    /// The pipeline's muxers under crash safety, from READY to NULL.
    protection: Mutex<Option<crate::crashsafe::Protection>>,
    /// The pipeline answered the latency query as not live, and load may not
    /// drain it (`drain-non-live` off): never a victim of the load.
    exempt_non_live: AtomicBool,
    /// The bus WARNING about that was posted (once a run).
    told_non_live: AtomicBool,
    /// A pad function panicked: they all return their fallback from now on.
    poisoned: AtomicBool,
}

/// The element as the shared sampler holds it.
struct WeakGuard(glib::WeakRef<super::CpuGuard>);

impl sampler::MemberRef for WeakGuard {
    fn upgrade(&self) -> Option<Box<dyn sampler::Member>> {
        self.0
            .upgrade()
            .map(|element| Box::new(element) as Box<dyn sampler::Member>)
    }
}

/// What the sampler asks of the element and tells it: the element's own
/// methods, so the sampler sees nothing else of it.
impl sampler::Member for super::CpuGuard {
    fn label(&self) -> String {
        self.name().to_string()
    }

    fn facts(&self, surveys: &mut drain::Surveys) -> MemberFacts {
        self.imp().facts(surveys)
    }

    fn on_sample(&self, id: u64, sample: &LoadSample, cpu: f64) {
        self.imp().on_sample(id, sample, cpu);
    }

    fn on_sample_error(&self, id: u64, err: &LoadError, first: bool) {
        self.imp().on_sample_error(id, err, first);
    }

    fn on_coordination_warning(&self, id: u64, text: &str) {
        self.imp().on_coordination_warning(id, text);
    }

    fn chosen(&self, chosen: &Chosen, source: LoadSourceKind) -> bool {
        self.imp().chosen(chosen, source)
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

    /// The drain-timeout deadline of run `run` has come: unless the drain
    /// completed, post the ERROR that tells the application to tear down.
    fn on_drain_deadline(&self, run: u64) {
        let mut state = lock(&self.state);
        let Some(drain) = state
            .as_mut()
            .filter(|state| state.registration.id() == run)
            .and_then(|state| state.drain.as_mut())
        else {
            return;
        };
        if drain.finished(self) {
            return;
        }
        drain.ended = Some(DrainEnd::TimedOut);
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
    }

    /// Starts the clock that ends the drain's wait at drain-timeout.
    fn drain_deadline(&self, run: u64, timeout_ms: u32) -> Option<gst::SingleShotClockId> {
        let clock = gst::SystemClock::obtain();
        let at = clock.time() + gst::ClockTime::from_mseconds(u64::from(timeout_ms));
        let deadline = clock.new_single_shot_id(at);
        let weak = self.obj().downgrade();
        let waiting = deadline.wait_async(move |_, _, _| {
            if let Some(obj) = weak.upgrade() {
                obj.imp().on_drain_deadline(run);
            }
        });
        match waiting {
            Ok(_) => Some(deadline),
            Err(err) => {
                gst::warning!(CAT, imp = self, "No drain deadline: {err:?}");
                None
            }
        }
    }

    /// What the shared sampler needs to know before it decides; `surveys`
    /// holds this round's look at each pipeline, shared with the other
    /// cpuguards in it.
    fn facts(&self, surveys: &mut drain::Surveys) -> MemberFacts {
        let (dry_run, drain_non_live) = {
            let settings = lock(&self.settings);
            (settings.dry_run, settings.drain_non_live)
        };
        // Looked at before taking the state lock: it walks the pipeline.
        let survey = drain::top_level(self.obj().upcast_ref()).map(|top| surveys.of(&top));
        let by_itself =
            self.ending_by_itself(|| survey.is_some_and(|survey| survey.ending_by_itself));
        let exempt = !drain_non_live && survey.is_some_and(|survey| !survey.live);
        self.exempt_non_live.store(exempt, Ordering::Relaxed);
        let mut state = lock(&self.state);
        let drain = state.as_mut().and_then(|state| state.drain.as_mut());
        MemberFacts {
            ending: drain.is_some() || by_itself || exempt,
            drain_finished: drain.is_some_and(|drain| drain.finished(self)),
            dry_run,
        }
    }

    fn is_member(&self, id: u64) -> bool {
        lock(&self.state)
            .as_ref()
            .is_some_and(|state| state.registration.id() == id)
    }

    /// A sample of the shared load, with the CPU our own threads used.
    fn on_sample(&self, id: u64, sample: &LoadSample, cpu: f64) {
        if !self.is_member(id) {
            return;
        }
        self.last_load
            .store(sample.load.to_bits(), Ordering::Relaxed);
        self.last_cpu.store(cpu.to_bits(), Ordering::Relaxed);
        gst::log!(
            CAT,
            imp = self,
            "load {:.3} ({}, capacity {:.2} CPUs), own CPU {cpu:.3}",
            sample.load,
            sample.source.as_str(),
            sample.capacity
        );
        self.post_load(sample, cpu);
        let soft = lock(&self.settings).soft;
        if sample.load >= soft
            && self.exempt_non_live.load(Ordering::Relaxed)
            && !self.told_non_live.swap(true, Ordering::SeqCst)
        {
            gst::element_imp_warning!(
                self,
                gst::CoreError::Negotiation,
                (
                    "cpuguard does not drain this pipeline on load: it is not live (load {:.2} \
                     reached soft-threshold {}). Work that is not live uses all the CPU by \
                     design; set drain-non-live=true to drain it anyway",
                    sample.load,
                    soft
                )
            );
        }
    }

    fn on_sample_error(&self, id: u64, err: &LoadError, first: bool) {
        if !self.is_member(id) {
            return;
        }
        // One bus warning per failure streak; the log gets every one.
        gst::warning!(CAT, imp = self, "No load sample: {err}");
        if first {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Read,
                ("cpuguard cannot read CPU load: {}", err)
            );
        }
    }

    /// A once-only warning about cross-process coordination (unusable
    /// directory, a bad entry): on the bus as a WARNING message.
    fn on_coordination_warning(&self, id: u64, text: &str) {
        if !self.is_member(id) {
            return;
        }
        gst::element_imp_warning!(self, gst::ResourceError::Settings, ("{}", text));
    }

    /// The sampler chose us as the victim. Returns whether a drain started
    /// (dry run: whether the report was made).
    fn chosen(&self, chosen: &Chosen, source: LoadSourceKind) -> bool {
        let (victim, cpu, dry_run) = (&chosen.victim, chosen.cpu, chosen.dry_run);
        let (scope, candidates) = (chosen.scope, chosen.candidates);
        if !self.is_member(victim.id) {
            return false;
        }
        let notice = messages::Drain {
            reason: EndReason::CpuLimit,
            load: victim.load,
            threshold: victim.threshold,
            trigger: victim.trigger.into(),
            source: Some(source),
            cpu,
            scope,
            candidates: u32::try_from(candidates).unwrap_or(u32::MAX),
        };
        let (trigger, threshold) = (victim.trigger, victim.threshold);
        if dry_run {
            gst::info!(
                CAT,
                imp = self,
                "Dry run: would drain at load {:.3} ({trigger} threshold {threshold}, own CPU {cpu:.3})",
                victim.load
            );
            self.post(notice.to_dry_run_structure());
            return true;
        }
        gst::info!(
            CAT,
            imp = self,
            "Load {:.3} crossed the {trigger} threshold {threshold}: draining (own CPU {cpu:.3}, \
             the most of its group; chosen among {candidates} at {} scope)",
            victim.load,
            scope.as_str()
        );
        self.start_drain(notice)
    }

    fn post_load(&self, sample: &LoadSample, cpu: f64) {
        self.post(
            messages::Load {
                load: sample.load,
                source: sample.source,
                capacity: sample.capacity,
                cpu,
                // Only where a CFS quota binds and its group was read twice.
                throttled: sample.throttling.map(|t| messages::Throttled {
                    ratio: t.ratio,
                    seconds: t.seconds,
                    periods: t.periods,
                }),
            }
            .to_structure(),
        );
    }

    /// Posts an element message from this element; callers hold none of our
    /// locks, since a sync bus handler may call back into the element.
    fn post(&self, s: gst::Structure) {
        let _ = self
            .obj()
            .post_message(gst::message::Element::builder(s).src(&*self.obj()).build());
    }

    /// Tells the application that a drain it (or the load) asked for did not
    /// start, and why: `cpuguard-drain-refused` with the drain's `reason`, a
    /// `refusal` code and its `description`.
    fn post_refusal(&self, reason: &EndReason, refusal: Refusal, description: &str) {
        self.post(
            messages::DrainRefused {
                reason: reason.clone(),
                refusal,
                description: description.to_owned(),
            }
            .to_structure(),
        );
    }

    /// Starts the one drain this element may do. Returns false if one already ran.
    /// Never blocks: the EOS is sent from a GStreamer pool thread.
    fn start_drain(&self, notice: messages::Drain) -> bool {
        let settings = self.settings();
        let obj = self.obj();
        let top = drain::top_level(obj.upcast_ref());
        if self.ending_by_itself(|| top.as_ref().is_some_and(drain::natural_end_under_way)) {
            gst::info!(
                CAT,
                imp = self,
                "The stream is ending by itself (its sources sent EOS): no drain ({})",
                notice.reason
            );
            self.post_refusal(
                &notice.reason,
                Refusal::EndingByItself,
                "the stream is ending by itself: every origin of the pipeline has sent its \
                 own EOS, and what is still queued flows to the sinks",
            );
            return false;
        }
        {
            let mut state = lock(&self.state);
            let Some(state) = state.as_mut() else {
                gst::warning!(CAT, imp = self, "Not running: no drain ({})", notice.reason);
                return false;
            };
            if let Some(drain) = &state.drain {
                let text = format!("a drain ({}) is already under way", drain.reason);
                gst::info!(
                    CAT,
                    imp = self,
                    "{text}; ignoring drain ({})",
                    notice.reason
                );
                self.post_refusal(&notice.reason, Refusal::AlreadyDraining, &text);
                return false;
            }
            let run = state.registration.id();
            state.drain = Some(Drain {
                reason: notice.reason.clone(),
                top: top.clone(),
                started: Instant::now(),
                // drain-timeout=0 waits forever.
                deadline: (settings.drain_timeout_ms > 0)
                    .then(|| self.drain_deadline(run, settings.drain_timeout_ms))
                    .flatten(),
                timeout_ms: settings.drain_timeout_ms,
                ended: None,
                eos_forwarded: false,
            });
        }

        self.post(notice.to_structure());
        let tags = crate::tags::end_reason_tags(notice.reason.as_str());
        let _ = obj.post_message(gst::message::Tag::builder(tags).src(&*obj).build());

        let end_own_branch = match &top {
            Some(top) => {
                let weak = obj.downgrade();
                let asked = drain::push_eos_from_sources(top, move |pad| {
                    // A source that already sent its own EOS needs no help:
                    // ending this branch early would drop what is still
                    // queued behind that EOS.
                    if pad.pad_flags().contains(gst::PadFlags::EOS) {
                        return;
                    }
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
        true
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
            .as_ref()
            .map(|state| state.registration.source());
        gst::info!(
            CAT,
            imp = self,
            "Drain requested by the application: {reason}"
        );
        self.start_drain(messages::Drain {
            reason,
            load: self.last_load(),
            threshold: settings.soft,
            trigger: DrainTrigger::Request,
            source,
            cpu: f64::from_bits(self.last_cpu.load(Ordering::Relaxed)),
            scope: Scope::Request,
            candidates: 1,
        })
    }

    /// The EOS that leaves this element: tag first so it reaches the sink before
    /// the stream ends, then EOS carrying the reason.
    fn forward_tagged_eos(&self, seqnum: Option<gst::Seqnum>) -> bool {
        let (reason, started) = {
            let mut state = lock(&self.state);
            match state.as_mut().and_then(|state| state.drain.as_mut()) {
                Some(drain) if !drain.eos_forwarded => {
                    drain.eos_forwarded = true;
                    (drain.reason.clone(), drain.started)
                }
                _ => return false,
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "Drain ({reason}): end reason tag and EOS sent downstream {} ms after the drain started",
            started.elapsed().as_millis()
        );
        let tags = crate::tags::end_reason_tags(reason.as_str());
        let src = &self.srcpad;
        src.push_event(gst::event::Tag::new(tags));
        let mut eos = gst::event::Eos::builder().other_field("reason", reason.as_str());
        if let Some(seqnum) = seqnum {
            eos = eos.seqnum(seqnum);
        }
        src.push_event(eos.build());
        true
    }
}

/// What every pad function runs in: a panic inside is caught (it must not
/// cross into C), posted as an ERROR, and poisons the element, whose pad
/// functions then return `fallback`. gstreamer-rs's own
/// `catch_panic_pad_function` does the same but looks its flag up in the
/// instance data on every call: on the buffer path that was about 50 of the
/// 760 instructions the element added per buffer (callgrind, `fakesrc !
/// cpuguard ! fakesink`), so the element keeps its own flag beside it and
/// sets both.
fn guard_panic<R>(
    parent: Option<&gst::Object>,
    fallback: impl FnOnce() -> R,
    f: impl FnOnce(&CpuGuard) -> R,
) -> R {
    let Some(element) = parent.and_then(|p| p.downcast_ref::<super::CpuGuard>()) else {
        return fallback();
    };
    let imp = element.imp();
    if imp.poisoned.load(Ordering::Relaxed) {
        return fallback();
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(imp))) {
        Ok(result) => result,
        Err(panic) => {
            imp.poisoned.store(true, Ordering::Relaxed);
            imp.panicked().store(true, Ordering::Relaxed);
            gst::subclass::post_panic_error_message(
                element.upcast_ref(),
                element.upcast_ref(),
                Some(panic),
            );
            fallback()
        }
    }
}

/// One of our two pads: events to `on_event`, queries to `query`, and caps
/// and allocation left to downstream (the buffers pass unchanged).
fn pad_builder(
    klass: &<CpuGuard as ObjectSubclass>::Class,
    name: &str,
    on_event: fn(&CpuGuard, &gst::Pad, gst::Event) -> bool,
) -> gst::PadBuilder<gst::Pad> {
    // The templates are the element's own, registered with the class.
    let templ = klass.pad_template(name).expect("cpuguard's pad template");
    gst::Pad::builder_from_template(&templ)
        .event_function(move |pad, parent, event| {
            guard_panic(parent, || false, |imp| on_event(imp, pad, event))
        })
        .query_function(|pad, parent, query| {
            guard_panic(parent, || false, |imp| imp.query(pad, query))
        })
        .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
}

#[glib::object_subclass]
impl ObjectSubclass for CpuGuard {
    const NAME: &'static str = "GstCpuGuard";
    type Type = super::CpuGuard;
    type ParentType = gst::Element;

    /// Its own pads, as gst-plugins-rs `livesync` has: a pass-through with
    /// no parent class between the buffers and the element's work.
    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad = pad_builder(klass, "sink", CpuGuard::sink_event)
            .chain_function(|pad, parent, buffer| {
                guard_panic(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(pad, buffer),
                )
            })
            .chain_list_function(|pad, parent, list| {
                guard_panic(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain_list(pad, list),
                )
            })
            .build();
        let srcpad = pad_builder(klass, "src", CpuGuard::src_event).build();
        CpuGuard {
            sinkpad,
            srcpad,
            settings: Mutex::default(),
            state: Mutex::default(),
            threads: Arc::default(),
            last_load: AtomicU64::new(0f64.to_bits()),
            last_cpu: AtomicU64::new(0f64.to_bits()),
            stream_ended: AtomicBool::new(false),
            inject_eos: AtomicBool::new(false),
            stream: StreamPosition::default(),
            reconfigure: AtomicBool::new(false),
            protection: Mutex::default(),
            exempt_non_live: AtomicBool::new(false),
            told_non_live: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        }
    }
}

impl ObjectImpl for CpuGuard {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(super::properties::specs);
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
            "release" => settings.release = value.get().unwrap_or(DEFAULT_RELEASE),
            "interval" => settings.interval_ms = value.get().unwrap_or(DEFAULT_INTERVAL_MS),
            "load-source" => settings.load_source = value.get().unwrap_or_default(),
            "drain-timeout" => {
                settings.drain_timeout_ms = value.get().unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS)
            }
            "dry-run" => settings.dry_run = value.get().unwrap_or(false),
            "drain-non-live" => settings.drain_non_live = value.get().unwrap_or(false),
            "root" => {
                settings.root = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_ROOT.to_owned())
            }
            "cpu-request" => settings.cpu_request = value.get().unwrap_or(0.0),
            "crash-safe" => settings.crash_safe = value.get().unwrap_or(false),
            "qos" => self.stream.set_qos(value.get().unwrap_or(false)),
            "crash-safe-interval" => {
                settings.crash_safe_interval_ms =
                    value.get().unwrap_or(crate::crashsafe::DEFAULT_INTERVAL_MS)
            }
            "coordination-dir" => {
                settings.coordination_dir = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            }
            "coordination-group-shared" => {
                settings.coordination_group_shared = value.get().unwrap_or(false)
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
            "release" => settings.release.to_value(),
            "interval" => settings.interval_ms.to_value(),
            "load-source" => settings.load_source.to_value(),
            "drain-timeout" => settings.drain_timeout_ms.to_value(),
            "dry-run" => settings.dry_run.to_value(),
            "drain-non-live" => settings.drain_non_live.to_value(),
            "load" => self.last_load().to_value(),
            "root" => settings.root.to_value(),
            "cpu-request" => settings.cpu_request.to_value(),
            "crash-safe" => settings.crash_safe.to_value(),
            "qos" => self.stream.qos().to_value(),
            "crash-safe-interval" => settings.crash_safe_interval_ms.to_value(),
            "coordination-dir" => settings.coordination_dir.to_value(),
            "coordination-group-shared" => settings.coordination_group_shared.to_value(),
            _ => pspec.default_value().clone(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        // Both pads exist from construction: adding them cannot fail.
        let _ = obj.add_pad(&self.sinkpad);
        let _ = obj.add_pad(&self.srcpad);
    }
}

impl GstObjectImpl for CpuGuard {}

impl ElementImpl for CpuGuard {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CPU guard",
                "Generic",
                "Pass-through that watches CPU load and, when it stays at or above \
                 soft-threshold for hold samples or reaches hard-threshold, drains the whole \
                 pipeline with EOS so every muxer finalizes its file. All cpuguard elements of a \
                 process with the same load-source, root and interval share one sampling thread; \
                 those with the same policy drain one at a time, the one whose streaming threads \
                 use the most CPU first. Across processes judging the same CPU budget (the host, \
                 or a cgroup), drains go one at a time through coordination-dir, the process \
                 using the most CPU first. \
                 Element messages: \
                 cpuguard-load at every sample (load: double, share of capacity; source: string; \
                 capacity: double, CPUs; cpu: double, CPUs used by this element's streaming \
                 threads; and, where a CFS quota binds, throttled-ratio: double, share of the \
                 window's CFS periods in which the quota's group was throttled, \
                 throttled-seconds: double, time it spent throttled in the window, \
                 throttled-periods: guint64, CFS periods in the window); \
                 cpuguard-drain when a drain starts (reason: string, cpu-limit, stop-requested or \
                 the application's own; description: string, e.g. \"CPU limit reached\"; load, \
                 threshold: double; trigger: string, soft, hard or request; source: string; cpu: \
                 double; scope: string, process, host, cgroup or request, how far the victim \
                 choice reached; candidates: uint, how many were compared); \
                 cpuguard-would-drain with the same fields when dry-run is set and a drain would \
                 start; \
                 cpuguard-drain-refused when a drain asked for does not start (reason: string; \
                 refusal: string, ending-by-itself or already-draining; description: string). \
                 A pipeline with no live source is not drained on load unless drain-non-live \
                 is set: a WARNING says so once. \
                 End reason: the cpuguard-end-reason tag (string) is posted on the bus and pushed \
                 downstream before EOS, and the EOS event carries a reason field. \
                 cpuguard-crash-safe when crash-safe is set, once per muxer configured or \
                 left alone (element, factory, action: string, configured, already-safe or \
                 left-alone; detail: string, the settings or why none; protected: boolean). \
                 Action signal: drain(reason: string) -> boolean, drains with that reason, \
                 returns whether a drain started (an element drains at most once). \
                 A drain not completed within drain-timeout posts an ERROR. \
                 Debug category: cpuguard.",
                "cpuguard developers",
            )
        });
        Some(&*METADATA)
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            self.protect_pipeline();
        }
        if transition == gst::StateChange::ReadyToPaused
            && let Err(err) = self.start()
        {
            self.post_error_message(err);
            return Err(gst::StateChangeError);
        }
        let result = self.parent_change_state(transition);
        if transition == gst::StateChange::PausedToReady {
            self.stop();
        }
        if transition == gst::StateChange::ReadyToNull {
            // Taken out first: dropping disconnects from the pipeline.
            let protection = lock(&self.protection).take();
            drop(protection);
        }
        result
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

/// The streaming side: what the pads do.
impl CpuGuard {
    /// READY → PAUSED: check the settings and join the shared sampler.
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings();
        let config = settings.policy_config();
        Policy::new(config).map_err(|err| {
            gst::error_msg!(
                gst::LibraryError::Settings,
                ("Invalid cpuguard settings: {}", err)
            )
        })?;
        self.inject_eos.store(false, Ordering::SeqCst);
        self.stream_ended.store(false, Ordering::SeqCst);
        self.exempt_non_live.store(false, Ordering::SeqCst);
        self.told_non_live.store(false, Ordering::SeqCst);
        self.last_load.store(0f64.to_bits(), Ordering::Relaxed);
        self.last_cpu.store(0f64.to_bits(), Ordering::Relaxed);
        self.threads.clear();
        self.stream.reset();

        let policy = PolicyKey {
            config,
            dry_run: settings.dry_run,
        };
        let key = settings.sampler_key().map_err(|err| {
            gst::error_msg!(
                gst::LibraryError::Settings,
                ("Invalid cpuguard settings: {}", err)
            )
        })?;
        let member = Box::new(WeakGuard(self.obj().downgrade()));
        let registration = sampler::register(member, key, policy, self.threads.clone()).map_err(
            |err| match err {
                sampler::RegisterError::Policy(err) => gst::error_msg!(
                    gst::LibraryError::Settings,
                    ("Invalid cpuguard settings: {}", err)
                ),
                sampler::RegisterError::Meter(err) => gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    (
                        "cpuguard cannot measure load with load-source={}: {}",
                        LoadSourceKind::from(settings.load_source).as_str(),
                        err
                    )
                ),
                sampler::RegisterError::Thread(err) => gst::error_msg!(
                    gst::CoreError::Thread,
                    ("cpuguard cannot start its sampling thread: {}", err)
                ),
            },
        )?;
        gst::info!(
            CAT,
            imp = self,
            "Measuring load (shared by every cpuguard with load-source, root and interval \
             like ours): {}",
            registration.describe()
        );
        let previous = lock(&self.state).replace(State {
            registration,
            drain: None,
        });
        drop(previous);
        if (1..1000).contains(&settings.drain_timeout_ms) {
            // A bare number is milliseconds: `drain-timeout=30` meant as
            // seconds gives a drain no time, and the recording is lost.
            gst::element_imp_warning!(
                self,
                gst::CoreError::Negotiation,
                (
                    "drain-timeout is {} ms (the property is in milliseconds: {} s would be \
                     drain-timeout={}); a drain usually takes hundreds of milliseconds",
                    settings.drain_timeout_ms,
                    settings.drain_timeout_ms,
                    u64::from(settings.drain_timeout_ms) * 1000
                )
            );
        }
        Ok(())
    }

    /// PAUSED → READY: leave the sampler.
    fn stop(&self) {
        // Taken out first so no lock is held if leaving joins the sampler
        // thread; the sampler's calls are refused from now on (a round
        // already under way may still hold this element).
        let state = lock(&self.state).take();
        drop(state);
        self.inject_eos.store(false, Ordering::SeqCst);
    }

    fn sink_chain(
        &self,
        pad: &gst::Pad,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let _ = pad;
        self.reconfigure_if_asked()?;
        self.on_buffer()?;
        if self.stream.is_late(buffer.pts()) {
            gst::debug!(CAT, imp = self, "QoS: dropping a late buffer {buffer:?}");
            return Ok(gst::FlowSuccess::Ok);
        }
        self.stream.note_buffer(buffer.pts(), buffer.duration());
        self.srcpad.push(buffer)
    }

    /// Lists stay lists downstream; the element's work runs once a list.
    fn sink_chain_list(
        &self,
        pad: &gst::Pad,
        list: gst::BufferList,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.stream.qos() {
            // Late buffers are dropped one by one, as without a list.
            let mut result = Ok(gst::FlowSuccess::Ok);
            for buffer in list.iter_owned() {
                result = self.sink_chain(pad, buffer);
                if result != Ok(gst::FlowSuccess::Ok) {
                    break;
                }
            }
            return result;
        }
        self.reconfigure_if_asked()?;
        self.on_buffer()?;
        // The last buffer with a timestamp sets the position.
        if let Some(last) = list.iter().rev().find(|b| b.pts().is_some()) {
            self.stream.note_buffer(last.pts(), last.duration());
        }
        self.srcpad.push_list(list)
    }

    /// When downstream asked for a RECONFIGURE, offer it the current input
    /// caps again before pushing; refused, the buffer is not-negotiated and
    /// the request stays for the next one. Per buffer only the flag is read
    /// here; the rest is out of line.
    #[inline]
    fn reconfigure_if_asked(&self) -> Result<(), gst::FlowError> {
        if self.reconfigure.load(Ordering::Relaxed)
            && self.reconfigure.swap(false, Ordering::SeqCst)
        {
            return self.renegotiate();
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn renegotiate(&self) -> Result<(), gst::FlowError> {
        // Clears the pad's own flag, set as the event went through it.
        self.srcpad.check_reconfigure();
        let Some(caps) = self.sinkpad.current_caps() else {
            return Ok(());
        };
        // Asked first: a refused sticky CAPS event still counts as pushed,
        // and the refusal would only show at the buffer, with the request gone.
        if self.srcpad.peer_query_accept_caps(&caps)
            && self.srcpad.push_event(gst::event::Caps::new(&caps))
        {
            return Ok(());
        }
        self.srcpad.mark_reconfigure();
        self.reconfigure.store(true, Ordering::SeqCst);
        Err(
            if self.srcpad.pad_flags().contains(gst::PadFlags::FLUSHING) {
                gst::FlowError::Flushing
            } else {
                gst::FlowError::NotNegotiated
            },
        )
    }

    /// POSITION in TIME is answered from the buffers that went through;
    /// everything else goes on as for any pass-through.
    fn query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Position(position) = query.view_mut()
            && position.format() == gst::Format::Time
            && let Some(now) = self.stream.position()
        {
            position.set(now);
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Qos(qos) => {
                let (_, _, diff, timestamp) = qos.get();
                self.stream.note_qos(diff, timestamp);
            }
            gst::EventView::Reconfigure(_) => self.reconfigure.store(true, Ordering::SeqCst),
            _ => {}
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        self.threads.note_current();
        match event.view() {
            gst::EventView::Eos(_) => self.stream_ended.store(true, Ordering::SeqCst),
            gst::EventView::FlushStop(_) => {
                self.stream_ended.store(false, Ordering::SeqCst);
                self.stream.reset();
            }
            gst::EventView::Segment(segment) => self.stream.set_segment(segment.segment()),
            _ => {}
        }
        match event.view() {
            gst::EventView::Eos(eos) if self.has_drain() => {
                if self.forward_tagged_eos(Some(eos.seqnum())) {
                    return true;
                }
                // Our EOS already went out (injected): this one is redundant.
                if lock(&self.state)
                    .as_ref()
                    .and_then(|state| state.drain.as_ref())
                    .is_some_and(|d| d.eos_forwarded)
                {
                    return true;
                }
                gst::Pad::event_default(pad, Some(&*self.obj()), event)
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }
}

impl CpuGuard {
    /// With crash-safe: configures the muxers of the whole pipeline (the
    /// topmost bin above us), now and as they are added. Bins bring their
    /// sinks to READY first, so the muxers downstream are already READY: they
    /// read these settings when their first buffer comes.
    fn protect_pipeline(&self) {
        let settings = self.settings();
        if !settings.crash_safe {
            return;
        }
        let obj = self.obj();
        let mut top: Option<gst::Object> = obj.parent();
        while let Some(parent) = top.as_ref().and_then(|p| p.parent()) {
            top = Some(parent);
        }
        let Some(bin) = top.and_then(|t| t.downcast::<gst::Bin>().ok()) else {
            gst::warning!(
                CAT,
                imp = self,
                "crash-safe: not in a bin, no muxer to configure"
            );
            return;
        };
        let element = obj.downgrade();
        let protection =
            crate::crashsafe::protect(&bin, settings.crash_safe_interval_ms, move |decision| {
                let Some(element) = element.upgrade() else {
                    return;
                };
                gst::info!(CAT, obj = element, "{}", decision.describe());
                let s = messages::CrashSafe {
                    element: decision.element.clone(),
                    factory: decision.factory.clone(),
                    action: (&decision.plan).into(),
                    detail: decision.detail(),
                    protected: decision.plan.protected(),
                }
                .to_structure();
                // Called with no lock of ours held (see crashsafe::protect).
                let _ =
                    element.post_message(gst::message::Element::builder(s).src(&element).build());
            });
        *lock(&self.protection) = Some(protection);
    }

    /// The EOS went through this element, or every source of the pipeline has
    /// already sent its own: a natural end, which a drain must not turn into
    /// a stop (nor shorten). `sources_ended` tells the second, and is only
    /// asked when the first is not so.
    fn ending_by_itself(&self, sources_ended: impl FnOnce() -> bool) -> bool {
        self.stream_ended.load(Ordering::SeqCst) || sources_ended()
    }

    fn has_drain(&self) -> bool {
        lock(&self.state)
            .as_ref()
            .is_some_and(|state| state.drain.is_some())
    }

    /// The element's work on every buffer: note the streaming thread, and end
    /// the stream from here (tagged EOS downstream, EOS flow upstream) when a
    /// drain asked for it. An `Err` means the buffer must not go on.
    #[inline]
    fn on_buffer(&self) -> Result<(), gst::FlowError> {
        self.threads.note_current();
        if self.inject_eos.load(Ordering::Relaxed) && self.inject_eos.swap(false, Ordering::SeqCst)
        {
            return Err(self.end_from_here());
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn end_from_here(&self) -> gst::FlowError {
        gst::info!(
            CAT,
            imp = self,
            "Ending the stream from the streaming thread"
        );
        self.forward_tagged_eos(None);
        gst::FlowError::Eos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a pad function stops at the guard: the caller gets the
    /// fallback, the bus an ERROR, and the element is poisoned (the next
    /// call does not run at all).
    #[test]
    fn a_panic_in_a_pad_function_is_caught_posted_and_poisons() {
        gst::init().unwrap();
        let element = glib::Object::new::<super::super::CpuGuard>();
        let bus = gst::Bus::new();
        element.set_bus(Some(&bus));
        let parent = Some(element.upcast_ref::<gst::Object>());
        let caught = guard_panic(parent, || "fallback", |_| -> &str { panic!("on purpose") });
        assert_eq!(caught, "fallback");
        let error = bus
            .pop_filtered(&[gst::MessageType::Error])
            .expect("an ERROR for the panic");
        let gst::MessageView::Error(error) = error.view() else {
            unreachable!()
        };
        assert!(
            error.error().to_string().contains("Panicked"),
            "{}",
            error.error()
        );
        let mut ran = false;
        let after = guard_panic(
            parent,
            || "fallback",
            |_| {
                ran = true;
                "ran"
            },
        );
        assert_eq!((after, ran), ("fallback", false), "not poisoned");
        assert!(element.imp().panicked().load(Ordering::Relaxed));
        // Nothing to guard without the element.
        assert_eq!(guard_panic(None, || 0, |_| 1), 0);
    }
}
