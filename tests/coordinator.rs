//! Several pipelines in one process: the shared sampler drains the pipeline
//! using the most CPU, one at a time, with hysteresis on the soft threshold.
//!
//! Every pipeline's CPU is made clearly different and deterministic by an
//! `identity` whose handoff spins for a set time per buffer in the streaming
//! thread that also runs cpuguard. The host load comes from a FakeHost; bus
//! sync handlers change it from the sampler thread itself, so "the load after
//! this message" is exact and needs no sleeps.

mod common;

use common::*;
use gst::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOW: f64 = 0.1;
const HIGH: f64 = 0.8;

/// What the buses said, in order, from every pipeline of a test.
#[derive(Clone, Debug)]
struct Event {
    at: Instant,
    pipeline: &'static str,
    kind: String,
    cpu: Option<f64>,
    trigger: Option<String>,
}

type Hook = Arc<dyn Fn(&'static str, &gst::Message) + Send + Sync>;

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn of(&self, pipeline: &str, kind: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.pipeline == pipeline && e.kind == kind)
            .collect()
    }

    /// Waits for the first event matching `pred`.
    fn wait(&self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the pipelines' CPU, as their latest samples report it,
    /// ranks them in `order` (heaviest first), each past its start-up samples.
    fn wait_ranked(&self, order: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ranked = order.iter().all(|p| self.of(p, "cpuguard-load").len() >= 3)
                && order
                    .windows(2)
                    .all(|w| self.last_cpu(w[0]) > self.last_cpu(w[1]));
            if ranked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CPU never ranked {order:?}: {:?}",
                order.iter().map(|p| self.last_cpu(p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `n` more samples of `pipeline`: bounds a check by samples
    /// judged, not by time slept.
    fn wait_more_loads(&self, pipeline: &str, n: usize) {
        let target = self.of(pipeline, "cpuguard-load").len() + n;
        self.wait(Duration::from_secs(30), |_| {
            self.of(pipeline, "cpuguard-load").len() >= target
        })
        .unwrap_or_else(|| panic!("{pipeline}: fewer than {n} more samples:\n{}", self.dump()));
    }

    fn last_cpu(&self, pipeline: &str) -> Option<f64> {
        self.of(pipeline, "cpuguard-load")
            .last()
            .and_then(|e| e.cpu)
    }

    fn dump(&self) -> String {
        let events = self.events();
        let start = events.first().map(|e| e.at);
        events
            .iter()
            .filter(|e| e.kind != "cpuguard-load")
            .map(|e| {
                let t = start.map_or(0.0, |s| e.at.duration_since(s).as_secs_f64());
                format!("{t:7.3}s {} {} cpu={:?}", e.pipeline, e.kind, e.cpu)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn kind_of(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Element(e) => e.structure().map(|s| s.name().to_string()),
        gst::MessageView::Eos(_) => Some("eos".into()),
        gst::MessageView::Error(_) => Some("error".into()),
        _ => None,
    }
}

/// A live pipeline whose streaming thread spins `burn` per buffer (50 per
/// second) before cpuguard, plus `extra` elements in the same pipeline.
fn burner(
    name: &'static str,
    burn: Duration,
    guard_props: &str,
    extra: &str,
    log: &Log,
    hook: Option<Hook>,
) -> gst::Pipeline {
    init();
    let desc = format!(
        "videotestsrc is-live=true ! video/x-raw,width=16,height=16,framerate=50/1 \
         ! identity name=burn signal-handoffs=true \
         ! cpuguard name=guard load-source=system {guard_props} ! fakesink sync=false {extra}"
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    pipeline
        .by_name("burn")
        .unwrap()
        .connect("handoff", false, move |_| {
            let start = Instant::now();
            while start.elapsed() < burn {
                std::hint::spin_loop();
            }
            None
        });
    let log = log.clone();
    pipeline.bus().unwrap().set_sync_handler(move |_, msg| {
        if let Some(kind) = kind_of(msg) {
            let field = |name| msg.structure().and_then(|s| s.value(name).ok().cloned());
            log.0.lock().unwrap().push(Event {
                at: Instant::now(),
                pipeline: name,
                kind,
                cpu: field("cpu").and_then(|v| v.get().ok()),
                trigger: field("trigger").and_then(|v| v.get().ok()),
            });
        }
        if let Some(hook) = &hook {
            hook(name, msg);
        }
        gst::BusSyncReply::Drop
    });
    pipeline
}

fn play(pipelines: &[&gst::Pipeline]) {
    for p in pipelines {
        p.set_state(gst::State::Playing).unwrap();
    }
}

fn stop(pipelines: &[&gst::Pipeline]) {
    for p in pipelines {
        p.set_state(gst::State::Null).unwrap();
    }
}

fn guard_props(host: &FakeHost, interval_ms: u32, extra: &str) -> String {
    format!(
        "root={} interval={interval_ms} hold=2 soft-threshold=0.5 hard-threshold=0.99 {extra}",
        host.root_str()
    )
}

/// Lowers the load as soon as a drain is announced, from the sampler thread,
/// before the next sample: the drain, not the load, decides what follows.
fn lower_load_on_drain(host: &Arc<FakeHost>) -> Hook {
    let host = host.clone();
    Arc::new(move |_, msg| {
        if is_element_message(msg, "cpuguard-drain") {
            host.set_load(LOW);
        }
    })
}

#[test]
fn heaviest_pipeline_drains_first_and_alone() {
    let host = Arc::new(FakeHost::new(LOW));
    let log = Log::default();
    let props = guard_props(&host, 250, "drain-timeout=20000");
    let hook = lower_load_on_drain(&host);
    // Started lightest first: a tie would pick the light one, never the heavy.
    let light = burner(
        "light",
        Duration::from_micros(300),
        &props,
        "",
        &log,
        Some(hook.clone()),
    );
    let mid = burner(
        "mid",
        Duration::from_micros(2500),
        &props,
        "",
        &log,
        Some(hook.clone()),
    );
    let heavy = burner(
        "heavy",
        Duration::from_millis(8),
        &props,
        "",
        &log,
        Some(hook),
    );
    play(&[&light, &mid, &heavy]);

    // Calm load until the CPU figures rank the pipelines by their cost.
    log.wait_ranked(&["heavy", "mid", "light"]);
    let drains = |log: &Log| {
        log.events()
            .into_iter()
            .filter(|e| e.kind == "cpuguard-drain")
            .collect::<Vec<_>>()
    };
    assert!(
        drains(&log).is_empty(),
        "drained at calm load:\n{}",
        log.dump()
    );

    eprintln!(
        "CPU before the drain: light {:?}, mid {:?}, heavy {:?}",
        log.last_cpu("light"),
        log.last_cpu("mid"),
        log.last_cpu("heavy")
    );
    host.set_load(HIGH);
    let first = log
        .wait(Duration::from_secs(15), |e| e.kind == "cpuguard-drain")
        .unwrap_or_else(|| panic!("no drain on high load:\n{}", log.dump()));
    assert_eq!(
        first.pipeline,
        "heavy",
        "cpu: light {:?}, mid {:?}, heavy {:?}\n{}",
        log.last_cpu("light"),
        log.last_cpu("mid"),
        log.last_cpu("heavy"),
        log.dump()
    );
    assert!(first.cpu.is_some_and(|c| c > 0.0), "{first:?}");
    log.wait(Duration::from_secs(15), |e| {
        e.pipeline == "heavy" && e.kind == "eos"
    })
    .unwrap_or_else(|| panic!("heavy did not finish its drain:\n{}", log.dump()));

    // Load low again: the others keep running, sampled and undrained.
    log.wait_more_loads("light", 5);
    assert_eq!(drains(&log).len(), 1, "{}", log.dump());
    for p in [&light, &mid] {
        assert_eq!(p.current_state(), gst::State::Playing);
    }

    // High again after the first drain finished: the next heaviest goes.
    host.set_load(HIGH);
    let second = log
        .wait(Duration::from_secs(15), |e| {
            e.kind == "cpuguard-drain" && e.pipeline != "heavy"
        })
        .unwrap_or_else(|| panic!("no second drain:\n{}", log.dump()));
    assert_eq!(second.pipeline, "mid", "{}", log.dump());
    // More than hold samples later, light still has not drained.
    log.wait_more_loads("light", 3);
    assert!(
        log.of("light", "cpuguard-drain").is_empty(),
        "{}",
        log.dump()
    );
    stop(&[&light, &mid, &heavy]);
}

/// At the hard threshold there is no hold: the heaviest drains at the next
/// sample, and the next one as soon as that drain has finished.
#[test]
fn hard_threshold_drains_heaviest_at_once_then_the_next() {
    let host = Arc::new(FakeHost::new(LOW));
    let log = Log::default();
    let props = format!(
        "root={} interval=250 hold=1000 soft-threshold=0.5 hard-threshold=0.9",
        host.root_str()
    );
    let light = burner("light", Duration::from_micros(300), &props, "", &log, None);
    let heavy = burner("heavy", Duration::from_millis(8), &props, "", &log, None);
    play(&[&light, &heavy]);
    log.wait_ranked(&["heavy", "light"]);

    host.set_load(1.0);
    let first = log
        .wait(Duration::from_secs(15), |e| e.kind == "cpuguard-drain")
        .unwrap_or_else(|| panic!("no drain at the hard threshold:\n{}", log.dump()));
    assert_eq!(first.pipeline, "heavy", "{}", log.dump());
    assert_eq!(first.trigger.as_deref(), Some("hard"));
    let finished = log
        .wait(Duration::from_secs(15), |e| {
            e.pipeline == "heavy" && e.kind == "eos"
        })
        .unwrap_or_else(|| panic!("heavy did not finish its drain:\n{}", log.dump()));
    let second = log
        .wait(Duration::from_secs(15), |e| {
            e.pipeline == "light" && e.kind == "cpuguard-drain"
        })
        .unwrap_or_else(|| panic!("still critical, yet no next drain:\n{}", log.dump()));
    assert!(second.at >= finished.at, "{}", log.dump());
    assert_eq!(second.trigger.as_deref(), Some("hard"));
    stop(&[&light, &heavy]);
}

#[test]
fn one_drain_in_flight_until_its_timeout() {
    let host = Arc::new(FakeHost::new(LOW));
    let log = Log::default();
    let props = guard_props(&host, 250, "drain-timeout=1500");
    // The heavy pipeline's second branch blocks in a full appsink, so its
    // drain can never complete.
    let stuck = burner(
        "stuck",
        Duration::from_millis(8),
        &props,
        "videotestsrc is-live=true ! video/x-raw,width=16,height=16,framerate=50/1 \
         ! appsink max-buffers=1 drop=false sync=false emit-signals=false",
        &log,
        None,
    );
    let light = burner("light", Duration::from_micros(300), &props, "", &log, None);
    play(&[&light, &stuck]);
    log.wait_ranked(&["stuck", "light"]);

    host.set_load(HIGH);
    let first = log
        .wait(Duration::from_secs(15), |e| e.kind == "cpuguard-drain")
        .unwrap_or_else(|| panic!("no drain on high load:\n{}", log.dump()));
    assert_eq!(first.pipeline, "stuck", "{}", log.dump());
    let timeout = log
        .wait(Duration::from_secs(15), |e| {
            e.pipeline == "stuck" && e.kind == "error"
        })
        .unwrap_or_else(|| panic!("no drain-timeout error:\n{}", log.dump()));
    let second = log
        .wait(Duration::from_secs(15), |e| {
            e.pipeline == "light" && e.kind == "cpuguard-drain"
        })
        .unwrap_or_else(|| panic!("light never drained:\n{}", log.dump()));
    // Load stayed high all along, yet light waited for the stuck drain to time out.
    assert!(second.at > timeout.at, "{}", log.dump());
    assert!(
        second.at.duration_since(first.at) >= Duration::from_millis(1400),
        "{}",
        log.dump()
    );
    stop(&[&light, &stuck]);
}

/// Load alternating above and below soft at every sample: without hysteresis
/// the count never reaches hold; with release=5 it does, and drains once.
#[test]
fn hysteresis_around_the_soft_threshold() {
    let log = Log::default();
    let run = |name: &'static str, release: u32| {
        let host = Arc::new(FakeHost::new(0.7));
        let flip = {
            let host = host.clone();
            let high = Arc::new(std::sync::atomic::AtomicBool::new(true));
            Arc::new(move |_: &'static str, msg: &gst::Message| {
                if is_element_message(msg, "cpuguard-load") {
                    let now_high = !high.fetch_xor(true, std::sync::atomic::Ordering::SeqCst);
                    host.set_load(if now_high { 0.7 } else { 0.3 });
                }
            }) as Hook
        };
        let props = format!(
            "root={} interval=50 hold=3 release={release} soft-threshold=0.5 hard-threshold=0.99",
            host.root_str()
        );
        let p = burner(name, Duration::ZERO, &props, "", &log, Some(flip));
        p.set_state(gst::State::Playing).unwrap();
        (host, p)
    };
    let (_plain_host, plain) = run("release-1", 1);
    let (_sticky_host, sticky) = run("release-5", 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["release-1", "release-5"]
        .iter()
        .any(|name| log.of(name, "cpuguard-load").len() < 24)
    {
        assert!(
            Instant::now() < deadline,
            "too few samples:\n{}",
            log.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log.of("release-1", "cpuguard-drain").is_empty(),
        "flapping load drained without hysteresis:\n{}",
        log.dump()
    );
    assert_eq!(
        log.of("release-5", "cpuguard-drain").len(),
        1,
        "{}",
        log.dump()
    );
    stop(&[&plain, &sticky]);
}
