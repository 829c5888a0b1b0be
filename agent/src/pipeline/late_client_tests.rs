//! A traced client whose request record reaches the agent after its server's whole
//! exchange: the client was preempted between handing its bytes over and its write's
//! return, while the server read, answered and closed.

use loupe_common::{direction, role};

use super::{Replay, Service};
use crate::events::reader::EventSink as _;
use crate::span::{FinishedSpan, SpanKind};

const REQUEST: &[u8] = b"GET /late HTTP/1.1\r\nHost: backend\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const CLIENT_FD: u32 = 7;
const SERVER_FD: u32 = 300;
const CLIENT_PORT: u16 = 45_000;

/// The client's process and connection, and the server's connection, opened in that
/// order as the probes report them (the client's connect returns before it writes).
struct Pair {
    server_tgid: u32,
    client_tgid: u32,
    client_id: u64,
    server_id: u64,
}

impl Pair {
    fn client(&self) -> (u32, u64) {
        (CLIENT_FD, self.client_id)
    }

    fn server(&self) -> (u32, u64) {
        (SERVER_FD, self.server_id)
    }
}

impl Replay {
    fn open_pair(&mut self) -> Pair {
        let server_tgid = self.tgid;
        // A pid no process has: the client is another process than the server.
        let client_tgid = u32::MAX - 1;
        self.tgid = client_tgid;
        let client_id = self.open_as(role::CLIENT, CLIENT_FD, (CLIENT_PORT, 8080));
        self.tgid = server_tgid;
        let server_id = self.open_as(role::SERVER, SERVER_FD, (8080, CLIENT_PORT));
        Pair {
            server_tgid,
            client_tgid,
            client_id,
            server_id,
        }
    }

    /// One record of `bytes`, whole, on `fd` of the current process, `after` ns after
    /// the previous record.
    fn whole(&mut self, (fd, conn_id): (u32, u64), dir: u8, after: u64, bytes: &[u8]) {
        let at = self.tick(after);
        self.data(fd, conn_id, dir, at, bytes, bytes.len(), 0);
    }

    /// The server reads the request, answers and closes, before the client's record of
    /// its write comes.
    fn serve_before_client_record(&mut self, pair: &Pair) {
        self.serve_calling(pair, |_| {});
    }

    /// [`Self::serve_before_client_record`], the server's handler running `handler`.
    fn serve_calling(&mut self, pair: &Pair, handler: impl FnOnce(&mut Self)) {
        let server = (SERVER_FD, pair.server_id);
        self.tgid = pair.server_tgid;
        self.whole(server, direction::INGRESS, 20_000, REQUEST);
        handler(self);
        self.tgid = pair.server_tgid;
        self.whole(server, direction::EGRESS, 30_000, OK);
        self.close(SERVER_FD, pair.server_id);
    }

    /// The client's record of its request, stamped at its write's return, after the
    /// server closed, and its answer.
    fn client_record(&mut self, pair: &Pair) {
        let client = (CLIENT_FD, pair.client_id);
        self.tgid = pair.client_tgid;
        self.whole(client, direction::EGRESS, 10_000, REQUEST);
        self.whole(client, direction::INGRESS, 10_000, OK);
    }

    fn take_spans(&mut self) -> Vec<FinishedSpan> {
        self.pipeline.drained(false);
        self.queued()
    }

    /// What the reader's tick sent on.
    fn ticked(&mut self) -> Vec<FinishedSpan> {
        self.pipeline.tick();
        self.queued()
    }

    fn queued(&mut self) -> Vec<FinishedSpan> {
        let mut spans = Vec::new();
        self.queue.fill(&mut spans, 10);
        spans
    }

    /// The reader finds the ring buffer empty just past the wait of a span ended now.
    fn read_empty_past_the_wait(&mut self) {
        let past = self.clock_ns + super::super::awaiting_client::CLIENT_WAIT_NS + 1;
        self.pipeline.read_empty(past);
    }
}

fn client_and_server(spans: &[FinishedSpan]) -> (&FinishedSpan, &FinishedSpan) {
    (only(spans, SpanKind::Client), only(spans, SpanKind::Server))
}

fn only(spans: &[FinishedSpan], kind: SpanKind) -> &FinishedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.span.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind:?} span: {spans:#?}");
    found[0]
}

#[test]
fn a_server_span_waits_for_its_clients_late_record_and_joins_its_trace() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_before_client_record(&pair);
    replay.client_record(&pair);
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = client_and_server(&spans);
    assert_eq!(server.span.trace_id, client.span.trace_id);
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert_eq!(client.span.parent_span_id, None);
    assert_eq!(replay.metrics().server_spans_awaited_client.get(), 1);
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 0);
    assert_eq!(
        replay.metrics().server_span_ends_moved.get(),
        0,
        "the server answered before its client read"
    );
}

/// A pair whose client wrote its request and whose server read it, in that order.
fn request_read() -> (Replay, Pair) {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.tgid = pair.client_tgid;
    replay.whole(pair.client(), direction::EGRESS, 10_000, REQUEST);
    replay.tgid = pair.server_tgid;
    replay.whole(pair.server(), direction::INGRESS, 10_000, REQUEST);
    (replay, pair)
}

/// When the two spans end, and how long the server's lasts.
struct Ends {
    client: u64,
    server: u64,
    server_length: u64,
}

/// The server writes its answer `after` ns after the last record; the spans, the server's
/// under the client's, end as returned.
fn server_answers_last(replay: &mut Replay, pair: &Pair, after: u64) -> Ends {
    replay.tgid = pair.server_tgid;
    replay.whole(pair.server(), direction::EGRESS, after, OK);
    let spans = replay.take_spans();
    let (client, server) = client_and_server(&spans);
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    Ends {
        client: client.span.end_unix_ns,
        server: server.span.end_unix_ns,
        server_length: server.span.end_unix_ns - server.span.start_unix_ns,
    }
}

/// On another CPU, the client's read of the whole response can return before the
/// server's write does: the server span, made after the client's, ends with it.
#[test]
fn a_server_span_ends_no_later_than_the_client_span_that_read_its_answer() {
    let (mut replay, pair) = request_read();
    replay.tgid = pair.client_tgid;
    replay.whole(pair.client(), direction::INGRESS, 30_000, OK);
    // The server's write returns 5 µs after the client read its answer.
    let ends = server_answers_last(&mut replay, &pair, 5_000);
    assert_eq!(ends.server, ends.client);
    assert_eq!(
        ends.server_length, 30_000,
        "from the request read to the client's read of the answer"
    );
    assert_eq!(replay.metrics().server_span_ends_moved.get(), 1);
}

/// The same race, its records the other way round: the server's write record reaches
/// the ring buffer first, stamped 5 µs after the client's read of the answer, whose
/// record comes next. The server span went out already; the client span ends with it.
#[test]
fn a_client_span_made_after_its_server_span_ends_no_earlier() {
    let (mut replay, pair) = request_read();
    replay.tgid = pair.server_tgid;
    replay.whole(pair.server(), direction::EGRESS, 30_000, OK);
    let written = replay.clock_ns;
    replay.tgid = pair.client_tgid;
    let (fd, conn_id) = pair.client();
    replay.data(
        fd,
        conn_id,
        direction::INGRESS,
        written - 5_000,
        OK,
        OK.len(),
        0,
    );
    let spans = replay.take_spans();
    let (client, server) = client_and_server(&spans);
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert_eq!(client.span.end_unix_ns, server.span.end_unix_ns);
    assert_eq!(
        server.span.end_unix_ns - server.span.start_unix_ns,
        30_000,
        "the server span keeps its own end"
    );
    assert_eq!(replay.metrics().client_span_ends_moved.get(), 1);
    assert_eq!(replay.metrics().server_span_ends_moved.get(), 0);
}

/// A client that gave up (closed before any answer) says nothing of when the server
/// answered: the server span keeps its own end.
#[test]
fn a_server_span_keeps_its_end_when_its_client_gave_up() {
    let (mut replay, pair) = request_read();
    // The client closes 1 µs after the server read its request.
    replay.tgid = pair.client_tgid;
    replay.close(CLIENT_FD, pair.client_id);
    let ends = server_answers_last(&mut replay, &pair, 5_000_000);
    assert!(ends.client < ends.server);
    assert_eq!(
        ends.server_length, 5_001_000,
        "from the request read to its answer's write"
    );
    assert_eq!(replay.metrics().server_span_ends_moved.get(), 0);
    assert_eq!(replay.metrics().client_span_ends_moved.get(), 0);
}

#[test]
fn a_server_span_whose_client_record_never_comes_goes_alone_and_is_counted() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_before_client_record(&pair);
    assert!(
        replay.take_spans().is_empty(),
        "held while the ring buffer has not moved past the client's wait"
    );
    // Other traffic, and the reader finds the ring buffer empty past the wait.
    replay.request(0);
    replay.read_empty_past_the_wait();
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let late = spans
        .iter()
        .find(|s| s.span.path == "/late")
        .expect("the held span");
    assert_eq!(late.span.kind, SpanKind::Server);
    assert_eq!(late.span.parent_span_id, None);
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
}

#[test]
fn a_held_server_span_goes_out_when_the_agent_stops() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_before_client_record(&pair);
    assert!(replay.take_spans().is_empty());
    replay.pipeline.finish();
    let spans = replay.queued();
    assert_eq!(only(&spans, SpanKind::Server).span.path, "/late");
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
}

#[test]
fn a_held_server_span_is_linked_by_a_client_record_read_later() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_before_client_record(&pair);
    assert!(replay.take_spans().is_empty());
    replay.client_record(&pair);
    let spans = replay.take_spans();
    let (client, server) = client_and_server(&spans);
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert_eq!(server.span.trace_id, client.span.trace_id);
}

#[test]
fn with_no_records_coming_the_readers_empty_reads_end_the_wait() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_before_client_record(&pair);
    // The reader stopped for the export queue's room: records may still be in the ring.
    replay.pipeline.drained(true);
    let spans = replay.ticked();
    assert!(
        spans.is_empty(),
        "held while the ring is not read past the wait"
    );
    // Read empty a little later, and then past the wait.
    replay.pipeline.read_empty(replay.clock_ns + 1_000);
    assert!(replay.ticked().is_empty(), "held within the wait");
    replay.read_empty_past_the_wait();
    let spans = replay.ticked();
    assert_eq!(only(&spans, SpanKind::Server).span.path, "/late");
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
}

/// The proxy (the client's process) reads a request from a caller loupe does not trace,
/// whose connection is returned: its call upstream will be that request's child.
fn proxy_reads_a_request(replay: &mut Replay, pair: &Pair) -> (u32, u64) {
    replay.tgid = pair.client_tgid;
    let inbound = (8, replay.open_as(role::SERVER, 8, (80, 51_000)));
    let front = b"GET /front HTTP/1.1\r\nHost: proxy\r\n\r\n";
    replay.whole(inbound, direction::INGRESS, 5_000, front);
    inbound
}

/// The held server's handler calls `db`, a service loupe does not trace.
fn call_untraced(replay: &mut Replay) {
    let down = b"GET /down HTTP/1.1\r\nHost: db\r\n\r\n";
    let fd = SERVER_FD + 1;
    let call = (fd, replay.open_as(role::CLIENT, fd, (46_000, 9_000)));
    replay.whole(call, direction::EGRESS, 5_000, down);
    replay.whole(call, direction::INGRESS, 5_000, OK);
}

/// The held server's handler calls `/stock` on another process loupe traces, which
/// reads the call before the server reads its answer.
fn call_traced(replay: &mut Replay) {
    let (server_tgid, callee_tgid) = (replay.tgid, u32::MAX - 2);
    let stock = b"GET /stock HTTP/1.1\r\nHost: stock\r\n\r\n";
    let fd = SERVER_FD + 1;
    let call = (fd, replay.open_as(role::CLIENT, fd, (46_001, 9_001)));
    replay.tgid = callee_tgid;
    let callee = (400, replay.open_as(role::SERVER, 400, (9_001, 46_001)));
    replay.tgid = server_tgid;
    replay.whole(call, direction::EGRESS, 5_000, stock);
    replay.tgid = callee_tgid;
    replay.whole(callee, direction::INGRESS, 5_000, stock);
    replay.whole(callee, direction::EGRESS, 5_000, OK);
    replay.tgid = server_tgid;
    replay.whole(call, direction::INGRESS, 5_000, OK);
}

fn by_path<'a>(spans: &'a [FinishedSpan], kind: SpanKind, path: &str) -> &'a FinishedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == kind && s.span.path == path)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span of {path}: {spans:#?}");
    found[0]
}

#[test]
fn the_calls_a_held_server_made_wait_with_it_and_join_its_late_clients_trace() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_calling(&pair, call_untraced);
    assert!(
        replay.take_spans().is_empty(),
        "the call waits with the server that made it"
    );
    replay.client_record(&pair);
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let call = by_path(&spans, SpanKind::Client, "/down");
    let client = by_path(&spans, SpanKind::Client, "/late");
    let server = only(&spans, SpanKind::Server);
    assert_eq!(call.span.parent_span_id, Some(server.span.span_id));
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert_eq!(call.span.trace_id, client.span.trace_id);
    assert_eq!(server.span.trace_id, client.span.trace_id);
    assert_eq!(replay.metrics().server_spans_awaited_client.get(), 1);
    assert_eq!(replay.metrics().spans_held_with_server.get(), 1);
}

#[test]
fn a_proxys_late_upstream_call_takes_the_held_server_and_all_it_caused_into_its_trace() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    let inbound = proxy_reads_a_request(&mut replay, &pair);
    replay.serve_calling(&pair, call_traced);
    assert!(
        replay.take_spans().is_empty(),
        "the server, its call and the callee's span wait for the proxy's record"
    );
    replay.client_record(&pair);
    replay.tgid = pair.client_tgid;
    replay.whole(inbound, direction::EGRESS, 5_000, OK);
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let front = by_path(&spans, SpanKind::Server, "/front");
    let upstream = by_path(&spans, SpanKind::Client, "/late");
    let server = by_path(&spans, SpanKind::Server, "/late");
    let call = by_path(&spans, SpanKind::Client, "/stock");
    let callee = by_path(&spans, SpanKind::Server, "/stock");
    assert_eq!(upstream.span.parent_span_id, Some(front.span.span_id));
    assert_eq!(server.span.parent_span_id, Some(upstream.span.span_id));
    assert_eq!(call.span.parent_span_id, Some(server.span.span_id));
    assert_eq!(callee.span.parent_span_id, Some(call.span.span_id));
    for span in &spans {
        assert_eq!(span.span.trace_id, front.span.trace_id, "{span:#?}");
    }
    assert_eq!(replay.metrics().server_spans_awaited_client.get(), 1);
    assert_eq!(replay.metrics().spans_held_with_server.get(), 2);
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 0);
}

#[test]
fn without_a_client_record_the_spans_a_held_server_caused_go_in_its_own_trace() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    replay.serve_calling(&pair, call_traced);
    assert!(replay.take_spans().is_empty());
    replay.read_empty_past_the_wait();
    let spans = replay.ticked();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = by_path(&spans, SpanKind::Server, "/late");
    assert_eq!(server.span.parent_span_id, None);
    let call = by_path(&spans, SpanKind::Client, "/stock");
    let callee = by_path(&spans, SpanKind::Server, "/stock");
    assert_eq!(callee.span.parent_span_id, Some(call.span.span_id));
    assert_eq!(call.span.parent_span_id, Some(server.span.span_id));
    assert_eq!(callee.span.trace_id, server.span.trace_id);
    assert_eq!(call.span.trace_id, server.span.trace_id);
    // Only the server lacks the client it was held for.
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
    assert_eq!(replay.metrics().spans_held_with_server.get(), 2);
}

#[test]
fn when_the_client_record_comes_first_nothing_waits() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    let client = (CLIENT_FD, pair.client_id);
    replay.tgid = pair.client_tgid;
    replay.whole(client, direction::EGRESS, 10_000, REQUEST);
    replay.serve_calling(&pair, call_traced);
    replay.tgid = pair.client_tgid;
    replay.whole(client, direction::INGRESS, 10_000, OK);
    // Read before the reader found the ring buffer empty past anyone's wait.
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let client = by_path(&spans, SpanKind::Client, "/late");
    let server = by_path(&spans, SpanKind::Server, "/late");
    let callee = by_path(&spans, SpanKind::Server, "/stock");
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert!(
        spans
            .iter()
            .all(|s| s.span.trace_id == client.span.trace_id)
    );
    assert_eq!(callee.span.trace_id, client.span.trace_id);
    assert_eq!(replay.metrics().server_spans_awaited_client.get(), 0);
    assert_eq!(replay.metrics().spans_held_with_server.get(), 0);
}

#[test]
fn a_server_span_sent_alone_keeps_what_it_causes_later_when_its_client_record_comes() {
    let mut replay = Replay::new(Service::Nginx).unwrap();
    let pair = replay.open_pair();
    let inbound = proxy_reads_a_request(&mut replay, &pair);
    // The server writes a call it does not wait for, answers and closes.
    let fd = SERVER_FD + 1;
    let down = b"GET /audit HTTP/1.1\r\nHost: audit\r\n\r\n";
    let call = (fd, replay.open_as(role::CLIENT, fd, (46_002, 9_002)));
    replay.serve_calling(&pair, |replay| {
        replay.whole(call, direction::EGRESS, 5_000, down);
    });
    replay.read_empty_past_the_wait();
    let alone = replay.ticked();
    let server = only(&alone, SpanKind::Server);
    assert_eq!(server.span.parent_span_id, None);
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
    // Then the proxy's record of its call, and the server's call's answer.
    replay.client_record(&pair);
    replay.tgid = pair.client_tgid;
    replay.whole(inbound, direction::EGRESS, 5_000, OK);
    replay.tgid = pair.server_tgid;
    replay.whole(call, direction::INGRESS, 5_000, OK);
    let spans = replay.take_spans();
    let audit = by_path(&spans, SpanKind::Client, "/audit");
    assert_eq!(audit.span.parent_span_id, Some(server.span.span_id));
    assert_eq!(
        audit.span.trace_id, server.span.trace_id,
        "the server's trace, where its span went"
    );
    let upstream = by_path(&spans, SpanKind::Client, "/late");
    let front = by_path(&spans, SpanKind::Server, "/front");
    assert_eq!(upstream.span.trace_id, front.span.trace_id);
    assert_eq!(replay.metrics().spans_held_with_server.get(), 0);
}
