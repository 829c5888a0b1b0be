use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::trace_service_client::TraceServiceClient,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message as _;
use tonic::codec::CompressionEncoding;

use super::*;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(name: &str, id: u8, parent: Option<u8>) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.to_owned(),
        kind: SpanKind::Server as i32,
        flags: 1,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 3_500,
        attributes: vec![
            kv("http.request.method", Value::StringValue("GET".to_owned())),
            kv("http.response.status_code", Value::IntValue(503)),
            kv("flag", Value::BoolValue(true)),
        ],
        status: Some(Status {
            message: String::new(),
            code: StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(service.to_owned())),
                    kv("process.pid", Value::IntValue(77)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "loupe".to_owned(),
                    version: "0.1.0".to_owned(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn grpc_send(
    receiver: &OtlpReceiver,
    message: ExportTraceServiceRequest,
) -> Result<(), tonic::Status> {
    let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("api-key", "secret".parse().unwrap());
    client.export(request).await.map(|_| ())
}

/// A plain HTTP/1.1 exchange; returns the status code and body.
fn http(
    receiver: &OtlpReceiver,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(receiver.http_addr()).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");

#[test]
fn grpc_requests_are_stored_and_flattened() {
    let receiver = OtlpReceiver::start().unwrap();
    runtime()
        .block_on(grpc_send(
            &receiver,
            request(
                "checkout",
                vec![span("GET /a", 1, None), span("GET", 2, Some(1))],
            ),
        ))
        .unwrap();
    let spans = receiver.wait_for_spans(2, Duration::from_secs(5));
    assert_eq!(spans.len(), 2);
    let first = &spans[0];
    assert_eq!(first.transport, Transport::Grpc);
    assert_eq!(first.service_name(), Some("checkout"));
    assert_eq!(first.resource["process.pid"], "77");
    assert_eq!(first.scope_name, "loupe");
    assert_eq!(first.name, "GET /a");
    assert_eq!(first.kind, "server");
    assert_eq!(first.trace_id, "ab".repeat(16));
    assert_eq!(first.span_id, "01".repeat(8));
    assert_eq!(first.parent_span_id, None);
    assert_eq!(spans[1].parent_span_id, Some("01".repeat(8)));
    assert_eq!(first.attr("http.request.method"), Some("GET"));
    assert_eq!(first.attr("http.response.status_code"), Some("503"));
    assert_eq!(first.attr("flag"), Some("true"));
    assert_eq!(first.status_code, "error");
    assert_eq!(first.flags, 1);
    assert_eq!(first.duration_ns(), 2_500);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].gzip);
    assert_eq!(requests[0].headers["api-key"], "secret");
    assert_eq!(receiver.span_count(), 2);
}

#[test]
fn http_requests_plain_and_gzip() {
    let receiver = OtlpReceiver::start().unwrap();
    let body = request("web", vec![span("GET /x", 3, None)]).encode_to_vec();
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        200
    );
    let (status, _) = http(
        &receiver,
        "POST",
        "/v1/traces",
        &[PROTOBUF, ("Content-Encoding", "gzip"), ("X-Tenant", "a")],
        &gzip(&body),
    );
    assert_eq!(status, 200);
    let spans = receiver.wait_for_spans(2, Duration::from_secs(5));
    assert_eq!(spans.len(), 2);
    assert!(
        spans
            .iter()
            .all(|s| s.transport == Transport::Http && s.name == "GET /x")
    );
    let requests = receiver.requests();
    assert!(!requests[0].gzip);
    assert!(requests[1].gzip);
    assert_eq!(requests[1].headers["x-tenant"], "a");
    assert_eq!(
        http(&receiver, "GET", "/count", &[], b""),
        (200, "2\n".to_owned())
    );
}

#[test]
fn http_refuses_what_it_cannot_read() {
    let receiver = OtlpReceiver::start().unwrap();
    let body = request("web", vec![span("GET", 1, None)]).encode_to_vec();
    let json = ("Content-Type", "application/json");
    assert_eq!(http(&receiver, "POST", "/v1/traces", &[json], b"{}").0, 415);
    assert_eq!(http(&receiver, "POST", "/v1/traces", &[], &body).0, 415);
    assert_eq!(
        http(
            &receiver,
            "POST",
            "/v1/traces",
            &[PROTOBUF],
            b"\xff\xff\xff"
        )
        .0,
        400
    );
    let gz = ("Content-Encoding", "gzip");
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF, gz], &body).0,
        400
    );
    let br = ("Content-Encoding", "br");
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF, br], &body).0,
        415
    );
    assert_eq!(
        http(&receiver, "POST", "/v1/logs", &[PROTOBUF], &body).0,
        404
    );
    assert_eq!(receiver.span_count(), 0);
    assert!(receiver.requests().is_empty());
}

#[test]
fn failure_knobs_answer_unavailable_then_recover() {
    let receiver = OtlpReceiver::start().unwrap();
    let rt = runtime();
    let body = request("web", vec![span("GET", 1, None)]).encode_to_vec();

    receiver.fail_requests(2);
    let refused = rt
        .block_on(grpc_send(
            &receiver,
            request("a", vec![span("GET", 1, None)]),
        ))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        503
    );
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        200
    );
    assert_eq!(receiver.refused_requests(), 2);

    receiver.fail_for(Duration::from_secs(1));
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        503
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        rt.block_on(grpc_send(
            &receiver,
            request("a", vec![span("GET", 1, None)])
        ))
        .is_ok()
    );
    assert_eq!(receiver.refused_requests(), 3);
    assert_eq!(receiver.span_count(), 2);
}

#[test]
fn wait_for_spans_gives_up_after_the_timeout() {
    let receiver = OtlpReceiver::start().unwrap();
    let started = Instant::now();
    let spans = receiver.wait_for_spans(1, Duration::from_millis(200));
    assert!(spans.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn clear_forgets_stored_spans_but_keeps_counting() {
    let receiver = OtlpReceiver::start().unwrap();
    let body = request("web", vec![span("GET", 1, None)]).encode_to_vec();
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        200
    );
    receiver.clear();
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.span_count(), 1);
}

#[test]
fn count_only_mode_stores_nothing() {
    let receiver = OtlpReceiver::start_with(ReceiverOptions {
        keep_requests: false,
        ..ReceiverOptions::default()
    })
    .unwrap();
    let body = request("web", vec![span("GET", 1, None), span("GET", 2, None)]).encode_to_vec();
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], &body).0,
        200
    );
    assert_eq!(receiver.span_count(), 2);
    assert!(receiver.requests().is_empty());
    // Counting without decoding still refuses what is not an export request.
    let cut = &body[..body.len() - 1];
    assert_eq!(
        http(&receiver, "POST", "/v1/traces", &[PROTOBUF], cut).0,
        400
    );
    assert_eq!(receiver.span_count(), 2);
}

#[test]
fn dropping_inside_an_async_context_does_not_panic() {
    let receiver = OtlpReceiver::start().unwrap();
    runtime().block_on(async move { drop(receiver) });
}

#[test]
fn http_metrics_are_stored_apart_from_spans() {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        metrics::v1::{Metric, ResourceMetrics, ScopeMetrics},
    };
    let receiver = OtlpReceiver::start().unwrap();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "http.server.request.duration".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body = request.encode_to_vec();
    assert_eq!(
        http(&receiver, "POST", "/v1/metrics", &[PROTOBUF], &body).0,
        200
    );
    let gz = ("Content-Encoding", "gzip");
    assert_eq!(
        http(
            &receiver,
            "POST",
            "/v1/metrics",
            &[PROTOBUF, gz],
            &gzip(&body)
        )
        .0,
        200
    );
    assert_eq!(
        http(&receiver, "POST", "/v1/metrics", &[PROTOBUF], b"\xff\xff").0,
        400
    );
    let got = receiver.wait_for_metrics(Duration::from_secs(5), |r| r.len() >= 2);
    assert_eq!(got, vec![request.clone(), request]);
    assert_eq!(receiver.span_count(), 0);
    assert!(receiver.spans().is_empty());
    receiver.fail_requests(1);
    assert_eq!(
        http(&receiver, "POST", "/v1/metrics", &[PROTOBUF], &body).0,
        503
    );
    assert_eq!(receiver.metric_requests().len(), 2);
}
