use super::*;
use crate::export::testutil::{finished, http_span, resource, span_id, trace_id};

/// A span of trace 1 with the given id, parent, kind, status and timing (ms from an origin).
fn span(
    service: &str,
    id: u8,
    parent: Option<u8>,
    kind: SpanKind,
    name: &str,
    status: Option<u16>,
    (start_ms, dur_us): (u64, u64),
) -> FinishedSpan {
    let mut s = http_span(kind, status);
    s.span_id = span_id(id);
    s.parent_span_id = parent.map(span_id);
    s.name = name.into();
    s.start_unix_ns = 1_000_000_000 + start_ms * 1_000_000;
    s.end_unix_ns = s.start_unix_ns + dur_us * 1_000;
    finished(&resource(service), s)
}

const TRACE_HEADER: &str = "trace ab000000000000000000000000000001\n";

#[test]
fn nested_trace_in_start_order() {
    // Given out of order, as spans arrive from different processes.
    let spans = vec![
        span(
            "backend",
            3,
            Some(2),
            SpanKind::Server,
            "GET /users/{id}",
            Some(200),
            (2, 8_000),
        ),
        span(
            "frontend",
            1,
            None,
            SpanKind::Server,
            "GET /profile",
            Some(200),
            (0, 12_345),
        ),
        span(
            "frontend",
            4,
            Some(1),
            SpanKind::Client,
            "GET",
            Some(200),
            (11, 900),
        ),
        span(
            "frontend",
            2,
            Some(1),
            SpanKind::Client,
            "GET",
            Some(200),
            (1, 10_100),
        ),
    ];
    let expected = format!(
        "{TRACE_HEADER}\
         \x20 frontend  server  GET /profile  [OK 200]  12.3 ms\n\
         \x20   frontend  client  GET  [OK 200]  10.1 ms\n\
         \x20     backend  server  GET /users/{{id}}  [OK 200]  8.0 ms\n\
         \x20   frontend  client  GET  [OK 200]  0.9 ms\n"
    );
    assert_eq!(render_trace(&trace_id(1), &spans), expected);
}

#[test]
fn statuses_follow_the_error_rules() {
    let mut no_response = span("web", 4, None, SpanKind::Client, "POST", None, (3, 2_000));
    no_response.span.error_type = Some("connection_closed".to_owned());
    let spans = vec![
        span(
            "web",
            1,
            None,
            SpanKind::Server,
            "GET /a",
            Some(500),
            (0, 1_000),
        ),
        span(
            "web",
            2,
            None,
            SpanKind::Server,
            "GET /b",
            Some(404),
            (1, 1_000),
        ),
        span(
            "web",
            3,
            None,
            SpanKind::Client,
            "GET",
            Some(404),
            (2, 1_000),
        ),
        no_response,
        span("web", 5, None, SpanKind::Server, "GET /c", None, (4, 0)),
    ];
    let expected = format!(
        "{TRACE_HEADER}\
         \x20 web  server  GET /a  [ERROR 500]  1.0 ms\n\
         \x20 web  server  GET /b  [OK 404]  1.0 ms\n\
         \x20 web  client  GET  [ERROR 404]  1.0 ms\n\
         \x20 web  client  POST  [ERROR connection_closed]  2.0 ms\n\
         \x20 web  server  GET /c  [OK]  0.0 ms\n"
    );
    assert_eq!(render_trace(&trace_id(1), &spans), expected);
}

#[test]
fn orphans_go_to_the_top_level_with_their_children() {
    // Span 1's parent (id 9) is in another process that loupe does not trace.
    let spans = vec![
        span(
            "api",
            2,
            Some(1),
            SpanKind::Client,
            "GET",
            Some(200),
            (1, 500),
        ),
        span(
            "api",
            1,
            Some(9),
            SpanKind::Server,
            "GET /x",
            Some(200),
            (0, 1_000),
        ),
        span(
            "db-proxy",
            7,
            Some(8),
            SpanKind::Server,
            "GET /q",
            Some(200),
            (5, 100),
        ),
    ];
    let expected = format!(
        "{TRACE_HEADER}\
         \x20 api  server  GET /x  [OK 200]  1.0 ms\n\
         \x20   api  client  GET  [OK 200]  0.5 ms\n\
         \x20 db-proxy  server  GET /q  [OK 200]  0.1 ms\n"
    );
    assert_eq!(render_trace(&trace_id(1), &spans), expected);
}

#[test]
fn parent_cycles_and_self_parents_still_print_every_span_once() {
    let spans = vec![
        span(
            "a",
            1,
            Some(2),
            SpanKind::Server,
            "GET /1",
            Some(200),
            (0, 1_000),
        ),
        span(
            "a",
            2,
            Some(1),
            SpanKind::Server,
            "GET /2",
            Some(200),
            (1, 1_000),
        ),
        span(
            "a",
            3,
            Some(3),
            SpanKind::Server,
            "GET /3",
            Some(200),
            (2, 1_000),
        ),
    ];
    let expected = format!(
        "{TRACE_HEADER}\
         \x20 a  server  GET /3  [OK 200]  1.0 ms\n\
         \x20 a  server  GET /1  [OK 200]  1.0 ms\n\
         \x20   a  server  GET /2  [OK 200]  1.0 ms\n"
    );
    assert_eq!(render_trace(&trace_id(1), &spans), expected);
}

#[test]
fn repeated_span_ids_are_all_printed() {
    let spans = vec![
        span(
            "a",
            1,
            None,
            SpanKind::Server,
            "GET /first",
            Some(200),
            (0, 1_000),
        ),
        span(
            "a",
            1,
            None,
            SpanKind::Server,
            "GET /again",
            Some(200),
            (1, 1_000),
        ),
    ];
    let text = render_trace(&trace_id(1), &spans);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("GET /first") && text.contains("GET /again"));
}

#[test]
fn deep_chains_stop_indenting_but_keep_printing() {
    let spans: Vec<_> = (1..=60u8)
        .map(|i| {
            let parent = (i > 1).then(|| i - 1);
            span(
                "s",
                i,
                parent,
                SpanKind::Server,
                "GET",
                Some(200),
                (u64::from(i), 1),
            )
        })
        .collect();
    let text = render_trace(&trace_id(1), &spans);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 61);
    let widest = 2 * (1 + MAX_INDENT_DEPTH);
    assert!(lines[60].starts_with(&" ".repeat(widest)));
    assert!(!lines[60].starts_with(&" ".repeat(widest + 1)));
}

#[test]
fn control_characters_are_escaped() {
    let mut s = span(
        "evil\x1b[31m",
        1,
        None,
        SpanKind::Server,
        "GET /\nfake line",
        Some(200),
        (0, 1),
    );
    s.span.error_type = None;
    let text = render_trace(&trace_id(1), &[s]);
    assert_eq!(text.lines().count(), 2, "{text:?}");
    assert!(text.contains("evil\\u{1b}[31m"), "{text:?}");
    assert!(text.contains("GET /\\nfake line"), "{text:?}");
}

#[test]
fn end_before_start_is_zero_duration() {
    let mut s = span("a", 1, None, SpanKind::Server, "GET", Some(200), (5, 0));
    s.span.end_unix_ns = s.span.start_unix_ns - 1;
    assert!(render_trace(&trace_id(1), &[s]).ends_with("[OK 200]  0.0 ms\n"));
}

#[test]
fn empty_trace_is_just_the_header() {
    assert_eq!(render_trace(&trace_id(1), &[]), TRACE_HEADER);
}

#[test]
fn a_link_names_the_span_and_trace_it_points_to() {
    let mut call = span(
        "worker",
        5,
        None,
        SpanKind::Client,
        "GET",
        Some(200),
        (0, 500),
    );
    call.span.link = Some(Box::new(crate::span::SpanLink {
        trace_id: trace_id(2),
        span_id: span_id(1),
    }));
    let expected = format!(
        "{TRACE_HEADER}\
         \x20 worker  client  GET  [OK 200]  0.5 ms  \
         (for span cd00000000000001 of trace ab000000000000000000000000000002)\n"
    );
    assert_eq!(render_trace(&trace_id(1), &[call]), expected);
}
