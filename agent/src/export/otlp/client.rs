//! One OTLP endpoint for one signal: the transport its protocol selects, and the retry loop
//! every export goes through, whatever it carries.

use std::{marker::PhantomData, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    AttemptError, OtlpStartError,
    grpc::{GrpcBody, GrpcTransport},
    http::{HttpBody, HttpTransport},
    retry::{Deadline, RetryPolicy},
    signal::Signal,
};
use crate::{
    export::config::{OtlpConfig, Protocol},
    telemetry::metrics::Counter,
};

/// A successful answer; the collector may still have refused some items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub rejected: i64,
}

// Boxed: each holds a client and a compressor of some hundred bytes.
enum Transport {
    Grpc(Box<GrpcTransport>),
    Http(Box<HttpTransport>),
}

/// A message encoded once for its transport, ready to be sent as often as retries need.
enum Payload<'a> {
    Grpc(&'a GrpcTransport, GrpcBody),
    Http(&'a HttpTransport, HttpBody),
}

impl Payload<'_> {
    async fn send<S: Signal>(&self, timeout: Duration) -> Result<Delivered, AttemptError> {
        match self {
            Payload::Grpc(transport, body) => transport.send::<S>(body, timeout).await,
            Payload::Http(transport, body) => transport.send::<S>(body, timeout).await,
        }
    }
}

pub struct OtlpClient<S: Signal> {
    transport: Transport,
    timeout: Duration,
    retry: RetryPolicy,
    signal: PhantomData<S>,
}

impl<S: Signal> OtlpClient<S> {
    /// Must run inside a tokio runtime.
    pub fn new(config: &OtlpConfig, retry: RetryPolicy) -> Result<Self, OtlpStartError> {
        let transport = match config.protocol {
            Protocol::Grpc => {
                Transport::Grpc(Box::new(GrpcTransport::new(config).map_err(|source| {
                    OtlpStartError::GrpcChannel {
                        endpoint: config.endpoint.to_string(),
                        source,
                    }
                })?))
            }
            Protocol::HttpProtobuf => Transport::Http(Box::new(HttpTransport::new(config)?)),
        };
        Ok(Self {
            transport,
            timeout: config.timeout,
            retry,
            signal: PhantomData,
        })
    }

    /// Sends `message` (the signal's export request, protobuf-encoded), retrying transient
    /// failures until `deadline`. Each failed attempt bumps `failures` and
    /// `failed_attempts`.
    pub async fn deliver(
        &self,
        message: Bytes,
        deadline: &mut Deadline,
        failures: &Counter,
        failed_attempts: &mut u64,
    ) -> Result<Delivered, AttemptError> {
        let payload = match &self.transport {
            Transport::Grpc(grpc) => Payload::Grpc(grpc, grpc.encode(&message)?),
            Transport::Http(http) => Payload::Http(http, http.encode(message)?),
        };
        let mut retries = 0u32;
        loop {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(AttemptError::DeadlineReached);
            }
            let attempt_timeout = self.timeout.min(remaining);
            let result = tokio::select! {
                result = payload.send::<S>(attempt_timeout) => result,
                () = deadline.reached() => Err(AttemptError::DeadlineReached),
            };
            let error = match result {
                Ok(delivered) => return Ok(delivered),
                Err(error) => error,
            };
            *failed_attempts += 1;
            failures.inc();
            let Some(hint) = error.retry() else {
                return Err(error);
            };
            let pause = self.retry.delay(retries, hint);
            retries = retries.saturating_add(1);
            if pause >= deadline.remaining() {
                // Waiting would overrun the deadline: give up now rather than hold the queue.
                return Err(error);
            }
            log::debug!(
                "OTLP export of {} failed ({error}); retrying in {pause:?}",
                S::ITEMS
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = deadline.reached() => return Err(error),
            }
        }
    }
}

const WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Logs export trouble at warning level at most every 30 s, at debug level in between, so
/// that a dead collector does not flood the log.
pub struct WarningLimiter {
    prefix: &'static str,
    last_warning: Option<Instant>,
}

impl WarningLimiter {
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            last_warning: None,
        }
    }

    pub fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
        if due {
            self.last_warning = Some(now);
            log::warn!("{}: {message}", self.prefix);
        } else {
            log::debug!("{}: {message}", self.prefix);
        }
    }
}
