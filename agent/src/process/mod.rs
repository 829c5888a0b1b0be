//! Which processes loupe traces, and who they are (their OpenTelemetry resource).

pub mod container;
mod ignored_connections;
pub mod instrumented;
pub mod procfs;
pub mod resource;
mod runtime_config;
pub mod selector;
mod stale_connections;
pub mod systemd;
