//! An OTLP receiver for tests: a gRPC `TraceService` and HTTP `/v1/traces` and
//! `/v1/metrics` endpoints on local ports, storing what they receive behind a blocking API.
//! (Metrics come over HTTP only: without tonic's router one gRPC server serves one service.)
//!
//! ```no_run
//! use std::time::Duration;
//! use loupe_integration_tests::otlp_receiver::OtlpReceiver;
//!
//! let receiver = OtlpReceiver::start().unwrap();
//! // OTEL_EXPORTER_OTLP_ENDPOINT=receiver.http_endpoint() for the agent...
//! let spans = receiver.wait_for_spans(1, Duration::from_secs(10));
//! assert_eq!(spans[0].attr("http.request.method"), Some("GET"));
//! ```

mod count;
mod flatten;
mod server;
#[cfg(test)]
mod tests;
mod tls;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use tokio::runtime::Runtime;

pub use flatten::ReceivedSpan;

/// Spans kept for inspection at most; later ones are only counted.
pub const MAX_STORED_SPANS: usize = 1_000_000;
/// Metrics export requests kept at most; later ones are dropped.
pub const MAX_STORED_METRIC_REQUESTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("cannot start the receiver's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One export request as it arrived.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub transport: Transport,
    /// The body came gzip-compressed.
    pub gzip: bool,
    /// Request headers (gRPC metadata), names in lower case.
    pub headers: BTreeMap<String, String>,
    pub request: ExportTraceServiceRequest,
}

#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Keep requests for `requests()` / `spans()`; off, spans are only counted.
    pub keep_requests: bool,
    pub worker_threads: usize,
    /// Both servers speak only TLS; the endpoints become `https://`.
    pub tls: Option<ReceiverTls>,
}

/// What a TLS receiver presents and asks for, as PEM.
#[derive(Clone, Debug)]
pub struct ReceiverTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, a client must present a certificate that chains to this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            keep_requests: true,
            worker_threads: 1,
            tls: None,
        }
    }
}

/// State shared between the servers and the test thread.
struct Shared {
    keep_requests: bool,
    spans_received: AtomicU64,
    refused: AtomicU64,
    inner: Mutex<Inner>,
    arrived: Condvar,
}

#[derive(Default)]
struct Inner {
    requests: Vec<ReceivedRequest>,
    metric_requests: Vec<ExportMetricsServiceRequest>,
    stored_spans: usize,
    fail_next: usize,
    fail_until: Option<Instant>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide what the receiver got.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to refuse this request, as the failure knobs say.
    fn should_refuse(&self) -> bool {
        let mut inner = self.lock();
        let refuse = if inner.fail_next > 0 {
            inner.fail_next -= 1;
            true
        } else {
            inner.fail_until.is_some_and(|t| Instant::now() < t)
        };
        if refuse {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        refuse
    }

    fn record(&self, request: ReceivedRequest) {
        let spans = flatten::span_count(&request.request);
        self.spans_received
            .fetch_add(spans as u64, Ordering::Relaxed);
        let mut inner = self.lock();
        if self.keep_requests && inner.stored_spans + spans <= MAX_STORED_SPANS {
            inner.stored_spans += spans;
            inner.requests.push(request);
        }
        drop(inner);
        self.arrived.notify_all();
    }

    /// Counts spans that are not kept (nobody waits on those: `span_count` is polled).
    fn count(&self, spans: usize) {
        self.spans_received
            .fetch_add(spans as u64, Ordering::Relaxed);
    }
}

impl Shared {
    fn record_metrics(&self, request: ExportMetricsServiceRequest) {
        let mut inner = self.lock();
        if self.keep_requests && inner.metric_requests.len() < MAX_STORED_METRIC_REQUESTS {
            inner.metric_requests.push(request);
        }
        drop(inner);
        self.arrived.notify_all();
    }
}

/// A running receiver; dropping it stops the servers.
pub struct OtlpReceiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    scheme: &'static str,
    runtime: Option<Runtime>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Does not block, so dropping inside an async test is safe too.
            runtime.shutdown_background();
        }
    }
}

impl OtlpReceiver {
    /// Both servers on ephemeral 127.0.0.1 ports.
    pub fn start() -> Result<Self, ReceiverError> {
        Self::start_with(ReceiverOptions::default())
    }

    pub fn start_with(options: ReceiverOptions) -> Result<Self, ReceiverError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.worker_threads.max(1))
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .map_err(ReceiverError::Runtime)?;
        let shared = Arc::new(Shared {
            keep_requests: options.keep_requests,
            spans_received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            arrived: Condvar::new(),
        });
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (grpc_addr, http_addr) = runtime.block_on(server::start(
            options.grpc_addr,
            options.http_addr,
            options.tls.as_ref(),
            Arc::clone(&shared),
        ))?;
        Ok(Self {
            shared,
            grpc_addr,
            http_addr,
            scheme,
            runtime: Some(runtime),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT` with the `grpc` protocol.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr)
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`; traces are
    /// posted to `/v1/traces` under it.
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http_addr)
    }

    /// Every stored request, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Every stored span, flattened, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        flatten::spans(&self.shared.lock().requests)
    }

    /// Spans received so far, stored or not.
    pub fn span_count(&self) -> u64 {
        self.shared.spans_received.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` spans are stored or `timeout` passes, and returns what is
    /// there either way.
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let until = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        while inner.stored_spans < n {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            inner = match self.shared.arrived.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        flatten::spans(&inner.requests)
    }

    /// Every stored metrics export request, in arrival order.
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        self.shared.lock().metric_requests.clone()
    }

    /// Waits until `check` holds for the metrics requests stored so far, or `timeout`
    /// passes; returns them either way.
    pub fn wait_for_metrics(
        &self,
        timeout: Duration,
        check: impl Fn(&[ExportMetricsServiceRequest]) -> bool,
    ) -> Vec<ExportMetricsServiceRequest> {
        let until = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        while !check(&inner.metric_requests) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            inner = match self.shared.arrived.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        inner.metric_requests.clone()
    }

    /// Answers the next `n` requests with gRPC UNAVAILABLE / HTTP 503.
    pub fn fail_requests(&self, n: usize) {
        self.shared.lock().fail_next = n;
    }

    /// Answers every request with gRPC UNAVAILABLE / HTTP 503 for `duration` from now.
    pub fn fail_for(&self, duration: Duration) {
        self.shared.lock().fail_until = Some(Instant::now() + duration);
    }

    /// Requests answered with a failure so far.
    pub fn refused_requests(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Forgets stored requests (counters keep running).
    pub fn clear(&self) {
        let mut inner = self.shared.lock();
        inner.requests.clear();
        inner.metric_requests.clear();
        inner.stored_spans = 0;
    }
}
