//! The per-buffer path of the element: a chain function of our own on the
//! sink pad, in place of GstBaseTransform's.
//!
//! The element is a GstBaseTransform in passthrough with ANY caps, and stays
//! one for everything but buffers: events (CAPS negotiation, SEGMENT,
//! flushing, EOS), queries (caps, accept-caps, allocation, position) and
//! properties are GstBaseTransform's, as before. Only the sink pad's chain
//! and chain-list functions are replaced, because in passthrough
//! GstBaseTransform's chain only repeats bookkeeping for a buffer it hands on
//! unchanged (before_transform, submit_input_buffer, generate_output,
//! prepare_output_buffer, transform_ip, each a vfunc call, some taking the
//! object lock).
//!
//! What that chain does in passthrough, and what the direct path does instead:
//!
//! - pending RECONFIGURE on the src pad: renegotiate from the current input
//!   caps, and refuse the buffer with not-negotiated (flushing if the src pad
//!   is flushing) when that fails. Same here, through
//!   `gst_base_transform_reconfigure`, which runs the very same code.
//! - the not-negotiated check: skipped by GstBaseTransform itself in
//!   passthrough, which the element always is (same caps in and out).
//! - QoS (only with the inherited `qos` property set, off by default): late
//!   buffers are dropped. While `qos` is on, buffers go through
//!   GstBaseTransform's own chain, unchanged.
//! - `segment.position` (answers POSITION queries): updated the same way.
//!   GstBaseTransform's private `position_out` is not; in passthrough it
//!   equals `segment.position` and the query falls back to it when unset.
//! - DISCONT: in passthrough the output buffer is the input buffer, flags
//!   included.
//! - `transform_ip`: the element's work (noting the streaming thread, ending
//!   the stream when a drain asks for it) runs the same.
//!
//! Buffer lists stay lists (GstBaseTransform has no chain-list function, so
//! the pad split them into buffers): pushed downstream as one list.

use std::sync::atomic::{AtomicU32, Ordering};

use gst::glib::translate::{FromGlib, IntoGlibPtr};
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;

use super::imp::CpuGuard;

/// GstBaseTransform's chain function, kept for the QoS case.
type ChainFn = unsafe extern "C" fn(
    *mut gst::ffi::GstPad,
    *mut gst::ffi::GstObject,
    *mut gst::ffi::GstBuffer,
) -> gst::ffi::GstFlowReturn;

/// Installs the direct chain and chain-list functions on the element's sink
/// pad. Called once, from `constructed`, before the pad can be linked.
pub(super) fn install(element: &super::CpuGuard) {
    let sink = element.sink_pad();
    // SAFETY: the pad is the element's own, just created by GstBaseTransform's
    // instance init and not yet reachable from any other thread; reading its
    // chain function pointer is a plain read of an initialised field.
    let parent_chain: Option<ChainFn> = unsafe { (*sink.as_ptr()).chainfunc };
    let Some(parent_chain) = parent_chain else {
        gst::warning!(
            super::imp::CAT,
            obj = element,
            "Sink pad without a chain function: keeping GstBaseTransform's path"
        );
        return;
    };
    // SAFETY: set_chain_function is unsafe because it replaces a function an
    // element relies on; this is our own element, in constructed, before the
    // pad is active or linked, and everything GstBaseTransform keeps in its
    // chain's place is handled (see the module documentation).
    unsafe {
        sink.set_chain_function(move |pad, parent, buffer| {
            let Some(parent) = parent else {
                return Err(gst::FlowError::Flushing);
            };
            CpuGuard::catch_panic_pad_function(
                Some(parent),
                || Err(gst::FlowError::Error),
                |imp| imp.chain(pad, parent, parent_chain, buffer),
            )
        });
        sink.set_chain_list_function(move |pad, parent, list| {
            let Some(parent) = parent else {
                return Err(gst::FlowError::Flushing);
            };
            CpuGuard::catch_panic_pad_function(
                Some(parent),
                || Err(gst::FlowError::Error),
                |imp| imp.chain_list(pad, parent, parent_chain, list),
            )
        });
    }
}

impl CpuGuard {
    fn chain(
        &self,
        pad: &gst::Pad,
        parent: &gst::Object,
        parent_chain: ChainFn,
        buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.qos_enabled() {
            return parent_chain_buffer(parent_chain, pad, parent, buffer);
        }
        let obj = self.obj();
        let src = obj.src_pad();
        self.reconfigure_if_asked(src)?;
        self.on_buffer()?;
        update_position(&obj, buffer.pts(), buffer.duration());
        src.push(buffer)
    }

    fn chain_list(
        &self,
        pad: &gst::Pad,
        parent: &gst::Object,
        parent_chain: ChainFn,
        list: gst::BufferList,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.qos_enabled() {
            // What the pad does without a chain-list function: one buffer at
            // a time, stopping at the first flow that is not OK.
            let mut result = Ok(gst::FlowSuccess::Ok);
            for buffer in list.iter_owned() {
                result = parent_chain_buffer(parent_chain, pad, parent, buffer);
                if result != Ok(gst::FlowSuccess::Ok) {
                    break;
                }
            }
            return result;
        }
        let obj = self.obj();
        let src = obj.src_pad();
        self.reconfigure_if_asked(src)?;
        self.on_buffer()?;
        // GstBaseTransform updates the position buffer by buffer: the last
        // buffer with a timestamp sets it.
        if let Some(last) = list.iter().rev().find(|b| b.pts().is_some()) {
            update_position(&obj, last.pts(), last.duration());
        }
        src.push_list(list)
    }

    /// GstBaseTransform's reconfigure step, which starts every buffer: when
    /// downstream asked for a RECONFIGURE, negotiate again from the current
    /// input caps before pushing.
    fn reconfigure_if_asked(&self, src: &gst::Pad) -> Result<(), gst::FlowError> {
        if !needs_reconfigure_hint(src) {
            return Ok(());
        }
        // Checks and clears the flag under the pad's lock, then negotiates;
        // takes the sink pad's stream lock, which this thread already holds
        // (it is recursive).
        if self.obj().reconfigure() {
            return Ok(());
        }
        Err(if src.pad_flags().contains(gst::PadFlags::FLUSHING) {
            gst::FlowError::Flushing
        } else {
            gst::FlowError::NotNegotiated
        })
    }
}

/// Hands one buffer to GstBaseTransform's own chain function.
fn parent_chain_buffer(
    parent_chain: ChainFn,
    pad: &gst::Pad,
    parent: &gst::Object,
    buffer: gst::Buffer,
) -> Result<gst::FlowSuccess, gst::FlowError> {
    // SAFETY: this is the chain function GstBaseTransform installed on this
    // very pad, called with the pad, its parent and a buffer reference it
    // takes over, from the streaming thread holding the stream lock: the
    // call GstPad itself would have made.
    unsafe {
        gst::FlowReturn::from_glib(parent_chain(
            pad.as_ptr(),
            parent.as_ptr(),
            buffer.into_glib_ptr(),
        ))
    }
    .into_result()
}

/// The src pad's NEED_RECONFIGURE flag, read without the pad's lock (as
/// GStreamer's `GST_PAD_NEEDS_RECONFIGURE` macro does). A flag set
/// concurrently is seen at the next buffer; `reconfigure_if_asked` confirms
/// it under the lock before acting.
fn needs_reconfigure_hint(src: &gst::Pad) -> bool {
    // SAFETY: the pad outlives the call (it is the element's, borrowed);
    // `flags` is an aligned guint32 that GStreamer updates under the object
    // lock. A relaxed atomic load of it may see an old value, never a torn one.
    let flags = unsafe { AtomicU32::from_ptr(&raw mut (*src.as_ptr()).object.flags) }
        .load(Ordering::Relaxed);
    flags & gst::ffi::GST_PAD_FLAG_NEED_RECONFIGURE != 0
}

/// What GstBaseTransform's chain records for POSITION queries: the end of
/// the last buffer, in a TIME segment.
fn update_position(
    element: &super::CpuGuard,
    pts: Option<gst::ClockTime>,
    duration: Option<gst::ClockTime>,
) {
    let Some(pts) = pts else { return };
    let position = match duration {
        Some(duration) => pts.nseconds().wrapping_add(duration.nseconds()),
        None => pts.nseconds(),
    };
    // SAFETY: the element is a GstBaseTransform (its instance struct starts
    // with one); `segment` is written by GstBaseTransform from the streaming
    // thread with the sink pad's stream lock held (SEGMENT, FLUSH_STOP and its
    // chain), which is where this runs.
    unsafe {
        let trans = element.as_ptr() as *mut gst_base::ffi::GstBaseTransform;
        if (*trans).segment.format == gst::ffi::GST_FORMAT_TIME {
            (*trans).segment.position = position;
        }
    }
}
