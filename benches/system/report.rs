//! The results table, printed and written to BENCHMARKS.md with the machine
//! it ran on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Row {
    pub item: &'static str,
    pub measure: String,
    pub baseline: String,
    pub result: String,
    /// Ratio or difference against the baseline.
    pub figure: String,
    pub target: &'static str,
    pub met: Option<bool>,
}

/// `values` with `decimals` digits each, as a details paragraph lists a
/// measurement's rounds: "1.2, 3.4".
pub fn listed(values: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    values
        .into_iter()
        .map(|value| format!("{value:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| item | measure | baseline (same run) | cpuguard | figure | target | met |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {met} |\n",
            r.item, r.measure, r.baseline, r.result, r.figure, r.target
        ));
    }
    out
}

pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned());
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "- cores: {cores} ({model})\n- kernel: Linux {kernel}\n- GStreamer: {}\n- rustc: {rustc}\n",
        gst::version_string()
    )
}

/// Criterion's medians from `<target>/criterion/**/new/estimates.json`, in ns.
pub fn micro(criterion_dir: &Path) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    collect_estimates(criterion_dir, &mut found);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn collect_estimates(dir: &Path, found: &mut Vec<(String, f64)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !path.is_dir() || path.file_name().is_some_and(|n| n == "report") {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(estimate) = read_estimate(&path) {
                found.push(estimate);
            }
        } else {
            collect_estimates(&path, found);
        }
    }
}

fn read_estimate(new: &Path) -> Option<(String, f64)> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&fs::read_to_string(new.join(name)).ok()?).ok()
    };
    let id = read("benchmark.json")?["full_id"].as_str()?.to_owned();
    let median = read("estimates.json")?["median"]["point_estimate"].as_f64()?;
    Some((id, median))
}

pub fn micro_table(micro: &[(String, f64)]) -> String {
    if micro.is_empty() {
        return "(no criterion results: run `cargo bench --bench micro` first)\n".into();
    }
    let mut out = String::from("| benchmark | median |\n|---|---|\n");
    for (id, ns) in micro {
        let value = if *ns >= 1000.0 {
            format!("{:.2} µs", ns / 1000.0)
        } else {
            format!("{ns:.1} ns")
        };
        out.push_str(&format!("| `{id}` | {value} |\n"));
    }
    out
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
