//! OTLP and console exporters.

pub mod config;
