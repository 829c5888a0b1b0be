//! Helpers for loupe's integration tests: real peers the agent talks to.

pub mod otlp_receiver;
