//! The gRPC and HTTP servers behind `OtlpReceiver`.

use std::{collections::BTreeMap, convert::Infallible, io::Read as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse},
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::{codec::CompressionEncoding, transport::server::TcpIncoming};

use super::{ReceivedRequest, ReceiverError, ReceiverTls, Shared, Transport, count, tls};

/// Largest request accepted, compressed or not.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Binds both listeners (so that their ports are known on return) and serves them.
pub(super) async fn start(
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    tls: Option<&ReceiverTls>,
    shared: Arc<Shared>,
) -> Result<(SocketAddr, SocketAddr), ReceiverError> {
    let bind = |addr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ReceiverError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ReceiverError::Bind { addr, source })?;
        Ok::<_, ReceiverError>((listener, local))
    };
    let (grpc_listener, grpc_local) = bind(grpc_addr).await?;
    let (http_listener, http_local) = bind(http_addr).await?;

    let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&shared)))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_BODY);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls::grpc(tls))
            .map_err(|e| ReceiverError::Tls(e.to_string()))?;
    }
    let acceptor = tls.map(tls::acceptor).transpose()?;
    tokio::spawn(async move {
        let served = builder
            .serve_with_incoming_shutdown(
                service,
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                std::future::pending::<()>(),
            )
            .await;
        if let Err(e) = served {
            eprintln!("otlp receiver: gRPC server stopped: {e}");
        }
    });
    tokio::spawn(serve_http(http_listener, acceptor, shared));
    Ok((grpc_local, http_local))
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

struct GrpcReceiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.should_refuse() {
            return Err(tonic::Status::unavailable("receiver told to fail"));
        }
        let headers = header_map(&request.metadata().clone().into_headers());
        let gzip = headers.get("grpc-encoding").is_some_and(|v| v == "gzip");
        self.0.record(ReceivedRequest {
            transport: Transport::Grpc,
            gzip,
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve_http(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                eprintln!("otlp receiver: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            let http = hyper::server::conn::http1::Builder::new();
            match acceptor {
                // A client that fails the handshake (an unknown CA, no client certificate
                // when one is required) gets no further.
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/count") => {
            let count = shared
                .spans_received
                .load(std::sync::atomic::Ordering::Relaxed);
            Ok(reply(StatusCode::OK, text, format!("{count}\n")))
        }
        (&Method::POST, "/v1/traces") => Ok(export(&shared, req).await),
        (&Method::POST, "/v1/metrics") => Ok(export_metrics(&shared, req).await),
        _ => Ok(reply(StatusCode::NOT_FOUND, text, "not found\n")),
    }
}

/// The headers, whether it came gzip-compressed, and the plain body of an export request;
/// or the answer that refuses it.
async fn read_export(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(BTreeMap<String, String>, bool, Bytes), Response<Full<Bytes>>> {
    let text = "text/plain";
    let headers = header_map(req.headers());
    let content_type = headers
        .get("content-type")
        .map(String::as_str)
        .unwrap_or("");
    if content_type != "application/x-protobuf" {
        return Err(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            text,
            "only application/x-protobuf is accepted\n",
        ));
    }
    let gzip = match req.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None | Some(b"identity") => false,
        Some(b"gzip") => true,
        Some(_) => {
            return Err(reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                text,
                "unknown encoding\n",
            ));
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                text,
                "body too large or cut\n",
            ));
        }
    };
    // Counted only once the body is in, like a collector that read and then refused it.
    if shared.should_refuse() {
        // No Retry-After: the exporter's own backoff is what the tests exercise.
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "receiver told to fail\n",
        ));
    }
    let plain = if gzip {
        let mut plain = Vec::new();
        let limit = u64::try_from(MAX_BODY).unwrap_or(u64::MAX);
        let mut decoder = flate2::read::GzDecoder::new(body.as_ref()).take(limit);
        if decoder.read_to_end(&mut plain).is_err() {
            return Err(reply(StatusCode::BAD_REQUEST, text, "bad gzip body\n"));
        }
        Bytes::from(plain)
    } else {
        body
    };
    Ok((headers, gzip, plain))
}

async fn export(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = "text/plain";
    let (headers, gzip, plain) = match read_export(shared, req).await {
        Ok(parts) => parts,
        Err(refusal) => return refusal,
    };
    if !shared.keep_requests {
        return match count::span_count(&plain) {
            Ok(spans) => {
                shared.count(spans);
                accepted()
            }
            Err(e) => reply(
                StatusCode::BAD_REQUEST,
                text,
                format!("not an ExportTraceServiceRequest: {e}\n"),
            ),
        };
    }
    let Ok(request) = ExportTraceServiceRequest::decode(plain) else {
        return reply(
            StatusCode::BAD_REQUEST,
            text,
            "not an ExportTraceServiceRequest\n",
        );
    };
    shared.record(ReceivedRequest {
        transport: Transport::Http,
        gzip,
        headers,
        request,
    });
    accepted()
}

fn accepted() -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/x-protobuf",
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

async fn export_metrics(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (_, _, plain) = match read_export(shared, req).await {
        Ok(parts) => parts,
        Err(refusal) => return refusal,
    };
    let Ok(request) = ExportMetricsServiceRequest::decode(plain) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "not an ExportMetricsServiceRequest\n",
        );
    };
    shared.record_metrics(request);
    reply(
        StatusCode::OK,
        "application/x-protobuf",
        ExportMetricsServiceResponse::default().encode_to_vec(),
    )
}
