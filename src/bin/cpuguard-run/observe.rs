//! What a run tells the outside besides its JSON result: `--metrics-addr`
//! (Prometheus) and `--timeline` (SVG). Single and multi-pipeline mode feed
//! the same events, so both outputs mean the same in either mode.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use gstcpuguard::load::LoadSourceKind;
use gstcpuguard::reason::EndReason;

use crate::metrics::{self, Metrics};
use crate::progress::progress;
use crate::timeline::{Thresholds, Timeline};

#[derive(Default)]
pub struct Observer {
    metrics: Option<Arc<Metrics>>,
    metrics_url: Option<String>,
    timeline: Option<Timeline>,
}

impl Observer {
    /// Starts the metrics server and checks the timeline file before
    /// anything runs: either failing is a usage error.
    pub fn start(
        metrics_addr: Option<SocketAddr>,
        timeline: Option<&Path>,
        thresholds: Thresholds,
    ) -> Result<Self, String> {
        let timeline = timeline
            .map(|path| {
                let start = crate::progress::started().unwrap_or_else(Instant::now);
                Timeline::create(path, start, thresholds)
            })
            .transpose()?;
        let (metrics, metrics_url) = match metrics_addr {
            Some(addr) => {
                let metrics = Arc::new(Metrics::new(thresholds.soft, thresholds.hard));
                let bound = metrics::serve(addr, metrics.clone())?;
                let url = format!("http://{bound}/metrics");
                progress!("metrics: serving {url}");
                (Some(metrics), Some(url))
            }
            None => (None, None),
        };
        Ok(Observer {
            metrics,
            metrics_url,
            timeline,
        })
    }

    /// The metrics, for what reports from other threads (webhook delivery).
    pub fn metrics(&self) -> Option<Arc<Metrics>> {
        self.metrics.clone()
    }

    /// Where the metrics are served, once bound (`--metrics-addr`).
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_url.clone()
    }

    pub fn sample(&mut self, at: Instant, load: f64, capacity: f64, source: LoadSourceKind) {
        if let Some(m) = &self.metrics {
            m.sample(load, capacity, source);
        }
        if let Some(t) = &mut self.timeline {
            t.sample(at, load, capacity, source);
        }
    }

    pub fn throttling(&self, ratio: f64, seconds: f64) {
        if let Some(m) = &self.metrics {
            m.throttling(ratio, seconds);
        }
    }

    pub fn sample_error(&self) {
        if let Some(m) = &self.metrics {
            m.sample_error();
        }
    }

    pub fn worker_cpu(&mut self, at: Instant, worker: u32, cpus: f64) {
        if let Some(m) = &self.metrics {
            m.worker_cpu(worker, cpus);
        }
        if let Some(t) = &mut self.timeline {
            t.worker_cpu(at, worker, cpus);
        }
    }

    pub fn worker_gone(&self, worker: u32) {
        if let Some(m) = &self.metrics {
            m.worker_gone(worker);
        }
    }

    pub fn running(&self, pipelines: usize) {
        if let Some(m) = &self.metrics {
            m.set_running(pipelines);
        }
    }

    /// A drain started; `label` is what the picture writes at its moment.
    pub fn drain_started(&mut self, at: Instant, reason: &EndReason, label: String) {
        if let Some(m) = &self.metrics {
            m.drain_started(reason.as_str());
        }
        if let Some(t) = &mut self.timeline {
            t.drain(at, label);
        }
    }

    pub fn drain_ended(&self, reason: &EndReason, seconds: f64) {
        if let Some(m) = &self.metrics {
            m.drain_ended(reason.as_str(), seconds);
        }
    }

    pub fn escalated(&self) {
        if let Some(m) = &self.metrics {
            m.escalated();
        }
    }

    pub fn result(&self, status: &str, reason: &str) {
        if let Some(m) = &self.metrics {
            m.result(status, reason);
        }
    }

    pub fn signal(&self, signal: &str) {
        if let Some(m) = &self.metrics {
            m.signal(signal);
        }
    }

    /// The run is over: the picture is drawn with `outcome` in its title.
    pub fn finish(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.set_running(0);
        }
        if let Some(t) = &self.timeline {
            match t.write(outcome, Instant::now()) {
                Ok(()) => progress!("timeline written to {}", t.path().display()),
                Err(err) => crate::progress::fatal_line(format_args!("{err}")),
            }
        }
    }
}
