//! Bringing the whole pipeline to EOS, and telling when it got there.
//!
//! The EOS goes to every source of the top-level pipeline (what
//! `gst-launch-1.0 -e` does on Ctrl-C), so encoders flush and every muxer in
//! every branch finalizes its file, not only the branch cpuguard sits in.
//!
//! Unlike `gst-launch-1.0 -e` we do not send the EOS to a source pushing
//! data with `gst_element_send_event`: it holds the receiver's state lock
//! while a live `basesrc` waits for its streaming thread to take the EOS.
//! With a blocked sink that wait never ends, and the application can then not
//! even set the pipeline to NULL (the state change needs that lock): a
//! deadlock. Instead each pushing pad gets an IDLE probe that pushes EOS the
//! moment the pad is not pushing: at once from a pool thread when it is idle,
//! else from the streaming thread right after its current push. No state lock
//! is held, a stuck branch holds up nobody, and a NULL state change flushes
//! whatever is stuck. A source that is pulled from has no streaming thread of
//! its own to wait for: it gets the EOS as an event, which it answers the
//! puller's next read with (see [`Origin`]).

use gst::prelude::*;
use gst_base::prelude::*;

/// The outermost bin holding `element`, or `None` when it stands alone (e.g. in a Harness).
pub fn top_level(element: &gst::Element) -> Option<gst::Element> {
    let mut top: Option<gst::Element> = None;
    let mut current = element.parent();
    while let Some(object) = current {
        current = object.parent();
        match object.downcast::<gst::Element>() {
            Ok(e) => top = Some(e),
            Err(_) => break,
        }
    }
    top
}

/// Where the data of a pipeline comes from, and so where a drain's EOS must
/// go in.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A pad that pushes data downstream: a source's pad in push mode, or the
    /// output of an element that feeds itself (an adaptive demuxer such as
    /// `hlsdemux` downloads its fragments with sources of its own and ignores
    /// an EOS from upstream). The EOS is pushed out of it.
    Push(gst::Pad),
    /// A source that a downstream element pulls from (`filesrc ! qtdemux`,
    /// `decodebin`, `uridecodebin file://`): an EOS pushed into the puller
    /// is ignored, so the source is told to end, and the puller's next read
    /// returns EOS, which it then sends downstream itself (what
    /// `gst-launch-1.0 -e` achieves by sending EOS to the pipeline).
    Pull(gst::Element),
}

/// The elements `top`'s data starts from: every element below it flagged
/// as a source (bins excepted), or `top` itself when it stands alone. One
/// walk of the pipeline, which [`origins`] and [`Survey`] share.
fn sources(top: &gst::Element) -> Vec<gst::Element> {
    match top.downcast_ref::<gst::Bin>() {
        Some(bin) => elements_below(bin, |e| {
            e.element_flags().contains(gst::ElementFlags::SOURCE) && !e.is::<gst::Bin>()
        }),
        None => vec![top.clone()],
    }
}

/// The origins of `top`'s data. A source nested inside an element that has
/// sink pads (hlsdemux's fragment downloaders) is that element's business:
/// the element's own output pads stand for it.
pub fn origins(top: &gst::Element) -> Vec<Origin> {
    origins_of(top, sources(top))
}

/// [`origins`] of `top`, given its [`sources`].
fn origins_of(top: &gst::Element, sources: Vec<gst::Element>) -> Vec<Origin> {
    let mut origins = Vec::new();
    let mut feeders: Vec<gst::Element> = Vec::new();
    for source in sources {
        if let Some(feeder) = self_feeding_ancestor(&source, top) {
            if !feeders.contains(&feeder) {
                origins.extend(feeder.src_pads().into_iter().map(Origin::Push));
                feeders.push(feeder);
            }
            continue;
        }
        let pads = source.src_pads();
        if pads.iter().any(|p| p.mode() == gst::PadMode::Pull) {
            origins.push(Origin::Pull(source));
        } else {
            origins.extend(pads.into_iter().map(Origin::Push));
        }
    }
    origins
}

/// The outermost element between `source` and `top` that has sink pads: one
/// that consumes data and runs sources of its own inside.
fn self_feeding_ancestor(source: &gst::Element, top: &gst::Element) -> Option<gst::Element> {
    let mut found = None;
    let mut current = source.parent();
    while let Some(object) = current {
        let Ok(element) = object.downcast::<gst::Element>() else {
            break;
        };
        if &element == top {
            break;
        }
        if !element.sink_pads().is_empty() {
            found = Some(element.clone());
        }
        current = element.parent();
    }
    found
}

/// Sends one EOS (one seqnum) into every origin of `top` (see [`origins`]).
/// Never blocks the caller: the work is done from a GStreamer pool thread.
/// `refused` runs for each push origin that did not take the EOS (flushing,
/// already EOS). Returns how many origins were found.
pub fn push_eos_from_sources<F>(top: &gst::Element, refused: F) -> usize
where
    F: Fn(&gst::Pad) + Clone + Send + Sync + 'static,
{
    let eos = gst::event::Eos::new();
    let sources = sources(top);
    let live = any_live(&sources);
    let mut origins = origins_of(top, sources);
    // Work that is not live has no "now" but what it has processed: media
    // queued ahead (a download buffer, decodebin's multiqueue) is not
    // recorded yet, and an EOS behind it would let the whole input through.
    // So the EOS also goes out of every queue. A live pipeline's queues hold
    // what was captured, which the recording must keep.
    if !live {
        origins.extend(queue_outputs(top).into_iter().map(Origin::Push));
    }
    let count = origins.len();
    if count > 0 {
        top.call_async(move |_| {
            for origin in origins {
                match origin {
                    Origin::Push(pad) => {
                        // An origin that already sent its EOS has data still
                        // on its way (queues, download buffers): the EOS goes
                        // in where that data now is.
                        let pads = if pad.pad_flags().contains(gst::PadFlags::EOS) {
                            frontier(&pad)
                        } else {
                            vec![pad]
                        };
                        for pad in pads {
                            push_eos_after(&pad, eos.clone(), refused.clone());
                        }
                    }
                    // GstBaseSrc in pull mode keeps the EOS and answers the
                    // next read with it; it waits for no streaming thread of
                    // its own, so no state lock is held for long.
                    Origin::Pull(source) => {
                        source.send_event(eos.clone());
                    }
                }
            }
        });
    }
    count
}

/// The source pads of every queue below `top` (queue, queue2, multiqueue,
/// also inside decodebin and uridecodebin) that have not seen EOS.
fn queue_outputs(top: &gst::Element) -> Vec<gst::Pad> {
    let Some(bin) = top.downcast_ref::<gst::Bin>() else {
        return Vec::new();
    };
    let is_queue = |e: &gst::Element| {
        e.factory()
            .is_some_and(|f| ["queue", "queue2", "multiqueue"].contains(&f.name().as_str()))
    };
    elements_below(bin, is_queue)
        .iter()
        .flat_map(|queue| queue.src_pads())
        .filter(|p| !p.pad_flags().contains(gst::PadFlags::EOS))
        .collect()
}

/// Every element below `bin`, at any depth, for which `keep` holds. A resync
/// means the bin changed while we looked: start over.
fn elements_below(bin: &gst::Bin, keep: impl Fn(&gst::Element) -> bool) -> Vec<gst::Element> {
    let mut found = Vec::new();
    let mut iter = bin.iterate_recurse();
    while let Err(gst::IteratorError::Resync) = iter.foreach(|e| {
        if keep(&e) {
            found.push(e);
        }
    }) {
        found.clear();
        iter.resync();
    }
    found
}

/// Pushes `eos` to the peer of `pad` the moment `pad` is not pushing.
fn push_eos_after<F>(pad: &gst::Pad, eos: gst::Event, refused: F)
where
    F: Fn(&gst::Pad) + Send + Sync + 'static,
{
    pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
        // While an IDLE probe runs the pad is blocked, and an event pushed on
        // it would only be stored as sticky; its element cannot push
        // meanwhile, so hand the EOS straight to the peer.
        let sent = pad.peer().is_some_and(|peer| peer.send_event(eos.clone()));
        if !sent {
            refused(pad);
        }
        gst::PadProbeReturn::Remove
    });
}

/// The pads downstream of `pad` (which has sent EOS) through which data
/// still flows: following links and each element's internal links (ghost
/// pads included), the first source pads that have not seen EOS yet.
fn frontier(pad: &gst::Pad) -> Vec<gst::Pad> {
    let mut found = Vec::new();
    let mut seen: Vec<gst::Pad> = Vec::new();
    let mut todo = vec![pad.clone()];
    while let Some(src) = todo.pop() {
        if seen.contains(&src) || seen.len() > 1000 {
            continue;
        }
        seen.push(src.clone());
        if !src.pad_flags().contains(gst::PadFlags::EOS) {
            found.push(src);
            continue;
        }
        let Some(sink) = src.peer() else { continue };
        let mut links = sink.iterate_internal_links();
        loop {
            match links.next() {
                Ok(Some(next)) => todo.push(next),
                Ok(None) => break,
                Err(gst::IteratorError::Resync) => links.resync(),
                Err(gst::IteratorError::Error) => break,
            }
        }
    }
    found
}

/// Media still to play after every origin has sent its EOS, beyond which
/// the end is not "natural" but a backlog that a drain must cut: a download
/// buffer holding the rest of a file or playlist, not the second or two that
/// queues hold.
const NATURAL_END_BACKLOG: gst::ClockTime = gst::ClockTime::from_seconds(3);

/// True when every origin of `top` has already sent its own EOS (a file
/// source at its end, `num-buffers` reached, an adaptive demuxer at the end
/// of its playlist): the pipeline is ending by itself, and a drain would only
/// cut off what is still on its way to the sinks, unless that is more than
/// [`NATURAL_END_BACKLOG`] of media (the position and duration queries tell,
/// where the pipeline knows them). A source that is pulled from is never
/// taken as ending: its EOS flag says nothing of what its puller has still
/// to read. Pad flags and queries only: it never waits on a stream lock.
pub fn natural_end_under_way(top: &gst::Element) -> bool {
    ends_by_itself(top, &origins(top))
}

/// [`natural_end_under_way`] of `top`, given its [`origins`].
fn ends_by_itself(top: &gst::Element, origins: &[Origin]) -> bool {
    let all_ended = !origins.is_empty()
        && origins.iter().all(|o| match o {
            Origin::Push(pad) => pad.pad_flags().contains(gst::PadFlags::EOS),
            Origin::Pull(_) => false,
        });
    if !all_ended {
        return false;
    }
    // Where the pipeline knows how far it is, a long way still to play is
    // buffered media, not an end.
    let left = top
        .query_duration::<gst::ClockTime>()
        .zip(top.query_position::<gst::ClockTime>())
        .map(|(duration, position)| duration.saturating_sub(position));
    left.is_none_or(|left| left <= NATURAL_END_BACKLOG)
}

/// Whether a pipeline with these `sources` is live: one of them is a live
/// source (a `GstBaseSrc` in live mode: a capture, `is-live=true`), so data
/// arrives in real time and the CPU it takes is the cost of keeping up. A
/// pipeline that mixes a live capture with a file is live. (The latency query
/// would say the same only through sinks that sync: `filesink` does not, and
/// answers "not live" for a live recording.)
fn any_live(sources: &[gst::Element]) -> bool {
    sources.iter().any(|source| {
        source
            .downcast_ref::<gst_base::BaseSrc>()
            .is_some_and(|src| src.is_live())
    })
}

/// What a sampling round asks of a pipeline, from one walk of its sources:
/// whether it is ending by itself ([`natural_end_under_way`]) and whether it
/// is live ([`any_live`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survey {
    pub ending_by_itself: bool,
    pub live: bool,
}

impl Survey {
    pub fn of(top: &gst::Element) -> Survey {
        let sources = sources(top);
        let live = any_live(&sources);
        Survey {
            ending_by_itself: ends_by_itself(top, &origins_of(top, sources)),
            live,
        }
    }
}

/// The surveys of one sampling round, one per pipeline: every cpuguard in a
/// pipeline asks the same questions of it, and a walk each would make the
/// round grow with the square of the cpuguards in a pipeline.
#[derive(Debug, Default)]
pub struct Surveys(Vec<(gst::Element, Survey)>);

impl Surveys {
    /// `top`'s survey, taken at its first call in this round.
    pub fn of(&mut self, top: &gst::Element) -> Survey {
        if let Some((_, survey)) = self.0.iter().find(|(seen, _)| seen == top) {
            return *survey;
        }
        let survey = Survey::of(top);
        self.0.push((top.clone(), survey));
        survey
    }
}

/// True once every sink of `top` has received EOS on all its sink pads.
/// Reads pad flags only, so it never waits on a stream lock.
pub fn all_sinks_eos(top: &gst::Element) -> bool {
    let Some(bin) = top.downcast_ref::<gst::Bin>() else {
        return element_sink_pads_eos(top);
    };
    let mut seen_any = false;
    let mut iter = leaf_sinks(bin);
    loop {
        match iter.next() {
            Ok(Some(sink)) => {
                seen_any = true;
                if !element_sink_pads_eos(&sink) {
                    return false;
                }
            }
            Ok(None) => break,
            // The bin changed while we looked: answer "not yet" and look again next tick.
            Err(gst::IteratorError::Resync) => return false,
            Err(gst::IteratorError::Error) => return false,
        }
    }
    seen_any
}

/// True once EOS has reached every sink pad of `element` (pad flags only).
pub fn element_sink_pads_eos(element: &gst::Element) -> bool {
    element
        .sink_pads()
        .iter()
        .all(|pad| pad.pad_flags().contains(gst::PadFlags::EOS))
}

/// Leaf sinks anywhere below the bin: sink bins are skipped in favour of the
/// sinks inside them, whose pads are the ones that really saw EOS.
fn leaf_sinks(bin: &gst::Bin) -> gst::Iterator<gst::Element> {
    bin.iterate_recurse()
        .filter(|e| e.element_flags().contains(gst::ElementFlags::SINK) && !e.is::<gst::Bin>())
}
