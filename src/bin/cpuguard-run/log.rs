//! The `cpuguard` GStreamer debug category, shared with the element, so that
//! `GST_DEBUG=cpuguard:5` tells the supervisor's side of each decision too.

use std::sync::LazyLock;

/// Registering a name twice returns the existing category: the element's
/// and this one are the same.
pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cpuguard",
        gst::DebugColorFlags::empty(),
        Some("Drains the pipeline on high CPU load"),
    )
});
