//! The OTLP exporter: protobuf conversion, gRPC and HTTP transports, and retries.

pub mod convert;
mod grpc;
mod http;
pub mod retry;
#[cfg(test)]
pub(crate) mod test_receiver;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::{sync::watch, time::Instant};

use self::{
    grpc::GrpcTransport,
    http::{HttpBody, HttpTransport},
    retry::{Deadline, RetryPolicy},
};
use super::config::{OtlpConfig, Protocol};
use crate::{span::FinishedSpan, telemetry::metrics::Metrics};

const USER_AGENT: &str = concat!("loupe/", env!("CARGO_PKG_VERSION"));

/// Why the OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpStartError {
    #[error("cannot set up the gRPC channel to {endpoint}")]
    GrpcChannel {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
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
            } => grpc::is_retryable(*code).then_some(*retry_after),
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

/// A successful answer; the collector may still have refused some spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub rejected_spans: i64,
}

enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

/// A batch encoded once for its transport, ready to be sent as often as retries need.
enum Payload<'a> {
    Grpc(&'a GrpcTransport, ExportTraceServiceRequest),
    Http(&'a HttpTransport, HttpBody),
}

impl Payload<'_> {
    async fn send(&self, timeout: Duration) -> Result<Delivered, AttemptError> {
        match self {
            Payload::Grpc(transport, message) => transport.send(message, timeout).await,
            Payload::Http(transport, body) => transport.send(body, timeout).await,
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
    transport: Transport,
    timeout: Duration,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    /// The last time a failure was logged at warning level, to keep a dead collector from
    /// flooding the log.
    last_warning: Option<Instant>,
}

const WARNING_INTERVAL: Duration = Duration::from_secs(30);

impl OtlpExporter {
    /// Must run inside a tokio runtime.
    pub fn new(
        config: &OtlpConfig,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OtlpStartError> {
        let transport = match config.protocol {
            Protocol::Grpc => Transport::Grpc(GrpcTransport::new(config).map_err(|source| {
                OtlpStartError::GrpcChannel {
                    endpoint: config.endpoint.to_string(),
                    source,
                }
            })?),
            Protocol::HttpProtobuf => Transport::Http(HttpTransport::new(config)),
        };
        Ok(Self {
            transport,
            timeout: config.timeout,
            retry,
            metrics,
            last_warning: None,
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
        let result = self.deliver(batch, &mut deadline, &mut outcome).await;
        match result {
            Ok(delivered) => {
                let rejected = u64::try_from(delivered.rejected_spans)
                    .unwrap_or(0)
                    .min(total);
                outcome.exported = total - rejected;
                outcome.dropped = rejected;
                if rejected > 0 {
                    self.warn(format_args!(
                        "collector rejected {rejected} of {total} spans"
                    ));
                }
            }
            Err(error) => {
                outcome.dropped = total;
                self.warn(format_args!(
                    "dropping {total} spans after {} failed attempts: {error}",
                    outcome.failed_attempts
                ));
            }
        }
        self.metrics.spans_exported.add(outcome.exported);
        self.metrics.spans_dropped.add(outcome.dropped);
        outcome
    }

    async fn deliver(
        &self,
        batch: &[FinishedSpan],
        deadline: &mut Deadline,
        outcome: &mut BatchOutcome,
    ) -> Result<Delivered, AttemptError> {
        let message = convert::to_request(batch);
        let payload = match &self.transport {
            Transport::Grpc(grpc) => Payload::Grpc(grpc, message),
            Transport::Http(http) => Payload::Http(http, http.encode(&message)?),
        };
        let mut retries = 0u32;
        loop {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(AttemptError::DeadlineReached);
            }
            let attempt_timeout = self.timeout.min(remaining);
            let result = tokio::select! {
                result = payload.send(attempt_timeout) => result,
                () = deadline.reached() => Err(AttemptError::DeadlineReached),
            };
            let error = match result {
                Ok(delivered) => return Ok(delivered),
                Err(error) => error,
            };
            outcome.failed_attempts += 1;
            self.metrics.export_failures.inc();
            let Some(hint) = error.retry() else {
                return Err(error);
            };
            let pause = self.retry.delay(retries, hint);
            retries = retries.saturating_add(1);
            if pause >= deadline.remaining() {
                // Waiting would overrun the deadline: give up now rather than hold the queue.
                return Err(error);
            }
            log::debug!("OTLP export attempt failed ({error}); retrying in {pause:?}");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = deadline.reached() => return Err(error),
            }
        }
    }

    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
        if due {
            self.last_warning = Some(now);
            log::warn!("OTLP export: {message}");
        } else {
            log::debug!("OTLP export: {message}");
        }
    }
}
