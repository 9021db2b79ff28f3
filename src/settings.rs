//! Every setting of cpuguard, listed once: its name, help, type, range and
//! default. The element builds its property specs from this table
//! (`cpuguard::properties`); cpuguard-run builds from it its command-line
//! options, their checks, the overrides it sets on elements and what it
//! forwards to its workers. A new setting is one more row here.
//!
//! Pure: no GStreamer, so the checks are tested on plain values.

use std::fmt;

use crate::load::{CpuRequest, LoadSourceKind};
use crate::policy::{DEFAULT_HARD, DEFAULT_HOLD, DEFAULT_RELEASE, DEFAULT_SOFT, PolicyConfig};

pub const DEFAULT_INTERVAL_MS: u32 = 1000;
pub const MIN_INTERVAL_MS: u32 = 10;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u32 = 30_000;
pub const DEFAULT_ROOT: &str = "/";
pub const DEFAULT_COORDINATION_DIR: &str = "auto";
/// The most samples `hold` and `release` can count.
const MAX_SAMPLES: u32 = 100_000;

/// What a setting holds, with its range and default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A share of capacity, 0 to 1 (a threshold).
    Ratio {
        default: f64,
    },
    /// A number of samples.
    Count {
        min: u32,
        max: u32,
        default: u32,
    },
    /// Milliseconds; a command line also takes a duration ("500ms", "2s").
    Millis {
        min: u32,
        max: u32,
        default: u32,
    },
    Flag {
        default: bool,
    },
    /// One of [`LoadSourceKind::ALL`], by name; the default is `auto`.
    LoadSource,
    /// CPUs (0 = unset); a command line takes a Kubernetes quantity ("500m").
    Cpus,
    /// Free text; `coordination_dir` says whether the coordination rules apply.
    Text {
        default: &'static str,
        coordination_dir: bool,
    },
}

/// The cpuguard-run option that sets a setting on every element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CliOption {
    pub help: &'static str,
    pub value_name: &'static str,
    /// An environment variable the option also reads.
    pub env: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting {
    /// The property name, and the option's (`--name`).
    pub name: &'static str,
    pub nick: &'static str,
    /// The property's description.
    pub blurb: &'static str,
    pub kind: Kind,
    /// Can change in PLAYING; else only up to READY.
    pub while_playing: bool,
    /// `None`: the element's alone (cpuguard-run has an option of its own
    /// meaning, or none).
    pub option: Option<CliOption>,
}

/// Every setting, in the order the element lists its properties.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "soft-threshold",
        nick: "Soft threshold",
        blurb: "Load (0-1, share of capacity) that, held for `hold` consecutive samples, \
                drains the pipeline with reason cpu-limit (trigger soft); must not be above \
                hard-threshold",
        kind: Kind::Ratio {
            default: DEFAULT_SOFT,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Load (share of capacity) that, held for --hold samples, drains",
            value_name: "LOAD",
            env: None,
        }),
    },
    Setting {
        name: "hard-threshold",
        nick: "Hard threshold",
        blurb: "Load (0-1, share of capacity) that drains the pipeline at the first sample \
                reaching it, without waiting for hold (trigger hard)",
        kind: Kind::Ratio {
            default: DEFAULT_HARD,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Load (share of capacity) that drains at once",
            value_name: "LOAD",
            env: None,
        }),
    },
    Setting {
        name: "hold",
        nick: "Hold",
        blurb: "Consecutive samples (1-100000) at or above soft-threshold before draining; \
                the time held is hold x interval",
        kind: Kind::Count {
            min: 1,
            max: MAX_SAMPLES,
            default: DEFAULT_HOLD,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Consecutive samples at or above --soft-threshold before draining",
            value_name: "SAMPLES",
            env: None,
        }),
    },
    Setting {
        name: "release",
        nick: "Release",
        blurb: "Consecutive samples (1-100000) below soft-threshold before the above-soft \
                count resets (hysteresis: 1 = any low sample resets, 2 = one low sample among \
                high ones does not; LiveKit Egress uses 5)",
        kind: Kind::Count {
            min: 1,
            max: MAX_SAMPLES,
            default: DEFAULT_RELEASE,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Consecutive samples below --soft-threshold before the above-soft count \
                   resets: hysteresis, LiveKit Egress uses 5",
            value_name: "SAMPLES",
            env: None,
        }),
    },
    Setting {
        name: "interval",
        nick: "Interval",
        blurb: "Sampling period in milliseconds (10 ms to 1 h); each sample is the load over \
                the last period",
        kind: Kind::Millis {
            min: MIN_INTERVAL_MS,
            max: 3_600_000,
            default: DEFAULT_INTERVAL_MS,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Sampling period: milliseconds, or a duration such as 500ms or 2s",
            value_name: "MS",
            env: None,
        }),
    },
    Setting {
        name: "load-source",
        nick: "Load source",
        blurb: "Where CPU load is measured: auto (cgroup when the process has a CPU quota, \
                else system), process, cgroup, system or psi",
        kind: Kind::LoadSource,
        while_playing: false,
        option: Some(CliOption {
            help: "Where load is measured",
            value_name: "SOURCE",
            env: None,
        }),
    },
    Setting {
        name: "drain-timeout",
        nick: "Drain timeout",
        blurb: "Milliseconds a drain may take before the element posts an ERROR (stream \
                error \"Drain did not complete within drain-timeout\"); 0 = wait forever",
        kind: Kind::Millis {
            min: 0,
            max: u32::MAX,
            default: DEFAULT_DRAIN_TIMEOUT_MS,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "How long a drain (SIGTERM, SIGHUP or CPU limit) may take before the run is \
                   abandoned as FAILED: milliseconds, or a duration such as 30s; 0 waits \
                   forever. Also sets the elements' drain-timeout; unset, the supervisor \
                   waits as long as the longest of them",
            value_name: "MS",
            env: None,
        }),
    },
    Setting {
        name: "dry-run",
        nick: "Dry run",
        blurb: "Measure and report (a cpuguard-would-drain message where a drain would start) \
                but never drain on load; the drain action still drains",
        kind: Kind::Flag { default: false },
        while_playing: true,
        option: Some(CliOption {
            help: "Measure and report but never drain on load (signals still drain)",
            value_name: "",
            env: None,
        }),
    },
    Setting {
        name: "drain-non-live",
        nick: "Drain non-live pipelines",
        blurb: "Let load drain a pipeline that is not live (a render or a transcode, which \
                uses all the CPU by design; live = the pipeline's latency query says live, \
                i.e. some live source feeds a sink). Off: such a pipeline is measured and \
                reported, and a WARNING says once that load will not drain it; the drain \
                action and cpuguard-run's SIGTERM still drain it",
        kind: Kind::Flag { default: false },
        while_playing: true,
        option: Some(CliOption {
            help: "Let load drain a pipeline that is not live (a render or a transcode, which \
                   uses all the CPU by design); without it only live pipelines are drained on \
                   load (SIGTERM drains any)",
            value_name: "",
            env: None,
        }),
    },
    Setting {
        name: "root",
        nick: "Root",
        blurb: "Directory under which /proc and /sys are read (a host mount in a container, \
                test fixtures); the element's own thread CPU always comes from this \
                process's /proc",
        kind: Kind::Text {
            default: DEFAULT_ROOT,
            coordination_dir: false,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Read /proc and /sys under DIR (host mounts, test fixtures); in \
                   multi-pipeline mode for every worker's load (never for process CPU)",
            value_name: "DIR",
            env: None,
        }),
    },
    Setting {
        name: "cpu-request",
        nick: "CPU request",
        blurb: "CPUs this workload was promised (a Kubernetes CPU request; 0 = unset): the \
                capacity load is measured against when there is no CPU quota (a quota always \
                wins); with it, load-source auto follows the cgroup instead of the whole \
                host. Unset, a cgroup under kubepods gives its request through cpu.shares \
                (v1) or cpu.weight (v2), re-read at every sample; this overrides it",
        kind: Kind::Cpus,
        while_playing: false,
        option: Some(CliOption {
            help: "CPUs this run was promised, as a Kubernetes CPU quantity (\"500m\", \"0.5\", \
                   \"2\"): the capacity load is measured against when there is no CPU quota \
                   (a quota always wins); with it, load-source auto follows the cgroup instead \
                   of the whole host. Overrides the request a cgroup under kubepods gives \
                   through cpu.shares or cpu.weight, which is followed (re-read at every \
                   sample) when this is unset",
            value_name: "CPUS",
            env: Some("CPUGUARD_CPU_REQUEST"),
        }),
    },
    Setting {
        name: "crash-safe",
        nick: "Crash safe",
        blurb: "When the element starts, configure the pipeline's MP4/MOV muxers (also inside \
                splitmuxsink) and the filesinks they write to so that a kill at any moment \
                (SIGKILL, OOM killer, crash, a drain that never finishes) leaves a file \
                playable to within crash-safe-interval: fragmented MP4, unbuffered filesink. \
                A muxer or sink whose layout or buffering the pipeline set is left alone. One \
                cpuguard-crash-safe message per muxer says what was done",
        // Off: crash safety changes what other elements write (a fragmented
        // MP4, an unbuffered filesink), which an application must choose; its
        // cost is small (BENCHMARKS.md, README "Crash safety"). cpuguard-run
        // turns it on with options of its own.
        kind: Kind::Flag { default: false },
        while_playing: false,
        option: None,
    },
    Setting {
        name: "crash-safe-interval",
        nick: "Crash-safe interval",
        blurb: "With crash-safe: how much of the recording a kill may lose at most, in \
                milliseconds (MP4 fragments are a quarter of it)",
        kind: Kind::Millis {
            min: crate::crashsafe::MIN_INTERVAL_MS,
            max: crate::crashsafe::MAX_INTERVAL_MS,
            default: crate::crashsafe::DEFAULT_INTERVAL_MS,
        },
        while_playing: false,
        option: None,
    },
    Setting {
        name: "qos",
        nick: "QoS",
        blurb: "Handle Quality-of-Service events: drop a buffer due before the running time \
                downstream asked for in its last QOS event (as GstBaseTransform does)",
        kind: Kind::Flag { default: false },
        while_playing: true,
        option: None,
    },
    Setting {
        name: "coordination-dir",
        nick: "Coordination directory",
        blurb: "Directory through which cpuguards of other processes judging the same CPU \
                budget (the host for load-source system, a cgroup for cgroup) drain one at a \
                time, the heaviest process first: auto = /run/cpuguard for root, else \
                $XDG_RUNTIME_DIR/cpuguard, else /tmp/cpuguard-<uid> \
                ($CPUGUARD_COORDINATION_DIR, when set, overrides auto); none (or empty) = \
                coordinate within this process only; else an absolute path. It must be ours \
                and mode 0700 (see coordination-group-shared); when it cannot be used, a \
                warning and in-process coordination",
        kind: Kind::Text {
            default: DEFAULT_COORDINATION_DIR,
            coordination_dir: true,
        },
        while_playing: false,
        option: Some(CliOption {
            help: "Directory through which cpuguards of separate processes judging the same \
                   CPU budget drain one at a time, the heaviest first: `auto`, an absolute \
                   path, or `none` (coordinate within this process only). Multi-pipeline mode \
                   defaults to a directory private to the run",
            value_name: "DIR",
            env: Some(crate::hostwide::DIR_ENV),
        }),
    },
    Setting {
        name: "coordination-group-shared",
        nick: "Group-shared coordination directory",
        blurb: "Accept a coordination-dir that the group may write to (not others), owned by \
                us or root: for processes of several users; each user's processes still only \
                coordinate among themselves",
        kind: Kind::Flag { default: false },
        while_playing: false,
        option: Some(CliOption {
            help: "Accept a group-writable --coordination-dir (owned by us or root, not \
                   world-writable)",
            value_name: "",
            env: None,
        }),
    },
];

/// The row of `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// A setting's value, typed by its [`Kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Ratio(f64),
    /// Count and Millis.
    UInt(u32),
    Flag(bool),
    LoadSource(LoadSourceKind),
    Cpus(CpuRequest),
    Text(String),
}

impl fmt::Display for Value {
    /// The text [`Setting::parse`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ratio(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Flag(v) => write!(f, "{v}"),
            Value::LoadSource(kind) => f.write_str(kind.as_str()),
            Value::Cpus(request) => write!(f, "{}", request.cpus()),
            Value::Text(text) => f.write_str(text),
        }
    }
}

impl Setting {
    /// The default, as a value.
    pub fn default_value(&self) -> Value {
        match self.kind {
            Kind::Ratio { default } => Value::Ratio(default),
            Kind::Count { default, .. } | Kind::Millis { default, .. } => Value::UInt(default),
            Kind::Flag { default } => Value::Flag(default),
            Kind::LoadSource => Value::LoadSource(LoadSourceKind::Auto),
            // Unset: no request.
            Kind::Cpus => Value::Text(String::new()),
            Kind::Text { default, .. } => Value::Text(default.to_owned()),
        }
    }

    /// The range a person reads in help: "(1-100000)", "(at least 10 ms)".
    pub fn range_text(&self) -> Option<String> {
        match self.kind {
            Kind::Ratio { .. } => Some("(0-1)".to_owned()),
            Kind::Count { min, max, .. } => Some(format!("({min}-{max})")),
            Kind::Millis { min: 0, max, .. } if max == u32::MAX => None,
            Kind::Millis { min, max, .. } if max == u32::MAX => {
                Some(format!("(at least {min} ms)"))
            }
            Kind::Millis { min, max, .. } => Some(format!("({min} ms to {max} ms)")),
            _ => None,
        }
    }

    /// Parses a value as a command line gives it. Every error names the
    /// setting and says what it accepts.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let name = self.name;
        let trimmed = text.trim();
        match self.kind {
            Kind::Ratio { .. } => {
                let value: f64 = trimmed.parse().map_err(|_| {
                    format!("{name} must be a number between 0 and 1, got {text:?}")
                })?;
                // The policy's own range rule (NaN included); soft above hard
                // is checked once both are known.
                let mut config = PolicyConfig {
                    soft: 0.0,
                    hard: 1.0,
                    ..PolicyConfig::default()
                };
                if name == "soft-threshold" {
                    config.soft = value;
                } else {
                    config.hard = value;
                }
                config.validate().map_err(|err| err.to_string())?;
                Ok(Value::Ratio(value))
            }
            Kind::Count { min, max, .. } => {
                let value: u64 = trimmed
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number, got {text:?}"))?;
                in_range(name, value, min, max, "").map(Value::UInt)
            }
            Kind::Millis { min, max, .. } => parse_millis(name, text, min, max).map(Value::UInt),
            Kind::Flag { .. } => match trimmed {
                "true" | "1" | "yes" => Ok(Value::Flag(true)),
                "false" | "0" | "no" => Ok(Value::Flag(false)),
                _ => Err(format!("{name} must be true or false, got {text:?}")),
            },
            Kind::LoadSource => trimmed
                .parse()
                .map(Value::LoadSource)
                .map_err(|err: crate::load::LoadError| format!("{name}: {err}")),
            Kind::Cpus => trimmed
                .parse()
                .map(Value::Cpus)
                .map_err(|err: crate::load::CpuRequestError| err.to_string()),
            Kind::Text {
                coordination_dir: true,
                ..
            } => crate::hostwide::resolve_dir(text, 0, None, None)
                .map(|_| Value::Text(trimmed.to_owned()))
                .map_err(|err| err.to_string()),
            Kind::Text { .. } => Ok(Value::Text(text.to_owned())),
        }
    }
}

/// Milliseconds, given as a number or a duration ("500ms", "30s", "1m 30s"),
/// within `min..=max`.
pub fn parse_millis(name: &str, text: &str, min: u32, max: u32) -> Result<u32, String> {
    let text = text.trim();
    let ms = match text.parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => humantime::parse_duration(text)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|err| {
                format!(
                    "{name} must be milliseconds or a duration such as 500ms or 30s, \
                     got {text:?} ({err})"
                )
            })?,
    };
    in_range(name, ms, min, max, " ms")
}

fn in_range(name: &str, value: u64, min: u32, max: u32, unit: &str) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            format!("{name} must be between {min}{unit} and {max}{unit}, got {value}{unit}")
        })
}

/// Settings given (on a command line), each over its default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given(Vec<(&'static Setting, Value)>);

impl Given {
    /// Sets `name` (a row of [`SETTINGS`]); a later value replaces an earlier.
    pub fn set(&mut self, name: &str, value: Value) -> Result<(), String> {
        let setting = find(name).ok_or_else(|| format!("no setting named {name}"))?;
        self.0.retain(|(s, _)| s.name != name);
        self.0.push((setting, value));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(s, _)| s.name == name).map(|(_, v)| v)
    }

    /// `name`'s value, given or the default.
    pub fn value(&self, name: &str) -> Value {
        self.get(name)
            .cloned()
            .or_else(|| find(name).map(Setting::default_value))
            .unwrap_or(Value::Text(String::new()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static Setting, &Value)> {
        self.0.iter().map(|(s, v)| (*s, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ratio(&self, name: &str) -> f64 {
        match self.value(name) {
            Value::Ratio(v) => v,
            _ => f64::NAN,
        }
    }

    pub fn uint(&self, name: &str) -> Option<u32> {
        match self.get(name) {
            Some(Value::UInt(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.value(name), Value::Flag(true))
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        }
    }

    pub fn load_source(&self) -> LoadSourceKind {
        match self.value("load-source") {
            Value::LoadSource(kind) => kind,
            _ => LoadSourceKind::Auto,
        }
    }

    pub fn cpu_request(&self) -> Option<CpuRequest> {
        match self.get("cpu-request") {
            Some(Value::Cpus(request)) => Some(*request),
            _ => None,
        }
    }

    /// The threshold policy these settings give over the defaults.
    pub fn policy(&self) -> PolicyConfig {
        let count = |name| match self.value(name) {
            Value::UInt(v) => v,
            _ => 0,
        };
        PolicyConfig {
            soft: self.ratio("soft-threshold"),
            hard: self.ratio("hard-threshold"),
            hold: count("hold"),
            release: count("release"),
        }
    }

    /// `--name value` (`--name` alone for a flag) for each setting given:
    /// what reads back, through [`Setting::parse`], to the same settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (setting, value) in self.iter() {
            match value {
                Value::Flag(true) => args.push(format!("--{}", setting.name)),
                Value::Flag(false) => {}
                value => {
                    args.push(format!("--{}", setting.name));
                    args.push(value.to_string());
                }
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_a_unique_name_and_a_default_within_its_range() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[..i].iter().all(|o| o.name != s.name),
                "{} twice",
                s.name
            );
            match s.kind {
                Kind::Ratio { default } => assert!((0.0..=1.0).contains(&default), "{}", s.name),
                Kind::Count { min, max, default } | Kind::Millis { min, max, default } => {
                    assert!((min..=max).contains(&default), "{}", s.name)
                }
                _ => {}
            }
            // The default reads back through the command-line parser.
            if !matches!(s.kind, Kind::Cpus) {
                let text = s.default_value().to_string();
                assert_eq!(s.parse(&text), Ok(s.default_value()), "{}", s.name);
            }
        }
    }

    #[test]
    fn the_policy_defaults_are_the_tables() {
        assert_eq!(Given::default().policy(), PolicyConfig::default());
    }

    #[test]
    fn errors_name_the_setting_and_the_range() {
        let err = |name: &str, text: &str| find(name).unwrap().parse(text).unwrap_err();
        assert_eq!(
            err("soft-threshold", "1.5"),
            "soft-threshold must be between 0 and 1, got 1.5"
        );
        assert!(err("hard-threshold", "NaN").contains("hard-threshold must be between 0 and 1"));
        assert!(err("soft-threshold", "high").contains("soft-threshold must be a number"));
        assert_eq!(err("hold", "0"), "hold must be between 1 and 100000, got 0");
        assert_eq!(
            err("interval", "5"),
            "interval must be between 10 ms and 3600000 ms, got 5 ms"
        );
        assert!(err("drain-timeout", "soon").contains("drain-timeout must be milliseconds"));
        assert!(err("load-source", "gpu").contains("gpu"));
        assert!(err("cpu-request", "-500m").contains("invalid CPU request"));
        assert!(err("coordination-dir", "relative/dir").contains("relative/dir"));
    }

    #[test]
    fn given_settings_make_arguments_that_parse_back_to_them() {
        let mut given = Given::default();
        for (name, text) in [
            ("soft-threshold", "0.7"),
            ("hold", "4"),
            ("interval", "250ms"),
            ("load-source", "psi"),
            ("cpu-request", "500m"),
            ("dry-run", "true"),
            ("coordination-dir", "none"),
        ] {
            given
                .set(name, find(name).unwrap().parse(text).unwrap())
                .unwrap();
        }
        let args = given.to_args();
        let mut back = Given::default();
        let mut words = args.iter().peekable();
        while let Some(word) = words.next() {
            let name = word.strip_prefix("--").unwrap();
            let setting = find(name).unwrap();
            let value = match setting.kind {
                Kind::Flag { .. } => Value::Flag(true),
                _ => setting.parse(words.next().unwrap()).unwrap(),
            };
            back.set(name, value).unwrap();
        }
        assert_eq!(back, given);
        assert_eq!(given.uint("interval"), Some(250));
        assert_eq!(given.policy().soft, 0.7);
        assert_eq!(given.policy().hard, DEFAULT_HARD);
        assert_eq!(given.cpu_request().map(CpuRequest::cpus), Some(0.5));
    }
}
