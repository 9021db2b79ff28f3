//! The plugin docs cache in `plugin/gst_plugins_cache.json`, in the format of
//! GStreamer's hotdoc plugin documentation (what gst-hotdoc-plugins-scanner
//! writes and hotdoc's gst extension reads), generated from the element's
//! real GObject metadata. The scanner is not packaged on Debian, hence this
//! generator. `scripts/docs-cache.sh` rewrites the file; this test fails when
//! the file no longer matches the element.

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::prelude::*;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

mod common;

const PLUGIN: &str = "cpuguard";
const UPDATE_ENV: &str = "CPUGUARD_UPDATE_DOCS_CACHE";

fn cache_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plugin/gst_plugins_cache.json"
    ))
}

/// `%g` as the scanner prints doubles (C locale).
fn format_g(x: f64) -> String {
    let mut buf = [0u8; glib::ffi::G_ASCII_DTOSTR_BUF_SIZE as usize];
    // SAFETY: the buffer is writable for its whole length and the format is a
    // NUL-terminated literal taking one double.
    unsafe {
        glib::ffi::g_ascii_formatd(buf.as_mut_ptr().cast(), buf.len() as i32, c"%g".as_ptr(), x);
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn mutable_state(flags: glib::ParamFlags) -> &'static str {
    let has = |f: glib::ParamFlags| flags.contains(f);
    if has(gst::PARAM_FLAG_MUTABLE_PLAYING) {
        "playing"
    } else if has(gst::PARAM_FLAG_MUTABLE_PAUSED) {
        "paused"
    } else if has(gst::PARAM_FLAG_MUTABLE_READY) {
        "ready"
    } else {
        "null"
    }
}

fn enum_nick(value: &glib::Value) -> (String, i32) {
    let (_, v) = glib::EnumValue::from_value(value).expect("an enum value");
    (v.nick().to_owned(), v.value())
}

/// Range and default as the scanner writes them (all strings; uint in `%d`).
fn range_and_default(pspec: &glib::ParamSpec, value: &glib::Value, out: &mut Map<String, Value>) {
    let mut put = |k: &str, v: String| {
        out.insert(k.to_owned(), Value::String(v));
    };
    if let Some(p) = pspec.downcast_ref::<glib::ParamSpecDouble>() {
        put("default", format_g(value.get::<f64>().unwrap_or_default()));
        put("min", format_g(p.minimum()));
        put("max", format_g(p.maximum()));
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt>() {
        put(
            "default",
            (value.get::<u32>().unwrap_or_default() as i32).to_string(),
        );
        put("min", (p.minimum() as i32).to_string());
        put("max", (p.maximum() as i32).to_string());
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt>() {
        put(
            "default",
            value.get::<i32>().unwrap_or_default().to_string(),
        );
        put("min", p.minimum().to_string());
        put("max", p.maximum().to_string());
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecUInt64>() {
        put(
            "default",
            value.get::<u64>().unwrap_or_default().to_string(),
        );
        put("min", p.minimum().to_string());
        put("max", p.maximum().to_string());
    } else if let Some(p) = pspec.downcast_ref::<glib::ParamSpecInt64>() {
        put(
            "default",
            value.get::<i64>().unwrap_or_default().to_string(),
        );
        put("min", p.minimum().to_string());
        put("max", p.maximum().to_string());
    } else if pspec.is::<glib::ParamSpecBoolean>() {
        put(
            "default",
            value.get::<bool>().unwrap_or_default().to_string(),
        );
    } else if pspec.is::<glib::ParamSpecString>() {
        let s = value.get::<Option<String>>().ok().flatten();
        put("default", s.unwrap_or_else(|| "NULL".to_owned()));
    } else if pspec.is::<glib::ParamSpecEnum>() {
        let (nick, v) = enum_nick(value);
        put("default", format!("{nick} ({v})"));
    } else {
        panic!(
            "property {} has type {}, which this generator does not document yet",
            pspec.name(),
            pspec.value_type()
        );
    }
}

fn enum_type(type_: glib::Type) -> Value {
    let class = glib::EnumClass::with_type(type_).expect("an enum type");
    let values: Vec<Value> = class
        .values()
        .iter()
        .map(|v| json!({"desc": v.name(), "name": v.nick(), "value": v.value().to_string()}))
        .collect();
    json!({"kind": "enum", "values": values})
}

fn properties(element: &gst::Element, other_types: &mut Map<String, Value>) -> Value {
    let type_ = element.type_();
    let mut props = Map::new();
    for pspec in element.list_properties().iter() {
        if pspec.owner_type() != type_ {
            continue;
        }
        let flags = pspec.flags();
        // Readable properties document the value a new element has.
        let value = if flags.contains(glib::ParamFlags::READABLE) {
            element.property_value(pspec.name())
        } else {
            pspec.default_value().clone()
        };
        let mut p = Map::new();
        p.insert("blurb".into(), pspec.blurb().unwrap_or("").into());
        let gst_flag = |f: glib::ParamFlags| flags.contains(f);
        p.insert(
            "conditionally-available".into(),
            gst_flag(gst::PARAM_FLAG_CONDITIONALLY_AVAILABLE).into(),
        );
        p.insert(
            "construct".into(),
            flags.contains(glib::ParamFlags::CONSTRUCT).into(),
        );
        p.insert(
            "construct-only".into(),
            flags.contains(glib::ParamFlags::CONSTRUCT_ONLY).into(),
        );
        p.insert(
            "controllable".into(),
            gst_flag(gst::PARAM_FLAG_CONTROLLABLE).into(),
        );
        p.insert("mutable".into(), mutable_state(flags).into());
        p.insert(
            "readable".into(),
            flags.contains(glib::ParamFlags::READABLE).into(),
        );
        p.insert("type".into(), pspec.value_type().name().into());
        p.insert(
            "writable".into(),
            flags.contains(glib::ParamFlags::WRITABLE).into(),
        );
        range_and_default(pspec, &value, &mut p);
        if pspec.is::<glib::ParamSpecEnum>() && pspec.value_type().plugin_api_flags().is_some() {
            other_types.insert(
                pspec.value_type().name().to_owned(),
                enum_type(pspec.value_type()),
            );
        }
        props.insert(pspec.name().to_owned(), Value::Object(p));
    }
    Value::Object(props)
}

fn signals(type_: glib::Type) -> Value {
    let mut n = 0u32;
    // SAFETY: g_signal_list_ids returns a g_malloc'ed array of `n` ids for a
    // valid, class-initialized type; it is freed below.
    let ids = unsafe {
        let ptr = glib::gobject_ffi::g_signal_list_ids(type_.into_glib(), &mut n);
        let ids = std::slice::from_raw_parts(ptr, n as usize).to_vec();
        glib::ffi::g_free(ptr.cast());
        ids
    };
    let mut out = Map::new();
    for id in ids {
        let Some(id) = std::num::NonZeroU32::new(id) else {
            continue;
        };
        // SAFETY: the id comes from GObject's own list for this type.
        let query = unsafe { glib::subclass::SignalId::new(id) }.query();
        let args: Vec<Value> = query
            .param_types()
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"name": format!("arg{i}"), "type": t.type_().name()}))
            .collect();
        let flags = query.flags();
        let mut s = Map::new();
        s.insert("args".into(), args.into());
        s.insert(
            "return-type".into(),
            query.return_type().type_().name().into(),
        );
        let when = if flags.contains(glib::SignalFlags::RUN_FIRST) {
            Some("first")
        } else if flags.contains(glib::SignalFlags::RUN_LAST) {
            Some("last")
        } else if flags.contains(glib::SignalFlags::RUN_CLEANUP) {
            Some("cleanup")
        } else {
            None
        };
        if let Some(when) = when {
            s.insert("when".into(), when.into());
        }
        for (flag, key) in [
            (glib::SignalFlags::NO_RECURSE, "no-recurse"),
            (glib::SignalFlags::DETAILED, "detailed"),
            (glib::SignalFlags::ACTION, "action"),
            (glib::SignalFlags::NO_HOOKS, "no-hooks"),
        ] {
            if flags.contains(flag) {
                s.insert(key.into(), true.into());
            }
        }
        out.insert(query.signal_name().to_owned(), Value::Object(s));
    }
    Value::Object(out)
}

fn pad_templates(factory: &gst::ElementFactory) -> Value {
    let mut out = Map::new();
    for tmpl in factory.static_pad_templates() {
        let caps = tmpl.caps();
        let caps = if caps.is_any() {
            "ANY".to_owned()
        } else {
            panic!(
                "pad template {} has caps other than ANY: document them",
                tmpl.name_template()
            )
        };
        let direction = match tmpl.direction() {
            gst::PadDirection::Src => "src",
            gst::PadDirection::Sink => "sink",
            _ => "unknown",
        };
        let presence = match tmpl.presence() {
            gst::PadPresence::Always => "always",
            gst::PadPresence::Sometimes => "sometimes",
            gst::PadPresence::Request => "request",
        };
        out.insert(
            tmpl.name_template().to_string(),
            json!({"caps": caps, "direction": direction, "presence": presence}),
        );
    }
    Value::Object(out)
}

fn rank_name(rank: gst::Rank) -> String {
    let names = [
        (gst::Rank::NONE, "none"),
        (gst::Rank::MARGINAL, "marginal"),
        (gst::Rank::SECONDARY, "secondary"),
        (gst::Rank::PRIMARY, "primary"),
    ];
    let r = i32::from(rank);
    let (base, name) = names
        .iter()
        .min_by_key(|(b, _)| (r - i32::from(*b)).abs())
        .expect("ranks");
    let d = r - i32::from(*base);
    match d {
        0 => (*name).to_owned(),
        d if d > 0 => format!("{name} + {d}"),
        d => format!("{name} - {}", -d),
    }
}

fn element_entry(factory: &gst::ElementFactory, other_types: &mut Map<String, Value>) -> Value {
    let element = factory.create().build().expect("element instantiates");
    let mut e = Map::new();
    for key in factory.metadata_keys() {
        if let Some(v) = factory.metadata(&key) {
            e.insert(key.to_string(), v.into());
        }
    }
    let hierarchy: Vec<Value> = std::iter::successors(Some(element.type_()), |t| t.parent())
        .map(|t| Value::from(t.name()))
        .collect();
    e.insert("hierarchy".into(), hierarchy.into());
    let pads = pad_templates(factory);
    if pads.as_object().is_some_and(|p| !p.is_empty()) {
        e.insert("pad-templates".into(), pads);
    }
    e.insert("properties".into(), properties(&element, other_types));
    let signals = signals(element.type_());
    if signals.as_object().is_some_and(|s| !s.is_empty()) {
        e.insert("signals".into(), signals);
    }
    e.insert("rank".into(), rank_name(factory.rank()).into());
    Value::Object(e)
}

/// The whole cache as the plugin describes itself now.
fn generate() -> String {
    common::init();
    let plugin = gst::Registry::get()
        .find_plugin(PLUGIN)
        .expect("cpuguard plugin registered");
    let mut other_types = Map::new();
    let mut elements = Map::new();
    for feature in gst::Registry::get().features_by_plugin(PLUGIN) {
        if let Ok(factory) = feature.downcast::<gst::ElementFactory>() {
            let entry = element_entry(&factory, &mut other_types);
            elements.insert(factory.name().to_string(), entry);
        }
    }
    let cache = json!({
        PLUGIN: {
            "description": plugin.description().as_str(),
            "elements": elements,
            "filename": "gstcpuguard",
            "license": plugin.license().as_str(),
            "other-types": other_types,
            "package": plugin.package().as_str(),
            "source": plugin.source().as_str(),
            "tracers": {},
            "url": plugin.origin().as_str(),
        }
    });
    // hotdoc writes its caches sorted with a 4-space indent.
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&cache, &mut ser).expect("JSON serializes");
    out.push(b'\n');
    String::from_utf8(out).expect("UTF-8 JSON")
}

#[test]
fn plugin_docs_cache_is_current() {
    let fresh = generate();
    let path = cache_path();
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::create_dir_all(path.parent().expect("plugin/")).expect("plugin/ created");
        std::fs::write(&path, &fresh).expect("cache written");
        eprintln!("wrote {}", path.display());
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    if stored != fresh {
        let line = stored
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| stored.lines().count().min(fresh.lines().count()));
        panic!(
            "{} is stale: it differs from the element's metadata from line {} on\n  stored: {}\n  now:    {}\nRegenerate it with scripts/docs-cache.sh and commit it.",
            path.display(),
            line + 1,
            stored.lines().nth(line).unwrap_or("<end of file>"),
            fresh.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn cache_documents_every_property_and_signal() {
    let cache: Value = serde_json::from_str(&generate()).expect("valid JSON");
    let element = &cache[PLUGIN]["elements"]["cpuguard"];
    let props = element["properties"].as_object().expect("properties");
    common::init();
    let guard = gst::ElementFactory::make("cpuguard").build().unwrap();
    for pspec in guard.list_properties().iter() {
        if pspec.owner_type() == guard.type_() {
            let blurb = props[pspec.name()]["blurb"].as_str().unwrap_or("");
            assert!(
                blurb.len() > 20,
                "property {} has no real blurb",
                pspec.name()
            );
        }
    }
    assert_eq!(element["signals"]["drain"]["action"], true);
    assert_eq!(element["signals"]["drain"]["return-type"], "gboolean");
    assert_eq!(element["signals"]["drain"]["args"][0]["type"], "gchararray");
    assert_eq!(element["properties"]["soft-threshold"]["default"], "0.85");
    assert_eq!(element["properties"]["load-source"]["default"], "auto (0)");
    let sources = &cache[PLUGIN]["other-types"]["GstCpuGuardLoadSource"]["values"];
    let nicks: Vec<&str> = sources
        .as_array()
        .expect("enum values")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(nicks, ["auto", "process", "cgroup", "system", "psi"]);
    let description = element["description"].as_str().unwrap_or("");
    for documented in [
        "cpuguard-load",
        "cpuguard-drain",
        "cpuguard-would-drain",
        "cpuguard-end-reason",
        "reason field",
        "drain(reason",
    ] {
        assert!(
            description.contains(documented),
            "element description does not mention {documented}"
        );
    }
}
