//! Bad input: every cpuguard property and every cpuguard-run option at and
//! beyond its limits, through each way a user sets them (set_property in
//! process, gst-launch-1.0 syntax, a cpuguard-run description, cpuguard-run
//! options), and malformed pipeline descriptions. Each must be accepted and
//! run, or refused with an error naming the problem: no panic, no hang, and
//! never a value silently replaced by another.
//!
//! (Malformed load files are fed to every parser in `src/load/proptests.rs`.)

mod common;

use common::run::*;
use common::*;
use gst::prelude::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a property value must lead to.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Accepted, and a short pipeline runs to EOS.
    Runs,
    /// Refused when set (out of range, wrong type, read-only).
    Refused,
    /// Accepted, but the element refuses to start with an error containing this.
    FailsToStart(&'static str),
}
use Expect::*;

/// (property, value as typed, expected). Limits are the documented ones.
const PROPERTY_CASES: &[(&str, &str, Expect)] = &[
    ("soft-threshold", "0", Runs),
    ("soft-threshold", "0.5", Runs),
    (
        "soft-threshold",
        "1",
        FailsToStart("soft-threshold (1) must not be above hard-threshold (0.95)"),
    ),
    ("soft-threshold", "-0.000001", Refused),
    ("soft-threshold", "1.000001", Refused),
    ("soft-threshold", "nan", Refused),
    ("soft-threshold", "inf", Refused),
    ("soft-threshold", "-inf", Refused),
    ("soft-threshold", "1e308", Refused),
    ("soft-threshold", "abc", Refused),
    ("hard-threshold", "1", Runs),
    (
        "hard-threshold",
        "0",
        FailsToStart("soft-threshold (0.85) must not be above hard-threshold (0)"),
    ),
    ("hard-threshold", "-1", Refused),
    ("hard-threshold", "1.5", Refused),
    ("hard-threshold", "nan", Refused),
    ("hard-threshold", "inf", Refused),
    ("hard-threshold", "x", Refused),
    ("hold", "1", Runs),
    ("hold", "100000", Runs),
    ("hold", "0", Refused),
    ("hold", "100001", Refused),
    ("hold", "-1", Refused),
    ("hold", "4294967296", Refused),
    ("hold", "1.5", Refused),
    ("hold", "many", Refused),
    ("release", "1", Runs),
    ("release", "100000", Runs),
    ("release", "0", Refused),
    ("release", "100001", Refused),
    ("release", "-1", Refused),
    ("release", "x", Refused),
    ("interval", "10", Runs),
    ("interval", "3600000", Runs),
    ("interval", "9", Refused),
    ("interval", "0", Refused),
    ("interval", "3600001", Refused),
    ("interval", "-10", Refused),
    ("interval", "1s", Refused),
    ("drain-timeout", "0", Runs),
    ("drain-timeout", "4294967295", Runs),
    // Not here: drain-timeout=-1 and =4294967296. GStreamer's own integer
    // parser (gstvalue.c) masks them to 32 bits, 4294967295 and 0, valid
    // values the element cannot tell from typed ones. --drain-timeout
    // refuses them (see OPTION_CASES).
    ("drain-timeout", "30s", Refused),
    ("load-source", "auto", Runs),
    ("load-source", "system", Runs),
    // The fake host has no PSI file.
    ("load-source", "psi", FailsToStart("psi not available")),
    ("load-source", "gpu", Refused),
    ("load-source", "7", Refused),
    ("load-source", "-1", Refused),
    ("dry-run", "true", Runs),
    ("dry-run", "false", Runs),
    ("dry-run", "maybe", Refused),
    ("load", "0.5", Refused),
    (
        "root",
        "/nonexistent",
        FailsToStart("/nonexistent/proc/stat"),
    ),
    ("root", "/etc/hostname", FailsToStart("Not a directory")),
    (
        "root",
        "relative/dir",
        FailsToStart("relative/dir/proc/stat"),
    ),
    ("no-such-property", "1", Refused),
];

/// In process only: an empty root does not survive gst-launch syntax, and
/// the fake host only has this process under proc/.
const IN_PROCESS_ONLY: &[(&str, &str, Expect)] = &[
    ("root", "", FailsToStart("cannot read proc/stat")),
    ("load-source", "process", Runs),
    // A cgroup2 membership, but no cgroup files.
    ("load-source", "cgroup", FailsToStart("not found")),
];

/// In a child process, whose pid the fake host does not know.
const CHILD_ONLY: &[(&str, &str, Expect)] = &[
    (
        "load-source",
        "process",
        FailsToStart("/stat: No such file"),
    ),
    ("root", "/", Runs),
];

fn child_cases() -> Vec<(&'static str, &'static str, Expect)> {
    PROPERTY_CASES.iter().chain(CHILD_ONLY).copied().collect()
}

fn long_root() -> String {
    format!("/{}", "x".repeat(5000))
}

/// A three-buffer pipeline through a cpuguard reading `host`; ends at once.
fn short_pipeline(host: &FakeHost, property: Option<(&str, &str)>) -> String {
    let setting = property.map_or(String::new(), |(p, v)| format!("{p}={v}"));
    format!(
        "fakesrc num-buffers=3 ! cpuguard name=guard load-source=system root={} {setting} \
         ! fakesink",
        host.root_str()
    )
}

/// Sets `text` on the element as a user would from a string; Err when GObject
/// refuses it (unknown, read-only, not parseable, out of range).
fn set_from_str(element: &gst::Element, name: &str, text: &str) -> Result<(), String> {
    let pspec = element
        .find_property(name)
        .ok_or_else(|| format!("no property {name}"))?;
    if !pspec.flags().contains(glib::ParamFlags::WRITABLE) {
        return Err(format!("{name} is read-only"));
    }
    let value = glib::Value::deserialize_with_pspec(text, &pspec)
        .map_err(|_| format!("{name}: cannot parse {text:?}"))?;
    if !pspec.value_is_valid(&value) {
        return Err(format!("{name}: {text:?} is out of range"));
    }
    element.set_property_from_value(name, &value);
    Ok(())
}

/// Runs `pipeline` to its end: Ok on EOS, the error text (with debug) on ERROR.
fn run_to_end(pipeline: &gst::Pipeline) -> Result<(), String> {
    let started = pipeline.set_state(gst::State::Playing);
    let messages = run_until_end(pipeline, HANG);
    let _ = pipeline.set_state(gst::State::Null);
    let end = messages.last().map(|m| m.view());
    match end {
        Some(gst::MessageView::Eos(_)) if started.is_ok() => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!(
            "{} ({})",
            e.error(),
            e.debug().map(|d| d.to_string()).unwrap_or_default()
        )),
        _ => Err(format!("no EOS or ERROR within {HANG:?}: {started:?}")),
    }
}

#[test]
fn element_properties_in_process() {
    init();
    let host = FakeHost::new(0.1);
    let long = long_root();
    let mut cases: Vec<(&str, &str, Expect)> = PROPERTY_CASES.to_vec();
    cases.extend_from_slice(IN_PROCESS_ONLY);
    cases.push(("root", &long, FailsToStart("too long")));
    for (name, text, expect) in &cases {
        let pipeline = gst::parse::launch(&short_pipeline(&host, None))
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let guard = pipeline.by_name("guard").unwrap();
        let before = guard
            .find_property(name)
            .map(|_| guard.property_value(name));
        let set = set_from_str(&guard, name, text);
        match (expect, set) {
            (Refused, Err(_)) => {
                // Refused means untouched.
                if let Some(before) = before {
                    assert_eq!(
                        format!("{before:?}"),
                        format!("{:?}", guard.property_value(name)),
                        "{name}={text:?} changed the value"
                    );
                }
            }
            (Refused, Ok(())) => panic!("{name}={text:?} was accepted"),
            (_, Err(err)) => panic!("{name}={text:?} was refused: {err}"),
            (Runs, Ok(())) => {
                run_to_end(&pipeline).unwrap_or_else(|e| panic!("{name}={text:?}: {e}"))
            }
            (FailsToStart(needle), Ok(())) => {
                let err = run_to_end(&pipeline).expect_err(&format!("{name}={text:?} ran"));
                assert!(err.contains(needle), "{name}={text:?}: {err}");
                assert!(!err.contains("panicked"), "{name}={text:?}: {err}");
            }
        }
    }
    eprintln!("properties set in process: {} values", cases.len());
}

fn assert_exits_cleanly(what: &str, ended: &Ended) {
    assert_no_panic(ended);
    assert!(
        !ended.stderr.contains("CRITICAL"),
        "{what}: {}",
        ended.stderr
    );
}

#[test]
fn element_properties_in_gst_launch_syntax() {
    let host = FakeHost::new(0.1);
    let cases = child_cases();
    for (name, text, expect) in &cases {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.args(args_of(&short_pipeline(&host, Some((name, text)))))
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", plugin_dir().join("test-registry.bin"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ended = spawn_command(cmd).wait_exit(HANG);
        let what = format!("gst-launch-1.0 cpuguard {name}={text}");
        assert_no_panic(&ended);
        let output = format!("{}{}", ended.stdout, ended.stderr);
        match expect {
            Runs => assert_eq!(ended.code(), Some(0), "{what}:\n{output}"),
            // gst-launch-1.0 itself only warns, naming the property, and
            // carries on with the old value; cpuguard-run refuses (below).
            Refused => assert!(
                ended.code() != Some(0) || output.contains(&format!("'{name}'")),
                "{what}: refused silently:\n{output}"
            ),
            FailsToStart(needle) => {
                assert_ne!(ended.code(), Some(0), "{what}:\n{output}");
                assert!(output.contains(needle), "{what}:\n{output}");
            }
        }
    }
    eprintln!(
        "properties in gst-launch-1.0 syntax: {} values",
        cases.len()
    );
}

#[test]
fn element_properties_in_a_cpuguard_run_description() {
    let host = FakeHost::new(0.1);
    let cases = child_cases();
    for (name, text, expect) in &cases {
        // cpuguard-run reads a unit in a cpuguard's durations
        // (drain-timeout=30s is 30000 ms); GStreamer itself refuses them.
        let with_unit = ["interval", "drain-timeout"].contains(name)
            && text.ends_with('s')
            && text[..text.len() - 1].parse::<u64>().is_ok();
        let expect = if with_unit { &Runs } else { expect };
        let what = format!("cpuguard-run ... cpuguard {name}={text}");
        let ended = spawn(&args_of(&short_pipeline(&host, Some((name, text))))).wait_exit(HANG);
        assert_exits_cleanly(&what, &ended);
        match expect {
            Runs => assert_eq!(ended.code(), Some(0), "{what}:\n{}", ended.stderr),
            Refused => {
                assert_eq!(ended.code(), Some(2), "{what}:\n{}", ended.stderr);
                assert!(
                    ended.stderr.contains("invalid pipeline") && ended.stderr.contains(name),
                    "{what}:\n{}",
                    ended.stderr
                );
                assert!(ended.stdout_lines().is_empty(), "{what}: {}", ended.stdout);
            }
            FailsToStart(needle) => {
                assert!(
                    matches!(ended.code(), Some(1 | 2)),
                    "{what}:\n{}",
                    ended.stderr
                );
                assert!(ended.stderr.contains(needle), "{what}:\n{}", ended.stderr);
            }
        }
    }
    eprintln!(
        "properties in cpuguard-run descriptions: {} values",
        cases.len()
    );
}

/// (option, value, exit code, what stderr must say). Exit 2 is a usage error
/// (nothing ran), 1 a run that failed; 0 ran to the end.
const OPTION_CASES: &[(&str, &str, i32, &str)] = &[
    ("--soft-threshold", "0", 0, "state COMPLETE"),
    ("--soft-threshold", "0.95", 0, "state COMPLETE"),
    (
        "--soft-threshold",
        "-0.01",
        2,
        "soft-threshold must be between 0 and 1",
    ),
    (
        "--soft-threshold",
        "1.01",
        2,
        "soft-threshold must be between 0 and 1",
    ),
    ("--soft-threshold", "NaN", 2, "soft-threshold"),
    ("--soft-threshold", "inf", 2, "soft-threshold"),
    ("--soft-threshold", "", 2, "soft-threshold"),
    (
        "--soft-threshold",
        "half",
        2,
        "soft-threshold must be a number",
    ),
    ("--hard-threshold", "1", 0, "state COMPLETE"),
    ("--hard-threshold", "0.85", 0, "state COMPLETE"),
    (
        "--hard-threshold",
        "0.5",
        2,
        "must not be above hard-threshold (0.5)",
    ),
    (
        "--hard-threshold",
        "1.5",
        2,
        "hard-threshold must be between 0 and 1",
    ),
    ("--hard-threshold", "-inf", 2, "hard-threshold"),
    ("--hold", "1", 0, "state COMPLETE"),
    ("--hold", "100000", 0, "state COMPLETE"),
    ("--hold", "0", 2, "hold must be between 1"),
    ("--hold", "100001", 2, "hold must be between 1"),
    ("--hold", "-3", 2, "hold"),
    ("--hold", "2.5", 2, "hold"),
    ("--hold", "18446744073709551616", 2, "hold"),
    ("--release", "1", 0, "state COMPLETE"),
    ("--release", "100000", 0, "state COMPLETE"),
    ("--release", "0", 2, "release must be between 1"),
    ("--release", "100001", 2, "release must be between 1"),
    ("--release", "x", 2, "release"),
    ("--interval", "10", 0, "state COMPLETE"),
    ("--interval", "10ms", 0, "state COMPLETE"),
    ("--interval", "3600000", 0, "state COMPLETE"),
    ("--interval", "1h", 0, "state COMPLETE"),
    ("--interval", "9", 2, "interval must be between 10 ms"),
    ("--interval", "0", 2, "interval must be between 10 ms"),
    ("--interval", "3600001", 2, "interval"),
    ("--interval", "-1", 2, "interval"),
    ("--interval", "soon", 2, "interval"),
    ("--drain-timeout", "0", 0, "state COMPLETE"),
    ("--drain-timeout", "4294967295", 0, "state COMPLETE"),
    ("--drain-timeout", "30s", 0, "state COMPLETE"),
    ("--drain-timeout", "4294967296", 2, "drain-timeout"),
    ("--drain-timeout", "-1", 2, "drain-timeout"),
    ("--drain-timeout", "1y", 2, "drain-timeout"),
    ("--drain-timeout", "soon", 2, "drain-timeout"),
    ("--load-source", "auto", 0, "state COMPLETE"),
    // The fake host only has the test process under proc/.
    ("--load-source", "process", 1, "/stat: No such file"),
    ("--load-source", "system", 0, "state COMPLETE"),
    ("--load-source", "gpu", 2, "gpu"),
    ("--load-source", "", 2, "load-source"),
    ("--root", "/nonexistent", 1, "/nonexistent/proc/stat"),
    (
        "--report",
        "/nonexistent-dir/r.json",
        2,
        "cannot write report file",
    ),
    ("--report", "/", 2, "cannot write report file"),
    (
        "--max-utilization",
        "0.5",
        2,
        "--max-utilization applies to multi-pipeline mode",
    ),
    ("--dry-run", "maybe", 2, "maybe"),
    ("--no-such-option", "1", 2, "--no-such-option"),
];

#[test]
fn cpuguard_run_options_at_and_beyond_their_limits() {
    let host = FakeHost::new(0.1);
    let description = format!(
        "fakesrc num-buffers=3 ! cpuguard root={} ! fakesink",
        host.root_str()
    );
    for (option, value, code, needle) in OPTION_CASES {
        let mut a = vec![format!("{option}={value}")];
        // --root replaces the fake host.
        if *option != "--root" {
            a.extend(args(&["--root", &host.root_str()]));
        }
        a.extend(args_of(&description));
        let what = format!("cpuguard-run {option}={value}");
        let ended = spawn(&a).wait_exit(HANG);
        assert_exits_cleanly(&what, &ended);
        assert_eq!(ended.code(), Some(*code), "{what}:\n{}", ended.stderr);
        assert!(
            ended.stderr.contains(needle),
            "{what}: no {needle:?} in:\n{}",
            ended.stderr
        );
        // A usage error runs nothing and prints no result.
        assert_eq!(
            ended.stdout_lines().is_empty(),
            *code == 2,
            "{what}: {}",
            ended.stdout
        );
    }
    eprintln!("cpuguard-run option values: {}", OPTION_CASES.len());
}

/// Descriptions GStreamer cannot build, with what the error must name.
const MALFORMED_DESCRIPTIONS: &[(&str, &str)] = &[
    ("!", "syntax error"),
    ("videotestsrc !", "syntax error"),
    ("! fakesink", "syntax error"),
    ("videotestsrc ! ! fakesink", "syntax error"),
    ("( videotestsrc ! fakesink", "syntax error"),
    ("videotestsrc ! fakesink )", "syntax error"),
    ("nosuchelement", "nosuchelement"),
    ("videotestsrc ! nosuchelement ! fakesink", "nosuchelement"),
    ("videotestsrc nosuchprop=1 ! fakesink", "nosuchprop"),
    ("videotestsrc num-buffers=abc ! fakesink", "num-buffers"),
    ("videotestsrc num-buffers=-5 ! fakesink", "num-buffers"),
    ("videotestsrc pattern=999 ! fakesink", "pattern"),
    (
        "videotestsrc ! video/x-raw,width=abc ! fakesink",
        "could not link",
    ),
    (
        "videotestsrc ! capsfilter caps=garbage ! fakesink",
        "could not link",
    ),
    ("videotestsrc ! audioconvert ! fakesink", "could not link"),
    ("videotestsrc ! nope.", "nope"),
    ("vidéotestsrc ! fakesink", "vidéotestsrc"),
    (
        "fakesrc ! cpuguard soft-threshold=2 ! fakesink",
        "soft-threshold",
    ),
    ("fakesrc ! cpuguard load=1 ! fakesink", "'load'"),
];

fn long_description() -> String {
    // Two thousand elements and then a broken link at the very end.
    format!("fakesrc{} ! nosuchelement", " ! identity".repeat(2000))
}

#[test]
fn malformed_descriptions_exit_2_naming_the_problem() {
    let long = long_description();
    let mut cases: Vec<(&str, &str)> = MALFORMED_DESCRIPTIONS.to_vec();
    cases.push((&long, "nosuchelement"));
    let dir = tempfile::tempdir().unwrap();
    let mut tried = 0;
    for (description, needle) in &cases {
        let jobs = dir.path().join("jobs.txt");
        std::fs::write(
            &jobs,
            format!("# a good one first\nfakesrc ! fakesink\n{description}\n"),
        )
        .unwrap();
        let jobs = jobs.display().to_string();
        let ways: [(Vec<String>, String); 4] = [
            (args_of(description), "invalid pipeline".to_owned()),
            (vec![description.to_string()], "invalid pipeline".to_owned()),
            (
                args(&[
                    "--pipeline",
                    "fakesrc ! fakesink",
                    "--pipeline",
                    description,
                ]),
                "invalid pipeline (--pipeline 2)".to_owned(),
            ),
            (args(&["--jobs", &jobs]), format!("{jobs} line 3")),
        ];
        for (a, context) in ways {
            let started = Instant::now();
            let ended = spawn(&a).wait_exit(HANG);
            let what = format!("{a:?}");
            assert_exits_cleanly(&what, &ended);
            assert_eq!(ended.code(), Some(2), "{what}:\n{}", ended.stderr);
            assert!(ended.stderr.contains(&context), "{what}:\n{}", ended.stderr);
            assert!(
                ended.stderr.contains(needle),
                "{what}: no {needle:?} in\n{}",
                ended.stderr
            );
            assert!(ended.stdout_lines().is_empty(), "{what}: {}", ended.stdout);
            assert!(started.elapsed() < Duration::from_secs(30), "{what}: slow");
            tried += 1;
        }
    }
    eprintln!(
        "malformed descriptions: {} descriptions, {tried} runs (positional, one argument, \
         --pipeline, --jobs)",
        cases.len()
    );
}
