//! An event loop's calls through the whole pipeline, as the probes record them: which
//! request each call's span lands under.

use loupe_common::{direction, role};

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
    for (fd, id, dir, bytes) in [
        (process, process_id, ingress, OK),
        (b, b_id, egress, OK),
        (check, check_id, ingress, OK),
        (a, a_id, egress, OK),
    ] {
        replay.record(fd, id, dir, bytes);
    }

    replay.pipeline.drained(false);
    let mut spans = Vec::new();
    replay.queue.fill(&mut spans, 10);
    assert_eq!(spans.len(), 5, "{spans:#?}");
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
