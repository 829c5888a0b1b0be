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

    /// The server reads the request, answers and closes; returns when the client began
    /// writing, which was before all that.
    fn serve_before_client_record(&mut self, pair: &Pair) -> u64 {
        self.tgid = pair.server_tgid;
        let written = self.tick(10_000);
        let read = self.tick(20_000);
        self.data(
            SERVER_FD,
            pair.server_id,
            direction::INGRESS,
            read,
            REQUEST,
            REQUEST.len(),
            0,
        );
        let answered = self.tick(30_000);
        self.data(
            SERVER_FD,
            pair.server_id,
            direction::EGRESS,
            answered,
            OK,
            OK.len(),
            0,
        );
        self.close(SERVER_FD, pair.server_id);
        written
    }

    fn take_spans(&mut self) -> Vec<FinishedSpan> {
        self.pipeline.drained(false);
        let mut spans = Vec::new();
        self.queue.fill(&mut spans, 10);
        spans
    }
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
    let written = replay.serve_before_client_record(&pair);
    // Its record comes now, stamped with the write's start, as the entry probes stamp it.
    replay.tgid = pair.client_tgid;
    replay.data(
        CLIENT_FD,
        pair.client_id,
        direction::EGRESS,
        written,
        REQUEST,
        REQUEST.len(),
        0,
    );
    let answer = replay.tick(10_000);
    replay.data(
        CLIENT_FD,
        pair.client_id,
        direction::INGRESS,
        answer,
        OK,
        OK.len(),
        0,
    );
    let spans = replay.take_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = (
        only(&spans, SpanKind::Client),
        only(&spans, SpanKind::Server),
    );
    assert_eq!(server.span.trace_id, client.span.trace_id);
    assert_eq!(server.span.parent_span_id, Some(client.span.span_id));
    assert_eq!(client.span.parent_span_id, None);
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 0);
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
    // Other traffic moves the records' clock past the wait.
    replay.tick(super::super::awaiting_client::CLIENT_WAIT_NS);
    replay.request(0);
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
    let mut spans = Vec::new();
    replay.queue.fill(&mut spans, 10);
    assert_eq!(only(&spans, SpanKind::Server).span.path, "/late");
    assert_eq!(replay.metrics().server_spans_peer_unmatched.get(), 1);
}
