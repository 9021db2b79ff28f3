//! The `cpuguard-end-reason` tag: the end reason travelling with the stream.

use gst::glib;
use gst::tags::Tag;

pub struct EndReasonTag;

impl<'a> gst::tags::Tag<'a> for EndReasonTag {
    type TagType = &'a str;
    const TAG_NAME: &'static glib::GStr = glib::gstr!("cpuguard-end-reason");
}

impl gst::tags::CustomTag<'_> for EndReasonTag {
    const FLAG: gst::TagFlag = gst::TagFlag::Meta;
    const NICK: &'static glib::GStr = glib::gstr!("cpuguard-end-reason");
    const DESCRIPTION: &'static glib::GStr =
        glib::gstr!("Why cpuguard ended the stream (cpu-limit, stop-requested, ...)");
}

/// Registers the tag once per process; GStreamer asserts on a second registration,
/// which would happen if the plugin were both statically registered and loaded.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !gst::tags::tag_exists(EndReasonTag::TAG_NAME) {
            gst::tags::register::<EndReasonTag>();
        }
    });
}

/// A tag list holding just the end reason.
pub fn end_reason_tags(reason: &str) -> gst::TagList {
    let mut tags = gst::TagList::new();
    tags.make_mut()
        .add::<EndReasonTag>(&reason, gst::TagMergeMode::Replace);
    tags
}
