use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use super::*;
use crate::{
    export::{
        otlp::convert::to_request,
        testutil::{finished, http_span, resource, span_id, trace_id},
    },
    span::{SpanKind, SpanLink},
};

/// Every optional field set, an error status, a parent, trace state and odd values.
fn varied_spans() -> Vec<FinishedSpan> {
    let web = resource("web");
    let db = resource("db");
    let mut full = http_span(SpanKind::Client, Some(503));
    full.method = "_OTHER";
    full.method_original = Some("PURGE".into());
    full.query = Some("a=REDACTED&b".into());
    full.route = Some("/users/{id}".into());
    full.server_address = Some("api.local".into());
    full.server_port = Some(8443);
    full.client_address = Some("10.0.0.1".into());
    full.client_port = Some(40000);
    full.peer_address = Some("::1".into());
    full.peer_port = Some(1);
    full.local_address = Some("127.0.0.1".into());
    full.local_port = Some(65535);
    full.user_agent = Some("curl/8 ünïcode".into());
    full.request_body_size = Some(u64::MAX);
    full.response_body_size = Some(300);
    full.error_type = Some("503".into());
    full.parent_span_id = Some(span_id(9));
    full.trace_state = Some("vendor=1,other=two".into());
    full.trace_flags = 1;
    full.link = Some(Box::new(SpanLink {
        trace_id: trace_id(7),
        span_id: span_id(8),
    }));
    full.name = "x".repeat(300).into();

    let mut bare = http_span(SpanKind::Server, None);
    bare.trace_id = trace_id(0xff);
    bare.trace_flags = 0;
    bare.trace_state = Some(String::new());
    bare.end_unix_ns = bare.start_unix_ns - 1;

    // Values outside the compile-time constants take the general path.
    let mut unlisted = http_span(SpanKind::Server, Some(200));
    unlisted.method = "PURGE";
    unlisted.scheme = "ftp";
    unlisted.protocol_version = "2";
    let mut old = http_span(SpanKind::Client, Some(200));
    old.method = "POST";
    old.scheme = "https";
    old.protocol_version = "1.0";

    vec![
        finished(&web, http_span(SpanKind::Server, Some(200))),
        finished(&db, full),
        finished(&web, bare),
        finished(&db, http_span(SpanKind::Server, Some(404))),
        finished(&web, unlisted),
        finished(&web, old),
    ]
}

#[test]
fn decodes_to_what_the_generated_messages_hold() {
    let batch = varied_spans();
    let encoded = trace_request(&batch);
    let decoded = ExportTraceServiceRequest::decode(encoded.as_slice()).expect("valid protobuf");
    assert_eq!(decoded, to_request(&batch));
    assert_eq!(decoded.resource_spans.len(), 2, "grouped by resource");
}

#[test]
fn byte_for_byte_equal_to_prost() {
    // Same field order and the same omissions of defaults: collectors see no difference.
    let batch = varied_spans();
    assert_eq!(trace_request(&batch), to_request(&batch).encode_to_vec());
}

#[test]
fn empty_batch_is_an_empty_request() {
    assert!(trace_request(&[]).is_empty());
}

#[test]
fn large_batches_stay_valid() {
    let web = resource("web");
    let batch: Vec<_> = (0..2000u32)
        .map(|i| {
            let mut span = http_span(SpanKind::Server, Some(200 + (i % 400) as u16));
            span.path = format!("/item/{i}").into();
            finished(&web, span)
        })
        .collect();
    let decoded = ExportTraceServiceRequest::decode(trace_request(&batch).as_slice()).unwrap();
    assert_eq!(decoded, to_request(&batch));
}

#[test]
fn varint_lengths() {
    for value in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
        let mut out = Vec::new();
        varint(&mut out, value);
        assert_eq!(varint_len(value), out.len(), "{value}");
    }
}
