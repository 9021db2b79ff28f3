//! Building the pipeline from the command line, exactly as gst-launch-1.0 does.

use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// Parses the pipeline arguments with `gst_parse_launchv`, which is what
/// gst-launch-1.0 calls: each argument is escaped (an argument holding spaces,
/// such as `location=a b.mp4` after the shell removed the quotes, stays one
/// value) and the arguments are joined. Any parse problem is fatal, including
/// the ones gst-launch-1.0 only warns about (an unknown element, a failed link).
/// Returns the pipeline and its description as parsed (see [`describe`]).
pub fn build(args: &[String]) -> Result<(gst::Pipeline, String), String> {
    if args.iter().all(|a| a.trim().is_empty()) {
        return Err("the pipeline description is empty".to_owned());
    }
    let args = &with_duration_units(args);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (element, description) = match parse(|context| {
        gst::parse::launchv_full(&argv, Some(context), gst::ParseFlags::FATAL_ERRORS)
    }) {
        Ok(element) => (element, describe(args)),
        // The whole description in one argument (`"a ! b"`, as container specs
        // often pass it) fails under gst-launch rules, which escape its spaces;
        // read it as a description of its own instead.
        Err(_) if args.len() == 1 && args[0].contains(char::is_whitespace) => {
            let element = parse(|context| {
                gst::parse::launch_full(&args[0], Some(context), gst::ParseFlags::FATAL_ERRORS)
            })?;
            (element, args[0].clone())
        }
        Err(err) => return Err(err),
    };
    // A one-element description parses to that element: wrap it, as gst-launch does.
    match element.downcast::<gst::Pipeline>() {
        Ok(pipeline) => Ok((pipeline, description)),
        Err(element) => {
            let pipeline = gst::Pipeline::new();
            pipeline
                .add(&element)
                .map_err(|err| format!("cannot put {} in a pipeline: {err}", element.name()))?;
            Ok((pipeline, description))
        }
    }
}

/// cpuguard's millisecond properties written with a unit in the description
/// (`drain-timeout=30s`, `interval=500ms`), as the options take them:
/// rewritten to milliseconds, which is all a GObject uint property reads.
/// Only properties of a `cpuguard` element are touched (others, such as
/// `level interval=`, have other units). Tokens keep their spacing, so a
/// whole description in one argument is rewritten in place.
fn with_duration_units(args: &[String]) -> Vec<String> {
    const MILLIS: [&str; 3] = ["interval", "drain-timeout", "crash-safe-interval"];
    let mut in_guard = false;
    args.iter()
        .map(|arg| {
            arg.split_inclusive(char::is_whitespace)
                .map(|piece| {
                    let token = piece.trim_end();
                    let space = &piece[token.len()..];
                    match token.split_once('=') {
                        None if token == "!" => in_guard = false,
                        None if !token.is_empty() => in_guard = token == crate::guard::FACTORY,
                        Some((name, value)) if in_guard && MILLIS.contains(&name) => {
                            let with_unit = value.parse::<u64>().is_err();
                            if let (true, Ok(d)) = (with_unit, humantime::parse_duration(value)) {
                                return format!("{name}={}{space}", d.as_millis());
                            }
                        }
                        _ => {}
                    }
                    piece.to_owned()
                })
                .collect()
        })
        .collect()
}

/// Runs one parse attempt; the error names missing elements when there are
/// any, or the property values GObject refused.
fn parse(
    launch: impl FnOnce(&mut gst::ParseContext) -> Result<gst::Element, glib::Error>,
) -> Result<gst::Element, String> {
    let mut context = gst::ParseContext::new();
    let (parsed, refused) = refused_properties(|| launch(&mut context));
    if let (Ok(_), Some(first)) = (&parsed, refused.first()) {
        return Err(with_property_help(first));
    }
    parsed.map_err(|err| {
        let message = with_property_help(err.message());
        let message = message.as_str();
        let unnamed: Vec<String> = context
            .missing_elements()
            .into_iter()
            .filter(|name| !message.contains(name.as_str()))
            .collect();
        if unnamed.is_empty() {
            message.to_owned()
        } else {
            format!("{message} (missing elements: {})", unnamed.join(", "))
        }
    })
}

/// `message` with, for each cpuguard property it names, what that property
/// takes: GLib's own text says neither the unit nor the range
/// (`interval=1s` is refused; `drain-timeout=30` is 30 ms).
fn with_property_help(message: &str) -> String {
    let Ok(guard) = gst::ElementFactory::make(crate::guard::FACTORY).build() else {
        return message.to_owned();
    };
    let mut help = Vec::new();
    for pspec in guard.list_properties() {
        let name = pspec.name();
        if !(message.contains(&format!("\"{name}\"")) || message.contains(&format!("'{name}'"))) {
            continue;
        }
        let unit = if ["interval", "drain-timeout", "crash-safe-interval"].contains(&name) {
            " milliseconds (a bare number; 30 s is 30000)"
        } else {
            ""
        };
        let range = if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
            format!("a whole number {}-{}{unit}", p.minimum(), p.maximum())
        } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecDouble>() {
            format!("a number {}-{}", p.minimum(), p.maximum())
        } else if pspec.value_type() == bool::static_type() {
            "true or false".to_owned()
        } else {
            continue;
        };
        help.push(format!("cpuguard's {name} takes {range}"));
    }
    if help.is_empty() {
        message.to_owned()
    } else {
        format!("{message} ({})", help.join("; "))
    }
}

/// Runs `f`, collecting the GObject warnings it causes. The parser sets each
/// property with `g_object_set_property`, which refuses a value out of the
/// property's range (or a read-only property) with a warning only and keeps
/// the old value: `cpuguard soft-threshold=1.5` would run with 0.85.
fn refused_properties<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = refused.clone();
    let handler = glib::log_set_handler(
        Some("GLib-GObject"),
        glib::LogLevels::LEVEL_WARNING | glib::LogLevels::LEVEL_CRITICAL,
        false,
        false,
        move |_, _, message| {
            let message = message
                .strip_prefix("g_object_new_is_valid_property: ")
                .unwrap_or(message);
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message.to_owned());
        },
    );
    let result = f();
    glib::log_remove_handler(Some("GLib-GObject"), handler);
    let refused = std::mem::take(&mut *refused.lock().unwrap_or_else(|p| p.into_inner()));
    (result, refused)
}

/// The description as GStreamer reads it: arguments escaped as
/// `gst_parse_launchv` escapes them (a space outside double quotes gets a
/// backslash) and joined with spaces. For the report and progress lines.
pub fn describe(args: &[String]) -> String {
    args.iter()
        .map(|arg| escape(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

fn escape(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut in_quotes = false;
    let mut previous = None;
    for c in arg.chars() {
        if c == '"' && (!in_quotes || previous != Some('\\')) {
            in_quotes = !in_quotes;
        }
        if c == ' ' && !in_quotes {
            out.push('\\');
        }
        out.push(c);
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_outside_quotes_are_escaped() {
        let args = ["filesink".to_owned(), "location=a b.mp4".to_owned()];
        assert_eq!(describe(&args), r"filesink location=a\ b.mp4");
        let args = [r#"location="a b.mp4""#.to_owned()];
        assert_eq!(describe(&args), r#"location="a b.mp4""#);
    }
}
