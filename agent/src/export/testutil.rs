//! Span fixtures shared by the export tests.

use std::sync::Arc;

use crate::span::{AttrValue, FinishedSpan, HttpSpan, Resource, SpanId, SpanKind, TraceId};

pub fn resource(service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.to_owned(),
        attributes: vec![
            (
                "service.name".to_owned(),
                AttrValue::Str(service.to_owned()),
            ),
            ("process.pid".to_owned(), AttrValue::Int(4242)),
        ],
    })
}

pub fn trace_id(n: u8) -> TraceId {
    let mut id = [0u8; 16];
    id[0] = 0xab;
    id[15] = n;
    TraceId(id)
}

pub fn span_id(n: u8) -> SpanId {
    let mut id = [0u8; 8];
    id[0] = 0xcd;
    id[7] = n;
    SpanId(id)
}

/// A completed `GET /users/{id}` server span with every optional field empty.
pub fn http_span(kind: SpanKind, status: Option<u16>) -> HttpSpan {
    HttpSpan {
        trace_id: trace_id(1),
        span_id: span_id(1),
        parent_span_id: None,
        trace_flags: 1,
        trace_state: None,
        kind,
        name: "GET /users/{id}".into(),
        start_unix_ns: 1_700_000_000_000_000_000,
        end_unix_ns: 1_700_000_000_012_300_000,
        method: "GET",
        method_original: None,
        path: "/users/7".into(),
        query: None,
        scheme: "http",
        route: None,
        status_code: status,
        protocol_version: "1.1",
        server_address: None,
        server_port: None,
        client_address: None,
        client_port: None,
        peer_address: None,
        peer_port: None,
        local_address: None,
        local_port: None,
        user_agent: None,
        request_body_size: None,
        response_body_size: None,
        error_type: None,
        link: None,
    }
}

pub fn finished(resource: &Arc<Resource>, span: HttpSpan) -> FinishedSpan {
    FinishedSpan {
        resource: Arc::clone(resource),
        span,
    }
}

/// `n` distinct server spans of one trace.
pub fn batch(resource: &Arc<Resource>, n: usize) -> Vec<FinishedSpan> {
    (0..n)
        .map(|i| {
            let mut span = http_span(SpanKind::Server, Some(200));
            let mut id = [0u8; 8];
            id[..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            span.span_id = SpanId(id);
            finished(resource, span)
        })
        .collect()
}

/// A self-signed certificate (CN=localhost, made with openssl), for tests that only parse one.
pub const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBfDCCASOgAwIBAgIUSrBsMKcywCjxplCDGhE6nm7C4DQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwNDIzMzM1MloXDTM2MTIwMTIz
MzM1MlowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEUh68kqrIsmpADylT4jkKvj6VGUVxbLx3OpY9RbkkgdcbBHzlxxN/Kv53
HgNF1fUfZHP6L8GJiqkVf5eDu+5B76NTMFEwHQYDVR0OBBYEFOhf5MKjo7oSzSRk
NoMaU4014otXMB8GA1UdIwQYMBaAFOhf5MKjo7oSzSRkNoMaU4014otXMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgf+KDQ3nrYLbqdwbTctmeAG4K
2b4jRqAz9vHGxMD6iLsCICgmaNFvVL7i974wiEwdiKBNz0mJW27XdZDHSTJO4gvz
-----END CERTIFICATE-----
";

/// The private key of [`CERT_PEM`], made for these tests and used nowhere else.
pub const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgx+Ec7psxC362BQGZ
DNzf0nv0P+wZyRd36eno/hLIcTehRANCAARSHrySqsiyakAPKVPiOQq+PpUZRXFs
vHc6lj1FuSSB1xsEfOXHE38q/nceA0XV9R9kc/ovwYmKqRV/l4O77kHv
-----END PRIVATE KEY-----
";

/// A key that belongs to no certificate here.
pub const OTHER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKY7mNmQeQrze+Ryb
pcywIZmtoLsMjBNpgvd1npK7ehWhRANCAASpMz9NtsPjMAX3R9xHKDuMIKygZIxK
ArW9acEmmOc3IpLmcEARzodEFpMLGhaKMFWPjSbcL7Ikg8Xrqpr2Iu7p
-----END PRIVATE KEY-----
";
