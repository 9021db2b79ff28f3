//! `--metrics-addr`: Prometheus metrics of the run, served at `/metrics`.
//!
//! The run only stores into atomics (prometheus-client's metric types); the
//! HTTP server has its own thread and only reads them, so a slow or stuck
//! scraper can never hold up the GLib main loop, the parent loop or a
//! pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use gstcpuguard::load::LoadSourceKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    status: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabel {
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

/// Any metric, so that metrics of different types register from one table.
#[derive(Debug)]
struct Dyn(Box<dyn Metric>);

impl Dyn {
    /// A handle on `metric`: prometheus-client's metrics share their values
    /// between clones.
    fn new(metric: &(impl Metric + Clone)) -> Self {
        Dyn(Box::new(metric.clone()))
    }
}

impl EncodeMetric for Dyn {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    /// A family with no labels yet is left out of the page, as it was.
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Drains take from milliseconds (an idle encoder) to the drain timeout
/// (30 s by default): 5 ms to about 82 s.
fn drain_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric of a run.
pub struct Metrics {
    registry: Registry,
    up: Gauge,
    load: Family<SourceLabel, F64Gauge>,
    capacity: F64Gauge,
    samples: Family<SourceLabel, Counter>,
    sample_errors: Counter,
    soft: F64Gauge,
    hard: F64Gauge,
    running: Gauge,
    worker_cpu: Family<WorkerLabel, F64Gauge>,
    drains: Family<ReasonLabel, Counter>,
    drain_seconds: Family<ReasonLabel, Histogram, fn() -> Histogram>,
    escalations: Counter,
    results: Family<ResultLabels, Counter>,
    signals: Family<SignalLabel, Counter>,
    throttled_ratio: F64Gauge,
    throttled_seconds: Counter<f64, AtomicU64>,
    webhooks: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    pub fn new(soft: f64, hard: f64) -> Self {
        let mut registry = Registry::with_prefix("cpuguard");
        let metrics = Metrics {
            registry: Registry::default(),
            up: Gauge::default(),
            load: Family::default(),
            capacity: F64Gauge::default(),
            samples: Family::default(),
            sample_errors: Counter::default(),
            soft: F64Gauge::default(),
            hard: F64Gauge::default(),
            running: Gauge::default(),
            worker_cpu: Family::default(),
            drains: Family::default(),
            drain_seconds: Family::new_with_constructor(drain_histogram),
            escalations: Counter::default(),
            results: Family::default(),
            signals: Family::default(),
            throttled_ratio: F64Gauge::default(),
            throttled_seconds: Counter::default(),
            webhooks: Family::default(),
        };
        let m = &metrics;
        // Name, help, metric: one row each.
        let table = [
            ("up", "1 while cpuguard-run is running", Dyn::new(&m.up)),
            (
                "load_ratio",
                "Last load sample: share of capacity (1 = all of it; can exceed 1)",
                Dyn::new(&m.load),
            ),
            (
                "capacity_cpus",
                "CPUs the load is measured against (quota, else CPU request; affinity; online CPUs)",
                Dyn::new(&m.capacity),
            ),
            ("load_samples", "Load samples taken", Dyn::new(&m.samples)),
            (
                "load_sample_errors",
                "Intervals without a load sample (unreadable or inconsistent counters)",
                Dyn::new(&m.sample_errors),
            ),
            (
                "soft_threshold_ratio",
                "Load that, held for hold samples, drains",
                Dyn::new(&m.soft),
            ),
            (
                "hard_threshold_ratio",
                "Load that drains at once",
                Dyn::new(&m.hard),
            ),
            (
                "pipelines_running",
                "Pipelines running (multi-pipeline mode: workers alive)",
                Dyn::new(&m.running),
            ),
            (
                "worker_cpu_cpus",
                "CPUs a worker process uses, as it reports with each sample (multi-pipeline mode)",
                Dyn::new(&m.worker_cpu),
            ),
            ("drains", "Drains started, by reason", Dyn::new(&m.drains)),
            (
                "drain_duration_seconds",
                "From a drain's request to its end (EOS, or giving up), by reason",
                Dyn::new(&m.drain_seconds),
            ),
            (
                "drain_escalations",
                "Drains that missed their timeout and were killed (SIGKILL)",
                Dyn::new(&m.escalations),
            ),
            (
                "results",
                "Finished runs (multi-pipeline mode: workers), by status and reason",
                Dyn::new(&m.results),
            ),
            ("signals", "Signals received, by name", Dyn::new(&m.signals)),
            (
                "throttled_periods_ratio",
                "Last sample: share of its CFS periods in which the group whose quota binds was \
             throttled (0.9 or more reads as saturated)",
                Dyn::new(&m.throttled_ratio),
            ),
            (
                "throttled_seconds",
                "Time the group whose quota binds spent throttled, summed over CPUs, since the run began",
                Dyn::new(&m.throttled_seconds),
            ),
            (
                "webhook_deliveries",
                "Webhook events (times URLs) by outcome: delivered, retried (an attempt failed), failed",
                Dyn::new(&m.webhooks),
            ),
        ];
        for (name, help, metric) in table {
            registry.register(name, help, metric);
        }
        metrics.up.set(1);
        metrics.soft.set(soft);
        metrics.hard.set(hard);
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn sample(&self, load: f64, capacity: f64, source: LoadSourceKind) {
        let label = SourceLabel {
            source: source.as_str(),
        };
        self.load.get_or_create(&label).set(load);
        self.samples.get_or_create(&label).inc();
        self.capacity.set(capacity);
    }

    /// A sample's throttling (only where a CFS quota binds).
    pub fn throttling(&self, ratio: f64, seconds: f64) {
        self.throttled_ratio.set(ratio);
        self.throttled_seconds.inc_by(seconds);
    }

    pub fn sample_error(&self) {
        self.sample_errors.inc();
    }

    pub fn set_running(&self, running: usize) {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    pub fn worker_cpu(&self, worker: u32, cpus: f64) {
        let label = WorkerLabel {
            worker: worker.to_string(),
        };
        self.worker_cpu.get_or_create(&label).set(cpus);
    }

    pub fn worker_gone(&self, worker: u32) {
        self.worker_cpu.remove(&WorkerLabel {
            worker: worker.to_string(),
        });
    }

    pub fn drain_started(&self, reason: &str) {
        self.drains
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn drain_ended(&self, reason: &str, seconds: f64) {
        self.drain_seconds
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .observe(seconds);
    }

    pub fn escalated(&self) {
        self.escalations.inc();
    }

    pub fn result(&self, status: &str, reason: &str) {
        self.results
            .get_or_create(&ResultLabels {
                status: status.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn signal(&self, signal: &str) {
        self.signals
            .get_or_create(&SignalLabel {
                signal: signal.to_owned(),
            })
            .inc();
    }

    pub fn webhook(&self, delivery: crate::webhook::Delivery) {
        use crate::webhook::Delivery;
        let outcome = match delivery {
            Delivery::Delivered => "delivered",
            Delivery::Retrying => "retried",
            Delivery::Failed => "failed",
        };
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition, which Prometheus scrapes natively.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.registry) {
            text = format!("# cannot encode the metrics: {err}\n# EOF\n");
        }
        text
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` now (so a bad or busy address is a usage error before
/// anything runs) and serves `metrics` from a thread of its own; returns the
/// bound address (port 0 picks a free one).
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, String> {
    let server = tiny_http::Server::http(addr)
        .map_err(|err| format!("cannot serve metrics on {addr}: {err}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("cannot serve metrics on {addr}: not an IP address"))?;
    std::thread::Builder::new()
        .name("cpuguard-metrics".to_owned())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or_default();
                // HEAD as GET (tiny_http leaves the body out): probes and
                // load balancers check an endpoint with it.
                let readable = matches!(
                    request.method(),
                    tiny_http::Method::Get | tiny_http::Method::Head
                );
                let response = match (readable, path) {
                    (true, "/metrics") => {
                        let response = tiny_http::Response::from_string(metrics.encode());
                        match tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                            Ok(header) => response.with_header(header),
                            Err(()) => response,
                        }
                    }
                    (true, "/") => {
                        tiny_http::Response::from_string("cpuguard-run: metrics are at /metrics\n")
                    }
                    _ => tiny_http::Response::from_string("not found: try /metrics\n")
                        .with_status_code(404),
                };
                // A scraper that went away is its own problem, never the run's.
                let _ = request.respond(response);
            }
        })
        .map_err(|err| format!("cannot start the metrics server thread: {err}"))?;
    Ok(bound)
}
