//! The cpuguard elements of a pipeline: what their settings accept (read from
//! the element itself, so defaults and ranges have one source), the overrides
//! given on the command line, and the checks made before anything runs.

use gst::prelude::*;
use gstcpuguard::load::CpuRequest;
use gstcpuguard::policy::PolicyConfig;

/// The element factory the supervisor looks for.
pub const FACTORY: &str = "cpuguard";

/// A `u32` property's range and default.
#[derive(Debug, Clone, Copy)]
pub struct UIntSpec {
    pub min: u32,
    pub max: u32,
    pub default: u32,
}

/// What cpuguard's settings accept, read from a freshly made element's
/// property specs: the help text and range checks come from the element.
#[derive(Debug, Clone)]
pub struct Spec {
    pub soft_default: f64,
    pub hard_default: f64,
    pub hold: UIntSpec,
    pub interval: UIntSpec,
    pub drain_timeout: UIntSpec,
    /// `None` for a cpuguard without the `release` property (hysteresis).
    pub release: Option<UIntSpec>,
    pub load_sources: Vec<String>,
    pub load_source_default: String,
}

impl Spec {
    pub fn from_element() -> Result<Self, String> {
        // Named, so it does not take "cpuguard0" from the pipeline's elements.
        let element = gst::ElementFactory::make(FACTORY)
            .name("cpuguard-run-spec")
            .build()
            .map_err(|err| format!("cannot create a {FACTORY} element: {err}"))?;
        let double = |name: &str| {
            element
                .find_property(name)
                .and_then(|p| p.downcast::<glib::ParamSpecDouble>().ok())
                .map(|p| p.default_value())
                .ok_or_else(|| format!("{FACTORY} has no double property {name}"))
        };
        let uint = |name: &str| {
            element
                .find_property(name)
                .and_then(|p| p.downcast::<glib::ParamSpecUInt>().ok())
                .map(|p| UIntSpec {
                    min: p.minimum(),
                    max: p.maximum(),
                    default: p.default_value(),
                })
                .ok_or_else(|| format!("{FACTORY} has no uint property {name}"))
        };
        let load_source = element
            .find_property("load-source")
            .and_then(|p| p.downcast::<glib::ParamSpecEnum>().ok())
            .ok_or_else(|| format!("{FACTORY} has no enum property load-source"))?;
        // Read later with typed getters: make sure they are what the code expects.
        if element
            .find_property("dry-run")
            .and_then(|p| p.downcast::<glib::ParamSpecBoolean>().ok())
            .is_none()
        {
            return Err(format!("{FACTORY} has no boolean property dry-run"));
        }
        let class = load_source.enum_class();
        let load_sources = class.values().iter().map(|v| v.nick().to_owned()).collect();
        let load_source_default = class
            .value(load_source.default_value_as_i32())
            .map(|v| v.nick().to_owned())
            .unwrap_or_default();
        Ok(Spec {
            soft_default: double("soft-threshold")?,
            hard_default: double("hard-threshold")?,
            hold: uint("hold")?,
            interval: uint("interval")?,
            drain_timeout: uint("drain-timeout")?,
            release: uint("release").ok(),
            load_sources,
            load_source_default,
        })
    }
}

/// Settings given on the command line; `None` leaves the element's own value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub soft_threshold: Option<f64>,
    pub hard_threshold: Option<f64>,
    pub hold: Option<u32>,
    pub interval: Option<u32>,
    pub load_source: Option<String>,
    pub drain_timeout: Option<u32>,
    pub dry_run: bool,
    pub drain_non_live: bool,
    pub release: Option<u32>,
    pub root: Option<String>,
    pub cpu_request: Option<CpuRequest>,
    pub coordination_dir: Option<String>,
    pub coordination_group_shared: bool,
}

impl Overrides {
    /// The element settings given (`--option value`), for the warning when
    /// there is no cpuguard; `--drain-timeout` is left out, as it still sets
    /// the supervisor's own drain deadline.
    pub fn given_element_settings(&self) -> Vec<String> {
        let mut given = Vec::new();
        let mut push = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                given.push(format!("--{name} {value}"));
            }
        };
        push("soft-threshold", self.soft_threshold.map(|v| v.to_string()));
        push("hard-threshold", self.hard_threshold.map(|v| v.to_string()));
        push("hold", self.hold.map(|v| v.to_string()));
        push("interval", self.interval.map(|v| v.to_string()));
        push("load-source", self.load_source.clone());
        push("release", self.release.map(|v| v.to_string()));
        push("root", self.root.clone());
        push(
            "cpu-request",
            self.cpu_request.map(|r| r.cpus().to_string()),
        );
        push("coordination-dir", self.coordination_dir.clone());
        if self.dry_run {
            given.push("--dry-run".to_owned());
        }
        if self.drain_non_live {
            given.push("--drain-non-live".to_owned());
        }
        if self.coordination_group_shared {
            given.push("--coordination-group-shared".to_owned());
        }
        given
    }

    /// The threshold policy these overrides give on top of the element defaults;
    /// checked before the pipeline is even parsed.
    pub fn validate_alone(&self, spec: &Spec) -> Result<(), String> {
        PolicyConfig {
            soft: self.soft_threshold.unwrap_or(spec.soft_default),
            hard: self.hard_threshold.unwrap_or(spec.hard_default),
            hold: self.hold.unwrap_or(spec.hold.default),
            release: self
                .release
                .unwrap_or(spec.release.map_or(1, |r| r.default)),
        }
        .validate()
        .map_err(|err| format!("invalid cpuguard settings: {err}"))
    }

    /// Sets every given override on `guard`, then checks the settings the
    /// element ends up with (description properties included) with the same
    /// policy rules the element applies when it starts.
    pub fn apply(&self, guard: &gst::Element) -> Result<(), String> {
        if let Some(v) = self.soft_threshold {
            guard.set_property("soft-threshold", v);
        }
        if let Some(v) = self.hard_threshold {
            guard.set_property("hard-threshold", v);
        }
        if let Some(v) = self.hold {
            guard.set_property("hold", v);
        }
        if let Some(v) = self.interval {
            guard.set_property("interval", v);
        }
        if let Some(v) = self.drain_timeout {
            guard.set_property("drain-timeout", v);
        }
        if self.dry_run {
            guard.set_property("dry-run", true);
        }
        if self.drain_non_live {
            guard.set_property("drain-non-live", true);
        }
        let has_release = guard.find_property("release").is_some();
        if let Some(v) = self.release {
            // The property arrived after the supervisor: an older element must
            // be a clear usage error, not a GLib critical or a panic.
            if !has_release {
                return Err(format!(
                    "--release needs a cpuguard element with the release property; {} has none",
                    guard.name()
                ));
            }
            guard.set_property("release", v);
        }
        if let Some(root) = &self.root {
            guard.set_property("root", root);
        }
        if let Some(request) = self.cpu_request {
            if guard.find_property("cpu-request").is_none() {
                return Err(format!(
                    "--cpu-request needs a cpuguard element with the cpu-request property; \
                     {} has none",
                    guard.name()
                ));
            }
            guard.set_property("cpu-request", request.cpus());
        }
        for (name, value) in [
            (
                "coordination-dir",
                self.coordination_dir.as_ref().map(|d| d.to_value()),
            ),
            (
                "coordination-group-shared",
                self.coordination_group_shared.then(|| true.to_value()),
            ),
        ] {
            let Some(value) = value else { continue };
            if guard.find_property(name).is_none() {
                return Err(format!(
                    "--{name} needs a cpuguard element with the {name} property; {} has none",
                    guard.name()
                ));
            }
            guard.set_property_from_value(name, &value);
        }
        if let Some(nick) = &self.load_source {
            let value = guard
                .find_property("load-source")
                .and_then(|p| p.downcast::<glib::ParamSpecEnum>().ok())
                .and_then(|p| p.enum_class().to_value_by_nick(nick));
            match value {
                Some(value) => guard.set_property_from_value("load-source", &value),
                None => return Err(format!("unknown --load-source {nick}")),
            }
        }
        PolicyConfig {
            soft: guard.property("soft-threshold"),
            hard: guard.property("hard-threshold"),
            hold: guard.property("hold"),
            release: if has_release {
                guard.property("release")
            } else {
                1
            },
        }
        .validate()
        .map_err(|err| format!("invalid cpuguard settings on {}: {err}", guard.name()))
    }
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
