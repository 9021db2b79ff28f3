//! Bringing the whole pipeline to EOS, and telling when it got there.
//!
//! The EOS goes to every source of the top-level pipeline (what
//! `gst-launch-1.0 -e` does on Ctrl-C), so encoders flush and every muxer in
//! every branch finalizes its file, not only the branch cpuguard sits in.
//!
//! Unlike `gst-launch-1.0 -e` we do not use `gst_element_send_event`: it holds
//! the receiver's state lock while a live `basesrc` waits for its streaming
//! thread to take the EOS. With a blocked sink that wait never ends, and the
//! application can then not even set the pipeline to NULL (the state change
//! needs that lock): a deadlock. Instead each source pad gets an IDLE probe
//! that pushes EOS the moment the pad is not pushing: at once from a pool
//! thread when it is idle, else from the streaming thread right after its
//! current push. No state lock is held, a stuck branch holds up nobody, and a
//! NULL state change flushes whatever is stuck.

use gst::prelude::*;

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

/// Pushes one EOS (one seqnum) out of every source pad below `top`. Never
/// blocks the caller: the probes are installed from a GStreamer pool thread.
/// `refused` runs for each pad that did not take the EOS (flushing, already EOS).
/// Returns how many source pads were found.
pub fn push_eos_from_sources<F>(top: &gst::Element, refused: F) -> usize
where
    F: Fn(&gst::Pad) + Clone + Send + Sync + 'static,
{
    let eos = gst::event::Eos::new();
    let mut sources = Vec::new();
    match top.downcast_ref::<gst::Bin>() {
        Some(bin) => {
            let mut iter = leaf_sources(bin);
            // A resync means the bin changed while we looked: start over.
            while let Err(gst::IteratorError::Resync) = iter.foreach(|s| sources.push(s)) {
                sources.clear();
                iter.resync();
            }
        }
        None => sources.push(top.clone()),
    }
    let pads: Vec<gst::Pad> = sources.iter().flat_map(|s| s.src_pads()).collect();
    let count = pads.len();
    if let Some(first) = sources.first() {
        first.call_async(move |_| {
            for pad in pads {
                let eos = eos.clone();
                let refused = refused.clone();
                pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
                    // While an IDLE probe runs the pad is blocked, and an event
                    // pushed on it would only be stored as sticky; the source
                    // cannot push meanwhile, so hand the EOS straight to the peer.
                    let sent = pad.peer().is_some_and(|peer| peer.send_event(eos.clone()));
                    if !sent {
                        refused(pad);
                    }
                    gst::PadProbeReturn::Remove
                });
            }
        });
    }
    count
}

/// True when every source of `top` has already sent its own EOS (a file
/// source at its end, `num-buffers` reached): the pipeline is ending by
/// itself, and a drain would only cut off what is still on its way to the
/// sinks. Reads pad flags only, so it never waits on a stream lock.
pub fn natural_end_under_way(top: &gst::Element) -> bool {
    let Some(bin) = top.downcast_ref::<gst::Bin>() else {
        return false;
    };
    let mut seen_any = false;
    let mut iter = leaf_sources(bin);
    loop {
        match iter.next() {
            Ok(Some(source)) => {
                let pads = source.src_pads();
                if pads.is_empty() {
                    return false;
                }
                seen_any = true;
                if !pads
                    .iter()
                    .all(|pad| pad.pad_flags().contains(gst::PadFlags::EOS))
                {
                    return false;
                }
            }
            Ok(None) => return seen_any,
            // The bin changed while we looked: not known to be ending.
            Err(_) => return false,
        }
    }
}

fn leaf_sources(bin: &gst::Bin) -> gst::Iterator<gst::Element> {
    bin.iterate_recurse()
        .filter(|e| e.element_flags().contains(gst::ElementFlags::SOURCE) && !e.is::<gst::Bin>())
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

fn element_sink_pads_eos(element: &gst::Element) -> bool {
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
