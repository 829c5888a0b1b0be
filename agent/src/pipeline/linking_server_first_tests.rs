//! A server request read before the request record of its traced client: the client
//! adopts it when it comes, and until then the server and what it causes await it.

use super::*;
use crate::pipeline::awaiting_client::trace_awaits_client;

#[test]
fn a_standalone_client_seen_after_its_server_takes_the_servers_trace() {
    let mut l = Linker::default();
    // A server seen first, and a call it made, which may have gone out already.
    let back = l.server_start(key(BACK, 4, 0), 21, 15, Some(hop_mirrored()), None, None);
    let back_trace = resolve(&back).trace_id;
    let (downstream, _) = l.client_start(key(BACK, 7, 0), 21, 16, None, None, None, None);
    assert_eq!(resolve(&downstream).trace_id, back_trace);
    // Its client serves nothing: its span starts the trace, the one already in use.
    let (call, placement) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert_eq!(placement, ClientPlacement::Standalone);
    let (call_ids, back_ids) = (resolve(&call), resolve(&back));
    assert_eq!(call_ids.trace_id, back_trace);
    assert_eq!(call_ids.parent_span_id, None);
    assert_eq!(back_ids.trace_id, back_trace);
    assert_eq!(back_ids.parent_span_id, Some(call_ids.span_id));
    assert_eq!(resolve(&downstream).trace_id, back_trace);
}

#[test]
fn a_client_with_ids_on_the_wire_seen_after_its_server_keeps_them() {
    let kernel = KernelIds {
        trace_id: TraceId([5; 16]),
        span_id: SpanId([6; 8]),
        parent_span_id: None,
        trace_flags: 1,
    };
    let sdk = header(3, 4);
    for (header, kernel, trace) in [
        (Some(sdk), None, TraceId([3; 16])),
        (None, Some(kernel), TraceId([5; 16])),
    ] {
        let mut l = Linker::default();
        let back = l.server_start(key(BACK, 4, 0), 21, 15, Some(hop_mirrored()), None, None);
        let (call, placement) =
            l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), header, kernel, None);
        assert_eq!(placement, ClientPlacement::OwnContext);
        let call_ids = resolve(&call);
        assert_eq!(call_ids.trace_id, trace);
        assert_eq!(resolve(&back).trace_id, trace);
        assert_eq!(resolve(&back).parent_span_id, Some(call_ids.span_id));
    }
}

#[test]
fn a_server_without_parent_whose_client_is_traced_awaits_it_with_what_it_causes() {
    let mut l = Linker::default();
    // Read before its client's record: it and its calls wait for that client.
    let back = l.server_start(key(BACK, 4, 0), 21, 15, Some(hop_mirrored()), None, None);
    let (call, _) = l.client_start(key(BACK, 9, 0), 21, 16, None, None, None, None);
    assert!(back.borrow().still_awaits_client());
    assert!(trace_awaits_client(&back) && trace_awaits_client(&call));
    // Its client has a parent of its own: the whole trace moves under it.
    let front = l.server_start(key(FRONT, 5, 0), 11, 10, None, None, None);
    let (client, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert!(!back.borrow().still_awaits_client());
    assert!(!trace_awaits_client(&back) && !trace_awaits_client(&call));
    assert_eq!(resolve(&call).trace_id, resolve(&front).trace_id);
    assert_eq!(
        resolve(&back).parent_span_id,
        Some(resolve(&client).span_id)
    );
    // Neither a server whose client came first, nor one whose client loupe does not
    // trace, nor one continuing a caller's header awaits anything.
    let (_, _) = l.client_start(key(FRONT, 7, 0), 11, 30, Some(hop()), None, None, None);
    let met = l.server_start(key(BACK, 4, 1), 21, 35, Some(hop_mirrored()), None, None);
    let untraced_peer = l.server_start(key(BACK, 10, 0), 22, 40, None, None, None);
    let continued = l.server_start(
        key(BACK, 11, 0),
        23,
        45,
        ingress(),
        Some(header(7, 9)),
        None,
    );
    for server in [met, untraced_peer, continued] {
        assert!(!server.borrow().awaits_client && !trace_awaits_client(&server));
    }
}

#[test]
fn a_span_under_a_callers_context_or_in_a_loop_awaits_nothing() {
    let mut l = Linker::default();
    // A server continuing a caller's header, and the call it makes.
    let front = l.server_start(key(FRONT, 5, 0), 11, 10, None, Some(header(7, 9)), None);
    let (call, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    // Even if the top somehow awaited a client, a caller's context fixes the trace.
    front.borrow_mut().awaits_client = true;
    assert!(!trace_awaits_client(&front) && !trace_awaits_client(&call));
    // A parent loop ends the walk.
    let back = l.server_start(key(BACK, 4, 0), 21, 30, Some(hop_mirrored()), None, None);
    front.borrow_mut().parent = Parent::Local(back.clone());
    back.borrow_mut().parent = Parent::Local(call.clone());
    assert!(!trace_awaits_client(&call));
}

#[test]
fn a_server_with_the_kernels_ids_awaits_nothing_and_one_sent_alone_is_not_moved() {
    let mut l = Linker::default();
    let kernel = KernelIds {
        trace_id: TraceId([4; 16]),
        span_id: SpanId([5; 8]),
        parent_span_id: None,
        trace_flags: 1,
    };
    let injected = l.server_start(
        key(BACK, 4, 0),
        21,
        15,
        Some(hop_mirrored()),
        None,
        Some(kernel),
    );
    assert!(injected.borrow().starts_trace() && !injected.borrow().awaits_client);
    // Its late client, under a request of its own process, leaves it where the kernel's
    // ids put it.
    let _front = l.server_start(key(FRONT, 5, 0), 11, 10, None, None, None);
    let (client, placement) =
        l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert_eq!(placement, ClientPlacement::UnderServer);
    assert!(injected.borrow().starts_trace());
    assert_eq!(resolve(&injected).trace_id, TraceId([4; 16]));
    assert_ne!(resolve(&client).trace_id, TraceId([4; 16]));
    // A server span sent alone (no longer awaiting) is not moved either, but a client
    // that starts its trace still joins it, taking its trace id.
    let alone = l.server_start(key(BACK, 4, 1), 21, 40, Some(hop_mirrored()), None, None);
    alone.borrow_mut().awaits_client = false;
    let _ = l.client_start(key(FRONT, 6, 1), 11, 50, Some(hop()), None, None, None);
    assert!(alone.borrow().starts_trace());
    let other = ends("127.0.0.1:40001", "127.0.0.1:8000");
    let joined = l.server_start(key(BACK, 7, 0), 22, 60, Some(other.mirrored()), None, None);
    joined.borrow_mut().awaits_client = false;
    l.finish(&key(FRONT, 5, 0));
    let (standalone, placement) =
        l.client_start(key(FRONT, 8, 0), 12, 70, Some(other), None, None, None);
    assert_eq!(placement, ClientPlacement::Standalone);
    assert_eq!(
        resolve(&joined).parent_span_id,
        Some(resolve(&standalone).span_id)
    );
    assert_eq!(resolve(&standalone).trace_id, resolve(&joined).trace_id);
}

/// A call the kernel sent in a trace of its own links to the request its thread served;
/// while that request still awaits its client's record, whose trace it may join, the
/// call's span waits with it.
#[test]
fn a_call_linked_to_a_request_awaiting_its_client_waits_with_it() {
    let mut l = Linker::default();
    let back = l.server_start(key(BACK, 4, 0), 21, 15, Some(hop_mirrored()), None, None);
    assert!(back.borrow().still_awaits_client());
    let fresh = KernelIds {
        trace_id: TraceId([4; 16]),
        span_id: SpanId([5; 8]),
        parent_span_id: None,
        trace_flags: 1,
    };
    let (call, placement) = l.client_start(key(BACK, 9, 0), 21, 16, None, None, Some(fresh), None);
    assert_eq!(placement, ClientPlacement::LinkedToServer);
    assert!(trace_awaits_client(&call));
    // Its client's record comes: the request joins that trace, and the link follows.
    let _front = l.server_start(key(FRONT, 5, 0), 11, 10, None, None, None);
    let (client, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert!(!trace_awaits_client(&call));
    let link = resolve(&call).link.expect("linked");
    assert_eq!(link.trace_id, resolve(&client).trace_id);
    assert_eq!(resolve(&call).trace_id, TraceId([4; 16]));
}
