//! loupe: an eBPF agent that traces the HTTP requests of unmodified processes and exports
//! them as OpenTelemetry spans.
//!
//! The binary (`main.rs`) only parses the command line, reads the configuration
//! ([`config::load`]) and calls [`app::run`]; the modules
//! live in this library so that fuzz targets and benchmarks can drive the parsers directly.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod cpu_priority;
pub mod events;
pub mod export;
pub mod kernel;
pub mod pipeline;
pub mod probes;
pub mod process;
pub mod protocol;
pub mod red;
pub mod sampling;
pub mod span;
pub mod telemetry;
