//! An event loop's calls through the whole pipeline, as the probes record them: which
//! request each call's span lands under.

use loupe_common::{data_flags, direction, role};

use super::{FIRST_FD, Replay, Service};
use crate::events::reader::EventSink as _;
use crate::span::{FinishedSpan, SpanKind};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n").into_bytes()
}

impl Replay {
    /// One record of `bytes`, whole, on `fd`, 10 µs after the previous one.
    fn record(&mut self, fd: u32, conn_id: u64, dir: u8, bytes: &[u8]) {
        let at = self.tick(10_000);
        self.data(fd, conn_id, dir, at, bytes, bytes.len(), 0);
    }
}

/// Answers on each `(fd, conn_id)` in turn, a call's response read or a request's
/// response written, and returns the `expected` spans that makes.
fn answer_all(replay: &mut Replay, answers: [(u32, u64); 4], expected: usize) -> Vec<FinishedSpan> {
    for (i, (fd, conn_id)) in answers.into_iter().enumerate() {
        // Calls' responses and requests' responses alternate.
        let dir = [direction::INGRESS, direction::EGRESS][i % 2];
        replay.record(fd, conn_id, dir, OK);
    }
    replay.pipeline.drained(false);
    let mut spans = Vec::new();
    replay.queue.fill(&mut spans, 10);
    assert_eq!(spans.len(), expected, "{spans:#?}");
    spans
}

fn span<'a>(spans: &'a [FinishedSpan], kind: SpanKind, path: &str) -> &'a FinishedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == kind && s.span.path == path)
        .collect();
    assert_eq!(found.len(), 1, "{kind:?} {path}");
    found[0]
}

/// Request A awaits a check; B arrives and calls on at once; A's check answers and A
/// calls again on the same keep-alive connection. The pipeline must take the check's
/// response, read before the call was written, as what woke A's handler.
#[test]
fn a_call_after_its_requests_awaited_response_goes_under_that_request() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let (a, b) = (FIRST_FD, FIRST_FD + 1);
    let (a_id, b_id) = (replay.conn_ids[0], replay.conn_ids[1]);
    let (check, process) = (FIRST_FD + 200, FIRST_FD + 201);
    let check_id = replay.open_as(role::CLIENT, check, (50_000, 9_000));
    let process_id = replay.open_as(role::CLIENT, process, (50_001, 9_000));
    let (ingress, egress) = (direction::INGRESS, direction::EGRESS);

    replay.record(a, a_id, ingress, &get("/api/a"));
    replay.record(check, check_id, egress, &get("/check/a"));
    replay.record(b, b_id, ingress, &get("/api/b"));
    replay.record(process, process_id, egress, &get("/process/b"));
    replay.record(check, check_id, ingress, OK);
    replay.record(check, check_id, egress, &get("/process/a"));
    let answers = [
        (process, process_id),
        (b, b_id),
        (check, check_id),
        (a, a_id),
    ];
    let spans = answer_all(&mut replay, answers, 5);
    let server_a = span(&spans, SpanKind::Server, "/api/a");
    let server_b = span(&spans, SpanKind::Server, "/api/b");
    for (path, parent) in [
        ("/check/a", server_a),
        ("/process/b", server_b),
        ("/process/a", server_a),
    ] {
        let call = span(&spans, SpanKind::Client, path);
        assert_eq!(
            (call.span.parent_span_id, call.span.trace_id),
            (Some(parent.span.span_id), parent.span.trace_id),
            "{path}"
        );
    }
}

/// How the event loop in [`database_round`] talks to its database.
#[derive(Clone, Copy)]
enum Database {
    /// The probes stopped capturing the connection: records without bytes.
    Uncaptured,
    /// Still captured: bytes of a protocol loupe does not parse.
    Captured,
}

impl Replay {
    /// A query or answer of `len` bytes on the database connection `fd`.
    fn database(&mut self, how: Database, fd: u32, conn_id: u64, dir: u8, len: usize) {
        let at = self.tick(10_000);
        match how {
            Database::Uncaptured => {
                self.data(fd, conn_id, dir, at, &[], len, data_flags::UNCAPTURED)
            }
            // A Postgres message: a type byte, a length, then the rest; no HTTP.
            Database::Captured => {
                let mut bytes = vec![b'Q', 0, 0, 0, (len - 1) as u8];
                bytes.resize(len, b'x');
                self.data(fd, conn_id, dir, at, &bytes, len, 0)
            }
        }
    }
}

/// Request A queries the database; B arrives and calls out; the database answers A and
/// A's handler calls out. Returns the spans and the database connection's metrics:
/// answers followed, bytes counted as unparsed.
fn database_round(how: Database, database_role: u8) -> (Vec<FinishedSpan>, u64, u64) {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let (a, b) = (FIRST_FD, FIRST_FD + 1);
    let (a_id, b_id) = (replay.conn_ids[0], replay.conn_ids[1]);
    let (call_a, call_b, db) = (FIRST_FD + 200, FIRST_FD + 201, FIRST_FD + 202);
    let call_a_id = replay.open_as(role::CLIENT, call_a, (50_000, 9_000));
    let call_b_id = replay.open_as(role::CLIENT, call_b, (50_001, 9_000));
    let db_id = replay.open_as(database_role, db, (50_002, 5_432));
    let (ingress, egress) = (direction::INGRESS, direction::EGRESS);
    // An accepted connection is read first: its peer sends the requests.
    let (query, answer) = if database_role == role::SERVER {
        (ingress, egress)
    } else {
        (egress, ingress)
    };

    replay.record(a, a_id, ingress, &get("/api/a"));
    replay.database(how, db, db_id, query, 40);
    replay.record(b, b_id, ingress, &get("/api/b"));
    replay.record(call_b, call_b_id, egress, &get("/process/b"));
    replay.database(how, db, db_id, answer, 60);
    replay.record(call_a, call_a_id, egress, &get("/process/a"));
    let answers = [
        (call_b, call_b_id),
        (b, b_id),
        (call_a, call_a_id),
        (a, a_id),
    ];
    let spans = answer_all(&mut replay, answers, 4);
    let metrics = &replay.pipeline.metrics;
    let followed = metrics.opaque_answers_followed.get();
    (spans, followed, metrics.bytes_unparsed.get())
}

fn parent_path<'a>(spans: &'a [FinishedSpan], path: &str) -> &'a str {
    let call = span(spans, SpanKind::Client, path);
    let parent = spans
        .iter()
        .find(|s| Some(s.span.span_id) == call.span.parent_span_id)
        .expect("a parent");
    assert_eq!(parent.span.trace_id, call.span.trace_id);
    &parent.span.path
}

#[test]
fn a_call_after_an_uncaptured_database_answer_goes_under_the_request_that_queried() {
    let (spans, followed, unparsed) = database_round(Database::Uncaptured, role::CLIENT);
    assert_eq!(parent_path(&spans, "/process/a"), "/api/a");
    assert_eq!(parent_path(&spans, "/process/b"), "/api/b");
    assert_eq!(followed, 1);
    assert_eq!(unparsed, 0, "no bytes were captured");
}

#[test]
fn a_call_after_a_captured_database_answer_goes_under_the_request_that_queried() {
    let (spans, followed, unparsed) = database_round(Database::Captured, role::CLIENT);
    assert_eq!(parent_path(&spans, "/process/a"), "/api/a");
    assert_eq!(followed, 1);
    assert_eq!(unparsed, 100, "the query and the answer");
}

/// A connection the process accepted carries requests to it, not answers to its calls:
/// what it reads there says nothing, and the loop's last HTTP read decides.
#[test]
fn reads_on_an_accepted_connection_loupe_does_not_parse_are_not_followed() {
    let (spans, followed, _) = database_round(Database::Uncaptured, role::SERVER);
    assert_eq!(parent_path(&spans, "/process/a"), "/api/b");
    assert_eq!(followed, 0);
}

/// Found in use (role unknown), a connection whose first record seen is a read is taken
/// for an accepted one; one whose first is a write, for one the process opened.
#[test]
fn a_connection_found_in_use_is_followed_when_its_process_wrote_first() {
    for (database_role, first_read) in [(role::UNKNOWN, false), (role::UNKNOWN, true)] {
        let how = Database::Uncaptured;
        let mut replay = Replay::new(Service::Nginx).unwrap();
        let db = FIRST_FD + 202;
        let db_id = replay.open_as(database_role, db, (50_002, 5_432));
        let (a, a_id) = (FIRST_FD, replay.conn_ids[0]);
        replay.record(a, a_id, direction::INGRESS, &get("/api/a"));
        if first_read {
            replay.database(how, db, db_id, direction::INGRESS, 10);
        }
        replay.database(how, db, db_id, direction::EGRESS, 40);
        replay.database(how, db, db_id, direction::INGRESS, 60);
        let followed = replay.pipeline.metrics.opaque_answers_followed.get();
        assert_eq!(followed, u64::from(!first_read), "first read: {first_read}");
    }
}

/// The probes report a process's uncaptured calls once it is seen to serve several
/// requests on one thread while it calls out on connections loupe does not parse, and
/// only then: other processes pay nothing for it.
#[test]
fn a_process_serving_several_requests_on_one_thread_is_marked_an_event_loop() {
    for calls_unparsed in [false, true] {
        let mut replay = Replay::new(Service::Nginx).unwrap();
        let (a, b) = (FIRST_FD, FIRST_FD + 1);
        let (a_id, b_id) = (replay.conn_ids[0], replay.conn_ids[1]);
        let db = FIRST_FD + 202;
        let db_id = replay.open_as(role::CLIENT, db, (50_002, 5_432));
        let tgid = replay.tgid;
        replay.record(a, a_id, direction::INGRESS, &get("/api/a"));
        if calls_unparsed {
            replay.database(Database::Captured, db, db_id, direction::EGRESS, 40);
            replay.database(Database::Captured, db, db_id, direction::INGRESS, 60);
        }
        replay.record(a, a_id, direction::EGRESS, OK);
        replay.record(b, b_id, direction::INGRESS, &get("/api/b"));
        assert!(!replay.pipeline.event_loops.contains(tgid), "one at a time");
        replay.record(a, a_id, direction::INGRESS, &get("/api/c"));
        assert_eq!(
            replay.pipeline.event_loops.contains(tgid),
            calls_unparsed,
            "two at once, calls unparsed: {calls_unparsed}"
        );
    }
}

/// Two requests' calls wait on one connection (pipelined): the answers are matched in
/// order, counted as a guess. The connection's first call goes under the request that
/// opened it, and only the first.
#[test]
fn pipelined_answers_are_matched_in_order_and_counted() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let (a, b) = (FIRST_FD, FIRST_FD + 1);
    let (a_id, b_id) = (replay.conn_ids[0], replay.conn_ids[1]);
    let (ingress, egress) = (direction::INGRESS, direction::EGRESS);
    let (call_a, call_b, db) = (FIRST_FD + 200, FIRST_FD + 201, FIRST_FD + 202);
    replay.record(a, a_id, ingress, &get("/api/a"));
    // A's handler opens the connection; B is read before the first call goes out.
    let db_id = replay.open_as(role::CLIENT, db, (50_002, 6_379));
    replay.record(b, b_id, ingress, &get("/api/b"));
    let how = Database::Uncaptured;
    replay.database(how, db, db_id, egress, 20);
    replay.database(how, db, db_id, egress, 20);
    replay.database(how, db, db_id, ingress, 10);
    let call_a_id = replay.open_as(role::CLIENT, call_a, (50_000, 9_000));
    replay.record(call_a, call_a_id, egress, &get("/process/a"));
    replay.database(how, db, db_id, ingress, 10);
    let call_b_id = replay.open_as(role::CLIENT, call_b, (50_001, 9_000));
    replay.record(call_b, call_b_id, egress, &get("/process/b"));
    let metrics = &replay.pipeline.metrics;
    assert_eq!(metrics.opaque_answers_followed.get(), 2);
    assert_eq!(
        metrics.opaque_answers_by_order.get(),
        1,
        "B waited behind A"
    );
    let answers = [
        (call_a, call_a_id),
        (a, a_id),
        (call_b, call_b_id),
        (b, b_id),
    ];
    let spans = answer_all(&mut replay, answers, 4);
    assert_eq!(
        parent_path(&spans, "/process/a"),
        "/api/a",
        "the hinted first call"
    );
    assert_eq!(
        parent_path(&spans, "/process/b"),
        "/api/b",
        "the second, unhinted"
    );
}
