//! Admission control for `--jobs`: waiting jobs start only while the load is
//! below `--max-utilization`.
//!
//! LiveKit Egress admits on used + reserved < 0.8 and reserves each new job's
//! estimate for 15 s, because a job's load shows late; requests close together
//! still race. Here at most one job starts per sample, so every start is seen
//! in the next sample before the following one is admitted.

/// Whether waiting jobs may start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    max: Option<f64>,
}

impl Admission {
    /// `None`: no admission control, every job starts at once.
    pub fn new(max_utilization: Option<f64>) -> Self {
        Admission {
            max: max_utilization,
        }
    }

    pub fn max(&self) -> Option<f64> {
        self.max
    }

    /// How many of `waiting` jobs may start after a sample of `load` (`None`
    /// when the sample failed: nothing is admitted on a load nobody measured).
    pub fn admit(&self, load: Option<f64>, waiting: usize) -> usize {
        match (self.max, load) {
            (None, _) => waiting,
            (Some(max), Some(load)) if load < max => waiting.min(1),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_limit_everything_starts() {
        let a = Admission::new(None);
        assert_eq!(a.admit(None, 4), 4);
        assert_eq!(a.admit(Some(2.0), 3), 3);
    }

    #[test]
    fn one_job_per_sample_below_the_limit() {
        let a = Admission::new(Some(0.8));
        assert_eq!(a.admit(Some(0.5), 4), 1);
        assert_eq!(a.admit(Some(0.5), 0), 0);
        assert_eq!(a.admit(Some(0.8), 4), 0, "at the limit is not below it");
        assert_eq!(a.admit(Some(1.3), 4), 0);
        assert_eq!(a.admit(None, 4), 0, "no sample, no admission");
        assert_eq!(a.admit(Some(f64::NAN), 4), 0);
    }
}
