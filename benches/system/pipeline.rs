//! Small helpers to run in-process pipelines and read their bus.

use std::time::{Duration, Instant};

use gst::prelude::*;

pub fn launch(description: &str) -> Result<gst::Pipeline, String> {
    gst::parse::launch(description)
        .map_err(|e| format!("{description}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| format!("{description}: not a pipeline"))
}

pub fn play(pipeline: &gst::Pipeline) -> Result<(), String> {
    pipeline
        .set_state(gst::State::Playing)
        .map(|_| ())
        .map_err(|e| format!("cannot play: {e}"))
}

pub fn stop(pipeline: &gst::Pipeline) {
    let _ = pipeline.set_state(gst::State::Null);
}

/// Waits for EOS; an ERROR or the timeout is an error naming what happened.
pub fn wait_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let bus = pipeline.bus().ok_or("pipeline without a bus")?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no EOS within {timeout:?}"));
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        return match msg.view() {
            gst::MessageView::Error(err) => Err(format!(
                "error from {}: {} ({:?})",
                err.src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default(),
                err.error(),
                err.debug()
            )),
            _ => Ok(()),
        };
    }
}

/// The structure of an element message called `name`.
pub fn element_message<'a>(msg: &'a gst::Message, name: &str) -> Option<&'a gst::StructureRef> {
    match msg.view() {
        gst::MessageView::Element(e) => e.structure().filter(|s| s.name() == name),
        _ => None,
    }
}
