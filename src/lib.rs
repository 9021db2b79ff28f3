//! cpuguard: drain GStreamer pipelines gracefully when CPU runs out.
//!
//! The pure parts (`load`, `policy`, `reason`) know nothing of GStreamer so the
//! element, the coordinator and the supervisor share one tested core.

pub mod coordinator;
pub mod cpuguard;
pub mod crashsafe;
pub mod drain_record;
pub mod hostwide;
pub mod load;
pub mod messages;
pub mod pipeline_eos;
pub mod policy;
pub mod reason;
pub mod settings;
pub mod tags;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    cpuguard::register(plugin)
}

gst::plugin_define!(
    cpuguard,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MPL",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
