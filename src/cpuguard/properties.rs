//! The element's property specs, made from the settings table
//! ([`crate::settings::SETTINGS`]) so that names, help, ranges and defaults
//! are the ones cpuguard-run offers and checks.

use gst::glib;
use gst::prelude::*;

use super::LoadSource;
use crate::settings::{Kind, SETTINGS, Setting};

/// Every setting's spec, in the table's order, then the read-only `load`.
pub(super) fn specs() -> Vec<glib::ParamSpec> {
    SETTINGS.iter().map(spec).chain([load()]).collect()
}

fn spec(setting: &Setting) -> glib::ParamSpec {
    let Setting {
        name, nick, blurb, ..
    } = *setting;
    // The sampler reads most settings when the element starts: those are
    // settable up to READY; the rest also while PLAYING.
    let flags = glib::ParamFlags::READWRITE
        | if setting.while_playing {
            gst::PARAM_FLAG_MUTABLE_PLAYING
        } else {
            gst::PARAM_FLAG_MUTABLE_READY
        };
    match setting.kind {
        Kind::Ratio { default } => glib::ParamSpecDouble::builder(name)
            .nick(nick)
            .blurb(blurb)
            .flags(flags)
            .minimum(0.0)
            .maximum(1.0)
            .default_value(default)
            .build(),
        Kind::Count { min, max, default } | Kind::Millis { min, max, default } => {
            glib::ParamSpecUInt::builder(name)
                .nick(nick)
                .blurb(blurb)
                .flags(flags)
                .minimum(min)
                .maximum(max)
                .default_value(default)
                .build()
        }
        Kind::Flag { default } => glib::ParamSpecBoolean::builder(name)
            .nick(nick)
            .blurb(blurb)
            .flags(flags)
            .default_value(default)
            .build(),
        Kind::LoadSource => glib::ParamSpecEnum::builder_with_default(name, LoadSource::default())
            .nick(nick)
            .blurb(blurb)
            .flags(flags)
            .build(),
        Kind::Cpus => glib::ParamSpecDouble::builder(name)
            .nick(nick)
            .blurb(blurb)
            .flags(flags)
            .minimum(0.0)
            .maximum(f64::from(u32::MAX))
            .default_value(0.0)
            .build(),
        Kind::Text { default, .. } => glib::ParamSpecString::builder(name)
            .nick(nick)
            .blurb(blurb)
            .flags(flags)
            .default_value(Some(default))
            .build(),
    }
}

fn load() -> glib::ParamSpec {
    glib::ParamSpecDouble::builder("load")
        .nick("Load")
        .blurb(
            "Last load sample, as a share of capacity (0 before the first sample; can exceed 1 \
             when saturated)",
        )
        .minimum(0.0)
        .maximum(f64::MAX)
        .default_value(0.0)
        .read_only()
        .build()
}
