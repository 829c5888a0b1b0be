//! Garbage, oversized heads, lost framing and random input: count, recover, never panic.

use proptest::prelude::*;

use super::{GET, Harness, OK_HELLO, assert_complete, get, ok_with_body, response_body_len};
use crate::protocol::http1::{ExchangeOutcome, Http1Limits, Http1Session, HttpExchange};
use crate::protocol::{Chunk, Direction, Role};

#[test]
fn garbage_then_valid_request() {
    let mut h = Harness::server();
    h.req(b"\x00\x01\x02 not http at all \xff\xfe");
    h.req(b"more garbage that continues");
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.unparsed_bytes, 22 + 27);
    h.req(GET);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    let stats = h.stats();
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn garbage_after_a_valid_request_in_the_same_chunk() {
    let mut h = Harness::server();
    let mut bytes = get("/ok");
    bytes.extend(b"\x16\x03\x01garbage");
    h.req(&bytes);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/ok", 200);
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.unparsed_bytes, 10);
}

#[test]
fn garbage_in_response_direction_then_recovery() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"\x00\x00garbage");
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn oversized_head_counts_an_error_and_recovers() {
    let limits = Http1Limits {
        max_header_bytes: 1024,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    h.req(b"GET /huge HTTP/1.1\r\n");
    for _ in 0..40 {
        h.req(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    h.req(b"\r\n");
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert!(stats.unparsed_bytes > 1024);
    assert_eq!(h.session.pending_requests(), 0);
    h.req(GET);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    assert_eq!(h.stats().resyncs, 1);
}

#[test]
fn oversized_head_in_one_chunk() {
    let limits = Http1Limits {
        max_header_bytes: 256,
        ..Http1Limits::default()
    };
    let mut h = Harness::with_limits(Role::Server, limits);
    let mut request = b"GET / HTTP/1.1\r\nX: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 500));
    request.extend(b"\r\n\r\n");
    h.req(&request);
    assert_eq!(h.stats().parse_errors, 1);
    h.req(GET);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
}

#[test]
fn gap_in_chunked_framing_resyncs_at_next_response() {
    let mut h = Harness::client();
    h.req(GET);
    // A chunk of 0x10 bytes, then the capture misses data, the CRLF and the next size line.
    let mut seen = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n".to_vec();
    seen.extend([b'd'; 8]);
    h.resp_truncated(&seen, seen.len() as u64 + 500);
    h.resp(b"more body of unknown framing");
    assert!(h.out.is_empty());
    h.req(&get("/next"));
    let first = h.take_one();
    assert_complete(&first, "GET", "/index.html", 200);
    assert_eq!(
        response_body_len(&first),
        Some(4 + 8 + 500 + 28),
        "unseen bytes count as body"
    );
    assert_eq!(first.response_last_end_ns, 3500);
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/next", 200);
    let stats = h.stats();
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.parse_errors, 0);
}

#[test]
fn lost_chunked_framing_ends_at_next_response_start() {
    let mut h = Harness::server();
    h.req(&get("/1"));
    h.req(&get("/2"));
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-hex\r\n");
    h.resp(b"still lost");
    h.resp(&ok_with_body("two"));
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_complete(&out[0], "GET", "/1", 200);
    assert_eq!(out[0].response_last_end_ns, 4500);
    assert_complete(&out[1], "GET", "/2", 200);
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn unrecognised_response_is_lost_not_paired_with_the_next_request() {
    let mut h = Harness::server();
    h.req(&get("/1"));
    h.resp(b"\x00\x01 garbled response bytes");
    h.req(&get("/2"));
    let lost = h.take_one();
    assert_eq!(lost.request.target, "/1");
    assert_eq!(lost.outcome, ExchangeOutcome::ResponseLost);
    assert!(lost.response.is_none());
    h.resp(&ok_with_body("2"));
    assert_complete(&h.take_one(), "GET", "/2", 200);
    let stats = h.stats();
    assert_eq!(stats.requests_without_response, 1);
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn unrecognised_response_is_lost_at_close() {
    let mut h = Harness::client();
    h.req(&get("/1"));
    h.req(&get("/2"));
    h.resp(&ok_with_body("1"));
    // The second response does not start like one (the event that began it was lost).
    h.resp_truncated(b"e body of the second response", 120);
    h.close();
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].outcome, ExchangeOutcome::Complete);
    assert_eq!(out[1].request.target, "/2");
    assert_eq!(out[1].outcome, ExchangeOutcome::ResponseLost);
    assert_eq!(out[1].close_ns, 5000);
}

#[test]
fn pipelined_requests_after_old_garbage_are_not_lost() {
    let mut h = Harness::server();
    h.resp(b"\x00 stray bytes before any request");
    let mut requests = get("/a");
    requests.extend(get("/b"));
    h.req(&requests);
    assert!(h.out.is_empty());
    let mut responses = ok_with_body("a");
    responses.extend(ok_with_body("b"));
    h.resp(&responses);
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_complete(&out[0], "GET", "/a", 200);
    assert_complete(&out[1], "GET", "/b", 200);
}

#[test]
fn lost_framing_closes_as_complete() {
    let mut h = Harness::server();
    h.req(GET);
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nbody");
    h.close();
    let ex = h.take_one();
    assert_eq!(ex.outcome, ExchangeOutcome::Complete);
    assert_eq!(response_body_len(&ex), Some(4));
    assert_eq!(h.stats().parse_errors, 1);
}

#[test]
fn conflicting_content_lengths_lose_framing() {
    let mut h = Harness::server();
    h.req(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd");
    h.resp(OK_HELLO);
    let ex = h.take_one();
    assert_complete(&ex, "POST", "/x", 200);
    assert_eq!(ex.request.body_len, 4);
    let stats = h.stats();
    assert_eq!(stats.parse_errors, 1);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn unseen_start_of_a_message_desyncs_until_a_message_start() {
    let mut h = Harness::server();
    // The capture saw a 5-byte body but the syscall carried a further pipelined request.
    h.req_truncated(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 200);
    h.req(b"tail of the unseen request\r\n\r\n");
    h.req(&get("/b"));
    h.resp(&ok_with_body("a"));
    h.resp(&ok_with_body("b"));
    let out = h.take();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].request.target, "/a");
    assert_eq!(out[1].request.target, "/b");
    let stats = h.stats();
    assert_eq!(stats.unparsed_bytes, 200 - 44 + 30);
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn empty_chunks_are_ignored() {
    let mut h = Harness::server();
    h.req(b"");
    h.resp(b"");
    h.req(GET);
    h.req(b"");
    h.resp(OK_HELLO);
    assert_complete(&h.take_one(), "GET", "/index.html", 200);
    assert_eq!(h.stats(), Default::default());
}

/// A deterministic generator, so failures reproduce without proptest's persistence.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Fragments of real messages mixed with noise: the input most likely to reach odd states.
const PIECES: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.0 101 Switching\r\n\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"HEAD /x HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00",
    b"ffffffffffffffffff\r\n",
    b"hello",
    b"\n",
];

fn random_chunk(rng: &mut XorShift, buf: &mut Vec<u8>) -> (Direction, u64) {
    buf.clear();
    for _ in 0..rng.below(6) {
        if rng.below(3) == 0 {
            buf.extend((0..rng.below(40)).map(|_| rng.next() as u8));
        } else {
            buf.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize]);
        }
    }
    let direction = if rng.below(2) == 0 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let gap = match rng.below(4) {
        0 => rng.below(5000),
        _ => 0,
    };
    (direction, buf.len() as u64 + gap)
}

fn check_invariants(out: &[HttpExchange]) {
    for ex in out {
        match ex.outcome {
            ExchangeOutcome::Complete | ExchangeOutcome::ResponseIncomplete => {
                assert!(ex.response.is_some() || ex.outcome == ExchangeOutcome::ResponseIncomplete)
            }
            ExchangeOutcome::NoResponse | ExchangeOutcome::ResponseLost => {
                assert!(ex.response.is_none())
            }
        }
        assert!(ex.request.headers.len() <= Http1Limits::default().max_headers);
    }
}

#[test]
fn deterministic_random_streams_never_panic_and_stay_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::new();
    for round in 0..300 {
        let role = if round % 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let limits = Http1Limits {
            max_header_bytes: 64 + rng.below(2000) as usize,
            max_headers: 1 + rng.below(8) as usize,
            max_pending_requests: 1 + rng.below(5) as usize,
            ..Http1Limits::default()
        };
        let mut session = Http1Session::new(role, limits);
        let mut out = Vec::new();
        for i in 0..200 {
            let (direction, total_len) = random_chunk(&mut rng, &mut buf);
            let chunk = Chunk {
                direction,
                start_ns: i,
                end_ns: i + 1,
                tid: 1,
                bytes: &buf,
                total_len,
            };
            session.on_chunk(&chunk, &mut out);
            assert!(session.pending_requests() <= limits.max_pending_requests);
        }
        session.on_close(1_000_000, &mut out);
        assert_eq!(session.pending_requests(), 0);
        check_invariants(&out);
        let _ = session.take_stats();
    }
}

fn chunk_strategy() -> impl Strategy<Value = (bool, Vec<u8>, u16)> {
    (
        any::<bool>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 0..6)
                .prop_map(|pieces| pieces.concat()),
        ],
        prop_oneof![Just(0u16), any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_chunks_never_panic(
        server in any::<bool>(),
        chunks in proptest::collection::vec(chunk_strategy(), 0..40),
    ) {
        let role = if server { Role::Server } else { Role::Client };
        let limits = Http1Limits { max_header_bytes: 512, max_headers: 4, max_pending_requests: 3, ..Http1Limits::default() };
        let mut session = Http1Session::new(role, limits);
        let mut out = Vec::new();
        for (i, (ingress, bytes, gap)) in chunks.iter().enumerate() {
            let chunk = Chunk {
                direction: if *ingress { Direction::Ingress } else { Direction::Egress },
                start_ns: i as u64,
                end_ns: i as u64,
                tid: 1,
                bytes,
                total_len: bytes.len() as u64 + u64::from(*gap),
            };
            session.on_chunk(&chunk, &mut out);
            prop_assert!(session.pending_requests() <= 3);
        }
        session.on_close(u64::MAX, &mut out);
        prop_assert_eq!(session.pending_requests(), 0);
        check_invariants(&out);
    }

    #[test]
    fn any_split_of_a_valid_conversation_parses_the_same(
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let mut requests = get("/p1");
        requests.extend(b"POST /p2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n");
        requests.extend(b"PUT /p3 HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz");
        let mut responses = ok_with_body("one");
        responses.extend(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
        responses.extend(b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut h = Harness::server();
        let mut req_cuts: Vec<usize> = cuts.iter().map(|c| c % requests.len()).collect();
        req_cuts.sort_unstable();
        let mut resp_cuts: Vec<usize> = cuts.iter().map(|c| (c * 7) % responses.len()).collect();
        resp_cuts.sort_unstable();
        let mut last = 0;
        for cut in req_cuts.into_iter().chain([requests.len()]) {
            h.req(&requests[last..cut]);
            last = cut;
        }
        last = 0;
        for cut in resp_cuts.into_iter().chain([responses.len()]) {
            h.resp(&responses[last..cut]);
            last = cut;
        }
        let out = h.take();
        prop_assert_eq!(out.len(), 3);
        prop_assert_eq!(&out[0].request.target, "/p1");
        prop_assert_eq!(response_body_len(&out[0]), Some(3));
        prop_assert_eq!(&out[1].request.target, "/p2");
        prop_assert_eq!(out[1].request.body_len, 23);
        prop_assert_eq!(response_body_len(&out[1]), Some(12));
        prop_assert_eq!(&out[2].request.target, "/p3");
        prop_assert_eq!(out[2].request.body_len, 4);
        prop_assert_eq!(super::status(&out[2]), Some(204));
        prop_assert_eq!(h.stats(), Default::default());
    }
}
