//! Pairing responses with requests: pipelining, keep-alive, roles, close, timestamps.

use super::{GET, Harness, OK_HELLO, assert_complete, get, ok_with_body, response_body_len};
use crate::protocol::Role;
use crate::protocol::http1::{ExchangeOutcome, Http1Limits, SessionStats};

#[test]
fn three_pipelined_requests_and_responses_in_one_chunk_each() {
    let mut h = Harness::server();
    let mut requests = get("/a");
    requests.extend(b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
    requests.extend(get("/c"));
    h.req(&requests);
    assert!(h.out.is_empty());
    let mut responses = ok_with_body("A");
    responses
        .extend(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nBB\r\n0\r\n\r\n");
    responses.extend(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nCCC");
    h.resp(&responses);
    let out = h.take();
    assert_eq!(out.len(), 3);
    assert_complete(&out[0], "GET", "/a", 200);
    assert_complete(&out[1], "POST", "/b", 201);
    assert_complete(&out[2], "GET", "/c", 404);
    assert_eq!(out[1].request.body_len, 3);
    assert_eq!(response_body_len(&out[0]), Some(1));
    assert_eq!(response_body_len(&out[1]), Some(12));
    assert_eq!(response_body_len(&out[2]), Some(3));
    for ex in &out {
        assert_eq!(ex.request_first_start_ns, 1000);
        assert_eq!(ex.response_first_start_ns, 2000);
        assert_eq!(ex.response_last_end_ns, 2500);
    }
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn pipelined_request_split_mid_head_across_chunks() {
    let mut h = Harness::server();
    let mut bytes = get("/a");
    bytes.extend(get("/b"));
    let (a, b) = bytes.split_at(get("/a").len() + 7);
    h.req(a);
    h.req(b);
    h.resp(&ok_with_body("1"));
    h.resp(&ok_with_body("2"));
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].request.target, "/a");
    assert_eq!(out[1].request.target, "/b");
    // The second request's first byte was in the first chunk.
    assert_eq!(out[1].request_first_start_ns, 1000);
    assert_eq!(out[1].request_last_end_ns, 2500);
}

#[test]
fn responses_complete_in_request_order() {
    let mut h = Harness::server();
    h.req(&get("/1"));
    h.req(&get("/2"));
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
    assert!(h.out.is_empty());
    h.resp(b"cdHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let out = h.take();
    assert_eq!(
        out.iter()
            .map(|e| e.request.target.as_str())
            .collect::<Vec<_>>(),
        ["/1", "/2"]
    );
}

#[test]
fn keep_alive_hundred_exchanges() {
    let mut h = Harness::server();
    for i in 0..100 {
        h.req(&get(&format!("/item/{i}")));
        h.resp(&ok_with_body(&"x".repeat(i)));
        let ex = h.take_one();
        assert_complete(&ex, "GET", &format!("/item/{i}"), 200);
        assert_eq!(response_body_len(&ex), Some(i as u64));
        let base = 2000 * i as u64;
        assert_eq!(ex.request_first_start_ns, base + 1000);
        assert_eq!(ex.response_last_end_ns, base + 2500);
    }
    assert_eq!(h.session.pending_requests(), 0);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn client_role_pairs_written_requests_with_read_responses() {
    let mut h = Harness::client();
    h.tid = 42;
    h.req(b"POST /rpc HTTP/1.1\r\nHost: backend\r\nContent-Length: 2\r\n\r\n{}");
    h.tid = 43;
    h.resp(OK_HELLO);
    let ex = h.take_one();
    assert_eq!(h.session.role(), Role::Client);
    assert_eq!(ex.role, Role::Client);
    assert_complete(&ex, "POST", "/rpc", 200);
    assert_eq!(ex.request.body_len, 2);
    assert_eq!(ex.request_tid, 42);
    assert_eq!(ex.response_tid, 43);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn tids_come_from_first_request_and_last_response_chunk() {
    let mut h = Harness::server();
    h.tid = 1;
    h.req(b"GET / HTTP/1.1\r\n");
    h.tid = 2;
    h.req(b"\r\n");
    h.tid = 3;
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na");
    h.tid = 4;
    h.resp(b"b");
    let ex = h.take_one();
    assert_eq!(ex.request_tid, 1);
    assert_eq!(ex.response_tid, 4);
    assert_eq!(ex.request_first_end_ns, 1500);
    assert_eq!(ex.request_last_end_ns, 2500);
    assert_eq!(ex.response_first_start_ns, 3000);
    assert_eq!(ex.response_last_end_ns, 4500);
}

#[test]
fn blank_lines_between_messages_do_not_date_the_next_request() {
    let mut h = Harness::server();
    h.req(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n");
    h.resp(&ok_with_body(""));
    h.req(&get("/b"));
    h.resp(&ok_with_body(""));
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].request.target, "/b");
    assert_eq!(out[1].request_first_start_ns, 3000);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn close_with_pending_request_is_no_response() {
    let mut h = Harness::server();
    h.req(GET);
    h.req(&get("/second"));
    h.resp(OK_HELLO);
    assert_eq!(h.take().len(), 1);
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.request.target, "/second");
    assert_eq!(ex.outcome, ExchangeOutcome::NoResponse);
    assert!(ex.response.is_none());
    assert_eq!(ex.response_last_end_ns, 0);
    assert_eq!(ex.response_tid, 0);
    assert_eq!(ex.close_ns, 4000);
    let stats = h.stats();
    assert_eq!(stats.requests_without_response, 1);
    assert_eq!(h.stats(), SessionStats::default(), "take_stats resets");
}

#[test]
fn close_mid_request_body_still_reports_the_request() {
    let mut h = Harness::server();
    h.req(b"POST /up HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::NoResponse);
    assert_eq!(ex.request.body_len, 3);
}

#[test]
fn close_mid_request_head_salvages_it() {
    let mut h = Harness::server();
    h.req(b"GET /slow HTTP/1.1\r\nHost: a\r\nAcc");
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::NoResponse);
    assert_eq!(ex.request.target, "/slow");
    assert_eq!(ex.request.header("host"), Some("a"));
    assert!(ex.request.head_truncated);
}

#[test]
fn early_response_before_request_body_finished() {
    let mut h = Harness::server();
    h.req(b"POST /big HTTP/1.1\r\nContent-Length: 1000\r\n\r\n0123456789");
    h.resp(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
    let ex = h.take_one();
    assert_complete(&ex, "POST", "/big", 413);
    assert_eq!(ex.request.body_len, 10);
    // The rest of the body still belongs to that request, not to a new one.
    h.req(&[b'z'; 990]);
    h.req(&get("/next"));
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/next", 200);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn response_without_request_is_counted_and_skipped() {
    let mut h = Harness::server();
    h.resp(OK_HELLO);
    assert!(h.out.is_empty());
    h.req(GET);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    assert_eq!(h.stats().responses_without_request, 1);
}

#[test]
fn too_many_pending_requests_drops_the_oldest() {
    let limits = Http1Limits {
        max_pending_requests: 4,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    for i in 0..10 {
        h.req(&get(&format!("/{i}")));
    }
    assert_eq!(h.session.pending_requests(), 4);
    let stats = h.stats();
    assert_eq!(stats.dropped_requests, 6);
    assert_eq!(stats.requests_without_response, 6);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/6", 200);
    h.close();
    let out = h.take();
    assert_eq!(
        out.iter()
            .map(|e| e.request.target.as_str())
            .collect::<Vec<_>>(),
        ["/7", "/8", "/9"]
    );
    assert!(out.iter().all(|e| e.outcome == ExchangeOutcome::NoResponse));
}

#[test]
fn response_for_dropped_request_is_not_paired_with_the_next() {
    let limits = Http1Limits {
        max_pending_requests: 2,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    h.req(&get("/0"));
    h.req(&get("/1"));
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
    // /0 is dropped while its response is in flight.
    h.req(&get("/2"));
    h.resp(b"cd");
    assert!(h.out.is_empty());
    h.resp(&ok_with_body("1"));
    assert_complete(&h.take_one(), "GET", "/1", 200);
}

#[test]
fn session_is_reusable_after_close() {
    let mut h = Harness::server();
    h.req(GET);
    h.close();
    assert_eq!(h.take().len(), 1);
    h.req(&get("/again"));
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/again", 200);
}

#[test]
fn headers_are_bounded() {
    let limits = Http1Limits {
        max_headers: 3,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    let mut request = b"POST /h HTTP/1.1\r\n".to_vec();
    for i in 0..10 {
        request.extend(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    // Framing past the kept headers still counts.
    request.extend(b"Content-Length: 2\r\nX-Long: ");
    request.extend(std::iter::repeat_n(b'v', 6000));
    request.extend(b"\r\n\r\nok");
    h.req(&request);
    h.resp(OK_HELLO);
    let ex = h.take_one();
    assert_eq!(ex.request.headers.len(), 3);
    assert_eq!(ex.request.header("x-h2"), Some("2"));
    assert_eq!(ex.request.body_len, 2);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn long_header_values_are_cut() {
    let mut h = Harness::server();
    let mut request = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    request.extend(std::iter::repeat_n(b'c', 10_000));
    request.extend(b"\r\n\r\n");
    h.req(&request);
    h.resp(OK_HELLO);
    let ex = h.take_one();
    let cookie = ex.request.header("cookie").expect("cookie");
    assert_eq!(cookie.len(), crate::protocol::http1::MAX_HEADER_VALUE_BYTES);
}

/// Values are cut at a character boundary, bytes that are not UTF-8 become replacement
/// characters, and the short values most requests carry are held inline.
#[test]
fn header_values_are_text_within_the_limit() {
    let limit = crate::protocol::http1::MAX_HEADER_VALUE_BYTES;
    let mut h = Harness::server();
    let mut request =
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Bytes: a\xffb\r\nX-Wide: ".to_vec();
    // A two-byte character straddles the limit.
    request.extend(std::iter::repeat_n(b'w', limit - 1));
    request.extend("éé".as_bytes());
    // Not UTF-8 and over the limit: decoded with replacement characters, then cut.
    request.extend(b"\r\nX-Lossy: \xff");
    request.extend(std::iter::repeat_n(b'w', limit));
    request.extend(b"\r\nUser-Agent: ");
    request.extend(std::iter::repeat_n(b'u', 100));
    request.extend(b"\r\n\r\n");
    h.req(&request);
    h.resp(OK_HELLO);
    let ex = h.take_one();
    let value = |name: &str| {
        let (_, value) = ex
            .request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .expect(name);
        value
    };
    assert_eq!(value("host"), "127.0.0.1:8080");
    assert!(value("host").is_inline());
    assert_eq!(value("x-bytes"), "a\u{fffd}b");
    let wide = value("x-wide");
    assert_eq!(
        wide.len(),
        limit - 1,
        "cut before the character that crosses"
    );
    assert!(wide.bytes().all(|b| b == b'w'));
    let lossy = value("x-lossy");
    assert_eq!(lossy.len(), limit, "cut to the limit after decoding");
    assert!(lossy.starts_with('\u{fffd}'));
    assert_eq!(value("user-agent").len(), 100);
    assert!(!value("user-agent").is_inline());
}

#[test]
fn stats_add_up_across_sessions() {
    let mut total = SessionStats::default();
    for _ in 0..3 {
        let mut h = Harness::server();
        h.req(b"\x00garbage");
        h.req(GET);
        h.close();
        total.add(&h.stats());
    }
    assert_eq!(total.parse_errors, 3);
    assert_eq!(total.unparsed_bytes, 24);
    assert_eq!(total.resyncs, 3);
    assert_eq!(total.requests_without_response, 3);
}

#[test]
fn request_starts_are_reported_before_their_exchanges_complete() {
    let mut h = Harness::server();
    h.req(b"GET /a HTTP/1.1\r\ntraceparent: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    let started = h.session.take_started();
    assert_eq!(started.len(), 2);
    assert_eq!(started[0].request_id, 0);
    assert_eq!(started[0].tid, 7);
    assert_eq!(started[0].end_ns, 1500);
    assert!(started[0].headers.iter().any(|(k, _)| k == "traceparent"));
    assert_eq!(started[1].request_id, 1);
    assert!(h.take().is_empty(), "no response yet");
    assert!(
        h.session.take_started().is_empty(),
        "each start is reported once"
    );

    h.resp(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    let done = h.take();
    assert_eq!(
        done.iter().map(|e| e.request_id).collect::<Vec<_>>(),
        vec![0, 1],
        "exchanges carry the ids their starts had"
    );
}

#[test]
fn unclaimed_starts_stay_bounded() {
    let limits = Http1Limits {
        max_pending_requests: 4,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    for _ in 0..20 {
        h.req(b"GET / HTTP/1.1\r\n\r\n");
    }
    let started = h.session.take_started();
    assert_eq!(started.len(), 4);
    assert_eq!(started.last().map(|s| s.request_id), Some(19));
}

#[test]
fn production_sessions_keep_only_the_headers_spans_use() {
    // No secret header value is ever copied out of the captured bytes.
    let mut h = Harness::with_exact_limits(Role::Server, Http1Limits::default());
    h.req(b"GET /p HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer s3cret\r\n\
Cookie: id=42\r\nUser-Agent: curl/8\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
X-Api-Key: k\r\n\r\n");
    h.resp(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: 2\r\n\r\nok");
    let out = h.take();
    assert_eq!(out.len(), 1);
    let names: Vec<&str> = out[0]
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_ref())
        .collect();
    assert_eq!(names, ["host", "user-agent", "traceparent"]);
    let response = out[0].response.as_ref().expect("response paired");
    assert!(response.headers.is_empty());
    assert_eq!(response.body_len, 2, "framing still read from every header");
}

#[test]
fn header_values_are_text_even_when_the_bytes_are_not_utf8() {
    let mut h = Harness::with_exact_limits(Role::Server, Http1Limits::default());
    h.req(b"GET / HTTP/1.1\r\nHost: caf\xe9.example\r\nUser-Agent: na\xc3\xafve/1\r\n\r\n");
    h.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    let out = h.take();
    assert_eq!(out.len(), 1);
    let request = &out[0].request;
    assert_eq!(request.header("host"), Some("caf\u{fffd}.example"));
    assert_eq!(request.header("user-agent"), Some("na\u{ef}ve/1"));
    assert_eq!(request.method, "GET");
    assert!(matches!(request.method, std::borrow::Cow::Borrowed(_)));
}
