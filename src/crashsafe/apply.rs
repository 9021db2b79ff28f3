//! Applying the crash-safety plan to the muxers of a running pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;

use super::policy::{self, FILESINK_BUFFER_PROPERTIES, MP4_LAYOUT_PROPERTIES, Plan};

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cpuguard",
        gst::DebugColorFlags::empty(),
        Some("Drains the pipeline on high CPU load"),
    )
});

/// The muxers already handled in this process, so that a second pass (two
/// cpuguard elements, or the element and cpuguard-run) does not read our own
/// settings as the user's. Weak references: a muxer that goes away leaves no
/// trace (and a new one at the same address is not taken for it).
static HANDLED: Mutex<Vec<glib::WeakRef<gst::Element>>> = Mutex::new(Vec::new());

fn handled(element: &gst::Element) -> bool {
    let mut handled = HANDLED.lock().unwrap_or_else(|e| e.into_inner());
    handled.retain(|weak| weak.upgrade().is_some());
    handled
        .iter()
        .any(|weak| weak.upgrade().as_ref() == Some(element))
}

fn mark_handled(element: &gst::Element) {
    HANDLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(element.downgrade());
}

const NONE: u64 = u64::MAX;

/// What was done with one muxer.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The muxer's name (`mux`, `mp4mux0`, or `splitmuxsink0/muxer` inside a bin).
    pub element: String,
    pub factory: String,
    pub plan: Plan,
    /// The sink the muxer writes to and what was done with it, when the
    /// rules know that sink (filesink).
    pub sink: Option<(String, Plan)>,
    /// The bound, in milliseconds, when configured.
    pub interval_ms: u32,
    /// Running time of the last buffer the muxer received (ns; `NONE`
    /// before any): how far a file cut off now can reach at most.
    received: Arc<AtomicU64>,
}

impl Decision {
    /// One line for stderr: element, factory, action and settings or reason.
    pub fn describe(&self) -> String {
        format!(
            "crash-safe: {} ({}): {}: {}",
            self.element,
            self.factory,
            self.plan.action(),
            self.detail()
        )
    }

    /// The muxer's settings or reason, then the sink's.
    pub fn detail(&self) -> String {
        match &self.sink {
            Some((name, plan)) => format!(
                "{}; sink {name}: {}: {}",
                self.plan.detail(),
                plan.action(),
                plan.detail()
            ),
            None => self.plan.detail(),
        }
    }

    /// Running time of the last buffer the muxer was given, in seconds.
    pub fn received_until_s(&self) -> Option<f64> {
        match self.received.load(Ordering::Relaxed) {
            NONE => None,
            ns => Some(ns as f64 / 1e9),
        }
    }

    /// How far a file cut off now plays at least, in seconds of running
    /// time: what the muxer received, less the fragment it was filling and
    /// the one it may still have been writing. `None` when unknown or
    /// unprotected.
    pub fn kept_until_s(&self) -> Option<f64> {
        if !self.plan.protected() {
            return None;
        }
        let received = self.received_until_s()?;
        let pending = match self.plan {
            // The fragment being filled, and the one being written.
            Plan::Configure(_) => {
                2.0 * f64::from(self.interval_ms / policy::FRAGMENTS_PER_INTERVAL) / 1000.0
            }
            _ => 0.0,
        };
        Some(((received - pending).max(0.0) * 1000.0).round() / 1000.0)
    }
}

/// The user's settings on `element` among `names`: those whose value
/// differs from the property's default (GStreamer keeps no record of which
/// properties a description set; a value equal to the default changes nothing).
fn user_set(element: &gst::Element, names: &[&'static str]) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter_map(|&name| {
            let pspec = element.find_property(name)?;
            let value = element.property_value(name);
            let default = pspec.default_value();
            let differs = value.compare(default) != Some(std::cmp::Ordering::Equal);
            differs.then(|| {
                let text = value
                    .serialize()
                    .map_or_else(|_| "?".to_owned(), |s| s.to_string());
                (name, text)
            })
        })
        .collect()
}

fn path_name(element: &gst::Element) -> String {
    // Inside a bin that is not the pipeline (splitmuxsink), name the bin too.
    match element
        .parent()
        .and_then(|p| p.downcast::<gst::Element>().ok())
    {
        Some(parent) if parent.parent().is_some() => {
            format!("{}/{}", parent.name(), element.name())
        }
        _ => element.name().to_string(),
    }
}

/// Applies the plan to `element` if it is a muxer the rules know and it was
/// not handled before. Call before the muxer gets its first buffer.
pub fn configure(element: &gst::Element, interval_ms: u32) -> Option<Decision> {
    let factory = element.factory()?.name().to_string();
    policy::Family::of(&factory)?;
    if handled(element) {
        return None;
    }
    let interval_ms = interval_ms.clamp(policy::MIN_INTERVAL_MS, policy::MAX_INTERVAL_MS);
    let plan = policy::plan(
        &factory,
        &user_set(element, MP4_LAYOUT_PROPERTIES),
        interval_ms,
    )?;
    set_all(element, &plan);
    let sink = if plan.protected() {
        downstream_sink(element)
            .or_else(|| splitmux_sink(element))
            .and_then(|sink| {
                let factory = sink.factory()?.name().to_string();
                let sink_plan =
                    policy::sink_plan(&factory, &user_set(&sink, FILESINK_BUFFER_PROPERTIES))?;
                set_all(&sink, &sink_plan);
                Some((sink.name().to_string(), sink_plan))
            })
    } else {
        None
    };
    mark_handled(element);
    let received = Arc::new(AtomicU64::new(NONE));
    for pad in element.sink_pads() {
        watch_input(&pad, &received);
    }
    let seen = received.clone();
    element.connect_pad_added(move |_, pad| {
        if pad.direction() == gst::PadDirection::Sink {
            watch_input(pad, &seen);
        }
    });
    let decision = Decision {
        element: path_name(element),
        factory,
        plan,
        sink,
        interval_ms,
        received,
    };
    gst::info!(CAT, obj = element, "{}", decision.describe());
    Some(decision)
}

fn set_all(element: &gst::Element, plan: &Plan) {
    if let Plan::Configure(settings) = plan {
        for setting in settings {
            // The rules only name properties these factories have, with
            // values they parse (checked in the tests).
            element.set_property_from_str(setting.property, &setting.value);
        }
    }
}

/// The sink `element` writes to: following the one source pad through
/// elements with a single source pad (queue, identity, a parser) to an
/// element without any. `None` when the chain branches or is not linked yet.
fn downstream_sink(element: &gst::Element) -> Option<gst::Element> {
    let mut current = element.clone();
    for _ in 0..16 {
        let src_pads = current.src_pads();
        let [pad] = src_pads.as_slice() else {
            return None;
        };
        let next = pad.peer()?.parent_element()?;
        if next.src_pads().is_empty() {
            return Some(next);
        }
        current = next;
    }
    None
}

/// splitmuxsink links its muxer to its sink only when it starts: the sink
/// there is the one child of the same splitmuxsink without source pads.
fn splitmux_sink(muxer: &gst::Element) -> Option<gst::Element> {
    let parent = muxer.parent()?.downcast::<gst::Bin>().ok()?;
    if parent.factory()?.name() != "splitmuxsink" {
        return None;
    }
    parent
        .iterate_elements()
        .into_iter()
        .flatten()
        .find(|e| e != muxer && e.src_pads().is_empty() && e.sink_pads().len() == 1)
}

/// A sink splitmuxsink adds after its muxer was configured: the muxer's
/// sink after all. Configured, and the muxer's decision told again with it.
fn late_sink(
    element: &gst::Element,
    decisions: &Mutex<Vec<Decision>>,
    told: &(impl Fn(&Decision) + ?Sized),
) {
    let Some(parent) = element
        .parent()
        .and_then(|p| p.downcast::<gst::Element>().ok())
    else {
        return;
    };
    if parent.factory().is_none_or(|f| f.name() != "splitmuxsink") || !element.src_pads().is_empty()
    {
        return;
    }
    let Some(factory) = element.factory().map(|f| f.name().to_string()) else {
        return;
    };
    let prefix = format!("{}/", parent.name());
    let updated = {
        let mut decisions = decisions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(decision) = decisions
            .iter_mut()
            .find(|d| d.element.starts_with(&prefix) && d.sink.is_none() && d.plan.protected())
        else {
            return;
        };
        let Some(plan) =
            policy::sink_plan(&factory, &user_set(element, FILESINK_BUFFER_PROPERTIES))
        else {
            return;
        };
        set_all(element, &plan);
        decision.sink = Some((element.name().to_string(), plan));
        decision.clone()
    };
    // Told with no lock held.
    told(&updated);
}

/// Keeps `received` at the highest running time of the buffers entering `pad`.
fn watch_input(pad: &gst::Pad, received: &Arc<AtomicU64>) {
    let received = received.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
            let running = buffer.pts().or(buffer.dts()).and_then(|ts| {
                let segment = pad.sticky_event::<gst::event::Segment>(0)?;
                segment
                    .segment()
                    .downcast_ref::<gst::ClockTime>()?
                    .to_running_time(ts)
            });
            if let Some(running) = running {
                let ns = running.nseconds();
                let old = received.load(Ordering::Relaxed);
                if old == NONE || ns > old {
                    received.store(ns, Ordering::Relaxed);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// The muxers of one pipeline under protection: those there now and those
/// added later (splitmuxsink adds its muxer when it starts).
pub struct Protection {
    decisions: Arc<Mutex<Vec<Decision>>>,
    watch: Option<(glib::WeakRef<gst::Bin>, glib::SignalHandlerId)>,
}

impl Protection {
    /// Every decision so far, in the order made.
    pub fn decisions(&self) -> Vec<Decision> {
        self.decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops watching for muxers added later.
    pub fn stop(&mut self) {
        if let Some((bin, handler)) = self.watch.take()
            && let Some(bin) = bin.upgrade()
        {
            bin.disconnect(handler);
        }
    }
}

impl Drop for Protection {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Configures every muxer in `bin` (recursively) and every one added to it
/// later; `told` is called once per decision (for stderr or a log), with no
/// lock held.
pub fn protect(
    bin: &gst::Bin,
    interval_ms: u32,
    told: impl Fn(&Decision) + Send + Sync + 'static,
) -> Protection {
    let decisions = Arc::new(Mutex::new(Vec::new()));
    let told = Arc::new(told);
    let (decisions_for_sinks, told_for_sinks) = (decisions.clone(), told.clone());
    let record = {
        let decisions = decisions.clone();
        move |decision: Decision| {
            told(&decision);
            decisions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(decision);
        }
    };
    for element in bin.iterate_recurse().into_iter().flatten() {
        if let Some(decision) = configure(&element, interval_ms) {
            record(decision);
        }
        // A muxer given to splitmuxsink joins its bin only when it starts:
        // deep-element-added catches it then, with the user's settings.
    }
    let handler = bin.connect_deep_element_added(move |_, _, element| {
        if let Some(decision) = configure(element, interval_ms) {
            record(decision);
        } else {
            late_sink(element, &decisions_for_sinks, &*told_for_sinks);
        }
    });
    Protection {
        decisions,
        watch: Some((bin.downgrade(), handler)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second pass over the same muxer does nothing (it would read our
    /// own settings as the user's); another muxer is still handled.
    #[test]
    fn a_muxer_is_configured_once() {
        gst::init().unwrap();
        let mux = gst::ElementFactory::make("mp4mux").build().unwrap();
        assert!(configure(&mux, 1000).is_some());
        assert!(configure(&mux, 1000).is_none());
        let other = gst::ElementFactory::make("mp4mux").build().unwrap();
        assert!(configure(&other, 1000).is_some());
    }
}
