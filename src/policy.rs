//! Threshold policy: turns a stream of load samples into a drain decision.
//!
//! Pure logic with no GStreamer or clock in it, so the element, the in-process
//! coordinator and the supervisor all share one tested copy of the rules.

use std::fmt;

/// Why a configuration was rejected; the message names the offending setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be between 0 and 1, got {value}")]
    OutOfRange { name: &'static str, value: f64 },
    #[error("soft-threshold ({soft}) must not be above hard-threshold ({hard})")]
    SoftAboveHard { soft: f64, hard: f64 },
    #[error("hold must be at least 1 sample, got {0}")]
    ZeroHold(u32),
    #[error("release must be at least 1 sample, got {0}")]
    ZeroRelease(u32),
}

/// Which threshold a drain decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Load stayed at or above the soft threshold for `hold` samples.
    Soft,
    /// One sample reached the hard threshold.
    Hard,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Soft => "soft",
            Trigger::Hard => "hard",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub soft: f64,
    pub hard: f64,
    /// Consecutive samples at or above `soft` before a soft drain.
    pub hold: u32,
    /// Consecutive samples below `soft` before the above-count resets.
    /// 1 means any low sample resets it (no hysteresis).
    pub release: u32,
}

/// The default `release`: one low sample among high ones does not undo a
/// hold, two in a row do. Chosen on real cgroup v1 quotas (README, "Choosing
/// `release`"): every `release` from 1 to 5 drained saturated 0.25, 0.5 and
/// 1.5 CPU quotas within `hold` + 1 samples at intervals of 250 ms and 1 s,
/// while a steady load at 80 % of a 0.5 CPU quota (samples 0.68-0.92 at
/// 250 ms, mean 0.80, below soft) was drained with `release` 3 (after 25
/// samples) and 5 (after 11), and never with 1 or 2. 2 is the most
/// tolerance to a stray low sample that never drained a load staying below
/// soft.
pub const DEFAULT_RELEASE: u32 = 2;

/// LiveKit Egress's thresholds: drain at 0.85 held, at once at 0.95.
pub const DEFAULT_SOFT: f64 = 0.85;
pub const DEFAULT_HARD: f64 = 0.95;
pub const DEFAULT_HOLD: u32 = 3;

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            soft: DEFAULT_SOFT,
            hard: DEFAULT_HARD,
            hold: DEFAULT_HOLD,
            release: DEFAULT_RELEASE,
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [("soft-threshold", self.soft), ("hard-threshold", self.hard)] {
            // NaN fails the range check too, which is what we want.
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::OutOfRange { name, value });
            }
        }
        if self.soft > self.hard {
            return Err(ConfigError::SoftAboveHard {
                soft: self.soft,
                hard: self.hard,
            });
        }
        if self.hold == 0 {
            return Err(ConfigError::ZeroHold(self.hold));
        }
        if self.release == 0 {
            return Err(ConfigError::ZeroRelease(self.release));
        }
        Ok(())
    }
}

/// What one sample means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Load is below the soft threshold (and the count is, or is on its way to, zero).
    Calm,
    /// Load is high but has not been high long enough yet.
    Rising { count: u32, hold: u32 },
    /// Drain now; `threshold` is the value that was crossed.
    Drain { trigger: Trigger, threshold: f64 },
    /// Not judged: one of the first samples after measuring started, whose
    /// window covers the measured work's own start-up. `left` more follow.
    WarmingUp { left: u32 },
}

/// Samples a guard leaves unjudged after it starts measuring. The first
/// window of a fresh meter holds the start-up of what it measures (encoder
/// initialisation, preroll, worker processes loading GStreamer): with a small
/// quota or a short interval that alone reads as over the hard threshold and
/// would drain a recording before it recorded anything.
pub const START_UP_SAMPLES: u32 = 1;

#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    above: u32,
    below: u32,
    /// Samples still to pass unjudged (see [`Verdict::WarmingUp`]).
    warm_up: u32,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Policy {
            config,
            above: 0,
            below: 0,
            warm_up: 0,
        })
    }

    /// Leaves the next `samples` samples unjudged. Only the start counts as
    /// warm-up: [`Policy::reset`] and drains do not start another.
    pub fn with_warm_up(mut self, samples: u32) -> Self {
        self.warm_up = samples;
        self
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Samples at or above soft counted so far.
    pub fn above_count(&self) -> u32 {
        self.above
    }

    /// Feeds one sample. After a `Drain` verdict the counts start again, so a
    /// caller that keeps observing (dry-run, or the next victim) gets a fresh hold.
    pub fn observe(&mut self, load: f64) -> Verdict {
        if self.warm_up > 0 {
            self.warm_up -= 1;
            return Verdict::WarmingUp { left: self.warm_up };
        }
        if !load.is_finite() {
            // A broken sample must never push towards a drain.
            return self.low_sample();
        }
        if load >= self.config.hard {
            self.reset();
            return Verdict::Drain {
                trigger: Trigger::Hard,
                threshold: self.config.hard,
            };
        }
        if load < self.config.soft {
            return self.low_sample();
        }
        self.below = 0;
        self.above = self.above.saturating_add(1);
        if self.above >= self.config.hold {
            self.reset();
            Verdict::Drain {
                trigger: Trigger::Soft,
                threshold: self.config.soft,
            }
        } else {
            Verdict::Rising {
                count: self.above,
                hold: self.config.hold,
            }
        }
    }

    pub fn reset(&mut self) {
        self.above = 0;
        self.below = 0;
    }

    fn low_sample(&mut self) -> Verdict {
        self.below = self.below.saturating_add(1);
        if self.below >= self.config.release {
            self.above = 0;
        }
        if self.above == 0 {
            Verdict::Calm
        } else {
            Verdict::Rising {
                count: self.above,
                hold: self.config.hold,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_leaves_even_a_hard_sample_unjudged_then_judges_normally() {
        let mut p = Policy::new(PolicyConfig::default())
            .unwrap()
            .with_warm_up(2);
        assert_eq!(p.observe(1.0), Verdict::WarmingUp { left: 1 });
        assert_eq!(p.observe(0.9), Verdict::WarmingUp { left: 0 });
        // Nothing was counted during the warm-up.
        assert_eq!(p.above_count(), 0);
        assert_eq!(p.observe(0.9), Verdict::Rising { count: 1, hold: 3 });
        assert!(matches!(
            p.observe(0.99),
            Verdict::Drain {
                trigger: Trigger::Hard,
                ..
            }
        ));
        // A reset after a drain does not warm up again.
        p.reset();
        assert!(matches!(p.observe(0.99), Verdict::Drain { .. }));
    }

    fn policy(soft: f64, hard: f64, hold: u32, release: u32) -> Policy {
        Policy::new(PolicyConfig {
            soft,
            hard,
            hold,
            release,
        })
        .unwrap()
    }

    #[test]
    fn soft_needs_hold_consecutive_samples() {
        let mut p = policy(0.85, 0.95, 3, 1);
        assert_eq!(p.observe(0.86), Verdict::Rising { count: 1, hold: 3 });
        assert_eq!(p.observe(0.90), Verdict::Rising { count: 2, hold: 3 });
        assert_eq!(
            p.observe(0.85),
            Verdict::Drain {
                trigger: Trigger::Soft,
                threshold: 0.85
            }
        );
    }

    #[test]
    fn low_sample_resets_without_hysteresis() {
        let mut p = policy(0.85, 0.95, 3, 1);
        p.observe(0.9);
        p.observe(0.9);
        assert_eq!(p.observe(0.5), Verdict::Calm);
        assert_eq!(p.observe(0.9), Verdict::Rising { count: 1, hold: 3 });
    }

    #[test]
    fn hard_drains_at_once() {
        let mut p = policy(0.85, 0.95, 5, 1);
        assert_eq!(
            p.observe(0.95),
            Verdict::Drain {
                trigger: Trigger::Hard,
                threshold: 0.95
            }
        );
        assert_eq!(p.above_count(), 0);
    }

    #[test]
    fn load_above_one_counts_as_hard() {
        // A saturated cgroup reads slightly above 1; that must not be ignored.
        let mut p = policy(0.85, 0.95, 3, 1);
        assert!(matches!(
            p.observe(1.02),
            Verdict::Drain {
                trigger: Trigger::Hard,
                ..
            }
        ));
    }

    #[test]
    fn hysteresis_keeps_count_across_short_dips() {
        let mut p = policy(0.85, 0.95, 3, 2);
        p.observe(0.9);
        p.observe(0.9);
        assert_eq!(p.observe(0.8), Verdict::Rising { count: 2, hold: 3 });
        assert!(matches!(p.observe(0.9), Verdict::Drain { .. }));
        p.observe(0.9);
        p.observe(0.8);
        assert_eq!(p.observe(0.8), Verdict::Calm);
    }

    #[test]
    fn counts_start_over_after_a_drain() {
        let mut p = policy(0.5, 0.95, 2, 1);
        p.observe(0.6);
        assert!(matches!(p.observe(0.6), Verdict::Drain { .. }));
        assert_eq!(p.observe(0.6), Verdict::Rising { count: 1, hold: 2 });
    }

    #[test]
    fn nan_is_treated_as_low() {
        let mut p = policy(0.85, 0.95, 2, 1);
        p.observe(0.9);
        assert_eq!(p.observe(f64::NAN), Verdict::Calm);
    }

    #[test]
    fn hold_of_one_drains_on_first_high_sample() {
        let mut p = policy(0.5, 0.9, 1, 1);
        assert!(matches!(
            p.observe(0.6),
            Verdict::Drain {
                trigger: Trigger::Soft,
                ..
            }
        ));
    }

    #[test]
    fn invalid_configs_name_the_setting() {
        let err = Policy::new(PolicyConfig {
            soft: 0.97,
            hard: 0.95,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("soft-threshold (0.97)"), "{err}");
        assert!(err.to_string().contains("hard-threshold (0.95)"), "{err}");

        let err = Policy::new(PolicyConfig {
            hard: 1.5,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hard-threshold must be between 0 and 1, got 1.5"
        );

        let err = Policy::new(PolicyConfig {
            soft: f64::NAN,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("soft-threshold"), "{err}");

        let err = Policy::new(PolicyConfig {
            hold: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("hold"), "{err}");
    }
}
