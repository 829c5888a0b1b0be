//! The export stage: a bounded queue of finished spans, sent on by the exporter the
//! OpenTelemetry environment variables select (OTLP over gRPC or HTTP, the console, or none).
//!
//! ```ignore
//! let config = export::ExportConfig::from_env(|k| std::env::var(k).ok())?;
//! let exporter = export::spawn(config, metrics)?;
//! exporter.submit(finished_span);
//! exporter.shutdown(Duration::from_secs(4)).await;
//! ```

mod batch;
pub mod config;
mod console;
mod otlp;
#[cfg(test)]
mod testutil;

pub use batch::{ExportHandle, ExportStartError, ShutdownReport, SpanSender, spawn};
pub use config::{ExportConfig, ExportConfigError};
pub use otlp::OtlpStartError;
