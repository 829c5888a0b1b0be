//! Placing an event loop's calls by what its thread last read, through the linker.

use super::super::linking::{ClientPlacement, Linker, NodeRef, RequestKey, resolve};
use super::{MAX_THREADS, ReadFor};

const FRONT: u32 = 100;
const LOOP: u32 = 1;

fn key(fd: u32, request_id: u64) -> RequestKey {
    RequestKey {
        tgid: FRONT,
        fd,
        conn_id: 1,
        request_id,
    }
}

/// A request the event loop read on server connection `fd`, as the pipeline reports it.
fn serve(l: &mut Linker, fd: u32, ts: u64) -> NodeRef {
    let node = l.server_start(key(fd, 0), LOOP, ts, None, None, None);
    l.on_read(FRONT, LOOP, ReadFor::Request(key(fd, 0)));
    node
}

/// A call written on client connection `fd`: its parent's span id.
fn call(l: &mut Linker, fd: u32, request_id: u64, ts: u64) -> (Option<[u8; 8]>, ClientPlacement) {
    let (node, placement) = l.client_start(key(fd, request_id), LOOP, ts, None, None, None, None);
    (resolve(&node).parent_span_id.map(|id| id.0), placement)
}

fn span_id(node: &NodeRef) -> Option<[u8; 8]> {
    Some(resolve(node).span_id.0)
}

/// Request A awaits a check that answers late; B arrives, and is still awaiting its own
/// second call when A's check answers and A's handler calls out again.
#[test]
fn a_call_made_after_an_awaited_response_belongs_to_the_request_that_awaited_it() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    assert_eq!(call(&mut l, 20, 0, 2).0, span_id(&a), "A's check");
    let b = serve(&mut l, 11, 3);
    assert_eq!(call(&mut l, 21, 0, 4).0, span_id(&b), "B's check");
    // B's check answers; B's handler calls on.
    l.on_read(FRONT, LOOP, ReadFor::Response(key(21, 0)));
    l.finish(&key(21, 0));
    assert_eq!(call(&mut l, 21, 1, 5).0, span_id(&b), "B's second call");
    // A's check answers while B is in flight and was read last.
    l.on_read(FRONT, LOOP, ReadFor::Response(key(20, 0)));
    l.finish(&key(20, 0));
    let (parent, placement) = call(&mut l, 20, 1, 6);
    assert_eq!(
        parent,
        span_id(&a),
        "A's second call goes to A, not to the latest"
    );
    assert_eq!(
        placement,
        ClientPlacement::Guessed,
        "still two in flight on the loop"
    );
}

#[test]
fn a_request_body_read_after_another_request_wakes_its_own_handler() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    let _b = serve(&mut l, 11, 2);
    // The rest of A's body arrives: A's handler runs.
    l.on_read(FRONT, LOOP, ReadFor::Request(key(10, 0)));
    assert_eq!(call(&mut l, 20, 0, 3).0, span_id(&a));
}

#[test]
fn without_a_read_in_flight_the_latest_request_is_the_guess() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    serve(&mut l, 11, 2);
    // B was read last but is answered: a timer of A's fires and calls out.
    l.finish(&key(11, 0));
    assert_eq!(call(&mut l, 20, 0, 3).0, span_id(&a));
    // A response to a call made outside any request wakes nothing in flight.
    let c = serve(&mut l, 12, 4);
    let (standalone, _) = l.client_start(key(22, 0), 2, 5, None, None, None, None);
    assert!(resolve(&standalone).parent_span_id.is_none());
    l.on_read(FRONT, LOOP, ReadFor::Request(key(10, 0)));
    l.on_read(FRONT, LOOP, ReadFor::Response(key(22, 0)));
    let (parent, _) = call(&mut l, 21, 0, 6);
    assert_eq!(parent, span_id(&c), "the most recent, not A read before");
}

/// Requests of one event loop end in any order; each that ends is the one taken out, and
/// the latest still in flight stays the guess.
#[test]
fn requests_ending_out_of_order_leave_the_others_in_flight() {
    let mut l = Linker::default();
    let nodes: Vec<NodeRef> = (0..6)
        .map(|i| serve(&mut l, 10 + i, u64::from(i)))
        .collect();
    assert_eq!(l.serving_sizes().0, 6);
    // The latest (fd 15) ends, then one from the middle and the oldest.
    for fd in [15, 12, 10] {
        l.finish(&key(fd, 0));
    }
    assert_eq!(l.serving_sizes().0, 3);
    // The last read was fd 15's, which ended: the latest still in flight is fd 14's.
    assert_eq!(call(&mut l, 30, 0, 10).0, span_id(&nodes[4]));
    for fd in [14, 11] {
        l.finish(&key(fd, 0));
    }
    // One left, fd 13's; ending a request twice, or one never started, changes nothing.
    l.finish(&key(14, 0));
    l.finish(&key(99, 0));
    assert_eq!(l.serving_sizes().0, 1);
    assert_eq!(call(&mut l, 31, 0, 11).0, span_id(&nodes[3]));
    l.finish(&key(13, 0));
    assert_eq!(l.serving_sizes().0, 0);
    let (parent, placement) = call(&mut l, 32, 0, 12);
    assert_eq!(parent, None);
    assert!(
        matches!(placement, ClientPlacement::Standalone),
        "{placement:?}"
    );
}

#[test]
fn reads_are_forgotten_with_their_requests_and_bounded() {
    let mut l = Linker::default();
    serve(&mut l, 10, 1);
    assert_eq!(l.serving_sizes(), (1, 1));
    l.finish(&key(10, 0));
    l.expire(2);
    assert_eq!(l.serving_sizes(), (0, 0));
    // One request read by more threads than are remembered.
    l.server_start(key(10, 1), LOOP, 3, None, None, None);
    for tid in 0..(MAX_THREADS as u32 + 10) {
        l.on_read(FRONT, tid, ReadFor::Request(key(10, 1)));
    }
    assert_eq!(l.serving_sizes(), (1, MAX_THREADS));
    l.forget_process(FRONT);
    assert_eq!(l.serving_sizes(), (0, 0));
}

/// With `--inject-traceparent` the kernel wrote the context of the request it took the
/// thread to serve; the server that reads it continues that trace, so the call's span
/// stays under that request, whatever the thread read last, and starts the trace the
/// kernel started when it had none.
#[test]
fn a_call_whose_context_the_kernel_wrote_stays_under_that_request() {
    use super::super::linking::KernelIds;
    use crate::span::{SpanId, TraceId};
    let kernel = |trace: u8, span: u8, parent: Option<u8>| KernelIds {
        trace_id: TraceId([trace; 16]),
        span_id: SpanId([span; 8]),
        parent_span_id: parent.map(|p| SpanId([p; 8])),
        trace_flags: 1,
    };
    let mut l = Linker::default();
    let a = l.server_start(key(10, 0), LOOP, 1, None, None, Some(kernel(1, 1, None)));
    let b = l.server_start(key(11, 0), LOOP, 2, None, None, Some(kernel(2, 2, None)));
    l.on_read(FRONT, LOOP, ReadFor::Request(key(10, 0)));
    let on_wire = kernel(2, 9, Some(2));
    let (node, placement) = l.client_start(key(20, 0), LOOP, 3, None, None, Some(on_wire), None);
    let ids = resolve(&node);
    assert_eq!(ids.parent_span_id.map(|id| id.0), span_id(&b));
    assert_eq!(ids.trace_id, TraceId([2; 16]));
    assert_eq!(placement, ClientPlacement::OwnContext);
    // A request no longer in flight is still the parent the wire names.
    let elsewhere = kernel(3, 8, Some(7));
    let (node, _) = l.client_start(key(21, 0), LOOP, 4, None, None, Some(elsewhere), None);
    let ids = resolve(&node);
    assert_eq!(ids.parent_span_id, Some(SpanId([7; 8])));
    assert_eq!(ids.trace_id, TraceId([3; 16]));
    // A trace the kernel started (the thread had no context it could use): the server
    // called continues it, so the span starts it, linked to the request the thread last
    // read for.
    let root = kernel(4, 6, None);
    let (node, placement) = l.client_start(key(22, 0), LOOP, 5, None, None, Some(root), None);
    let ids = resolve(&node);
    assert_eq!(
        (ids.trace_id, ids.span_id),
        (TraceId([4; 16]), SpanId([6; 8]))
    );
    assert_eq!(ids.parent_span_id, None);
    let link = ids.link.expect("a link to the request");
    assert_eq!(Some(link.span_id.0), span_id(&a));
    assert_eq!(link.trace_id, TraceId([1; 16]));
    assert_eq!(placement, ClientPlacement::LinkedToServer);
    // Its response wakes the handler of the request it links to.
    l.on_read(FRONT, LOOP, ReadFor::Request(key(11, 0)));
    l.on_read(FRONT, LOOP, ReadFor::Response(key(22, 0)));
    let (next, _) = l.client_start(key(24, 0), LOOP, 6, None, None, None, None);
    assert_eq!(resolve(&next).parent_span_id.map(|id| id.0), span_id(&a));
    // Serving nothing, it starts the kernel's trace without a link.
    l.finish(&key(10, 0));
    l.finish(&key(11, 0));
    let alone = kernel(5, 7, None);
    let (node, placement) = l.client_start(key(23, 0), LOOP, 7, None, None, Some(alone), None);
    let ids = resolve(&node);
    assert_eq!((ids.trace_id, ids.parent_span_id), (TraceId([5; 16]), None));
    assert_eq!(ids.link, None);
    assert_eq!(placement, ClientPlacement::OwnContext);
}

/// A client's own I/O thread reads the responses to every request's calls: a response it
/// reads says nothing about which request its next call is for.
#[test]
fn a_response_read_on_another_thread_than_its_request_wakes_nothing() {
    let mut l = Linker::default();
    const IO: u32 = 9;
    l.server_start(key(10, 0), 1, 1, None, None, None);
    l.on_read(FRONT, 1, ReadFor::Request(key(10, 0)));
    l.client_start(key(20, 0), 1, 2, None, None, None, None);
    l.server_start(key(11, 0), 2, 3, None, None, None);
    l.server_start(key(12, 0), 3, 4, None, None, None);
    l.on_read(FRONT, IO, ReadFor::Response(key(20, 0)));
    let (node, placement) = l.client_start(key(21, 0), IO, 5, None, None, None, None);
    assert!(
        resolve(&node).parent_span_id.is_none(),
        "three in flight, none on this thread"
    );
    assert_eq!(placement, ClientPlacement::Unplaced);
}

/// A server that answers each request before reading the next keeps one list for its
/// requests in flight rather than a new one per request; housekeeping frees it once empty.
#[test]
fn an_emptied_in_flight_list_is_kept_until_housekeeping() {
    let mut l = Linker::default();
    for request_id in 0..3 {
        l.server_start(key(10, request_id), 1, request_id + 1, None, None, None);
        l.finish(&key(10, request_id));
        assert_eq!(l.serving_processes(), 1, "kept after request {request_id}");
        assert_eq!(l.serving_sizes().0, 0, "none in flight");
    }
    // A call made now belongs to no request, as when no list was kept.
    let (_, placement) = l.client_start(key(20, 0), 1, 5, None, None, None, None);
    assert_eq!(placement, ClientPlacement::Standalone);
    l.finish(&key(20, 0));
    l.expire(10);
    assert_eq!(
        l.serving_processes(),
        0,
        "housekeeping frees the empty list"
    );
    l.server_start(key(10, 3), 1, 11, None, None, None);
    l.expire(12);
    assert_eq!(l.serving_processes(), 1, "a list in use stays");
}

const DB: loupe_common::ConnKey = loupe_common::ConnKey {
    tgid: FRONT,
    fd: 40,
};

/// A call on a connection loupe does not parse (a database's), as the pipeline reports it.
fn opaque(l: &mut Linker, egress: bool) -> bool {
    l.on_opaque_call((DB, 7), LOOP, egress, None).is_some()
}

/// A awaits a database query; B arrives and calls out; the database answers A, whose
/// handler calls out next. The answer is all loupe sees of what woke A's handler.
#[test]
fn a_call_after_an_awaited_database_answer_belongs_to_the_request_that_awaited_it() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    assert!(!opaque(&mut l, true), "A's query");
    let b = serve(&mut l, 11, 2);
    assert_eq!(call(&mut l, 21, 0, 3).0, span_id(&b), "B's call");
    assert!(opaque(&mut l, false), "the answer to A's query");
    assert_eq!(call(&mut l, 20, 0, 4).0, span_id(&a), "A's call, not B's");
    // B's call answers and B queries; A reads more of its body; the answer wakes B.
    l.on_read(FRONT, LOOP, ReadFor::Response(key(21, 0)));
    opaque(&mut l, true);
    l.on_read(FRONT, LOOP, ReadFor::Request(key(10, 0)));
    assert!(opaque(&mut l, false));
    assert_eq!(call(&mut l, 21, 1, 5).0, span_id(&b));
}

/// Without the answer, the call goes under the request the loop read last: the case
/// above, had loupe not followed the database's connection.
#[test]
fn without_the_answer_the_call_goes_under_the_last_request_read() {
    let mut l = Linker::default();
    serve(&mut l, 10, 1);
    opaque(&mut l, true);
    let b = serve(&mut l, 11, 2);
    assert_eq!(call(&mut l, 20, 0, 3).0, span_id(&b));
}

/// A pool connects in the turn of the handler that needs the connection, but its first
/// call goes out once connected, after other requests were read: that call is the
/// hinted request's, as for an HTTP connection's first request.
#[test]
fn a_new_connections_first_call_belongs_to_the_request_that_opened_it() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    let hint = l.serving(FRONT, LOOP);
    serve(&mut l, 11, 2);
    l.on_opaque_call((DB, 7), LOOP, true, hint.as_ref());
    // A later write on the same connection is not hinted.
    l.on_opaque_call((DB, 7), LOOP, false, None);
    assert_eq!(call(&mut l, 20, 0, 3).0, span_id(&a));
}

#[test]
fn an_answer_to_a_call_outside_any_request_wakes_a_handler_that_serves_none() {
    let mut l = Linker::default();
    let a = serve(&mut l, 10, 1);
    l.finish(&key(10, 0));
    l.expire(2);
    opaque(&mut l, true);
    let b = serve(&mut l, 11, 3);
    let c = serve(&mut l, 12, 4);
    // More of B's body comes: B is what the thread last read for.
    l.on_read(FRONT, LOOP, ReadFor::Request(key(11, 0)));
    assert!(opaque(&mut l, false));
    // The thread's read is forgotten: the latest in flight is the guess, not B (the
    // last read, had the answer said nothing) nor A (the call's writer, ended).
    let (parent, _) = call(&mut l, 20, 0, 5);
    assert_ne!(parent, span_id(&a));
    assert_ne!(parent, span_id(&b));
    assert_eq!(parent, span_id(&c));
}

#[test]
fn followed_connections_are_forgotten_with_them_and_their_processes() {
    let mut l = Linker::default();
    serve(&mut l, 10, 1);
    opaque(&mut l, true);
    assert_eq!(l.opaque_connections(), 1);
    l.forget_connection(&DB);
    assert_eq!(l.opaque_connections(), 0);
    opaque(&mut l, true);
    l.forget_process(FRONT);
    assert_eq!(l.opaque_connections(), 0);
    // A call whose request ended, unanswered, is dropped by housekeeping.
    serve(&mut l, 10, 2);
    opaque(&mut l, true);
    l.finish(&key(10, 0));
    l.expire(3);
    assert_eq!(l.opaque_connections(), 0);
}

fn event_loops(l: &mut Linker) -> Vec<u32> {
    l.take_event_loops()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Only a process that calls out on connections loupe does not parse is checked for
/// serving several requests on one thread, at each start and each such call; each is
/// found once, and housekeeping keeps what was learnt of it.
#[test]
fn a_process_calling_out_unparsed_while_serving_several_is_found_an_event_loop_once() {
    let mut l = Linker::default();
    serve(&mut l, 10, 1);
    serve(&mut l, 11, 2);
    assert!(event_loops(&mut l).is_empty(), "no unparsed call yet");
    opaque(&mut l, true);
    assert_eq!(event_loops(&mut l), vec![FRONT], "found at the call");
    serve(&mut l, 12, 3);
    assert!(event_loops(&mut l).is_empty(), "found once");

    // Another process calls out unparsed with one request in flight, then serves two.
    let other = |fd| RequestKey {
        tgid: FRONT + 1,
        ..key(fd, 0)
    };
    let db = loupe_common::ConnKey {
        tgid: FRONT + 1,
        fd: 40,
    };
    l.server_start(other(10), LOOP, 4, None, None, None);
    l.on_opaque_call((db, 1), LOOP, true, None);
    assert!(event_loops(&mut l).is_empty(), "one in flight");
    for fd in [10, 11, 12] {
        l.finish(&key(fd, 0));
    }
    l.finish(&other(10));
    l.expire(5);
    // Nothing in flight, but the process still counts as calling out unparsed.
    l.server_start(other(11), LOOP, 6, None, None, None);
    l.server_start(other(12), LOOP, 7, None, None, None);
    assert_eq!(event_loops(&mut l), vec![FRONT + 1], "found at a start");
    // A thread-per-request process that calls out unparsed is never found.
    let third = |fd| RequestKey {
        tgid: FRONT + 2,
        ..key(fd, 0)
    };
    let db = loupe_common::ConnKey {
        tgid: FRONT + 2,
        ..db
    };
    for tid in [1, 2, 3] {
        l.server_start(third(10 + tid), tid, 8, None, None, None);
        l.on_opaque_call((db, 1), tid, true, None);
    }
    assert!(event_loops(&mut l).is_empty());
}

/// What is learnt of a process that calls out unparsed outlives its requests, not the
/// process: an exec starts it afresh, and its end forgets it even when it left no
/// connection behind to tell of it.
#[test]
fn what_is_learnt_of_a_process_goes_with_its_program() {
    let mut l = Linker::default();
    serve(&mut l, 10, 1);
    serve(&mut l, 11, 2);
    opaque(&mut l, true);
    assert_eq!(event_loops(&mut l), vec![FRONT]);
    // The program execs: found again only once the new one calls out unparsed.
    l.forget_program(FRONT);
    serve(&mut l, 12, 3);
    assert!(
        event_loops(&mut l).is_empty(),
        "the new program made no such call"
    );
    opaque(&mut l, true);
    assert_eq!(event_loops(&mut l), vec![FRONT]);
    // Idle, the process is kept while it lives and forgotten once it has exited.
    for fd in [10, 11, 12] {
        l.finish(&key(fd, 0));
    }
    l.expire(4);
    l.forget_dead(|_| true);
    assert_eq!(l.serving_processes(), 1);
    l.forget_dead(|tgid| tgid != FRONT);
    assert_eq!(l.serving_processes(), 0);
    // A later process with the pid starts afresh.
    serve(&mut l, 10, 5);
    serve(&mut l, 11, 6);
    assert!(event_loops(&mut l).is_empty());
}
