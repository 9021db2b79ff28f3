//! Crash safety: configuring a pipeline's muxers so that a file killed at any
//! moment (SIGKILL at the end of a grace period, the OOM killer, a crash, a
//! drain that never finished) still plays up to about one interval before.
//!
//! One core for the `cpuguard` element (`crash-safe` property) and for
//! `cpuguard-run` (`--crash-safe`): `policy` holds the pure rules (which
//! muxer, which settings, when to leave a muxer alone), `apply` finds the
//! muxers of a pipeline, reads what the user set and applies the plan.

mod apply;
pub mod policy;

pub use apply::{Decision, Protection, configure, protect};
pub use policy::{DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS, MIN_INTERVAL_MS, Plan};
