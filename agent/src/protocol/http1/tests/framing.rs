//! Heads split across chunks and bodies of every framing, seen whole or through capture gaps.

use super::{
    GET, Harness, OK_HELLO, assert_complete, get, ok_with_body, response_body_len, status,
};
use crate::protocol::http1::{ExchangeOutcome, SessionStats};

#[test]
fn request_head_split_byte_by_byte() {
    let mut h = Harness::server();
    for b in GET {
        h.req(std::slice::from_ref(b));
    }
    h.resp(OK_HELLO);
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 200);
    assert_eq!(ex.request.header("host"), Some("example.test"));
    assert_eq!(ex.request.header("USER-AGENT"), Some("loupe-test"));
    assert_eq!(ex.request.minor_version, 1);
    // The first byte came in the first chunk, the last in chunk number GET.len().
    assert_eq!(ex.request_first_start_ns, 1000);
    assert_eq!(ex.request_first_end_ns, 1500);
    assert_eq!(ex.request_last_end_ns, GET.len() as u64 * 1000 + 500);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn response_split_at_every_position() {
    for split in 0..=OK_HELLO.len() {
        let mut h = Harness::server();
        h.req(GET);
        let (a, b) = OK_HELLO.split_at(split);
        h.resp(a);
        if split < OK_HELLO.len() {
            assert!(h.out.is_empty(), "emitted early at split {split}");
        }
        h.resp(b);
        let ex = h.take_one();
        assert_complete(&ex, "GET", "/index.html", 200);
        let response = ex.response.as_ref().expect("response");
        assert_eq!(response.body_len, 5, "split {split}");
        assert_eq!(response.header("content-type"), Some("text/plain"));
        // Empty chunks are ignored, so the last byte is in chunk 2 or 3.
        let last_chunk = if split == OK_HELLO.len() { 2 } else { 3 };
        assert_eq!(
            ex.response_last_end_ns,
            last_chunk * 1000 + 500,
            "split {split}"
        );
        assert_eq!(h.stats(), SessionStats::default(), "split {split}");
    }
}

#[test]
fn request_split_at_every_position_with_body() {
    let request = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    for split in 1..request.len() {
        let mut h = Harness::server();
        let (a, b) = request.split_at(split);
        h.req(a);
        h.req(b);
        h.resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let ex = h.take_one();
        assert_complete(&ex, "POST", "/submit", 201);
        assert_eq!(ex.request.body_len, 11, "split {split}");
        assert_eq!(ex.request_last_end_ns, 2500, "split {split}");
        assert_eq!(h.stats(), SessionStats::default(), "split {split}");
    }
}

#[test]
fn content_length_body_over_many_chunks() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n0123456789");
    h.resp(b"0123456789");
    assert!(h.out.is_empty());
    h.resp(b"0123456789");
    let ex = h.take_one();
    assert_eq!(response_body_len(&ex), Some(30));
    assert_eq!(ex.response_first_start_ns, 2000);
    assert_eq!(ex.response_last_end_ns, 4500);
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let mut h = Harness::server();
    h.req(GET);
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value\r\nhello\r\n\
        6 ; other=\"x;y\"\r\n world\r\n\
        0\r\nServer-Timing: db;dur=3\r\nX-Trailer: 1\r\n\r\n";
    h.resp(response);
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 200);
    let head_len = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len() as u64;
    assert_eq!(
        response_body_len(&ex),
        Some(response.len() as u64 - head_len)
    );
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn chunked_response_split_at_every_position() {
    let body = b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n3;ext\r\nabc\r\n0\r\nTrailer: t\r\n\r\n";
    let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
    response.extend_from_slice(body);
    for split in 1..response.len() {
        let mut h = Harness::server();
        h.req(GET);
        let (a, b) = response.split_at(split);
        h.resp(a);
        assert!(h.out.is_empty(), "split {split}");
        h.resp(b);
        let ex = h.take_one();
        assert_eq!(
            response_body_len(&ex),
            Some(body.len() as u64),
            "split {split}"
        );
        assert_eq!(h.stats(), SessionStats::default(), "split {split}");
    }
}

#[test]
fn chunked_body_byte_by_byte_then_next_exchange() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n");
    for b in b"4\r\nwiki\r\n0\r\n\r\n" {
        h.resp(std::slice::from_ref(b));
    }
    let ex = h.take_one();
    assert_eq!(response_body_len(&ex), Some(14));
    h.req(&get("/next"));
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/next", 200);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn chunked_request_body() {
    let mut h = Harness::server();
    h.req(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    h.req(b"0\r\n\r\n");
    h.resp(b"HTTP/1.1 204 No Content\r\n\r\n");
    let ex = h.take_one();
    assert_complete(&ex, "POST", "/upload", 204);
    assert_eq!(ex.request.body_len, 13);
    assert_eq!(ex.request_last_end_ns, 2500);
}

#[test]
fn truncated_chunk_with_content_length_larger_than_capture() {
    let mut h = Harness::server();
    h.req(GET);
    // 64 KiB body written in one syscall; 1 KiB captured.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n";
    let mut prefix = head.to_vec();
    prefix.resize(1024, b'x');
    h.resp_truncated(&prefix, head.len() as u64 + 65536);
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 200);
    assert_eq!(response_body_len(&ex), Some(65536));
    // Still in sync for the next exchange on the connection.
    h.req(&get("/second"));
    h.resp(&ok_with_body("ok"));
    assert_complete(&h.take_one(), "GET", "/second", 200);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn truncated_chunks_across_a_large_request_body() {
    let mut h = Harness::server();
    let head = b"PUT /blob HTTP/1.1\r\nContent-Length: 10000\r\n\r\n";
    let mut first = head.to_vec();
    first.resize(1024, b'b');
    h.req_truncated(&first, head.len() as u64 + 4000);
    h.req_truncated(&[b'b'; 1024], 4096);
    h.req_truncated(&[b'b'; 1024], 1904);
    h.req(&get("/after"));
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].request.body_len, 10000);
    assert_eq!(out[0].request_last_end_ns, 3500);
    assert_eq!(out[1].request.target, "/after");
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn sendfile_body_after_head() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 100000\r\n\r\n");
    h.resp_sendfile(65536);
    assert!(h.out.is_empty());
    h.resp_sendfile(34464);
    let ex = h.take_one();
    assert_eq!(response_body_len(&ex), Some(100_000));
    assert_eq!(ex.response_first_start_ns, 2000);
    assert_eq!(ex.response_last_end_ns, 4500);
    h.req(&get("/2"));
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/2", 200);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn sendfile_inside_chunk_data_keeps_sync() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n");
    h.resp_sendfile(0x400);
    h.resp(b"\r\n0\r\n\r\n");
    let ex = h.take_one();
    assert_eq!(response_body_len(&ex), Some(5 + 0x400 + 7));
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn head_request_response_has_no_body() {
    let mut h = Harness::server();
    h.req(b"HEAD /big HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n");
    h.resp(OK_HELLO);
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_complete(&out[0], "HEAD", "/big", 200);
    assert_eq!(response_body_len(&out[0]), Some(0));
    assert_complete(&out[1], "GET", "/next", 200);
    assert_eq!(response_body_len(&out[1]), Some(5));
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    for code in [204u16, 304] {
        let mut h = Harness::server();
        h.req(GET);
        h.req(&get("/2"));
        // A 304 may repeat the Content-Length of the representation it stands for.
        h.resp(format!("HTTP/1.1 {code} X\r\nContent-Length: 999\r\n\r\n").as_bytes());
        h.resp(OK_HELLO);
        let out = h.take();
        assert_eq!(out.len(), 2, "{code}");
        assert_complete(&out[0], "GET", "/index.html", code);
        assert_eq!(response_body_len(&out[0]), Some(0));
        assert_complete(&out[1], "GET", "/2", 200);
    }
}

#[test]
fn continue_is_not_the_final_response() {
    let mut h = Harness::server();
    h.req(b"POST /form HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    h.resp(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(h.out.is_empty());
    h.req(b"data");
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let ex = h.take_one();
    assert_complete(&ex, "POST", "/form", 200);
    assert_eq!(ex.request.body_len, 4);
    assert_eq!(ex.request_last_end_ns, 3500);
    assert_eq!(ex.response_first_start_ns, 4000);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn interim_and_final_response_in_one_chunk() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 200);
    assert_eq!(ex.response.as_ref().and_then(|r| r.header("link")), None);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn http10_response_read_until_close() {
    let mut h = Harness::client();
    h.req(b"GET / HTTP/1.0\r\n\r\n");
    h.resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>");
    h.resp(b"</html>");
    assert!(h.out.is_empty(), "ends only at close");
    h.close();
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/", 200);
    assert_eq!(ex.request.minor_version, 0);
    assert_eq!(ex.response.as_ref().map(|r| r.minor_version), Some(0));
    assert_eq!(response_body_len(&ex), Some(13));
    assert_eq!(ex.response_last_end_ns, 3500);
    assert_eq!(ex.close_ns, 4000);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn close_mid_content_length_is_response_incomplete() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::ResponseIncomplete);
    assert_eq!(response_body_len(&ex), Some(7));
}

#[test]
fn close_mid_response_head_keeps_what_was_seen() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 502 Bad Gateway\r\nServer: x\r\nConte");
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::ResponseIncomplete);
    let response = ex.response.expect("salvaged head");
    assert_eq!(response.status, 502);
    assert!(response.head_truncated);
    assert_eq!(response.header("server"), Some("x"));
}

#[test]
fn truncated_response_head_keeps_complete_lines() {
    let mut h = Harness::server();
    h.req(GET);
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nSet-Cookie: ".to_vec();
    head.resize(1024, b'c');
    // The rest of the cookie, the end of the head and the body were not captured.
    h.resp_truncated(&head, 4000);
    h.req(&get("/next"));
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 200);
    let response = ex.response.as_ref().expect("response");
    assert!(response.head_truncated);
    assert_eq!(response.header("content-length"), Some("3000"));
    assert_eq!(response.header("set-cookie"), None);
    assert_eq!(
        response.body_len, 3000,
        "declared length stands in for the unknown split"
    );
    assert_eq!(ex.response_last_end_ns, 2500);
    let stats = h.stats();
    assert_eq!(stats.truncated_heads, 1);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn truncated_request_head_with_long_target() {
    let mut h = Harness::server();
    let mut request = b"GET /search?q=".to_vec();
    request.resize(1024, b'q');
    h.req_truncated(&request, 3000);
    h.resp(OK_HELLO);
    let ex = h.take_one();
    assert_eq!(ex.request.method, "GET");
    assert!(ex.request.target.starts_with("/search?q=qqq"));
    assert!(ex.request.head_truncated);
    assert_eq!(response_body_len(&ex), Some(5));
}

#[test]
fn bodyless_response_with_truncated_head_ends_at_once() {
    let mut h = Harness::server();
    h.req(GET);
    let mut head = b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nX-Long: ".to_vec();
    head.resize(1024, b'v');
    h.resp_truncated(&head, 1500);
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/index.html", 304);
    assert_eq!(
        ex.response.as_ref().and_then(|r| r.header("etag")),
        Some("\"abc\"")
    );
}

#[test]
fn switching_protocols_stops_parsing() {
    let mut h = Harness::server();
    h.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    h.resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    let ex = h.take_one();
    assert_complete(&ex, "GET", "/ws", 101);
    h.req(b"\x81\x85\x00\x00\x00\x00hello");
    h.resp(b"\x81\x05hello");
    h.close();
    assert!(h.take().is_empty());
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn connect_tunnel_stops_parsing() {
    let mut h = Harness::client();
    h.req(b"CONNECT db.test:443 HTTP/1.1\r\nHost: db.test:443\r\n\r\n");
    h.resp(b"HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_complete(&h.take_one(), "CONNECT", "db.test:443", 200);
    h.req(&[0x16, 0x03, 0x01, 0x00, 0x10]);
    h.resp(&[0x16, 0x03, 0x03, 0x00, 0x10]);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn chunks_larger_than_the_capture_one_per_syscall_stay_in_sync() {
    let mut h = Harness::server();
    h.req(GET);
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let frame_len = 6 + 4096 + 2;
    let mut first = head.to_vec();
    first.extend(b"1000\r\n");
    first.resize(1024, b'a');
    h.resp_truncated(&first, (head.len() + frame_len) as u64);
    let mut second = b"1000\r\n".to_vec();
    second.resize(1024, b'b');
    h.resp_truncated(&second, frame_len as u64);
    assert!(h.out.is_empty());
    h.resp(b"0\r\n\r\n");
    let ex = h.take_one();
    assert_eq!(response_body_len(&ex), Some(2 * frame_len as u64 + 5));
    assert_eq!(ex.response_last_end_ns, 4500);
    assert_eq!(h.stats(), SessionStats::default());
}

#[test]
fn wrongly_guessed_chunk_crlf_loses_sync_without_an_error() {
    let mut h = Harness::server();
    h.req(GET);
    // The writer used a bare LF; the capture saw the data but not the LF and next size digit.
    let seen = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd";
    h.resp_truncated(seen, seen.len() as u64 + 2);
    h.resp(b"\r\nefghi\r\n0\r\n\r\n");
    assert!(h.out.is_empty());
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::Complete);
    assert_eq!(response_body_len(&ex), Some(7 + 2 + 14));
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn lost_events_make_the_body_open_ended() {
    let mut h = Harness::server();
    h.req(&get("/1"));
    h.req(&get("/2"));
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    h.session.on_lost(crate::protocol::Direction::Egress);
    h.resp(&ok_with_body("two"));
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_complete(&out[0], "GET", "/1", 200);
    assert_eq!(response_body_len(&out[0]), Some(100));
    assert_complete(&out[1], "GET", "/2", 200);
    assert_eq!(h.stats().resyncs, 1);
}

#[test]
fn lost_events_between_messages_skip_to_the_next_start() {
    let mut h = Harness::server();
    h.req(b"GET /partial HTTP/1.1\r\nHo");
    h.session.on_lost(crate::protocol::Direction::Ingress);
    h.req(b"st: a\r\n\r\n");
    h.req(GET);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    let stats = h.stats();
    assert_eq!(stats.unparsed_bytes, 25 + 9);
    assert_eq!(stats.resyncs, 1);
}

/// The kernel copies only the head of a response written as a head buffer and a body
/// buffer. The session stays in step when the head's framing accounts for the rest, and
/// says when it does not, so that the agent can have that process's responses copied
/// whole.
#[test]
fn an_uncopied_body_keeps_step_only_when_the_head_frames_it() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    let mut h = Harness::server();
    for path in ["/a", "/b"] {
        h.req(&get(path));
        h.resp_truncated(head, head.len() as u64 + 3);
        assert!(h.session.responses_in_step());
        assert_complete(&h.take_one(), "GET", path, 200);
    }

    // A chunked body cannot be followed unseen.
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut h = Harness::server();
    h.req(&get("/chunked"));
    h.resp_truncated(chunked, chunked.len() as u64 + 12);
    assert!(!h.session.responses_in_step());
    // The next request ends it, timed by the write that carried it.
    h.req(&get("/next"));
    let exchange = h.take_one();
    assert_eq!(status(&exchange), Some(200));
    assert_eq!(exchange.response_last_end_ns, 2500);

    // What followed a response's own body was the next pipelined response.
    let empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut h = Harness::server();
    h.req(&[get("/1"), get("/2")].concat());
    h.resp_truncated(empty, (empty.len() + head.len() + 3) as u64);
    assert!(!h.session.responses_in_step());
}
