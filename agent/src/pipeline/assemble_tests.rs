use std::sync::Arc;

use super::*;
use crate::{
    pipeline::linking::{Linker, RequestKey, resolve},
    protocol::http1::{HttpRequest, HttpResponse},
    span::context::{extract, span_id_hex, trace_id_hex},
};

/// Assembles with the ids the linker gives a lone request.
fn build(
    a: &mut SpanAssembler,
    ex: &HttpExchange,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
) -> HttpSpan {
    let mut linker = Linker::default();
    let header = extract(&ex.request.headers);
    let node = match ex.role {
        Role::Server => linker.server_start(LONE, 7, 0, None, header, None),
        Role::Client => linker.client_start(LONE, 7, 0, None, header, None, None).0,
    };
    a.assemble(ex.clone(), resolve(&node), local, remote)
}

/// The key of a request alone on its connection.
const LONE: RequestKey = RequestKey {
    tgid: 1,
    fd: 1,
    conn_id: 1,
    request_id: 0,
};

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: method.to_string().into(),
        target: target.into(),
        minor_version: 1,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string().into(), (*v).into()))
            .collect(),
        body_len: 0,
        head_truncated: false,
    }
}

fn response(status: u16, body_len: u64) -> HttpResponse {
    HttpResponse {
        status,
        minor_version: 1,
        headers: vec![],
        body_len,
        head_truncated: false,
    }
}

fn exchange(role: Role, req: HttpRequest, resp: Option<HttpResponse>) -> HttpExchange {
    let has_response = resp.is_some();
    HttpExchange {
        role,
        request: req,
        response: resp,
        request_first_start_ns: 1_000,
        request_first_end_ns: 2_000,
        request_last_end_ns: 3_000,
        response_first_start_ns: if has_response { 4_000 } else { 0 },
        response_last_end_ns: if has_response { 9_000 } else { 0 },
        request_tid: 7,
        response_tid: if has_response { 7 } else { 0 },
        outcome: if has_response {
            ExchangeOutcome::Complete
        } else {
            ExchangeOutcome::NoResponse
        },
        close_ns: if has_response { 0 } else { 12_000 },
        request_id: 0,
    }
}

fn assembler() -> SpanAssembler {
    let routes = RouteMatcher::new(&["/orders/{id}".to_string()]).unwrap();
    SpanAssembler::new(routes, Clock::measure())
}

fn addr(text: &str) -> Option<SocketAddr> {
    Some(text.parse().unwrap())
}

#[test]
fn server_span_follows_the_conventions() {
    let req = request(
        "GET",
        "/orders/42?token=secret&x",
        &[
            ("host", "shop.example:8080"),
            ("user-agent", "curl/8"),
            ("authorization", "Bearer s3cret"),
        ],
    );
    let ex = exchange(Role::Server, req, Some(response(200, 5)));
    let span = build(
        &mut assembler(),
        &ex,
        addr("127.0.0.1:8080"),
        addr("10.0.0.9:50000"),
    );
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(&*span.name, "GET /orders/{id}");
    assert_eq!(span.route.as_deref(), Some("/orders/{id}"));
    assert_eq!(span.path, "/orders/42");
    assert_eq!(span.query.as_deref(), Some("token=REDACTED&x"));
    assert_eq!(span.status_code, Some(200));
    assert_eq!(span.server_address.as_deref(), Some("shop.example"));
    assert_eq!(span.server_port, Some(8080));
    assert_eq!(span.client_address.as_deref(), Some("10.0.0.9"));
    assert_eq!(span.client_port, Some(50000));
    assert_eq!(span.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(span.response_body_size, Some(5));
    assert_eq!(span.protocol_version, "1.1");
    assert!(span.error_type.is_none() && !span.is_error());
    // From the first request byte in hand to the last response byte written.
    assert_eq!(span.end_unix_ns - span.start_unix_ns, 9_000 - 2_000);
    assert!(span.parent_span_id.is_none());
    assert_eq!(span.trace_flags, 1);
    // No header value other than the conventions' ones ends up anywhere on the span.
    assert!(!format!("{span:?}").contains("s3cret"));
    assert!(!format!("{span:?}").contains("secret&"));
}

#[test]
fn opt_in_attributes_only_when_asked_for() {
    let mut req = request("POST", "/orders", &[("host", "shop.example")]);
    req.body_len = 7;
    let ex = exchange(Role::Server, req, Some(response(201, 5)));
    let (local, remote) = (addr("127.0.0.1:8080"), addr("10.0.0.9:50000"));
    let all = build(&mut assembler(), &ex, local, remote);
    assert_eq!(all.client_port, Some(50000));
    assert_eq!(all.local_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(all.local_port, Some(8080));
    assert_eq!(all.request_body_size, Some(7));
    assert_eq!(all.response_body_size, Some(5));

    let mut recommended = assembler().with_attributes(SpanAttributes::Recommended);
    let span = build(&mut recommended, &ex, local, remote);
    assert_eq!(span.client_port, None);
    assert_eq!(span.local_address, None);
    assert_eq!(span.local_port, None);
    assert_eq!(span.request_body_size, None);
    assert_eq!(span.response_body_size, None);
    // The recommended ones stay, the local port still standing in for the Host header's.
    assert_eq!(span.client_address.as_deref(), Some("10.0.0.9"));
    assert_eq!(span.peer_port, Some(50000));
    assert_eq!(span.server_address.as_deref(), Some("shop.example"));
    assert_eq!(span.server_port, Some(8080));
    assert_eq!(span.status_code, Some(201));
    // Without a Host header the local address still names the server, opt-in or not.
    let bare = exchange(
        Role::Server,
        request("GET", "/", &[]),
        Some(response(200, 0)),
    );
    let span = build(&mut recommended, &bare, local, remote);
    assert_eq!(span.server_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(span.local_address, None);
}

#[test]
fn server_span_joins_incoming_traceparent() {
    let req = request(
        "GET",
        "/",
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
        ],
    );
    let span = build(
        &mut assembler(),
        &exchange(Role::Server, req, Some(response(200, 0))),
        None,
        None,
    );
    assert_eq!(
        trace_id_hex(&span.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        span.parent_span_id.map(|s| span_id_hex(&s)).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_ne!(span_id_hex(&span.span_id), "00f067aa0ba902b7");
    assert_eq!(span.trace_state.as_deref(), Some("vendor=x"));
}

#[test]
fn client_span_keeps_the_ids_it_sent() {
    let req = request(
        "POST",
        "http://api.internal:9000/v1/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    );
    let span = build(
        &mut assembler(),
        &exchange(Role::Client, req, Some(response(404, 0))),
        addr("127.0.0.1:40000"),
        addr("127.0.0.1:9000"),
    );
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(&*span.name, "POST /v1/items/{id}");
    assert!(span.route.is_none(), "http.route is a server attribute");
    assert_eq!(span_id_hex(&span.span_id), "00f067aa0ba902b7");
    assert_eq!(span.server_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(span.server_port, Some(9000));
    assert_eq!(span.error_type.as_deref(), Some("404"));
    assert!(span.is_error(), "4xx is an error for clients");
    // From the first byte written to the last byte read.
    assert_eq!(span.end_unix_ns - span.start_unix_ns, 9_000 - 1_000);
}

#[test]
fn a_client_span_starts_no_later_than_the_server_span_it_caused() {
    let mut a = assembler();
    let ex = exchange(
        Role::Client,
        request("GET", "/", &[]),
        Some(response(200, 0)),
    );
    let node = Linker::default()
        .client_start(LONE, 7, 1_000, None, None, None, None)
        .0;
    let span_with = |a: &mut SpanAssembler, server_start_ns| {
        node.borrow_mut().server_start_ns = server_start_ns;
        a.assemble(ex.clone(), resolve(&node), None, None)
    };
    // The request's send time fell after the server read it (an acknowledgement came in
    // before the client's write returned): the span starts with the server's.
    let early_server = span_with(&mut a, 600);
    assert_eq!(
        early_server.end_unix_ns - early_server.start_unix_ns,
        9_000 - 600
    );
    // A server that started later, or none linked, leaves the send time.
    for server_start_ns in [1_400, 0] {
        let span = span_with(&mut a, server_start_ns);
        assert_eq!(span.end_unix_ns - span.start_unix_ns, 9_000 - 1_000);
    }
    // Server spans start when their request is in hand, whatever the field says.
    let server = exchange(
        Role::Server,
        request("GET", "/", &[]),
        Some(response(200, 0)),
    );
    let span = a.assemble(server, resolve(&node), None, None);
    assert_eq!(span.end_unix_ns - span.start_unix_ns, 9_000 - 2_000);
}

#[test]
fn status_rules() {
    let mut a = assembler();
    let mut server = |status| {
        build(
            &mut a,
            &exchange(
                Role::Server,
                request("GET", "/", &[]),
                Some(response(status, 0)),
            ),
            None,
            None,
        )
    };
    assert!(!server(404).is_error());
    assert!(server(503).is_error());
    assert_eq!(server(503).error_type.as_deref(), Some("503"));

    let unanswered = build(
        &mut a,
        &exchange(Role::Server, request("GET", "/", &[]), None),
        None,
        None,
    );
    assert!(unanswered.is_error());
    assert_eq!(unanswered.error_type.as_deref(), Some("no_response"));
    assert_eq!(unanswered.status_code, None);
    // Ends when the connection closed.
    assert_eq!(
        unanswered.end_unix_ns - unanswered.start_unix_ns,
        12_000 - 2_000
    );

    let mut lost = exchange(Role::Server, request("GET", "/", &[]), None);
    lost.outcome = ExchangeOutcome::ResponseLost;
    assert!(!build(&mut a, &lost, None, None).is_error());
}

#[test]
fn odd_methods_and_hosts() {
    let mut a = assembler();
    let span = build(
        &mut a,
        &exchange(
            Role::Server,
            request("PURGE", "/x", &[("host", "[::1]:8443")]),
            Some(response(200, 0)),
        ),
        None,
        None,
    );
    assert_eq!(span.method, "_OTHER");
    assert_eq!(span.method_original.as_deref(), Some("PURGE"));
    assert_eq!(&*span.name, "_OTHER /x");
    assert_eq!(span.server_address.as_deref(), Some("::1"));
    assert_eq!(span.server_port, Some(8443));
    assert_eq!(parse_host("example.com"), Some(("example.com", None)));
    assert_eq!(parse_host(""), None);
    assert_eq!(split_target("/a#frag".into()), ("/a".into(), None));
    // A plain origin-form target becomes the path without a copy: a long one keeps its
    // allocation, a short one stays inline.
    let target = InlineText::from("/orders/42/lines/7/history");
    let at = target.as_ptr();
    let (path, query) = split_target(target);
    assert_eq!((path.as_str(), query), ("/orders/42/lines/7/history", None));
    assert_eq!(path.as_ptr(), at);
    let (path, _) = split_target("/orders/42".into());
    assert!(path.is_inline());
    // A URL in an origin-form target's query or path is no authority to strip.
    assert_eq!(
        split_target("/login?next=http://evil/x".into()),
        ("/login".into(), Some("next=http://evil/x".into()))
    );
    assert_eq!(
        split_target("/proxy/http://a/b".into()),
        ("/proxy/http://a/b".into(), None)
    );
    assert_eq!(
        split_target("HTTP://api.internal:9000/v1?x=1".into()),
        ("/v1".into(), Some("x=1".into()))
    );
    assert_eq!(redact_query("a=1&b&c=2=3"), "a=REDACTED&b&c=REDACTED");
    assert_eq!(truncate("héllo", 2), "h");
}

#[test]
fn query_items_without_a_value_are_kept_only_when_they_read_like_flags() {
    assert_eq!(redact_query("wsdl"), "wsdl");
    assert_eq!(
        redact_query("a=1&&pretty-print&dry_run"),
        "a=REDACTED&&pretty-print&dry_run"
    );
    // Bare values: a token, a one-time code, an address, anything percent-encoded or long.
    assert_eq!(redact_query("eyJhbGciOiJIUzI1NiJ9&debug"), "REDACTED&debug");
    assert_eq!(redact_query("482913"), "REDACTED");
    assert_eq!(redact_query("me%40example.com"), "REDACTED");
    assert_eq!(
        redact_query("page=2&sessionidabcdefghijklmnopqrstuvwxyz"),
        "page=REDACTED&REDACTED"
    );
    assert_eq!(redact_query(&"x".repeat(32)), "x".repeat(32));
    assert_eq!(redact_query(&"x".repeat(33)), "REDACTED");
    assert_eq!(redact_query(""), "");
    assert_eq!(redact_query("débogage"), "REDACTED");
}

#[test]
fn query_items_whose_key_is_no_key_are_redacted_whole() {
    // Keys as applications write them stay.
    assert_eq!(
        redact_query("filter[name]=x&filter%5Bage%5D=3&utm_source=a&v2=b&=c&debug="),
        "filter[name]=REDACTED&filter%5Bage%5D=REDACTED&utm_source=REDACTED&v2=REDACTED\
         &=REDACTED&debug=REDACTED"
    );
    // A base64 token's padding, and keys no application names that way.
    assert_eq!(
        redact_query("dG9rZW4gc2VjcmV0==&page=2"),
        "REDACTED&page=REDACTED"
    );
    assert_eq!(
        redact_query("dG9rZW4=&482913=&debug="),
        "REDACTED&REDACTED&debug=REDACTED"
    );
    assert_eq!(
        redact_query("a=1&ab/cd+ef=&me@example.com=x"),
        "a=REDACTED&REDACTED&REDACTED"
    );
    assert_eq!(
        redact_query(&format!("{}=1", "k".repeat(64))),
        format!("{}=REDACTED", "k".repeat(64))
    );
    assert_eq!(redact_query(&format!("{}=1", "k".repeat(65))), "REDACTED");
}

#[test]
fn spans_of_one_route_share_their_name_route_and_user_agent() {
    let mut a = assembler();
    let spans: Vec<HttpSpan> = ["/orders/42", "/orders/43", "/carts/7"]
        .iter()
        .map(|path| {
            let req = request("GET", path, &[("Host", "shop"), ("User-Agent", "curl/8")]);
            let ex = exchange(Role::Server, req, Some(response(200, 2)));
            build(&mut a, &ex, addr("127.0.0.1:80"), addr("10.0.0.9:5000"))
        })
        .collect();
    assert_eq!(&*spans[0].name, "GET /orders/{id}");
    assert!(Arc::ptr_eq(&spans[0].name, &spans[1].name));
    let (r0, r1) = (spans[0].route.as_ref(), spans[1].route.as_ref());
    assert!(Arc::ptr_eq(r0.unwrap(), r1.unwrap()));
    assert_eq!(&*spans[2].name, "GET /carts/{id}");
    assert_eq!(spans[2].route.as_deref(), Some("/carts/{id}"));
    let agents = (spans[0].user_agent.as_ref(), spans[2].user_agent.as_ref());
    assert!(Arc::ptr_eq(agents.0.unwrap(), agents.1.unwrap()));
}
