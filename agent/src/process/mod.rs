//! Which processes loupe traces, and who they are (their OpenTelemetry resource).

pub mod instrumented;
pub mod procfs;
pub mod resource;
pub mod selector;
mod stale_connections;
