//! All cpuguard instances of a process share one sampling thread.
//!
//! Alone in its own test binary (so its own process): it counts the process's
//! sampler threads, which any other test running alongside would add to.

mod common;

use common::*;
use gst::prelude::*;
use std::time::{Duration, Instant};

fn sampler_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == gstcpuguard::cpuguard::SAMPLER_THREAD_NAME)
        .count()
}

#[test]
fn sixteen_elements_share_one_sampling_thread() {
    init();
    let host = FakeHost::new(0.2);
    assert_eq!(sampler_threads(), 0);
    let mut harnesses = Vec::new();
    let mut buses = Vec::new();
    for i in 0..16 {
        // Two policies: different thresholds still share the sample.
        let soft = if i % 2 == 0 { "0.5" } else { "0.6" };
        let e = gst::ElementFactory::make("cpuguard")
            .property_from_str("load-source", "system")
            .property("root", host.root_str())
            .property("interval", 20u32)
            .property_from_str("soft-threshold", soft)
            .build()
            .unwrap();
        let mut h = gst_check::Harness::with_element(&e, Some("sink"), Some("src"));
        let bus = gst::Bus::new();
        e.set_bus(Some(&bus));
        h.play();
        harnesses.push(h);
        buses.push(bus);
    }
    for bus in &buses {
        let load = wait_for(bus, Duration::from_secs(10), |m| {
            is_element_message(m, "cpuguard-load")
        })
        .expect("every element reports the shared sample");
        let s = structure_of(&load);
        assert!((s.get::<f64>("load").unwrap() - 0.2).abs() < 0.05, "{s}");
        assert!(s.get::<f64>("cpu").is_ok(), "{s}");
    }
    assert_eq!(sampler_threads(), 1);

    // Leaving one by one: the thread stays while anyone is left.
    let last = harnesses.pop();
    drop(harnesses);
    assert_eq!(sampler_threads(), 1);
    drop(last);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sampler_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "sampler thread outlived its elements"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
