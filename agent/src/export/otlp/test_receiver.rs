//! A minimal in-process OTLP receiver (gRPC and HTTP, traces and metrics) for the
//! exporters' round-trip tests.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Read as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tonic::{codec::CompressionEncoding, transport::server::TcpIncoming};

/// How the receiver answers the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept,
    /// UNAVAILABLE / 503, optionally asking for a pause.
    Unavailable {
        retry_after: Option<Duration>,
    },
    /// INVALID_ARGUMENT / 400.
    Reject,
    /// Success with this many spans refused through partial success.
    Partial {
        rejected: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Received {
    pub grpc: bool,
    pub gzip: bool,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub request: ExportTraceServiceRequest,
}

/// A metrics export request as it arrived.
#[derive(Clone, Debug)]
pub struct ReceivedMetrics {
    pub grpc: bool,
    pub gzip: bool,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub request: ExportMetricsServiceRequest,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    received_metrics: Mutex<Vec<ReceivedMetrics>>,
    /// Answers for the next requests, front first; `Accept` once empty.
    script: Mutex<Vec<Answer>>,
    attempts: Mutex<Vec<Instant>>,
}

impl State {
    fn next_answer(&self) -> Answer {
        self.attempts.lock().unwrap().push(Instant::now());
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            Answer::Accept
        } else {
            script.remove(0)
        }
    }

    fn record(&self, received: Received) {
        self.received.lock().unwrap().push(received);
    }
}

/// A loopback address where connections are refused for as long as this is held. The
/// port stays bound (without `SO_REUSEADDR`, never listened on), so no other test's
/// receiver can be given it meanwhile: a port merely freed again was, now and then, and
/// a "dead" collector's exports then landed in a parallel test's receiver.
pub struct RefusingAddr {
    _bound: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl RefusingAddr {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        Self {
            _bound: socket,
            addr,
        }
    }
}

pub struct TestReceiver {
    pub grpc_addr: SocketAddr,
    /// The gRPC metrics service listens apart from the trace service.
    pub grpc_metrics_addr: SocketAddr,
    pub http_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TestReceiver {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc_listener.local_addr().unwrap();
        let http_addr = http_listener.local_addr().unwrap();
        let traces = TraceServiceServer::new(GrpcService(Arc::clone(&state)))
            .accept_compressed(CompressionEncoding::Gzip);
        let metrics = MetricsServiceServer::new(GrpcService(Arc::clone(&state)))
            .accept_compressed(CompressionEncoding::Gzip);
        // One service per server: a tonic server without a router serves only one.
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_metrics_addr = metrics_listener.local_addr().unwrap();
        let grpc = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(
                    traces,
                    TcpIncoming::from(grpc_listener),
                    std::future::pending::<()>(),
                )
                .await;
        });
        let grpc_metrics = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(
                    metrics,
                    TcpIncoming::from(metrics_listener),
                    std::future::pending::<()>(),
                )
                .await;
        });
        let http_state = Arc::clone(&state);
        let http = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http_listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&http_state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle_http(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            grpc_addr,
            http_addr,
            state,
            grpc_metrics_addr,
            tasks: vec![grpc, grpc_metrics, http],
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http_addr)
    }

    pub fn grpc_metrics_endpoint(&self) -> String {
        format!("http://{}", self.grpc_metrics_addr)
    }

    pub fn http_metrics_url(&self) -> String {
        format!("http://{}/v1/metrics", self.http_addr)
    }

    pub fn received_metrics(&self) -> Vec<ReceivedMetrics> {
        self.state.received_metrics.lock().unwrap().clone()
    }

    pub async fn wait_for_metrics(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.received_metrics().len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received_metrics().len() >= n
    }

    pub fn script(&self, answers: &[Answer]) {
        *self.state.script.lock().unwrap() = answers.to_vec();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn attempts(&self) -> Vec<Instant> {
        self.state.attempts.lock().unwrap().clone()
    }

    pub fn span_count(&self) -> usize {
        self.received()
            .iter()
            .flat_map(|r| &r.request.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.span_count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.span_count() >= n
    }
}

fn response(rejected: i64) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: "refused".to_owned(),
        }),
    }
}

fn metrics_response(rejected: i64) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected,
            error_message: "refused".to_owned(),
        }),
    }
}

/// How a scripted answer ends a gRPC call: `Ok(rejected)` or the error status.
fn grpc_answer(answer: Answer) -> Result<i64, tonic::Status> {
    match answer {
        Answer::Accept => Ok(0),
        Answer::Partial { rejected } => Ok(rejected),
        Answer::Unavailable { retry_after } => {
            let details = retry_after
                .map(super::grpc::encode_retry_info)
                .unwrap_or_default();
            Err(tonic::Status::with_details(
                tonic::Code::Unavailable,
                "try later",
                details.into(),
            ))
        }
        Answer::Reject => Err(tonic::Status::invalid_argument("bad batch")),
    }
}

fn metadata_headers(metadata: &tonic::metadata::MetadataMap) -> HashMap<String, String> {
    metadata
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

struct GrpcService(Arc<State>);

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let rejected = grpc_answer(self.0.next_answer())?;
        let headers = metadata_headers(request.metadata());
        self.0
            .received_metrics
            .lock()
            .unwrap()
            .push(ReceivedMetrics {
                grpc: true,
                gzip: headers.get("grpc-encoding").is_some_and(|v| v == "gzip"),
                path: String::new(),
                headers,
                request: request.into_inner(),
            });
        Ok(tonic::Response::new(metrics_response(rejected)))
    }
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let rejected = grpc_answer(self.0.next_answer())?;
        let headers = metadata_headers(request.metadata());
        self.0.record(Received {
            grpc: true,
            gzip: headers.get("grpc-encoding").is_some_and(|v| v == "gzip"),
            path: String::new(),
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(response(rejected)))
    }
}

async fn handle_http(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    let path = req.uri().path().to_owned();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let Ok(body) = req.into_body().collect().await else {
        return reply(400, Vec::new());
    };
    let answer = state.next_answer();
    let rejected = match answer {
        Answer::Accept => 0,
        Answer::Partial { rejected } => rejected,
        Answer::Unavailable { retry_after } => {
            let mut response = Response::builder().status(503);
            if let Some(after) = retry_after {
                response = response.header("retry-after", after.as_secs().to_string());
            }
            return Ok(response.body(Full::new(Bytes::new())).unwrap());
        }
        Answer::Reject => return reply(400, Vec::new()),
    };
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let mut bytes = body.to_bytes().to_vec();
    if gzip {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut plain)
            .is_err()
        {
            return reply(400, Vec::new());
        }
        bytes = plain;
    }
    if path == "/v1/metrics" {
        let Ok(request) = ExportMetricsServiceRequest::decode(bytes.as_slice()) else {
            return reply(400, Vec::new());
        };
        state
            .received_metrics
            .lock()
            .unwrap()
            .push(ReceivedMetrics {
                grpc: false,
                gzip,
                path,
                headers,
                request,
            });
        return reply(200, metrics_response(rejected).encode_to_vec());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(bytes.as_slice()) else {
        return reply(400, Vec::new());
    };
    state.record(Received {
        grpc: false,
        gzip,
        path,
        headers,
        request,
    });
    reply(200, response(rejected).encode_to_vec())
}
