use std::{collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind as ProtoKind, status::StatusCode},
};

use super::*;
use crate::{
    export::testutil::{finished, http_span, resource, span_id},
    span::{Resource, SpanKind},
};

/// Attribute values in string form, ints prefixed with `i:` so the type is checked too.
pub(crate) fn attr_map(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => format!("i:{i}"),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn status_code(span: &Span) -> StatusCode {
    span.status.as_ref().map_or(StatusCode::Unset, |s| s.code())
}

fn full_span() -> HttpSpan {
    let mut span = http_span(SpanKind::Server, Some(201));
    span.method = "_OTHER";
    span.method_original = Some("PURGE".to_owned());
    span.query = Some("q=REDACTED".to_owned());
    span.route = Some("/users/{id}".into());
    span.protocol_version = "1.0";
    span.server_address = Some("api.local".into());
    span.server_port = Some(8080);
    span.client_address = Some("10.0.0.2".into());
    span.client_port = Some(51234);
    span.peer_address = Some("10.0.0.2".into());
    span.peer_port = Some(51234);
    span.local_address = Some("10.0.0.1".into());
    span.local_port = Some(8080);
    span.user_agent = Some("curl/8.5".into());
    span.request_body_size = Some(12);
    span.response_body_size = Some(u64::MAX);
    span.parent_span_id = Some(span_id(9));
    span.trace_state = Some("vendor=1".to_owned());
    span.trace_flags = 0x01;
    span
}

#[test]
fn every_semantic_attribute_is_mapped_with_its_type() {
    let proto = to_proto_span(&full_span());
    let attrs = attr_map(&proto.attributes);
    let expected: HashMap<String, String> = [
        ("http.request.method", "_OTHER"),
        ("http.request.method_original", "PURGE"),
        ("url.path", "/users/7"),
        ("url.query", "q=REDACTED"),
        ("url.scheme", "http"),
        ("http.route", "/users/{id}"),
        ("http.response.status_code", "i:201"),
        ("network.protocol.version", "1.0"),
        ("server.address", "api.local"),
        ("server.port", "i:8080"),
        ("client.address", "10.0.0.2"),
        ("client.port", "i:51234"),
        ("network.peer.address", "10.0.0.2"),
        ("network.peer.port", "i:51234"),
        ("network.local.address", "10.0.0.1"),
        ("network.local.port", "i:8080"),
        ("user_agent.original", "curl/8.5"),
        ("http.request.body.size", "i:12"),
        // Sizes beyond i64 saturate instead of wrapping negative.
        ("http.response.body.size", &format!("i:{}", i64::MAX)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attrs, expected);
    assert_eq!(proto.attributes.len(), expected.len(), "no duplicate keys");
}

#[test]
fn absent_optional_fields_produce_no_attributes() {
    let proto = to_proto_span(&http_span(SpanKind::Client, None));
    let mut keys: Vec<_> = attr_map(&proto.attributes).into_keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "http.request.method",
            "network.protocol.version",
            "url.path",
            "url.scheme"
        ]
    );
}

#[test]
fn client_spans_carry_the_full_url() {
    let mut span = http_span(SpanKind::Client, Some(200));
    span.server_address = Some("api.local".into());
    span.server_port = Some(8080);
    span.query = Some("q=REDACTED".to_owned());
    let url = |span: &HttpSpan| attr_map(&to_proto_span(span).attributes).remove("url.full");
    assert_eq!(
        url(&span).as_deref(),
        Some("http://api.local:8080/users/7?q=REDACTED"),
        "with the query as redacted"
    );
    span.server_port = Some(80);
    span.query = None;
    assert_eq!(
        url(&span).as_deref(),
        Some("http://api.local/users/7"),
        "the scheme's default port left out"
    );
    span.server_address = Some("fd00::1".into());
    span.server_port = Some(9000);
    assert_eq!(url(&span).as_deref(), Some("http://[fd00::1]:9000/users/7"));
    span.server_address = None;
    assert_eq!(url(&span), None, "no host, no URL");
    // A proxy's client names the whole URL; CONNECT and OPTIONS * name none.
    span.server_address = Some("proxy.local".into());
    span.path = "http://api.local/users/7".into();
    span.query = Some("q=REDACTED".to_owned());
    assert_eq!(
        url(&span).as_deref(),
        Some("http://api.local/users/7?q=REDACTED")
    );
    for target in ["api.local:443", "*"] {
        span.path = target.into();
        assert_eq!(url(&span), None, "{target}");
    }
    let mut server = http_span(SpanKind::Server, Some(200));
    server.server_address = Some("api.local".into());
    assert_eq!(
        url(&server),
        None,
        "server spans have url.path and url.query"
    );
}

#[test]
fn ids_context_and_timing() {
    let span = full_span();
    let proto = to_proto_span(&span);
    assert_eq!(proto.trace_id, span.trace_id.0.to_vec());
    assert_eq!(proto.span_id, span.span_id.0.to_vec());
    assert_eq!(proto.parent_span_id, span_id(9).0.to_vec());
    assert_eq!(proto.trace_state, "vendor=1");
    assert_eq!(proto.flags, 0x01);
    assert_eq!(proto.name, "GET /users/{id}");
    assert_eq!(proto.start_time_unix_nano, span.start_unix_ns);
    assert_eq!(proto.end_time_unix_nano, span.end_unix_ns);

    let root = to_proto_span(&http_span(SpanKind::Server, Some(200)));
    assert!(root.parent_span_id.is_empty());
    assert!(root.trace_state.is_empty());
}

#[test]
fn unsampled_flags_stay_in_the_low_byte() {
    let mut span = http_span(SpanKind::Server, Some(200));
    span.trace_flags = 0x00;
    assert_eq!(to_proto_span(&span).flags, 0);
    span.trace_flags = 0xff;
    assert_eq!(to_proto_span(&span).flags, 0xff);
}

#[test]
fn end_before_start_is_clamped() {
    let mut span = http_span(SpanKind::Server, Some(200));
    span.end_unix_ns = span.start_unix_ns - 5;
    let proto = to_proto_span(&span);
    assert_eq!(proto.end_time_unix_nano, proto.start_time_unix_nano);
}

#[test]
fn kinds() {
    assert_eq!(
        to_proto_span(&http_span(SpanKind::Server, Some(200))).kind(),
        ProtoKind::Server
    );
    assert_eq!(
        to_proto_span(&http_span(SpanKind::Client, Some(200))).kind(),
        ProtoKind::Client
    );
}

#[test]
fn status_rules() {
    let cases = [
        (SpanKind::Server, Some(500), None, StatusCode::Error),
        (SpanKind::Client, Some(503), None, StatusCode::Error),
        (SpanKind::Server, Some(404), None, StatusCode::Unset),
        (SpanKind::Client, Some(404), None, StatusCode::Error),
        (SpanKind::Server, Some(200), None, StatusCode::Unset),
        (
            SpanKind::Server,
            None,
            Some("connection_closed"),
            StatusCode::Error,
        ),
        (
            SpanKind::Client,
            None,
            Some("connection_closed"),
            StatusCode::Error,
        ),
    ];
    for (kind, code, error_type, expected) in cases {
        let mut span = http_span(kind, code);
        span.error_type = error_type.map(str::to_owned);
        let proto = to_proto_span(&span);
        assert_eq!(status_code(&proto), expected, "{kind:?} {code:?}");
        if let Some(status) = &proto.status {
            assert!(status.message.is_empty());
        }
    }
}

#[test]
fn no_response_sets_error_type_attribute() {
    let mut span = http_span(SpanKind::Client, None);
    span.error_type = Some("connection_closed".to_owned());
    let attrs = attr_map(&to_proto_span(&span).attributes);
    assert_eq!(attrs["error.type"], "connection_closed");
    assert!(!attrs.contains_key("http.response.status_code"));
}

#[test]
fn groups_by_resource_pointer_and_content() {
    let a = resource("frontend");
    let a_again = Arc::new(Resource::clone(&a));
    let b = resource("backend");
    let mut spans = Vec::new();
    for (i, r) in [&a, &b, &a_again, &a].into_iter().enumerate() {
        let mut span = http_span(SpanKind::Server, Some(200));
        span.span_id = span_id(i as u8);
        spans.push(finished(r, span));
    }
    let request = to_request(&spans);
    assert_eq!(request.resource_spans.len(), 2);
    let services: Vec<_> = request
        .resource_spans
        .iter()
        .map(|rs| attr_map(&rs.resource.as_ref().unwrap().attributes)["service.name"].clone())
        .collect();
    assert_eq!(services, ["frontend", "backend"]);
    let ids: Vec<Vec<u8>> = request.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.span_id.clone())
        .collect();
    assert_eq!(
        ids,
        [
            span_id(0).0.to_vec(),
            span_id(2).0.to_vec(),
            span_id(3).0.to_vec()
        ]
    );
    assert_eq!(request.resource_spans[1].scope_spans[0].spans.len(), 1);
}

#[test]
fn resource_attributes_and_scope() {
    let request = to_request(&[finished(
        &resource("frontend"),
        http_span(SpanKind::Server, Some(200)),
    )]);
    let rs = &request.resource_spans[0];
    let attrs = attr_map(&rs.resource.as_ref().unwrap().attributes);
    assert_eq!(attrs["service.name"], "frontend");
    assert_eq!(attrs["process.pid"], "i:4242");
    assert_eq!(rs.scope_spans.len(), 1);
    let scope = rs.scope_spans[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "loupe");
    assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn empty_batch_is_an_empty_request() {
    assert!(to_request(&[]).resource_spans.is_empty());
}
