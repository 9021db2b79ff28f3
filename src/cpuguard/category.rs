//! The `cpuguard` debug category, for every file of the element.

use std::sync::LazyLock;

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cpuguard",
        gst::DebugColorFlags::empty(),
        Some("Drains the pipeline on high CPU load"),
    )
});
