//! The cpuguard elements of a pipeline: finding them, setting on them what
//! the command line gave, and the checks made before anything runs.

use gst::prelude::*;
use gstcpuguard::policy::PolicyConfig;
use gstcpuguard::settings::{Given, Value};

/// The element factory the supervisor looks for.
pub const FACTORY: &str = "cpuguard";

/// The element settings given (`--option value`), for the warning when
/// there is no cpuguard; `--drain-timeout` is left out, as it still sets the
/// supervisor's own drain deadline.
pub fn given_element_settings(given: &Given) -> Vec<String> {
    given
        .iter()
        .filter(|(s, _)| s.name != "drain-timeout")
        .map(|(s, value)| match value {
            Value::Flag(_) => format!("--{}", s.name),
            value => format!("--{} {value}", s.name),
        })
        .collect()
}

/// The threshold policy the given settings make over the defaults, checked
/// before the pipeline is even parsed.
pub fn validate_alone(given: &Given) -> Result<(), String> {
    given
        .policy()
        .validate()
        .map_err(|err| format!("invalid cpuguard settings: {err}"))
}

/// Sets every given setting on `guard`, then checks the settings the element
/// ends up with (description properties included) with the same policy rules
/// the element applies when it starts.
pub fn apply(given: &Given, guard: &gst::Element) -> Result<(), String> {
    for (setting, value) in given.iter() {
        let value = match value {
            Value::Ratio(v) => v.to_value(),
            Value::UInt(v) => v.to_value(),
            Value::Flag(v) => v.to_value(),
            Value::Text(text) => text.to_value(),
            Value::Cpus(request) => request.cpus().to_value(),
            Value::LoadSource(kind) => {
                let value = guard
                    .find_property(setting.name)
                    .and_then(|p| p.downcast::<glib::ParamSpecEnum>().ok())
                    .and_then(|p| p.enum_class().to_value_by_nick(kind.as_str()));
                match value {
                    Some(value) => value,
                    None => return Err(format!("unknown --{} {kind}", setting.name)),
                }
            }
        };
        guard.set_property_from_value(setting.name, &value);
    }
    PolicyConfig {
        soft: guard.property("soft-threshold"),
        hard: guard.property("hard-threshold"),
        hold: guard.property("hold"),
        release: guard.property("release"),
    }
    .validate()
    .map_err(|err| format!("invalid cpuguard settings on {}: {err}", guard.name()))
}

/// The supervisor's own drain deadline: --drain-timeout, else the longest the
/// elements allow (0 = forever wins), else the element default.
pub fn drain_timeout_ms(given: &Given, guards: &[gst::Element]) -> u32 {
    given.uint("drain-timeout").unwrap_or_else(|| {
        guards
            .iter()
            .map(|g| g.property::<u32>("drain-timeout"))
            .reduce(|a, b| if a == 0 || b == 0 { 0 } else { a.max(b) })
            .unwrap_or(gstcpuguard::settings::DEFAULT_DRAIN_TIMEOUT_MS)
    })
}

/// Every cpuguard element in the pipeline, in bins too, sorted by name.
pub fn find(pipeline: &gst::Pipeline) -> Vec<gst::Element> {
    let mut guards: Vec<gst::Element> = pipeline
        .iterate_all_by_element_factory_name(FACTORY)
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    guards.sort_by_key(|e| e.name());
    // A resync while iterating can repeat elements; nothing changes the bin
    // here, but stay exact.
    guards.dedup();
    guards
}

/// Name of the cpuguard a worker adds to a description that has none.
pub const WORKER_GUARD: &str = "cpuguard-worker";

/// Adds an unlinked cpuguard to `pipeline`, for a multi-pipeline worker whose
/// description has none: the workers' elements are what chooses which worker
/// drains, and a description needs no cpuguard in that mode. Unlinked, it
/// passes no data; it samples the load, coordinates with the other workers
/// and drains as any cpuguard does, by sending EOS from every source of the
/// pipeline it is in.
pub fn add_for_worker(pipeline: &gst::Pipeline) -> Result<gst::Element, String> {
    let guard = gst::ElementFactory::make(FACTORY)
        .name(WORKER_GUARD)
        .build()
        .map_err(|err| format!("cannot create a {FACTORY} element: {err}"))?;
    pipeline
        .add(&guard)
        .map_err(|err| format!("cannot add {WORKER_GUARD} to the pipeline: {err}"))?;
    Ok(guard)
}

/// True if `element` has the `drain` action the supervisor relies on.
pub fn can_drain(element: &gst::Element) -> bool {
    glib::subclass::SignalId::lookup("drain", element.type_()).is_some()
}
