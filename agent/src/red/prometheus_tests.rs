use std::sync::Arc;

use super::*;
use crate::{
    export::testutil::{http_span, resource},
    red::store::{Limits, Store},
    span::{AttrValue, HttpSpan, Resource, SpanKind},
};

const MS: u64 = 1_000_000;

fn span(kind: SpanKind, route: &str, status: Option<u16>, ms: u64) -> HttpSpan {
    let mut span = http_span(kind, status);
    span.name = format!("GET {route}").into();
    span.route = (kind == SpanKind::Server).then(|| route.into());
    span.end_unix_ns = span.start_unix_ns + ms * MS;
    span
}

#[test]
fn golden_exposition() {
    let mut store = Store::new(Limits {
        max_series: 5,
        ..Limits::default()
    });
    let shop = resource("shop");
    // A second process of the same service: summed into the same Prometheus series.
    let mut other = (*resource("shop")).clone();
    other.attributes[1].1 = AttrValue::Int(7);
    let shop2 = Arc::new(other);

    store.observe(&shop, &span(SpanKind::Server, "/users/{id}", Some(200), 3));
    store.observe(
        &shop2,
        &span(SpanKind::Server, "/users/{id}", Some(200), 80),
    );
    let mut fail = span(SpanKind::Server, "/fail", Some(500), 1_500);
    fail.error_type = Some("500".into());
    store.observe(&shop, &fail);
    let mut lost = span(SpanKind::Client, "/a\"b\\c\nd", None, 12_000);
    lost.error_type = Some("no_response".into());
    lost.server_address = Some("inventory".into());
    lost.server_port = Some(8080);
    store.observe(&shop, &lost);
    // The series limit (5) is reached; the next new series overflows.
    store.observe(&shop, &span(SpanKind::Server, "/x", Some(200), 10));
    store.observe(&shop, &span(SpanKind::Server, "/y", Some(200), 10));

    let text = render(&store.snapshot());
    let expected = include_str!("prometheus_golden.txt");
    assert_eq!(text, expected, "got:\n{text}");
}

#[test]
fn empty_store_has_only_metadata() {
    assert_eq!(
        render(&[]),
        "# HELP http_server_request_duration_seconds Duration of HTTP server requests, measured by loupe.\n\
         # TYPE http_server_request_duration_seconds histogram\n\
         # HELP http_client_request_duration_seconds Duration of HTTP client requests, measured by loupe.\n\
         # TYPE http_client_request_duration_seconds histogram\n"
    );
}

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    escape_into(&mut out, "a\"b\\c\nd\té");
    assert_eq!(out, "a\\\"b\\\\c\\nd\té");
}

#[test]
fn service_names_are_escaped_too() {
    let mut store = Store::new(Limits::default());
    let r = Arc::new(Resource {
        service_name: "we\"ird".into(),
        attributes: vec![],
    });
    store.observe(&r, &span(SpanKind::Server, "/", Some(204), 1));
    let text = render(&store.snapshot());
    assert!(
        text.contains(r#"_count{service_name="we\"ird",http_request_method="GET",http_route="/",http_response_status_code="204",url_scheme="http"} 1"#),
        "{text}"
    );
}
