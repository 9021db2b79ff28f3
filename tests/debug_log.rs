//! `GST_DEBUG=cpuguard:5` tells the story of a drain, in order and at the
//! levels GStreamer uses: samples at DEBUG, the count towards hold at DEBUG,
//! the victim choice and the drain at INFO.

use std::process::Command;

mod common;
use common::{FakeHost, plugin_dir};

/// The level and text of every cpuguard line, in order.
fn cpuguard_lines(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            // time pid thread LEVEL category file:line:function:<object> text
            let level = words.nth(3)?.to_owned();
            (words.next()? == "cpuguard").then(|| (level, line.to_owned()))
        })
        .collect()
}

#[test]
fn debug_category_tells_the_story_of_a_drain() {
    let host = FakeHost::new(0.9);
    let root = format!("root={}", host.root_str());
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("gst-launch-1.0")
        .args([
            "-e",
            "videotestsrc",
            "is-live=true",
            "!",
            "cpuguard",
            "name=guard",
            "load-source=system",
            &root,
            "interval=50",
            "hold=3",
            "soft-threshold=0.5",
            "!",
            "fakesink",
        ])
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", dir.path().join("registry.bin"))
        .env("GST_DEBUG", "cpuguard:5")
        .env("GST_DEBUG_NO_COLOR", "1")
        .output()
        .expect("gst-launch-1.0 runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let lines = cpuguard_lines(&log);

    // Each chapter of the story at its level, each after the previous one.
    let story = [
        ("INFO", "Measuring load"),
        ("DEBUG", "Sample: load 0.9"),
        ("DEBUG", "high for 1/3 samples"),
        ("DEBUG", "high for 2/3 samples"),
        (
            "INFO",
            "reached the soft threshold 0.5: choosing guard, the heaviest of guard ",
        ),
        ("INFO", "crossed the soft threshold 0.5: draining"),
        (
            "INFO",
            "Drain (cpu-limit): end reason tag and EOS sent downstream",
        ),
    ];
    let mut from = 0;
    for (level, text) in story {
        let at = lines[from..]
            .iter()
            .position(|(l, line)| l == level && line.contains(text))
            .unwrap_or_else(|| {
                panic!(
                    "no {level} line with {text:?} after line {from} of the cpuguard log:\n{}",
                    lines
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
        from += at + 1;
    }
}
