//! The cpuguard element in Harnesses and real pipelines.

mod common;

use common::*;
use glib::translate::ToGlibPtr;
use gst::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cpuguard with properties set from strings, as gst-launch-1.0 would.
fn guard(props: &[(&str, String)]) -> gst::Element {
    init();
    let mut builder = gst::ElementFactory::make("cpuguard");
    for (name, value) in props {
        builder = builder.property_from_str(name, value);
    }
    builder.build().expect("cpuguard element")
}

fn harness_with_bus(element: gst::Element) -> (gst_check::Harness, gst::Bus) {
    let h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    (h, bus)
}

fn v<T: ToString>(x: T) -> String {
    x.to_string()
}

#[test]
fn inspect_interface_has_contract_names_and_defaults() {
    init();
    let e = guard(&[]);
    assert_eq!(e.property::<f64>("soft-threshold"), 0.85);
    assert_eq!(e.property::<f64>("hard-threshold"), 0.95);
    assert_eq!(e.property::<u32>("hold"), 3);
    assert_eq!(e.property::<u32>("release"), 2);
    let release = e.find_property("release").unwrap();
    let release = release.downcast_ref::<glib::ParamSpecUInt>().unwrap();
    assert_eq!((release.minimum(), release.maximum()), (1, 100_000));
    assert_eq!(e.property::<u32>("interval"), 1000);
    assert_eq!(e.property::<u32>("drain-timeout"), 30000);
    assert!(!e.property::<bool>("dry-run"));
    assert_eq!(e.property::<f64>("load"), 0.0);
    let pspec = e.find_property("load").unwrap();
    assert!(!pspec.flags().contains(glib::ParamFlags::WRITABLE));
    let source = e.find_property("load-source").unwrap();
    let enum_class = glib::EnumClass::with_type(source.value_type()).unwrap();
    let nicks: Vec<_> = enum_class
        .values()
        .iter()
        .map(|v| v.nick().to_owned())
        .collect();
    assert_eq!(nicks, ["auto", "process", "cgroup", "system", "psi"]);
}

#[test]
fn buffers_pass_through_without_copy() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e);
    h.set_src_caps_str("video/x-raw,format=I420,width=8,height=8,framerate=1/1");
    h.play();
    let input = gst::Buffer::from_mut_slice(vec![7u8; 96]);
    let ptr = input.map_readable().unwrap().as_ptr();
    h.push(input).unwrap();
    let output = h.pull().unwrap();
    assert_eq!(
        output.map_readable().unwrap().as_ptr(),
        ptr,
        "buffer was copied"
    );
    assert_eq!(output.size(), 96);
}

#[test]
fn any_caps_pass_through() {
    for caps in [
        "audio/x-raw,format=S16LE,rate=48000,channels=2,layout=interleaved",
        "video/x-h264,stream-format=avc,alignment=au",
        "video/quicktime",
        "application/x-whatever",
    ] {
        let e = guard(&[("load-source", v("system"))]);
        let (mut h, _bus) = harness_with_bus(e);
        h.set_src_caps_str(caps);
        h.play();
        h.push(gst::Buffer::from_slice([1u8, 2, 3])).unwrap();
        assert_eq!(h.pull().unwrap().size(), 3, "caps {caps}");
    }
}

/// Buffer lists go through as lists (the element has a chain-list function of
/// its own), in order, and a drain ends the stream on the next list too.
#[test]
fn buffer_lists_pass_whole_and_drain_ends_them() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = lists.clone();
    e.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER_LIST, move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gst::PadProbeReturn::Ok
        });
    let list = |sizes: &[usize]| {
        let mut list = gst::BufferList::new();
        for &size in sizes {
            list.get_mut()
                .unwrap()
                .add(gst::Buffer::from_slice(vec![0u8; size]));
        }
        list
    };
    let feeder = h.srcpad().unwrap();
    assert_eq!(feeder.push_list(list(&[1, 2, 3])), Ok(gst::FlowSuccess::Ok));
    let sizes: Vec<usize> = (0..3).map(|_| h.pull().unwrap().size()).collect();
    assert_eq!(sizes, [1, 2, 3]);
    assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 1);

    assert!(e.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    assert_eq!(feeder.push_list(list(&[4, 5])), Err(gst::FlowError::Eos));
    assert!(h.try_pull().is_none(), "no buffer after the drain");
    let mut eos = None;
    while let Some(event) = h.try_pull_event() {
        if event.type_() == gst::EventType::Eos {
            eos = Some(event);
        }
    }
    let eos = eos.expect("EOS sent downstream");
    assert_eq!(
        eos.structure().unwrap().get::<&str>("reason").unwrap(),
        "stop-requested"
    );
}

/// POSITION queries answered by the element follow the buffers that went
/// through it, as GstBaseTransform's own chain keeps them.
#[test]
fn position_query_follows_buffers() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    let mut buffer = gst::Buffer::from_slice([0u8; 4]);
    {
        let buffer = buffer.get_mut().unwrap();
        buffer.set_pts(gst::ClockTime::from_seconds(1));
        buffer.set_duration(gst::ClockTime::from_seconds(1));
    }
    h.push(buffer).unwrap();
    h.pull().unwrap();
    for pad in ["src", "sink"] {
        let mut query = gst::query::Position::new(gst::Format::Time);
        assert!(e.static_pad(pad).unwrap().query(&mut query), "{pad}");
        assert_eq!(
            query.result(),
            gst::GenericFormattedValue::from(gst::ClockTime::from_seconds(2)),
            "{pad}"
        );
    }
}

/// A RECONFIGURE event from downstream renegotiates before the next buffer:
/// refused caps give not-negotiated, accepted ones let buffers flow again.
#[test]
fn reconfigure_renegotiates_before_the_next_buffer() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    h.push(gst::Buffer::from_slice([0u8; 4])).unwrap();
    h.pull().unwrap();

    let src = e.static_pad("src").unwrap();
    h.set_sink_caps_str("application/x-other");
    // What a downstream element does when it wants other caps.
    assert!(h.push_upstream_event(gst::event::Reconfigure::new()));
    assert_eq!(
        h.push(gst::Buffer::from_slice([0u8; 4])),
        Err(gst::FlowError::NotNegotiated)
    );
    assert!(src.needs_reconfigure(), "still to negotiate");

    h.set_sink_caps_str("application/x-test");
    h.push(gst::Buffer::from_slice([0u8; 4])).unwrap();
    assert_eq!(h.pull().unwrap().size(), 4);
    assert!(!src.needs_reconfigure());
}

/// With the inherited `qos` property on, late buffers are dropped as
/// GstBaseTransform drops them; with it off (the default) nothing is.
#[test]
fn qos_property_drops_late_buffers_only_when_on() {
    for qos in [false, true] {
        let e = guard(&[("load-source", v("system"))]);
        e.set_property("qos", qos);
        let (mut h, _bus) = harness_with_bus(e.clone());
        h.set_src_caps_str("application/x-test");
        h.play();
        // Downstream says: everything before 10 s running time is late.
        assert!(h.push_upstream_event(gst::event::Qos::new(
            gst::QOSType::Underflow,
            1.0,
            0,
            gst::ClockTime::from_seconds(10),
        )));
        for (seconds, size) in [(1, 1usize), (20, 2)] {
            let mut buffer = gst::Buffer::from_slice(vec![0u8; size]);
            buffer
                .get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_seconds(seconds));
            h.push(buffer).unwrap();
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| h.try_pull())
            .map(|b| b.size())
            .collect();
        if qos {
            assert_eq!(sizes, [2], "the late buffer is dropped");
        } else {
            assert_eq!(sizes, [1, 2], "nothing dropped without qos");
        }
    }
}

#[test]
fn drain_action_in_harness_tags_and_ends_stream() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    h.push(gst::Buffer::from_slice([0u8; 4])).unwrap();
    h.pull().unwrap();

    assert!(e.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    // A second request does nothing: an element drains once.
    assert!(!e.emit_by_name::<bool>("drain", &[&"cpu-limit"]));

    let msg = wait_for(&bus, Duration::from_secs(5), |m| {
        is_element_message(m, "cpuguard-drain")
    })
    .expect("cpuguard-drain message");
    let s = structure_of(&msg);
    assert_eq!(s.get::<&str>("reason").unwrap(), "stop-requested");
    assert_eq!(s.get::<&str>("description").unwrap(), "Stop requested");
    assert_eq!(s.get::<&str>("trigger").unwrap(), "request");
    assert!(s.get::<f64>("load").is_ok() && s.get::<f64>("threshold").is_ok());
    assert_eq!(s.get::<&str>("source").unwrap(), "system");

    // With no parent bin, the element ends its own branch on the next buffer.
    assert_eq!(
        h.push(gst::Buffer::from_slice([0u8; 4])),
        Err(gst::FlowError::Eos)
    );
    let mut saw_tag = false;
    let mut eos_reason = None;
    while let Some(event) = h.try_pull_event() {
        match event.view() {
            gst::EventView::Tag(tag) => {
                let tags = tag.tag();
                if let Some(r) = tags.get::<gstcpuguard::tags::EndReasonTag>() {
                    assert_eq!(r.get(), "stop-requested");
                    saw_tag = true;
                }
            }
            gst::EventView::Eos(_) => {
                assert!(saw_tag, "tag must come before EOS");
                eos_reason = event
                    .structure()
                    .and_then(|s| s.get::<String>("reason").ok());
            }
            _ => {}
        }
    }
    assert_eq!(eos_reason.as_deref(), Some("stop-requested"));
}

#[test]
fn drain_action_rejects_empty_reason() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e.clone());
    h.play();
    assert!(!e.emit_by_name::<bool>("drain", &[&""]));
    assert!(!e.emit_by_name::<bool>("drain", &[&None::<String>]));
    // Still able to drain with a real reason afterwards.
    assert!(e.emit_by_name::<bool>("drain", &[&"maintenance"]));
}

/// A drain asked for before the element runs has nothing to end: refused,
/// and no drain is left over to fire at the next start.
#[test]
fn drain_action_before_start_is_refused() {
    let e = guard(&[("load-source", v("system")), ("interval", v(60_000u32))]);
    assert!(!e.emit_by_name::<bool>("drain", &[&"maintenance"]));
    let (mut h, bus) = harness_with_bus(e.clone());
    h.play();
    h.push(gst::Buffer::new()).expect("the buffer goes on");
    assert!(h.pull().is_ok());
    assert!(
        bus.iter()
            .all(|m| !is_element_message(&m, "cpuguard-drain")),
        "a drain from before the start"
    );
    assert!(e.emit_by_name::<bool>("drain", &[&"maintenance"]));
}

#[test]
fn upstream_eos_during_drain_carries_reason_and_tag() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    assert!(e.emit_by_name::<bool>("drain", &[&"cpu-limit"]));
    // The source reacts first (as it does in a pipeline): its EOS is rewritten.
    let upstream = gst::event::Eos::new();
    let seqnum = upstream.seqnum();
    assert!(h.push_event(upstream));
    let mut events = Vec::new();
    while let Some(ev) = h.try_pull_event() {
        events.push(ev);
    }
    let tag_pos = events.iter().position(|ev| {
        matches!(ev.view(), gst::EventView::Tag(t) if t.tag().get::<gstcpuguard::tags::EndReasonTag>().is_some())
    });
    let eos_pos = events
        .iter()
        .position(|ev| ev.type_() == gst::EventType::Eos)
        .expect("EOS forwarded");
    assert!(tag_pos.expect("tag forwarded") < eos_pos);
    let eos = &events[eos_pos];
    assert_eq!(eos.seqnum(), seqnum);
    assert_eq!(
        eos.structure().unwrap().get::<&str>("reason").unwrap(),
        "cpu-limit"
    );
}

#[test]
fn natural_eos_passes_untouched() {
    let e = guard(&[("load-source", v("system"))]);
    let (mut h, _bus) = harness_with_bus(e);
    h.set_src_caps_str("application/x-test");
    h.play();
    assert!(h.push_event(gst::event::Eos::new()));
    let mut eos = None;
    while let Some(ev) = h.try_pull_event() {
        assert!(
            !matches!(ev.view(), gst::EventView::Tag(t) if t.tag().get::<gstcpuguard::tags::EndReasonTag>().is_some()),
            "no end-reason tag without a drain"
        );
        if ev.type_() == gst::EventType::Eos {
            eos = Some(ev);
        }
    }
    let eos = eos.expect("EOS forwarded");
    assert!(eos.structure().is_none_or(|s| !s.has_field("reason")));
}

#[test]
fn soft_threshold_held_drains_with_cpu_limit() {
    let host = FakeHost::new(0.10);
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(20u32)),
        ("hold", v(3u32)),
        ("soft-threshold", v(0.5)),
        ("hard-threshold", v(0.99)),
    ]);
    let (mut h, bus) = harness_with_bus(e.clone());
    h.play();
    // Calm load: load messages, no drain.
    let load = wait_for(&bus, Duration::from_secs(5), |m| {
        is_element_message(m, "cpuguard-load")
    })
    .expect("cpuguard-load message");
    let s = structure_of(&load);
    assert!((s.get::<f64>("load").unwrap() - 0.10).abs() < 0.03, "{s}");
    assert_eq!(s.get::<&str>("source").unwrap(), "system");
    assert_eq!(s.get::<f64>("capacity").unwrap(), 2.0);
    assert!(
        wait_for(&bus, Duration::from_millis(300), |m| is_element_message(
            m,
            "cpuguard-drain"
        ))
        .is_none()
    );

    host.set_load(0.8);
    let started = Instant::now();
    let drain = wait_for(&bus, Duration::from_secs(10), |m| {
        is_element_message(m, "cpuguard-drain")
    })
    .expect("drain on held soft threshold");
    // Three samples of 20 ms: well under a second even on a busy machine.
    assert!(started.elapsed() < Duration::from_secs(5));
    let s = structure_of(&drain);
    assert_eq!(s.get::<&str>("reason").unwrap(), "cpu-limit");
    assert_eq!(s.get::<&str>("description").unwrap(), "CPU limit reached");
    assert_eq!(s.get::<&str>("trigger").unwrap(), "soft");
    assert_eq!(s.get::<f64>("threshold").unwrap(), 0.5);
    assert!((s.get::<f64>("load").unwrap() - 0.8).abs() < 0.05, "{s}");
    assert!((e.property::<f64>("load") - 0.8).abs() < 0.05);
    // Tag message on the bus too, so `gst-launch-1.0 -t` shows it.
    assert!(
        wait_for(&bus, Duration::from_secs(2), |m| matches!(m.view(),
            gst::MessageView::Tag(t) if t.tags().get::<gstcpuguard::tags::EndReasonTag>().is_some_and(|r| r.get() == "cpu-limit")))
        .is_some()
    );
}

#[test]
fn hard_threshold_drains_without_hold() {
    let host = FakeHost::new(0.97);
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(20u32)),
        ("hold", v(1000u32)),
    ]);
    let (mut h, bus) = harness_with_bus(e);
    h.play();
    let drain = wait_for(&bus, Duration::from_secs(5), |m| {
        is_element_message(m, "cpuguard-drain")
    })
    .expect("hard threshold drains at once");
    let s = structure_of(&drain);
    assert_eq!(s.get::<&str>("trigger").unwrap(), "hard");
    assert_eq!(s.get::<f64>("threshold").unwrap(), 0.95);
}

#[test]
fn first_sample_covers_start_up_and_is_not_judged() {
    // Over the hard threshold from the very start: the first window holds the
    // pipeline's own start-up, so only the second sample may drain.
    let host = FakeHost::new(0.97);
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(50u32)),
        ("hold", v(1000u32)),
    ]);
    let (mut h, bus) = harness_with_bus(e);
    h.play();
    let mut loads = 0;
    let drain = wait_for(&bus, Duration::from_secs(5), |m| {
        if is_element_message(m, "cpuguard-load") {
            loads += 1;
        }
        is_element_message(m, "cpuguard-drain")
    })
    .expect("hard threshold drains after the start-up sample");
    assert_eq!(structure_of(&drain).get::<&str>("trigger").unwrap(), "hard");
    assert_eq!(loads, 2, "samples reported before the drain");
}

/// Load alternating above and below soft at every sample never reaches
/// `hold` (release=1: each low sample resets the count); the same load held
/// above soft drains after exactly `hold` samples. The load is switched by a
/// sync handler on the sampler thread as each sample is posted, so every
/// window holds exactly one level, whatever the machine's speed.
#[test]
fn oscillating_load_below_hold_never_drains() {
    const HOLD: usize = 3;
    const SOFT: f64 = 0.6;
    let host = Arc::new(FakeHost::new(0.3));
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(50u32)),
        ("hold", v(HOLD)),
        ("release", v(1u32)),
        ("soft-threshold", v(SOFT)),
        ("hard-threshold", v(1.0)),
    ]);
    let (mut h, bus) = harness_with_bus(e);
    // Samples 1..=OSCILLATE alternate high/low; from then on the load stays high.
    const OSCILLATE: usize = 16;
    let (loads, drains) = (
        Arc::new(Mutex::new(Vec::<f64>::new())),
        Arc::new(Mutex::new(Vec::<usize>::new())),
    );
    {
        let (host, loads, drains) = (host.clone(), loads.clone(), drains.clone());
        bus.set_sync_handler(move |_, msg| {
            if is_element_message(msg, "cpuguard-load") {
                let mut loads = loads.lock().unwrap();
                loads.push(structure_of(msg).get::<f64>("load").unwrap());
                let n = loads.len();
                host.set_load(if n >= OSCILLATE || n % 2 == 1 {
                    0.9
                } else {
                    0.3
                });
            } else if is_element_message(msg, "cpuguard-drain") {
                drains.lock().unwrap().push(loads.lock().unwrap().len());
            }
            gst::BusSyncReply::Drop
        });
    }
    h.play();
    let deadline = Instant::now() + Duration::from_secs(30);
    while drains.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no drain once the load held: {:?}",
            loads.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let loads = loads.lock().unwrap().clone();
    // The first sample is not judged; after it, the samples alternate, and
    // the first run of HOLD samples at or above soft is the one that drains.
    let mut run = 0;
    let expected = loads
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, &load)| {
            run = if load >= SOFT { run + 1 } else { 0 };
            (run == HOLD).then_some(i + 1)
        })
        .unwrap_or_else(|| panic!("drained without {HOLD} samples above soft: {loads:?}"));
    assert!(
        expected > OSCILLATE,
        "the alternating samples reached hold: {loads:?}"
    );
    assert_eq!(
        drains.lock().unwrap()[0],
        expected,
        "drained after the wrong sample: {loads:?}"
    );
}

#[test]
fn dry_run_reports_but_never_drains() {
    let host = FakeHost::new(0.97);
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(20u32)),
        ("dry-run", v(true)),
    ]);
    let (mut h, bus) = harness_with_bus(e.clone());
    h.set_src_caps_str("application/x-test");
    h.play();
    let mut would = 0;
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        if let Some(m) = bus.timed_pop(gst::ClockTime::from_mseconds(50)) {
            assert!(!is_element_message(&m, "cpuguard-drain"), "dry run drained");
            if is_element_message(&m, "cpuguard-would-drain") {
                would += 1;
                assert_eq!(structure_of(&m).get::<&str>("reason").unwrap(), "cpu-limit");
            }
        }
    }
    assert!(
        would >= 2,
        "expected repeated would-drain reports, got {would}"
    );
    // Buffers keep flowing.
    h.push(gst::Buffer::from_slice([1u8])).unwrap();
    assert!(h.pull().is_ok());
    // The explicit action still drains.
    assert!(e.emit_by_name::<bool>("drain", &[&"stop-requested"]));
}

#[test]
fn soft_above_hard_fails_naming_the_thresholds() {
    let e = guard(&[("soft-threshold", v(0.97)), ("hard-threshold", v(0.9))]);
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("fakesrc").build().unwrap();
    let sink = gst::ElementFactory::make("fakesink").build().unwrap();
    pipeline.add_many([&src, &e, &sink]).unwrap();
    gst::Element::link_many([&src, &e, &sink]).unwrap();
    assert!(pipeline.set_state(gst::State::Paused).is_err());
    let bus = pipeline.bus().unwrap();
    let err = wait_for(&bus, Duration::from_secs(5), |m| {
        matches!(m.view(), gst::MessageView::Error(_))
    })
    .expect("error message");
    let gst::MessageView::Error(err) = err.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(text.contains("soft-threshold (0.97)"), "{text}");
    assert!(text.contains("hard-threshold (0.9)"), "{text}");
    pipeline.set_state(gst::State::Null).unwrap();
}

/// An application in C (or gst-launch-1.0) sets properties through
/// `g_object_set_property`: GObject refuses an out-of-range value with a
/// warning and keeps the previous one. glib-rs's own setter would panic
/// before GObject sees the value, so this goes through the C entry point.
#[test]
fn out_of_range_threshold_is_refused_by_the_property() {
    init();
    let e = guard(&[]);
    let set_from_c = |name: &str, value: glib::Value| {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: a live object, a NUL-terminated property name and an
        // initialised GValue, as g_object_set_property requires.
        unsafe {
            glib::gobject_ffi::g_object_set_property(
                e.as_ptr() as *mut glib::gobject_ffi::GObject,
                name.as_ptr(),
                value.to_glib_none().0,
            );
        }
    };
    set_from_c("soft-threshold", 0.5f64.to_value());
    assert_eq!(e.property::<f64>("soft-threshold"), 0.5, "in range: taken");
    for refused in [1.5f64, -0.1] {
        set_from_c("soft-threshold", refused.to_value());
        assert_eq!(
            e.property::<f64>("soft-threshold"),
            0.5,
            "{refused} must be refused"
        );
    }
    let pspec = e.find_property("soft-threshold").unwrap();
    let pspec = pspec.downcast_ref::<glib::ParamSpecDouble>().unwrap();
    assert_eq!((pspec.minimum(), pspec.maximum()), (0.0, 1.0));
}

#[test]
fn missing_load_files_fail_start_with_a_clear_message() {
    let empty = tempfile::tempdir().unwrap();
    for source in ["system", "psi", "cgroup", "process"] {
        let e = guard(&[
            ("load-source", v(source)),
            ("root", v(empty.path().to_string_lossy().into_owned())),
        ]);
        let pipeline = gst::Pipeline::new();
        let src = gst::ElementFactory::make("fakesrc").build().unwrap();
        let sink = gst::ElementFactory::make("fakesink").build().unwrap();
        pipeline.add_many([&src, &e, &sink]).unwrap();
        gst::Element::link_many([&src, &e, &sink]).unwrap();
        assert!(pipeline.set_state(gst::State::Paused).is_err(), "{source}");
        let bus = pipeline.bus().unwrap();
        let msg = wait_for(&bus, Duration::from_secs(5), |m| {
            matches!(m.view(), gst::MessageView::Error(_))
        })
        .expect("error message");
        let gst::MessageView::Error(err) = msg.view() else {
            unreachable!()
        };
        let text = err.error().to_string();
        assert!(text.contains(&format!("load-source={source}")), "{text}");
        assert!(text.contains(&*empty.path().to_string_lossy()), "{text}");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}

/// Instances sharing a sampler drain one at a time: the second waits until the
/// first one's drain has finished (here: its EOS went downstream).
#[test]
fn several_instances_drain_one_at_a_time() {
    let host = FakeHost::new(0.1);
    let make = || {
        guard(&[
            ("load-source", v("system")),
            ("root", v(host.root_str())),
            ("interval", v(20u32)),
            ("hold", v(2u32)),
            ("soft-threshold", v(0.5)),
        ])
    };
    let (a, b, c) = (make(), make(), make());
    let (mut ha, bus_a) = harness_with_bus(a.clone());
    let (mut hb, bus_b) = harness_with_bus(b.clone());
    let (mut hc, bus_c) = harness_with_bus(c.clone());
    for h in [&mut ha, &mut hb, &mut hc] {
        h.set_src_caps_str("application/x-test");
        h.play();
    }
    // An application's drain is not the coordinator's: it blocks nobody.
    assert!(a.emit_by_name::<bool>("drain", &[&"stop-requested"]));
    host.set_load(0.7);
    let is_drain = |m: &gst::Message| is_element_message(m, "cpuguard-drain");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, mut h_first, second_bus) = loop {
        assert!(Instant::now() < deadline, "no instance drained on load");
        if let Some(m) = wait_for(&bus_b, Duration::from_millis(20), is_drain) {
            break (m, hb, &bus_c);
        }
        if let Some(m) = wait_for(&bus_c, Duration::from_millis(20), is_drain) {
            break (m, hc, &bus_b);
        }
    };
    assert_eq!(
        structure_of(&first).get::<&str>("reason").unwrap(),
        "cpu-limit"
    );
    // The first drain is in flight (no EOS has left it yet): the other waits.
    assert!(
        wait_for(second_bus, Duration::from_millis(400), is_drain).is_none(),
        "second drain while the first was in flight"
    );
    // Without a parent bin the drain ends the branch on its next buffer.
    assert_eq!(
        h_first.push(gst::Buffer::from_slice([0u8; 4])),
        Err(gst::FlowError::Eos)
    );
    let m = wait_for(second_bus, Duration::from_secs(10), is_drain)
        .expect("the next instance drains once the first finished");
    assert_eq!(structure_of(&m).get::<&str>("reason").unwrap(), "cpu-limit");

    let m = wait_for(&bus_a, Duration::from_secs(5), is_drain).unwrap();
    assert_eq!(
        structure_of(&m).get::<&str>("reason").unwrap(),
        "stop-requested"
    );
    // `a` already drained: no second drain message for the load.
    assert!(wait_for(&bus_a, Duration::from_millis(300), is_drain).is_none());
}

#[test]
fn restart_after_stop_works() {
    let host = FakeHost::new(0.97);
    let e = guard(&[
        ("load-source", v("system")),
        ("root", v(host.root_str())),
        ("interval", v(20u32)),
    ]);
    let pipeline = gst::parse::launch("fakesrc is-live=true ! cpuguard name=g ! fakesink")
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    drop(e);
    let g = pipeline.by_name("g").unwrap();
    g.set_property_from_str("load-source", "system");
    g.set_property("root", host.root_str());
    g.set_property("interval", 20u32);
    for round in 0..2 {
        pipeline.set_state(gst::State::Playing).unwrap();
        let msgs = run_until_end(&pipeline, Duration::from_secs(10));
        assert!(
            msgs.iter().any(|m| is_element_message(m, "cpuguard-drain")),
            "round {round} drained: {:?}",
            msgs.iter()
                .map(|m| format!("{:?} {:?}", m.type_(), m.structure()))
                .collect::<Vec<_>>()
        );
        assert!(
            matches!(msgs.last().unwrap().view(), gst::MessageView::Eos(_)),
            "round {round} reached EOS"
        );
        pipeline.set_state(gst::State::Null).unwrap();
    }
}
