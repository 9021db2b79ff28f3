//! The pure rules: given a muxer's factory and the layout properties the user
//! already set, what to set so that a kill at any moment leaves a playable
//! file. No GStreamer here, so every rule is unit-tested on plain values.
//!
//! Measured on GStreamer 1.22 (SIGKILL of a live x264 + AAC recording):
//! - mp4mux/qtmux as they are: no moov, the file does not play.
//! - mp4mux `reserved-max-duration` + `reserved-moov-update-period` (a moov
//!   at the front, refreshed): plays to within the period, but once the index
//!   outgrows the reservation the muxer posts an ERROR ("Not enough free
//!   reserved header space": a 3 s reservation failed the recording at about
//!   9 s), and the final moov cannot be written either. A recording longer than
//!   the reservation fails: not usable when the length is not known, and a
//!   reservation for hours costs megabytes in every file.
//! - mp4mux `fragment-duration` (fragmented MP4, `dash-or-mss` mode): plays to
//!   the last complete fragment, whatever the recording's length and whether
//!   or not the sink can seek (fragments are only appended). The
//!   `first-moov-then-finalise` mode played only its first fragment of video.
//! - matroskamux/webmmux and mpegtsmux write every frame as it comes: a killed
//!   file plays to its last written block without any setting.

use std::fmt;

/// The default bound, in milliseconds: a killed file plays to at most about
/// this long before the kill.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;
pub const MIN_INTERVAL_MS: u32 = 200;
/// Fragments per interval. One fragment per interval would lose up to the
/// interval plus whatever the encoder and queues hold, and leave nothing
/// playable when the kill comes before the first fragment is complete
/// (measured: 2 of 30 SIGKILLs at 0.7-0.95 s left "no playable streams").
/// A quarter keeps the loss within the interval under overload and puts the
/// first fragment on disk about 0.3 s in, for about 0.2 % more bytes than one
/// fragment per second (BENCHMARKS.md).
pub const FRAGMENTS_PER_INTERVAL: u32 = 4;
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// The MP4 property that makes the layout fragmented.
pub const FRAGMENT_DURATION: &str = "fragment-duration";

/// Properties that choose an MP4 muxer's layout. When the user set any of
/// them, the layout is the user's: it is left alone.
pub const MP4_LAYOUT_PROPERTIES: &[&str] = &[
    FRAGMENT_DURATION,
    "reserved-max-duration",
    "reserved-moov-update-period",
    "faststart",
    "moov-recovery-file",
    "streamable",
];

/// Muxer families, by how a kill leaves their files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// mp4mux, qtmux: the index (moov) is written at the end.
    Mp4,
    /// matroskamux, webmmux: blocks written as they come.
    Matroska,
    /// mpegtsmux: packets written as they come.
    MpegTs,
}

impl Family {
    pub fn of(factory: &str) -> Option<Family> {
        match factory {
            "mp4mux" | "qtmux" => Some(Family::Mp4),
            "matroskamux" | "webmmux" => Some(Family::Matroska),
            "mpegtsmux" => Some(Family::MpegTs),
            _ => None,
        }
    }
}

/// One property to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub property: &'static str,
    /// As GStreamer parses it (`fragment-duration`: milliseconds).
    pub value: String,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.property, self.value)
    }
}

/// What to do with one muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Set these properties.
    Configure(Vec<Setting>),
    /// Nothing to set: a killed file already plays (why).
    AlreadySafe(String),
    /// The user chose the layout: nothing is set (why, and what a kill
    /// leaves; `survives_kill` when that layout still plays after one).
    LeftAlone { why: String, survives_kill: bool },
}

impl Plan {
    /// The short name used on stderr and in the JSON result.
    pub fn action(&self) -> &'static str {
        match self {
            Plan::Configure(_) => "configured",
            Plan::AlreadySafe(_) => "already-safe",
            Plan::LeftAlone { .. } => "left-alone",
        }
    }

    /// Whether a kill leaves a playable file under this plan.
    pub fn protected(&self) -> bool {
        match self {
            Plan::Configure(_) | Plan::AlreadySafe(_) => true,
            Plan::LeftAlone { survives_kill, .. } => *survives_kill,
        }
    }

    /// The settings made or the reason for making none, for stderr.
    pub fn detail(&self) -> String {
        match self {
            Plan::Configure(settings) => settings
                .iter()
                .map(Setting::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            Plan::AlreadySafe(why) => why.clone(),
            Plan::LeftAlone { why, .. } => why.clone(),
        }
    }
}

/// The plan for a muxer made by `factory`, given its layout properties that
/// differ from their defaults (`user_set`, name and value as text), for a
/// bound of `interval_ms`. `None`: not a muxer these rules know.
pub fn plan(factory: &str, user_set: &[(&str, String)], interval_ms: u32) -> Option<Plan> {
    let interval_ms = interval_ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
    Some(match Family::of(factory)? {
        Family::Mp4 => mp4_plan(user_set, interval_ms),
        Family::Matroska => Plan::AlreadySafe(
            "writes each block as it comes: a killed file plays to its last block (no index, \
             so players seek slowly)"
                .to_owned(),
        ),
        Family::MpegTs => Plan::AlreadySafe(
            "writes each packet as it comes: a killed file plays to its last packet".to_owned(),
        ),
    })
}

fn mp4_plan(user_set: &[(&str, String)], interval_ms: u32) -> Plan {
    let chosen: Vec<&(&str, String)> = user_set
        .iter()
        .filter(|(name, _)| MP4_LAYOUT_PROPERTIES.contains(name))
        .collect();
    if chosen.is_empty() {
        return Plan::Configure(vec![Setting {
            property: FRAGMENT_DURATION,
            value: (interval_ms / FRAGMENTS_PER_INTERVAL).to_string(),
        }]);
    }
    let listed = chosen
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ");
    let fragment = chosen
        .iter()
        .find(|(name, _)| *name == FRAGMENT_DURATION)
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .filter(|&ms| ms > 0);
    let robust = chosen
        .iter()
        .any(|(name, _)| *name == "reserved-max-duration")
        && chosen
            .iter()
            .any(|(name, _)| *name == "reserved-moov-update-period");
    let survives_kill = fragment.is_some() || robust;
    let consequence = match (fragment, robust) {
        (Some(ms), _) => format!("fragmented: a killed file plays to within about {ms} ms"),
        (None, true) => "robust moov: a killed file plays to the last moov update, but the \
                         recording fails once it outgrows reserved-max-duration"
            .to_owned(),
        (None, false) => "a killed file will not play (index written at the end)".to_owned(),
    };
    Plan::LeftAlone {
        why: format!("the pipeline sets {listed}; {consequence}"),
        survives_kill,
    }
}

/// Properties that choose filesink's buffering.
pub const FILESINK_BUFFER_PROPERTIES: &[&str] = &["buffer-mode", "buffer-size"];

/// The plan for the sink a protected muxer writes to. filesink keeps up to
/// 64 KB in its own buffer by default: seconds of a low-bitrate recording
/// that a kill would lose, beyond the muxer's bound. Unbuffered, it writes
/// each buffer the muxer pushes (a fragment is a few writes per interval).
/// `None`: a sink these rules do not know (nothing to say about it).
pub fn sink_plan(factory: &str, user_set: &[(&str, String)]) -> Option<Plan> {
    if factory != "filesink" {
        return None;
    }
    let chosen: Vec<String> = user_set
        .iter()
        .filter(|(name, _)| FILESINK_BUFFER_PROPERTIES.contains(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    Some(if chosen.is_empty() {
        Plan::Configure(vec![Setting {
            property: "buffer-mode",
            value: "unbuffered".to_owned(),
        }])
    } else {
        Plan::LeftAlone {
            why: format!(
                "the pipeline sets {}; a kill also loses what its buffer holds",
                chosen.join(", ")
            ),
            survives_kill: true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(n, v)| (*n, (*v).to_owned())).collect()
    }

    #[test]
    fn untouched_mp4_muxers_get_fragments_of_the_interval() {
        for factory in ["mp4mux", "qtmux"] {
            assert_eq!(
                plan(factory, &[], 1000),
                Some(Plan::Configure(vec![Setting {
                    property: FRAGMENT_DURATION,
                    value: "250".to_owned()
                }])),
                "{factory}"
            );
        }
        let Some(Plan::Configure(settings)) = plan("mp4mux", &[], 2000) else {
            panic!("not configured");
        };
        assert_eq!(settings[0].to_string(), "fragment-duration=500");
    }

    #[test]
    fn intervals_out_of_range_are_clamped() {
        let value = |ms| match plan("mp4mux", &[], ms) {
            Some(Plan::Configure(s)) => s[0].value.parse::<u32>().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(0), MIN_INTERVAL_MS / FRAGMENTS_PER_INTERVAL);
        assert_eq!(value(u32::MAX), MAX_INTERVAL_MS / FRAGMENTS_PER_INTERVAL);
    }

    #[test]
    fn a_layout_the_user_chose_is_left_alone_and_says_what_a_kill_leaves() {
        let cases = [
            (
                set(&[("fragment-duration", "500")]),
                "within about 500 ms",
                true,
            ),
            (
                set(&[
                    ("reserved-max-duration", "3000000000"),
                    ("reserved-moov-update-period", "1000000000"),
                ]),
                "fails once it outgrows reserved-max-duration",
                true,
            ),
            (set(&[("faststart", "true")]), "will not play", false),
            (set(&[("streamable", "true")]), "will not play", false),
            // A reservation without updates never refreshes the index.
            (
                set(&[("reserved-max-duration", "3000000000")]),
                "will not play",
                false,
            ),
        ];
        for (user_set, consequence, protected) in cases {
            let plan = plan("mp4mux", &user_set, 1000).unwrap();
            let Plan::LeftAlone { why, .. } = &plan else {
                panic!("{user_set:?}: {plan:?}");
            };
            assert!(why.contains(consequence), "{why}");
            assert!(why.contains(user_set[0].0), "names the setting: {why}");
            assert_eq!(plan.protected(), protected, "{why}");
        }
    }

    #[test]
    fn other_properties_do_not_count_as_a_layout() {
        let user_set = set(&[("interleave-time", "500000000"), ("name", "m")]);
        assert!(matches!(
            plan("mp4mux", &user_set, 1000),
            Some(Plan::Configure(_))
        ));
    }

    #[test]
    fn filesink_writes_unbuffered_unless_the_pipeline_chose_its_buffering() {
        assert_eq!(
            sink_plan("filesink", &[]),
            Some(Plan::Configure(vec![Setting {
                property: "buffer-mode",
                value: "unbuffered".to_owned()
            }]))
        );
        let plan = sink_plan("filesink", &set(&[("buffer-size", "1048576")])).unwrap();
        assert_eq!(plan.action(), "left-alone");
        assert!(plan.detail().contains("buffer-size=1048576"), "{plan:?}");
        assert_eq!(sink_plan("fdsink", &[]), None);
    }

    #[test]
    fn streaming_containers_need_nothing_and_others_are_not_ours() {
        for factory in ["matroskamux", "webmmux", "mpegtsmux"] {
            let plan = plan(factory, &[], 1000).unwrap();
            assert!(matches!(plan, Plan::AlreadySafe(_)), "{factory}");
            assert!(plan.protected());
        }
        for factory in ["flvmux", "oggmux", "filesink", "splitmuxsink"] {
            assert_eq!(plan(factory, &[], 1000), None, "{factory}");
        }
    }
}
