//! A fresh machine can run the README's two commands: every GStreamer element
//! that the demo, the examples, the benchmarks and the tests use comes from a
//! Debian package that `scripts/deps.sh` installs, itself or through its
//! dependencies.
//!
//! For each element named in those files, the plugin file that provides it is
//! looked up in the GStreamer registry, the package owning that file in dpkg,
//! and that package must be in the closure of `scripts/deps.sh --list` under
//! Depends and Pre-Depends. An element the registry does not know fails too:
//! after `scripts/deps.sh` it must be there.

mod common;

use gst::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOP: &str = env!("CARGO_MANIFEST_DIR");

/// Names that look like elements in the scanned files but are not meant to
/// exist: the bad-input tests use them to check the errors.
const NOT_ELEMENTS: &[&str] = &["nosuchelement", "nosuchthing"];

/// Shell words after which ` ! ` negates a command instead of linking elements.
const SHELL_NEGATION: &[&str] = &[
    "if", "while", "until", "then", "do", "else", "&&", "||", ";",
];

/// The files whose pipelines a fresh machine must be able to run.
fn scanned_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        "scripts",
        "examples",
        "tests",
        "tests/reliability",
        "benches",
        "benches/system",
        "deploy",
    ] {
        let Ok(entries) = std::fs::read_dir(Path::new(TOP).join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = path.is_file()
                && path
                    .extension()
                    .is_some_and(|e| ["sh", "rs", "py", "yaml", "toml"].iter().any(|x| e == *x))
                // This file names elements only in its own explanations.
                && !path.ends_with("tests/fresh_machine.rs");
            if keep {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The element name starting at `text`, if `text` starts with one: a
/// lowercase word followed by neither `/` (caps: `video/x-raw`) nor `.`
/// (a pad reference: `mux.`) nor `=` (a property) nor `-` (an option).
fn name_at(text: &str) -> Option<&str> {
    let text = text.trim_start();
    if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        return None;
    }
    let end = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
    let next = text[end..].chars().next();
    if matches!(next, Some('/' | '.' | '=' | '-' | '(' | ':' | '{')) {
        return None;
    }
    Some(&text[..end])
}

/// Element names in pipeline text: the first word of each link of a
/// description (after ` ! `), which must exist, and the word in front of a
/// link or given to `ElementFactory::make` / `Gst.ElementFactory.make`,
/// which are checked when the registry knows them (they are also where code
/// words stand, such as a shell's `if ! command`).
#[derive(Default)]
struct Names {
    linked: BTreeSet<String>,
    maybe: BTreeSet<String>,
}

fn element_names(text: &str) -> Names {
    let mut names = Names::default();
    for (i, _) in text.match_indices(" ! ") {
        let before = &text[..i];
        let line_start = before.rfind(['\n', '"', '\'']).map_or(0, |p| p + 1);
        let line = &before[line_start..];
        if line
            .split_whitespace()
            .last()
            .is_some_and(|w| SHELL_NEGATION.contains(&w))
        {
            continue;
        }
        if let Some(name) = name_at(&text[i + 3..]) {
            names.linked.insert(name.to_owned());
        }
        if let Some(word) = line
            .split_whitespace()
            .rfind(|w| !w.contains('='))
            .filter(|w| w.chars().all(is_name_char))
            .and_then(name_at)
        {
            names.maybe.insert(word.to_owned());
        }
    }
    // A description of one element: `gst-launch-1.0 -q playbin uri=...`.
    for (i, _) in text.match_indices("gst-launch-1.0 ") {
        let first = text[i + 15..]
            .split_whitespace()
            .find(|w| !w.starts_with('-') && !w.starts_with('$'));
        if let Some(name) = first.and_then(name_at) {
            names.maybe.insert(name.to_owned());
        }
    }
    for marker in ["ElementFactory::make(\"", "ElementFactory.make(\""] {
        for (i, _) in text.match_indices(marker) {
            if let Some(name) = name_at(&text[i + marker.len()..]) {
                names.maybe.insert(name.to_owned());
            }
        }
    }
    names
}

/// The text of a Rust file's string literals (plain and raw), one a line:
/// where its pipelines are, without the code around them.
fn rust_strings(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(open) = rest.find('"') {
        let raw_hashes = rest[..open].chars().rev().take_while(|&c| c == '#').count();
        let is_raw = rest[..open - raw_hashes].ends_with('r');
        let is_char = rest[..open].ends_with('\'') && rest[open + 1..].starts_with('\'');
        let body = &rest[open + 1..];
        if is_char {
            rest = &body[1..];
            continue;
        }
        let close = if is_raw {
            let end = format!("\"{}", "#".repeat(raw_hashes));
            body.find(&end)
        } else {
            let mut escaped = false;
            body.char_indices()
                .find(|&(_, c)| {
                    let end = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map(|(i, _)| i)
        };
        let Some(close) = close else { break };
        out.push_str(&body[..close]);
        out.push('\n');
        rest = &body[close + 1..];
    }
    out
}

/// The package owning `file`, as dpkg knows it (`/lib` is `/usr/lib` on a
/// merged-usr system, and either may be the one dpkg recorded).
fn owner(file: &Path) -> Option<String> {
    let mut tries = vec![file.to_path_buf()];
    if let Ok(real) = file.canonicalize() {
        tries.push(real);
    }
    if let Ok(rest) = file.strip_prefix("/usr") {
        tries.push(Path::new("/").join(rest));
    } else {
        tries.push(Path::new("/usr").join(file.strip_prefix("/").unwrap_or(file)));
    }
    tries.iter().find_map(|path| {
        let out = Command::new("dpkg").arg("-S").arg(path).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?;
        let (package, _) = line.split_once(": ")?;
        Some(package.split(':').next()?.to_owned())
    })
}

/// Every installed package's name, what it provides, and what it depends on
/// (Depends and Pre-Depends, every alternative), from dpkg's own database.
fn installed_packages() -> (HashMap<String, Vec<String>>, HashMap<String, Vec<String>>) {
    let out = Command::new("dpkg-query")
        .args([
            "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Provides}\t${Depends}, ${Pre-Depends}\n",
        ])
        .output()
        .expect("dpkg-query runs");
    let names = |field: &str| -> Vec<String> {
        field
            .split([',', '|'])
            .filter_map(|dep| dep.split_whitespace().next())
            .map(|dep| dep.split(':').next().unwrap_or(dep).to_owned())
            .filter(|dep| !dep.is_empty())
            .collect()
    };
    let (mut depends, mut providers) = (HashMap::new(), HashMap::<String, Vec<String>>::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [status, package, provides, deps] = fields[..] else {
            continue;
        };
        if !status.starts_with("ii") {
            continue;
        }
        for provided in names(provides) {
            providers
                .entry(provided)
                .or_default()
                .push(package.to_owned());
        }
        depends.insert(package.to_owned(), names(deps));
    }
    (depends, providers)
}

/// The packages `roots` bring in: themselves and, recursively, every
/// installed package their Depends and Pre-Depends name or that provides one.
fn closure(roots: &[String]) -> BTreeSet<String> {
    let (depends, providers) = installed_packages();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    while let Some(name) = todo.pop() {
        let mut real = vec![name.clone()];
        real.extend(providers.get(&name).into_iter().flatten().cloned());
        for package in real {
            if let Some(deps) = depends.get(&package)
                && seen.insert(package.clone())
            {
                todo.extend(deps.iter().cloned());
            }
        }
    }
    seen
}

fn listed_packages() -> Vec<String> {
    let out = Command::new("bash")
        .arg(Path::new(TOP).join("scripts/deps.sh"))
        .arg("--list")
        .output()
        .expect("scripts/deps.sh --list runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_install_script_covers_every_element_used() {
    common::init();
    let installed = closure(&listed_packages());
    // element -> the files that use it
    let mut used = BTreeMap::<String, BTreeSet<String>>::new();
    for file in scanned_files() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let text = if file.extension().is_some_and(|e| e == "rs") {
            rust_strings(&text)
        } else {
            text
        };
        let shown = file
            .strip_prefix(TOP)
            .unwrap_or(&file)
            .display()
            .to_string();
        let names = element_names(&text);
        for name in names.linked {
            used.entry(name).or_default().insert(shown.clone());
        }
        for name in names.maybe {
            if gst::ElementFactory::find(&name).is_some() {
                used.entry(name).or_default().insert(shown.clone());
            }
        }
    }
    let mut problems = Vec::new();
    let mut checked = BTreeMap::<String, String>::new();
    for (name, files) in &used {
        let files = files.iter().cloned().collect::<Vec<_>>().join(", ");
        let Some(factory) = gst::ElementFactory::find(name) else {
            if !NOT_ELEMENTS.contains(&name.as_str()) {
                problems.push(format!(
                    "element {name} (used in {files}) is not installed after scripts/deps.sh"
                ));
            }
            continue;
        };
        let Some(plugin) = factory.plugin() else {
            continue;
        };
        // Registered statically by the tests: the project's own element.
        let Some(file) = plugin.filename() else {
            continue;
        };
        let Some(package) = owner(&file) else {
            problems.push(format!(
                "element {name} (used in {files}) comes from {}, which no Debian package owns",
                file.display()
            ));
            continue;
        };
        if !installed.contains(&package) {
            problems.push(format!(
                "element {name} (used in {files}) comes from package {package} ({}), which \
                 scripts/deps.sh neither lists nor pulls in",
                file.display()
            ));
        }
        checked.insert(name.clone(), package);
    }
    eprintln!(
        "{} elements checked: {}",
        checked.len(),
        checked
            .iter()
            .map(|(e, p)| format!("{e} ({p})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The scan itself must have found the demo's pipeline.
    for needle in ["timeoverlay", "x264enc", "mp4mux", "voaacenc", "qtdemux"] {
        assert!(
            checked.contains_key(needle),
            "{needle} not found by the scan"
        );
    }
}

#[test]
fn the_scan_finds_elements_in_every_form() {
    let shell = r#"
        gst-launch-1.0 -e videotestsrc is-live=true ! video/x-raw,width=64 ! timeoverlay \
          ! x264enc speed-preset=ultrafast ! h264parse ! queue ! mux. mp4mux name=mux ! filesink
        src = Gst.ElementFactory.make("appsrc", None)
        if ! command -v x; then :; fi
        gst-launch-1.0 -q playbin uri=file:///x
    "#;
    let names = element_names(shell);
    let linked: Vec<&str> = names.linked.iter().map(String::as_str).collect();
    assert_eq!(
        linked,
        ["filesink", "h264parse", "queue", "timeoverlay", "x264enc"]
    );
    let maybe: Vec<&str> = names.maybe.iter().map(String::as_str).collect();
    assert_eq!(
        maybe,
        [
            "appsrc",
            "h264parse",
            "mp4mux",
            "playbin",
            "queue",
            "videotestsrc",
            "x264enc"
        ]
    );

    let rust = r##"let d = format!("{VIDEO} ! mp4mux ! filesink location={}", p); if !done { assert!(a != b) }
        let e = gst::ElementFactory::make("qtdemux"); let q = '"'; let r = r#"appsrc ! fakesink"#;"##;
    let strings = rust_strings(rust);
    assert_eq!(
        strings,
        "{VIDEO} ! mp4mux ! filesink location={}\nqtdemux\nappsrc ! fakesink\n"
    );
}
