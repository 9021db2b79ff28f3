//! Which sinks have received EOS, and which an error cut off.
//!
//! A pipeline posts EOS only once every sink has it, so an ERROR in one
//! branch in the middle of a drain would otherwise end the run while the
//! other branches' muxers are still finalizing their files. With this the
//! supervisor waits for the branches the error did not touch.

use std::collections::HashSet;

use gst::prelude::*;
use gstcpuguard::pipeline_eos::element_sink_pads_eos;

/// The sinks of a pipeline (in nested bins too), whose EOS is read from
/// their pads' EOS flags: the same test the element's drain uses.
pub struct SinkWatch {
    sinks: Vec<gst::Element>,
}

impl SinkWatch {
    /// The sinks as the pipeline was built.
    pub fn install(pipeline: &gst::Pipeline) -> Self {
        Self {
            sinks: pipeline.iterate_sinks().into_iter().flatten().collect(),
        }
    }

    /// Names of the sinks still without EOS that no element of `failed` feeds:
    /// the branches that can still finish.
    pub fn still_finishing(&self, failed: &[gst::Element]) -> Vec<String> {
        let cut_off: HashSet<gst::Element> = failed.iter().flat_map(downstream).collect();
        self.sinks
            .iter()
            .filter(|sink| !element_sink_pads_eos(sink) && !cut_off.contains(*sink))
            .map(|sink| sink.name().to_string())
            .collect()
    }
}

/// `element` and every element downstream of it, following links through
/// ghost pads into and out of bins. A bin (the pipeline itself, when it
/// posts an error) stands for everything inside it.
fn downstream(element: &gst::Element) -> HashSet<gst::Element> {
    let mut seen = HashSet::new();
    let mut todo = vec![element.clone()];
    while let Some(element) = todo.pop() {
        if !seen.insert(element.clone()) {
            continue;
        }
        if let Some(bin) = element.downcast_ref::<gst::Bin>() {
            todo.extend(bin.iterate_recurse().into_iter().flatten());
        }
        for pad in element.src_pads() {
            let Some(peer) = pad.peer() else { continue };
            // Into a bin through its ghost sink pad: the element behind it.
            let peer = match peer.downcast_ref::<gst::GhostPad>() {
                Some(ghost) => ghost.target().unwrap_or(peer),
                None => peer,
            };
            if let Some(next) = peer.parent_element() {
                todo.push(next);
            }
        }
        // Out of a bin: an element's src pad may be the target of the bin's
        // ghost src pad, whose peer lies outside.
        if let Some(parent) = element
            .parent()
            .and_then(|p| p.downcast::<gst::Element>().ok())
        {
            for ghost in parent.src_pads() {
                let is_ours = ghost
                    .downcast_ref::<gst::GhostPad>()
                    .and_then(|g| g.target())
                    .and_then(|t| t.parent_element())
                    .is_some_and(|e| e == element);
                if is_ours && let Some(next) = ghost.peer().and_then(|p| p.parent_element()) {
                    todo.push(next);
                }
            }
        }
    }
    seen
}
