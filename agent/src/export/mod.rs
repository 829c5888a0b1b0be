//! The export stage: a bounded queue of finished spans, sent on by the exporter the
//! OpenTelemetry environment variables select (OTLP over gRPC or HTTP, the console, or none).
//!
//! ```ignore
//! let config = export::ExportConfig::from_env(|k| std::env::var(k).ok())?;
//! let exporter = export::spawn(config, metrics)?;
//! exporter.sender().submit_all(finished_spans);
//! exporter.shutdown(Duration::from_secs(4)).await;
//! ```

// Until main.rs wires the stage in, its entry points look unused outside tests.

mod batch;
pub mod config;
mod console;
pub mod otlp;
#[cfg(test)]
pub mod testutil;

// The stage's public face for main.rs; unit tests reach the items through their modules.
#[allow(unused_imports)]
pub use batch::{DetachedQueue, ExportHandle, ExportStartError, ShutdownReport, SpanSender, spawn};
#[allow(unused_imports)]
pub use config::{ExportConfig, ExportConfigError};
#[allow(unused_imports)]
pub use otlp::OtlpStartError;
