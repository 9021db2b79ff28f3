//! How long the parent's admission samples take (`--max-utilization` only:
//! the parent samples nothing else), reported in the summary as `sampling`.
//! Mean and max only: a run may last days, so no per-sample history is kept.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct SampleTiming {
    samples: u64,
    mean_us: f64,
    max_us: f64,
    #[serde(skip)]
    total: Duration,
}

impl SampleTiming {
    pub fn record(&mut self, took: Duration) {
        self.samples += 1;
        self.total += took;
        let us = took.as_secs_f64() * 1e6;
        self.max_us = self.max_us.max(round_us(us));
        self.mean_us = round_us(self.total.as_secs_f64() * 1e6 / self.samples as f64);
    }
}

fn round_us(us: f64) -> f64 {
    (us * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_max_of_recorded_samples() {
        let mut timing = SampleTiming::default();
        timing.record(Duration::from_micros(100));
        timing.record(Duration::from_micros(300));
        assert_eq!(timing.samples, 2);
        assert_eq!(timing.mean_us, 200.0);
        assert_eq!(timing.max_us, 300.0);
    }
}
