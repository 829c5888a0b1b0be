//! OTLP and console exporters.
