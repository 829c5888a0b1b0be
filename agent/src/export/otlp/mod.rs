//! The OTLP exporter: protobuf conversion, gRPC and HTTP transports, and retries.

mod client;
pub(crate) mod compress;
mod const_attr;
pub mod convert;
pub mod encode;
mod grpc;
mod http;
pub mod retry;
pub mod signal;
#[cfg(test)]
pub(crate) mod test_receiver;
#[cfg(test)]
mod tests;
mod tls;

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

pub use self::client::{Delivered, OtlpClient, WarningLimiter};
use self::{
    retry::{Deadline, RetryPolicy},
    signal::TraceSignal,
};
use super::config::OtlpConfig;
use crate::{span::FinishedSpan, telemetry::metrics::Metrics};

/// The product token of loupe's exports' `User-Agent`, whatever the version.
const USER_AGENT_PRODUCT: &str = "loupe/";
const USER_AGENT: &str = concat!("loupe/", env!("CARGO_PKG_VERSION"));

/// Whether a request is an OTLP export of a loupe agent (this one or one on another host),
/// seen arriving at a collector that loupe traces. Turning it into a span would feed a
/// loop: the span is exported, which is another such request.
/// `user_agent` is only asked for a POST: finding the header costs every other request.
pub fn sent_by_loupe<'a>(method: &str, user_agent: impl FnOnce() -> Option<&'a str>) -> bool {
    method == "POST" && user_agent().is_some_and(|ua| ua.starts_with(USER_AGENT_PRODUCT))
}

/// Why the OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpStartError {
    #[error("cannot set up the gRPC channel to {endpoint}")]
    GrpcChannel {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot set up TLS to {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: tls::TlsSetupError,
    },
}

/// How one export attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        code: tonic::Code,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("HTTP status {status}")]
    Http {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("connection failed: {0}")]
    Connection(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within the export timeout")]
    Timeout,
    #[error("export deadline reached")]
    DeadlineReached,
    #[error("cannot compress the request: {0}")]
    Compress(#[source] std::io::Error),
    #[error("cannot build the request: {0}")]
    BuildRequest(#[source] hyper::http::Error),
}

impl AttemptError {
    /// `Some(hint)` when trying again may succeed, with the pause the server asked for.
    fn retry(&self) -> Option<Option<Duration>> {
        match self {
            AttemptError::Grpc {
                code, retry_after, ..
            } => grpc::is_retryable(*code, *retry_after).then_some(*retry_after),
            AttemptError::Http {
                status,
                retry_after,
            } => http::is_retryable(*status).then_some(*retry_after),
            AttemptError::Connection(_) | AttemptError::Timeout => Some(None),
            AttemptError::DeadlineReached
            | AttemptError::Compress(_)
            | AttemptError::BuildRequest(_) => None,
        }
    }
}

/// What became of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    pub exported: u64,
    pub dropped: u64,
    pub failed_attempts: u64,
}

pub struct OtlpExporter {
    client: OtlpClient<TraceSignal>,
    metrics: Arc<Metrics>,
    warnings: WarningLimiter,
}

impl OtlpExporter {
    /// Must run inside a tokio runtime.
    pub fn new(
        config: &OtlpConfig,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OtlpStartError> {
        Ok(Self {
            client: OtlpClient::new(config, retry)?,
            metrics,
            warnings: WarningLimiter::new("OTLP export"),
        })
    }

    /// Sends one batch, retrying transient failures until `deadline`. Counts the outcome in
    /// the metrics and returns it.
    pub async fn export(
        &mut self,
        batch: &[FinishedSpan],
        batch_deadline: Instant,
        shutdown: watch::Receiver<Option<Instant>>,
    ) -> BatchOutcome {
        let total = batch.len() as u64;
        if total == 0 {
            return BatchOutcome::default();
        }
        let mut outcome = BatchOutcome::default();
        let mut deadline = Deadline::new(batch_deadline, shutdown);
        let result = self
            .client
            .deliver(
                encode::trace_request(batch).into(),
                &mut deadline,
                &self.metrics.export_failures,
                &mut outcome.failed_attempts,
            )
            .await;
        match result {
            Ok(delivered) => {
                let rejected = u64::try_from(delivered.rejected).unwrap_or(0).min(total);
                outcome.exported = total - rejected;
                outcome.dropped = rejected;
                if rejected > 0 {
                    self.warnings.warn(format_args!(
                        "collector rejected {rejected} of {total} spans"
                    ));
                }
            }
            Err(error) => {
                outcome.dropped = total;
                self.warnings.warn(format_args!(
                    "dropping {total} spans after {} failed attempts: {error}",
                    outcome.failed_attempts
                ));
            }
        }
        self.metrics.spans_exported.add(outcome.exported);
        self.metrics.spans_dropped.add(outcome.dropped);
        outcome
    }
}
