//! The bus messages the `cpuguard` element posts, as typed values.
//!
//! The element builds its messages from these types and the supervisor
//! parses them back with the same types, so the wire schema (structure
//! names, field names, string values) is written once. The schema is a
//! public contract: applications read these fields by name.

use crate::hostwide::Scope;
use crate::load::LoadSourceKind;
use crate::policy::Trigger;
use crate::reason::EndReason;

/// Why a structure could not be read as one of the messages below; each
/// variant names the message and, where it applies, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("expected a `{expected}` structure, got `{found}`")]
    WrongName {
        expected: &'static str,
        found: String,
    },
    #[error("`{message}`: field `{field}` is missing or has the wrong type: {detail}")]
    Field {
        message: &'static str,
        field: &'static str,
        detail: String,
    },
    #[error("`{message}`: field `{field}` has an unknown value `{value}`")]
    Value {
        message: &'static str,
        field: &'static str,
        value: String,
    },
}

/// Reads one typed field, naming it in the error.
fn field<'a, T>(
    s: &'a gst::StructureRef,
    message: &'static str,
    name: &'static str,
) -> Result<T, MessageError>
where
    T: glib::value::FromValue<'a>,
    <<T as glib::value::FromValue<'a>>::Checker as glib::value::ValueTypeChecker>::Error:
        std::fmt::Display,
{
    s.get::<T>(name).map_err(|err| MessageError::Field {
        message,
        field: name,
        detail: err.to_string(),
    })
}

fn check_name(s: &gst::StructureRef, expected: &'static str) -> Result<(), MessageError> {
    if s.name() == expected {
        Ok(())
    } else {
        Err(MessageError::WrongName {
            expected,
            found: s.name().to_string(),
        })
    }
}

fn bad_value(message: &'static str, field: &'static str, value: &str) -> MessageError {
    MessageError::Value {
        message,
        field,
        value: value.to_owned(),
    }
}

/// What started a drain: a threshold of the policy, or a request (the
/// `drain` action, hence the supervisor's stop). `Eos` is the supervisor's
/// own: it sent EOS itself because the pipeline has no cpuguard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainTrigger {
    Soft,
    Hard,
    Request,
    Eos,
}

impl DrainTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainTrigger::Soft => Trigger::Soft.as_str(),
            DrainTrigger::Hard => Trigger::Hard.as_str(),
            DrainTrigger::Request => "request",
            DrainTrigger::Eos => "eos",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Soft, Self::Hard, Self::Request, Self::Eos]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

impl From<Trigger> for DrainTrigger {
    fn from(trigger: Trigger) -> Self {
        match trigger {
            Trigger::Soft => DrainTrigger::Soft,
            Trigger::Hard => DrainTrigger::Hard,
        }
    }
}

impl std::fmt::Display for DrainTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_scope(text: &str) -> Option<Scope> {
    [Scope::Process, Scope::Host, Scope::Cgroup, Scope::Request]
        .into_iter()
        .find(|s| s.as_str() == text)
}

/// The `source` of a drain: the load source, or `none` when a requested
/// drain came before the first sample.
const NO_SOURCE: &str = "none";

/// `cpuguard-drain` (a drain started) and `cpuguard-would-drain` (dry run:
/// one would have started) carry the same fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub reason: EndReason,
    pub load: f64,
    pub threshold: f64,
    pub trigger: DrainTrigger,
    /// `None` is written `none`.
    pub source: Option<LoadSourceKind>,
    /// CPUs used by the threads streaming through the element.
    pub cpu: f64,
    /// How far the victim choice reached, and how many were compared.
    pub scope: Scope,
    pub candidates: u32,
}

impl Drain {
    pub const NAME: &'static str = "cpuguard-drain";
    pub const DRY_RUN_NAME: &'static str = "cpuguard-would-drain";

    /// The `cpuguard-drain` structure.
    pub fn to_structure(&self) -> gst::Structure {
        self.build(Self::NAME)
    }

    /// The `cpuguard-would-drain` structure (dry run).
    pub fn to_dry_run_structure(&self) -> gst::Structure {
        self.build(Self::DRY_RUN_NAME)
    }

    fn build(&self, name: &str) -> gst::Structure {
        gst::Structure::builder(name)
            .field("reason", self.reason.as_str())
            .field("description", self.reason.description())
            .field("load", self.load)
            .field("threshold", self.threshold)
            .field("trigger", self.trigger.as_str())
            .field("source", self.source.map_or(NO_SOURCE, |s| s.as_str()))
            .field("cpu", self.cpu)
            .field("scope", self.scope.as_str())
            .field("candidates", self.candidates)
            .build()
    }

    /// Reads a `cpuguard-drain` structure.
    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, MessageError> {
        check_name(s, Self::NAME)?;
        Self::read(s, Self::NAME)
    }

    /// Reads a `cpuguard-would-drain` structure.
    pub fn from_dry_run_structure(s: &gst::StructureRef) -> Result<Self, MessageError> {
        check_name(s, Self::DRY_RUN_NAME)?;
        Self::read(s, Self::DRY_RUN_NAME)
    }

    fn read(s: &gst::StructureRef, message: &'static str) -> Result<Self, MessageError> {
        let reason = field::<&str>(s, message, "reason")?;
        let reason = EndReason::parse(reason).map_err(|_| bad_value(message, "reason", reason))?;
        let trigger = field::<&str>(s, message, "trigger")?;
        let trigger =
            DrainTrigger::parse(trigger).ok_or_else(|| bad_value(message, "trigger", trigger))?;
        let source = match field::<&str>(s, message, "source")? {
            NO_SOURCE => None,
            text => Some(
                text.parse::<LoadSourceKind>()
                    .map_err(|_| bad_value(message, "source", text))?,
            ),
        };
        let scope = field::<&str>(s, message, "scope")?;
        let scope = parse_scope(scope).ok_or_else(|| bad_value(message, "scope", scope))?;
        Ok(Drain {
            reason,
            load: field(s, message, "load")?,
            threshold: field(s, message, "threshold")?,
            trigger,
            source,
            cpu: field(s, message, "cpu")?,
            scope,
            candidates: field(s, message, "candidates")?,
        })
    }
}

/// CFS throttling fields of `cpuguard-load`, present only where a quota binds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    pub ratio: f64,
    pub seconds: f64,
    pub periods: u64,
}

/// `cpuguard-load`: one load sample, posted at every tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub load: f64,
    pub source: LoadSourceKind,
    pub capacity: f64,
    /// CPUs used by the threads streaming through the element.
    pub cpu: f64,
    pub throttled: Option<Throttled>,
}

impl Load {
    pub const NAME: &'static str = "cpuguard-load";

    pub fn to_structure(&self) -> gst::Structure {
        let mut s = gst::Structure::builder(Self::NAME)
            .field("load", self.load)
            .field("source", self.source.as_str())
            .field("capacity", self.capacity)
            .field("cpu", self.cpu);
        if let Some(t) = self.throttled {
            s = s
                .field("throttled-ratio", t.ratio)
                .field("throttled-seconds", t.seconds)
                .field("throttled-periods", t.periods);
        }
        s.build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, MessageError> {
        const M: &str = Load::NAME;
        check_name(s, M)?;
        let source = field::<&str>(s, M, "source")?;
        let source = source
            .parse::<LoadSourceKind>()
            .map_err(|_| bad_value(M, "source", source))?;
        // All three or none: the element writes them together.
        let throttled = if s.has_field("throttled-ratio") {
            Some(Throttled {
                ratio: field(s, M, "throttled-ratio")?,
                seconds: field(s, M, "throttled-seconds")?,
                periods: field(s, M, "throttled-periods")?,
            })
        } else {
            None
        };
        Ok(Load {
            load: field(s, M, "load")?,
            source,
            capacity: field(s, M, "capacity")?,
            cpu: field(s, M, "cpu")?,
            throttled,
        })
    }
}

/// Why a requested or triggered drain did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every origin of the pipeline already sent its own EOS.
    EndingByItself,
    /// This element already drains.
    AlreadyDraining,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::EndingByItself => "ending-by-itself",
            Refusal::AlreadyDraining => "already-draining",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::EndingByItself, Self::AlreadyDraining]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// `cpuguard-drain-refused`: a drain did not start, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainRefused {
    pub reason: EndReason,
    pub refusal: Refusal,
    pub description: String,
}

impl DrainRefused {
    pub const NAME: &'static str = "cpuguard-drain-refused";

    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(Self::NAME)
            .field("reason", self.reason.as_str())
            .field("refusal", self.refusal.as_str())
            .field("description", &self.description)
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, MessageError> {
        const M: &str = DrainRefused::NAME;
        check_name(s, M)?;
        let reason = field::<&str>(s, M, "reason")?;
        let reason = EndReason::parse(reason).map_err(|_| bad_value(M, "reason", reason))?;
        let refusal = field::<&str>(s, M, "refusal")?;
        let refusal = Refusal::parse(refusal).ok_or_else(|| bad_value(M, "refusal", refusal))?;
        Ok(DrainRefused {
            reason,
            refusal,
            description: field::<String>(s, M, "description")?,
        })
    }
}

/// What crash-safe mode did with one muxer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashSafeAction {
    Configured,
    AlreadySafe,
    LeftAlone,
}

impl CrashSafeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CrashSafeAction::Configured => "configured",
            CrashSafeAction::AlreadySafe => "already-safe",
            CrashSafeAction::LeftAlone => "left-alone",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Configured, Self::AlreadySafe, Self::LeftAlone]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

impl From<&crate::crashsafe::Plan> for CrashSafeAction {
    fn from(plan: &crate::crashsafe::Plan) -> Self {
        use crate::crashsafe::Plan;
        match plan {
            Plan::Configure(_) => CrashSafeAction::Configured,
            Plan::AlreadySafe(_) => CrashSafeAction::AlreadySafe,
            Plan::LeftAlone { .. } => CrashSafeAction::LeftAlone,
        }
    }
}

/// `cpuguard-crash-safe`: what crash-safe mode did with one muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashSafe {
    /// The muxer's name.
    pub element: String,
    pub factory: String,
    pub action: CrashSafeAction,
    pub detail: String,
    /// Whether a kill leaves a playable file.
    pub protected: bool,
}

impl CrashSafe {
    pub const NAME: &'static str = "cpuguard-crash-safe";

    pub fn to_structure(&self) -> gst::Structure {
        gst::Structure::builder(Self::NAME)
            .field("element", &self.element)
            .field("factory", &self.factory)
            .field("action", self.action.as_str())
            .field("detail", &self.detail)
            .field("protected", self.protected)
            .build()
    }

    pub fn from_structure(s: &gst::StructureRef) -> Result<Self, MessageError> {
        const M: &str = CrashSafe::NAME;
        check_name(s, M)?;
        let action = field::<&str>(s, M, "action")?;
        let action =
            CrashSafeAction::parse(action).ok_or_else(|| bad_value(M, "action", action))?;
        Ok(CrashSafe {
            element: field(s, M, "element")?,
            factory: field(s, M, "factory")?,
            action,
            detail: field(s, M, "detail")?,
            protected: field(s, M, "protected")?,
        })
    }
}

/// Any message the element posts, read by its structure's name.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Load(Load),
    Drain(Drain),
    WouldDrain(Drain),
    DrainRefused(DrainRefused),
    CrashSafe(CrashSafe),
}

impl Message {
    /// `Ok(None)` for a structure that is not one of cpuguard's messages;
    /// an error for one of them with a bad field.
    pub fn from_structure(s: &gst::StructureRef) -> Result<Option<Self>, MessageError> {
        Ok(Some(match s.name().as_str() {
            Load::NAME => Message::Load(Load::from_structure(s)?),
            Drain::NAME => Message::Drain(Drain::from_structure(s)?),
            Drain::DRY_RUN_NAME => Message::WouldDrain(Drain::from_dry_run_structure(s)?),
            DrainRefused::NAME => Message::DrainRefused(DrainRefused::from_structure(s)?),
            CrashSafe::NAME => Message::CrashSafe(CrashSafe::from_structure(s)?),
            _ => return Ok(None),
        }))
    }

    pub fn to_structure(&self) -> gst::Structure {
        match self {
            Message::Load(m) => m.to_structure(),
            Message::Drain(m) => m.to_structure(),
            Message::WouldDrain(m) => m.to_dry_run_structure(),
            Message::DrainRefused(m) => m.to_structure(),
            Message::CrashSafe(m) => m.to_structure(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().unwrap();
    }

    fn drain() -> Drain {
        Drain {
            reason: EndReason::CpuLimit,
            load: 0.93,
            threshold: 0.9,
            trigger: DrainTrigger::Soft,
            source: Some(LoadSourceKind::Cgroup),
            cpu: 0.41,
            scope: Scope::Host,
            candidates: 3,
        }
    }

    #[test]
    fn every_message_round_trips() {
        init();
        let messages = [
            Message::Load(Load {
                load: 0.5,
                source: LoadSourceKind::System,
                capacity: 2.0,
                cpu: 0.25,
                throttled: None,
            }),
            Message::Load(Load {
                load: 1.0,
                source: LoadSourceKind::Cgroup,
                capacity: 0.5,
                cpu: 0.5,
                throttled: Some(Throttled {
                    ratio: 0.95,
                    seconds: 0.12,
                    periods: 10,
                }),
            }),
            Message::Drain(drain()),
            Message::Drain(Drain {
                reason: EndReason::Custom("maintenance".into()),
                trigger: DrainTrigger::Request,
                source: None,
                scope: Scope::Request,
                candidates: 1,
                ..drain()
            }),
            Message::WouldDrain(Drain {
                trigger: DrainTrigger::Hard,
                ..drain()
            }),
            Message::DrainRefused(DrainRefused {
                reason: EndReason::StopRequested,
                refusal: Refusal::AlreadyDraining,
                description: "a drain (cpu-limit) is already under way".into(),
            }),
            Message::CrashSafe(CrashSafe {
                element: "mux".into(),
                factory: "mp4mux".into(),
                action: CrashSafeAction::Configured,
                detail: "fragment-duration=1000".into(),
                protected: true,
            }),
        ];
        for message in messages {
            let s = message.to_structure();
            assert_eq!(Message::from_structure(&s), Ok(Some(message)), "{s}");
        }
    }

    /// The wire form is frozen: a structure written the way the element wrote
    /// it before this module existed must parse, and ours must equal it.
    #[test]
    fn reads_and_writes_the_literal_drain_schema() {
        init();
        let literal = gst::Structure::builder("cpuguard-drain")
            .field("reason", "cpu-limit")
            .field("description", "CPU limit reached")
            .field("load", 0.93f64)
            .field("threshold", 0.9f64)
            .field("trigger", "soft")
            .field("source", "cgroup")
            .field("cpu", 0.41f64)
            .field("scope", "host")
            .field("candidates", 3u32)
            .build();
        assert_eq!(Drain::from_structure(&literal), Ok(drain()));
        assert_eq!(drain().to_structure(), literal);

        let literal = gst::Structure::builder("cpuguard-would-drain")
            .field("reason", "stop-requested")
            .field("description", "Stop requested")
            .field("load", 0.93f64)
            .field("threshold", 0.9f64)
            .field("trigger", "request")
            .field("source", "none")
            .field("cpu", 0.41f64)
            .field("scope", "request")
            .field("candidates", 1u32)
            .build();
        let expected = Drain {
            reason: EndReason::StopRequested,
            trigger: DrainTrigger::Request,
            source: None,
            scope: Scope::Request,
            candidates: 1,
            ..drain()
        };
        assert_eq!(
            Drain::from_dry_run_structure(&literal),
            Ok(expected.clone())
        );
        assert_eq!(expected.to_dry_run_structure(), literal);
    }

    #[test]
    fn reads_and_writes_the_literal_load_schema() {
        init();
        let literal = gst::Structure::builder("cpuguard-load")
            .field("load", 1.0f64)
            .field("source", "cgroup")
            .field("capacity", 0.25f64)
            .field("cpu", 0.2f64)
            .field("throttled-ratio", 0.97f64)
            .field("throttled-seconds", 0.3f64)
            .field("throttled-periods", 9u64)
            .build();
        let load = Load {
            load: 1.0,
            source: LoadSourceKind::Cgroup,
            capacity: 0.25,
            cpu: 0.2,
            throttled: Some(Throttled {
                ratio: 0.97,
                seconds: 0.3,
                periods: 9,
            }),
        };
        assert_eq!(Load::from_structure(&literal), Ok(load));
        assert_eq!(load.to_structure(), literal);
    }

    #[test]
    fn reads_and_writes_the_literal_refusal_and_crash_safe_schema() {
        init();
        let literal = gst::Structure::builder("cpuguard-drain-refused")
            .field("reason", "cpu-limit")
            .field("refusal", "ending-by-itself")
            .field("description", "the stream is ending by itself")
            .build();
        let refused = DrainRefused {
            reason: EndReason::CpuLimit,
            refusal: Refusal::EndingByItself,
            description: "the stream is ending by itself".into(),
        };
        assert_eq!(DrainRefused::from_structure(&literal), Ok(refused.clone()));
        assert_eq!(refused.to_structure(), literal);

        let literal = gst::Structure::builder("cpuguard-crash-safe")
            .field("element", "mux")
            .field("factory", "matroskamux")
            .field("action", "left-alone")
            .field("detail", "no crash-safe setting")
            .field("protected", false)
            .build();
        let crash_safe = CrashSafe {
            element: "mux".into(),
            factory: "matroskamux".into(),
            action: CrashSafeAction::LeftAlone,
            detail: "no crash-safe setting".into(),
            protected: false,
        };
        assert_eq!(CrashSafe::from_structure(&literal), Ok(crash_safe.clone()));
        assert_eq!(crash_safe.to_structure(), literal);
    }

    #[test]
    fn errors_name_the_field() {
        init();
        let mut s = drain().to_structure();
        s.remove_field("threshold");
        assert!(matches!(
            Drain::from_structure(&s),
            Err(MessageError::Field {
                field: "threshold",
                ..
            })
        ));
        let mut s = drain().to_structure();
        s.set("trigger", "medium");
        assert_eq!(
            Drain::from_structure(&s),
            Err(MessageError::Value {
                message: "cpuguard-drain",
                field: "trigger",
                value: "medium".into()
            })
        );
        let mut s = drain().to_structure();
        s.set("candidates", 3i32);
        assert!(matches!(
            Drain::from_structure(&s),
            Err(MessageError::Field {
                field: "candidates",
                ..
            })
        ));
        assert!(matches!(
            Load::from_structure(&drain().to_structure()),
            Err(MessageError::WrongName {
                expected: "cpuguard-load",
                ..
            })
        ));
        let other = gst::Structure::new_empty("level");
        assert_eq!(Message::from_structure(&other), Ok(None));
    }
}
