//! The `cpuguard` element: a pass-through that drains the whole pipeline with a
//! tagged end reason when CPU load stays high.

use gst::glib;
use gst::prelude::*;

mod category;
mod crossproc;
mod imp;
mod monitor;
mod properties;
mod sampler;
mod stream;
mod threads;

pub use sampler::SAMPLER_THREAD_NAME;

glib::wrapper! {
    pub struct CpuGuard(ObjectSubclass<imp::CpuGuard>) @extends gst::Element, gst::Object;
}

/// The `load-source` property's values; nicks are the public names.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum, Default)]
#[repr(u32)]
#[enum_type(name = "GstCpuGuardLoadSource")]
pub enum LoadSource {
    #[default]
    #[enum_value(
        name = "Auto: the cgroup when the process has a CPU quota, else the whole system",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Process: this process's CPU time over the CPUs available to it",
        nick = "process"
    )]
    Process = 1,
    #[enum_value(
        name = "Cgroup: the process's cgroup usage over its quota (v1 and v2)",
        nick = "cgroup"
    )]
    Cgroup = 2,
    #[enum_value(
        name = "System: whole-host busy share from /proc/stat",
        nick = "system"
    )]
    System = 3,
    #[enum_value(name = "PSI: share of time tasks waited for CPU", nick = "psi")]
    Psi = 4,
}

impl From<LoadSource> for crate::load::LoadSourceKind {
    fn from(source: LoadSource) -> Self {
        use crate::load::LoadSourceKind as K;
        match source {
            LoadSource::Auto => K::Auto,
            LoadSource::Process => K::Process,
            LoadSource::Cgroup => K::Cgroup,
            LoadSource::System => K::System,
            LoadSource::Psi => K::Psi,
        }
    }
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::tags::register();
    LoadSource::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "cpuguard",
        gst::Rank::NONE,
        CpuGuard::static_type(),
    )
}
