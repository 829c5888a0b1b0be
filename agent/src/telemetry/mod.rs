//! The agent's own telemetry: counters of everything it reads, builds, exports or drops.

pub mod metrics;
