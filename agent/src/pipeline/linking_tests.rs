use std::net::SocketAddr;

use super::*;
use crate::span::{SpanId, TraceId};

fn key(tgid: u32, fd: u32, request_id: u64) -> RequestKey {
    RequestKey {
        tgid,
        fd,
        conn_id: 1,
        request_id,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn header(trace: u8, span: u8) -> SpanContext {
    SpanContext {
        trace_id: TraceId([trace; 16]),
        span_id: SpanId([span; 8]),
        trace_flags: 1,
        trace_state: Some("k=v".into()),
        is_remote: true,
    }
}

const FRONT: u32 = 100;
const BACK: u32 = 200;
/// The frontend's connection to the backend, seen from the frontend (client).
fn hop() -> Ends {
    ends("127.0.0.1:40000", "127.0.0.1:8000")
}
/// The same connection seen from the backend (server).
fn hop_mirrored() -> Ends {
    hop().mirrored()
}
fn ingress() -> Option<Ends> {
    Some(ends("127.0.0.1:3000", "127.0.0.1:50000"))
}
/// Loopback ends in the host's network namespace.
fn ends(local: &str, remote: &str) -> Ends {
    Ends::of(Some(addr(local)), Some(addr(remote)), 1).unwrap()
}

#[test]
fn three_hops_form_one_trace() {
    let mut l = Linker::default();
    let incoming = header(7, 9);
    let front = l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), Some(incoming), None);
    let (call, placement) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert_eq!(placement, ClientPlacement::UnderServer);
    let back = l.server_start(key(BACK, 4, 0), 21, 30, Some(hop_mirrored()), None, None);

    let front_ids = resolve(&front);
    let call_ids = resolve(&call);
    let back_ids = resolve(&back);
    assert_eq!(front_ids.trace_id, TraceId([7; 16]));
    assert_eq!(front_ids.parent_span_id, Some(SpanId([9; 8])));
    assert_eq!(front_ids.trace_state.as_deref(), Some("k=v"));
    assert_eq!(call_ids.trace_id, front_ids.trace_id);
    assert_eq!(call_ids.parent_span_id, Some(front_ids.span_id));
    assert_eq!(back_ids.trace_id, front_ids.trace_id);
    assert_eq!(back_ids.parent_span_id, Some(call_ids.span_id));
    assert!(l.finish(&key(BACK, 4, 0)).is_some());
    assert!(l.finish(&key(FRONT, 6, 0)).is_some());
    assert!(l.finish(&key(FRONT, 5, 0)).is_some());
    // The front's client may still show up to learn when the front started; it is given
    // the usual wait once the exchange has ended.
    assert_eq!(l.sizes(), (0, 0, 0, 1));
    l.expire(10 + PEER_WAIT_NS + 1);
    assert_eq!(l.sizes(), (0, 0, 0, 0));
}

#[test]
fn server_seen_before_its_client_is_adopted() {
    let mut l = Linker::default();
    let front = l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), None, None);
    // The backend's read came out of the ring buffer before the frontend's write.
    let back = l.server_start(key(BACK, 4, 0), 21, 15, Some(hop_mirrored()), None, None);
    let (call, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    let back_ids = resolve(&back);
    assert_eq!(back_ids.parent_span_id, Some(resolve(&call).span_id));
    assert_eq!(back_ids.trace_id, resolve(&front).trace_id);
}

#[test]
fn keep_alive_requests_pair_in_order() {
    let mut l = Linker::default();
    let mut calls = Vec::new();
    for i in 0..3 {
        let (call, _) = l.client_start(key(FRONT, 6, i), 11, 10 + i, Some(hop()), None, None, None);
        calls.push(call);
    }
    for (i, call) in calls.iter().enumerate() {
        let back = l.server_start(
            key(BACK, 4, i as u64),
            21,
            20 + i as u64,
            Some(hop_mirrored()),
            None,
            None,
        );
        assert_eq!(resolve(&back).parent_span_id, Some(resolve(call).span_id));
    }
}

#[test]
fn thread_per_request_picks_the_thread_not_the_latest() {
    let mut l = Linker::default();
    let a = l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), None, None);
    let b = l.server_start(key(FRONT, 7, 0), 12, 11, ingress(), None, None);
    let (call_a, _) = l.client_start(key(FRONT, 8, 0), 11, 12, None, None, None, None);
    let (call_b, _) = l.client_start(key(FRONT, 9, 0), 12, 13, None, None, None, None);
    assert_eq!(resolve(&call_a).parent_span_id, Some(resolve(&a).span_id));
    assert_eq!(resolve(&call_b).parent_span_id, Some(resolve(&b).span_id));
}

#[test]
fn event_loop_picks_the_latest_in_flight_on_the_thread() {
    let mut l = Linker::default();
    l.server_start(key(FRONT, 5, 0), 1, 10, ingress(), None, None);
    let second = l.server_start(key(FRONT, 7, 0), 1, 11, ingress(), None, None);
    let (call, placement) = l.client_start(key(FRONT, 8, 0), 1, 12, None, None, None, None);
    assert_eq!(
        resolve(&call).parent_span_id,
        Some(resolve(&second).span_id)
    );
    assert_eq!(
        placement,
        ClientPlacement::Guessed,
        "two in flight on one thread"
    );
    // Once the second request is answered, the first is the one in flight.
    l.finish(&key(FRONT, 7, 0));
    let (call, _) = l.client_start(key(FRONT, 8, 1), 1, 13, None, None, None, None);
    assert_ne!(
        resolve(&call).parent_span_id,
        Some(resolve(&second).span_id)
    );
}

#[test]
fn a_new_connection_belongs_to_the_request_that_opened_it() {
    let mut l = Linker::default();
    let first = l.server_start(key(FRONT, 5, 0), 1, 10, ingress(), None, None);
    let hint = l.serving(FRONT, 1).expect("serving");
    // Another request was read before the connect completed and the write went out.
    let second = l.server_start(key(FRONT, 7, 0), 1, 11, ingress(), None, None);
    let (call, _) = l.client_start(key(FRONT, 8, 0), 1, 12, None, None, None, Some(&hint));
    assert_eq!(resolve(&call).parent_span_id, Some(resolve(&first).span_id));
    // Later requests on that connection follow the event loop again.
    let (call, _) = l.client_start(key(FRONT, 8, 1), 1, 13, None, None, None, Some(&hint));
    assert_eq!(
        resolve(&call).parent_span_id,
        Some(resolve(&second).span_id)
    );
    // A hint whose request is over is ignored.
    l.finish(&key(FRONT, 5, 0));
    let (call, _) = l.client_start(key(FRONT, 9, 0), 1, 14, None, None, None, Some(&hint));
    assert_eq!(
        resolve(&call).parent_span_id,
        Some(resolve(&second).span_id)
    );
}

#[test]
fn instrumented_client_keeps_its_ids() {
    let mut l = Linker::default();
    l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), None, None);
    let (call, placement) = l.client_start(
        key(FRONT, 6, 0),
        11,
        20,
        Some(hop()),
        Some(header(3, 4)),
        None,
        None,
    );
    assert_eq!(placement, ClientPlacement::OwnContext);
    let ids = resolve(&call);
    assert_eq!(ids.trace_id, TraceId([3; 16]));
    assert_eq!(ids.span_id, SpanId([4; 8]));
}

#[test]
fn unplaced_and_standalone_clients() {
    let mut l = Linker::default();
    let (_, placement) = l.client_start(key(FRONT, 6, 0), 11, 20, None, None, None, None);
    assert_eq!(placement, ClientPlacement::Standalone);
    l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), None, None);
    l.server_start(key(FRONT, 7, 0), 12, 10, ingress(), None, None);
    // Two requests in flight on other threads: no honest choice.
    let (call, placement) = l.client_start(key(FRONT, 8, 0), 13, 20, None, None, None, None);
    assert_eq!(placement, ClientPlacement::Unplaced);
    assert!(resolve(&call).parent_span_id.is_none());
}

#[test]
fn kernel_ids_win() {
    let mut l = Linker::default();
    let ids = KernelIds {
        trace_id: TraceId([5; 16]),
        span_id: SpanId([6; 8]),
        parent_span_id: Some(SpanId([7; 8])),
        trace_flags: 1,
    };
    let server = l.server_start(
        key(FRONT, 5, 0),
        11,
        10,
        ingress(),
        Some(header(1, 2)),
        Some(ids),
    );
    let resolved = resolve(&server);
    assert_eq!(resolved.trace_id, TraceId([5; 16]));
    assert_eq!(resolved.span_id, SpanId([6; 8]));
    assert_eq!(resolved.parent_span_id, Some(SpanId([7; 8])));
}

/// A server whose context on the wire names the client span loupe made at the other end
/// of its connection is under that span itself, in either order, so the client's end
/// bounds its own (`caller_end_ns`).
#[test]
fn a_server_whose_wire_names_the_client_span_at_its_other_end_is_under_it() {
    let call_ids = KernelIds {
        trace_id: TraceId([5; 16]),
        span_id: SpanId([6; 8]),
        parent_span_id: None,
        trace_flags: 1,
    };
    let server_ids = KernelIds {
        trace_id: TraceId([5; 16]),
        span_id: SpanId([8; 8]),
        parent_span_id: Some(SpanId([6; 8])),
        trace_flags: 1,
    };
    let start_client = |l: &mut Linker| {
        let front = key(FRONT, 6, 0);
        l.client_start(front, 11, 20, Some(hop()), None, Some(call_ids), None)
            .0
    };
    let start_server = |l: &mut Linker, ids: KernelIds| {
        l.server_start(
            key(BACK, 4, 0),
            21,
            25,
            Some(hop_mirrored()),
            None,
            Some(ids),
        )
    };
    for client_first in [true, false] {
        let mut l = Linker::default();
        let (call, back) = if client_first {
            let call = start_client(&mut l);
            (call, start_server(&mut l, server_ids))
        } else {
            let back = start_server(&mut l, server_ids);
            (start_client(&mut l), back)
        };
        call.borrow_mut().client_end_ns = 90;
        let resolved = resolve(&back);
        assert_eq!(resolved.parent_span_id, Some(SpanId([6; 8])));
        assert_eq!(resolved.trace_id, TraceId([5; 16]));
        assert_eq!(resolved.caller_end_ns, 90, "client first: {client_first}");
    }
    // A wire naming another span keeps that span as a remote parent.
    let mut l = Linker::default();
    start_client(&mut l);
    let elsewhere = KernelIds {
        parent_span_id: Some(SpanId([9; 8])),
        ..server_ids
    };
    let back = start_server(&mut l, elsewhere);
    assert_eq!(resolve(&back).parent_span_id, Some(SpanId([9; 8])));
    assert_eq!(resolve(&back).caller_end_ns, 0);
}

#[test]
fn stale_peers_expire_and_tables_stay_bounded() {
    let mut l = Linker::default();
    l.client_start(key(FRONT, 6, 0), 11, 0, Some(hop()), None, None, None);
    // The client's exchange ended unanswered (it gave up, or the server's read was lost).
    assert!(l.finish(&key(FRONT, 6, 0)).is_some());
    // Far later, the server reads something on that tuple: the old client is not its parent.
    let back = l.server_start(
        key(BACK, 4, 0),
        21,
        PEER_WAIT_NS + 10,
        Some(hop_mirrored()),
        None,
        None,
    );
    assert!(resolve(&back).parent_span_id.is_none());
    for i in 0..(MAX_QUEUE_PER_CONNECTION as u64 * 2) {
        l.client_start(
            key(FRONT, 6, i + 1),
            11,
            PEER_WAIT_NS + 20,
            Some(hop()),
            None,
            None,
            None,
        );
    }
    let (_, _, clients, _) = l.sizes();
    assert_eq!(clients, MAX_QUEUE_PER_CONNECTION);
    // The first of them adopted the waiting server; of the 127 queued, those pushed out
    // while still in flight are counted.
    assert_eq!(l.take_dropped(), 127 - MAX_QUEUE_PER_CONNECTION as u64);
    assert_eq!(l.take_dropped(), 0);
    // Still in flight, they wait, until their requests are forgotten.
    l.expire(3 * PEER_WAIT_NS);
    let (_, _, clients, servers) = l.sizes();
    assert_eq!((clients, servers), (MAX_QUEUE_PER_CONNECTION, 0));
    l.expire(REQUEST_TTL_NS * 2);
    assert_eq!(l.sizes(), (0, 0, 0, 0));
}

#[test]
fn a_request_in_flight_waits_for_a_slow_server_however_long() {
    let mut l = Linker::default();
    let front = l.server_start(key(FRONT, 5, 0), 11, 10, ingress(), None, None);
    let (call, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    // Housekeeping runs while the request sits in the backend's accept queue.
    l.expire(3 * PEER_WAIT_NS);
    assert_eq!(l.sizes().2, 1, "the client in flight still waits");
    let back = l.server_start(
        key(BACK, 4, 0),
        21,
        4 * PEER_WAIT_NS,
        Some(hop_mirrored()),
        None,
        None,
    );
    assert_eq!(resolve(&back).parent_span_id, Some(resolve(&call).span_id));
    assert_eq!(resolve(&back).trace_id, resolve(&front).trace_id);
    // The same for a server seen first whose client's record comes late.
    let client_side = ends("127.0.0.1:41000", "127.0.0.1:8000");
    let back = l.server_start(
        key(BACK, 7, 0),
        21,
        0,
        Some(client_side.mirrored()),
        None,
        None,
    );
    l.expire(3 * PEER_WAIT_NS);
    let (call, _) = l.client_start(
        key(FRONT, 8, 0),
        11,
        3 * PEER_WAIT_NS,
        Some(client_side),
        None,
        None,
        None,
    );
    assert_eq!(resolve(&back).parent_span_id, Some(resolve(&call).span_id));
}

#[test]
fn a_waiting_request_expires_once_its_exchange_ends() {
    let mut l = Linker::default();
    l.client_start(key(FRONT, 6, 0), 11, 0, Some(hop()), None, None, None);
    l.expire(2 * PEER_WAIT_NS);
    assert_eq!(l.sizes().2, 1);
    assert!(l.finish(&key(FRONT, 6, 0)).is_some());
    l.expire(2 * PEER_WAIT_NS);
    assert_eq!(l.sizes(), (0, 0, 0, 0));
    // Ended but recent: it still waits, for records on their way.
    l.client_start(
        key(FRONT, 6, 1),
        11,
        10 * PEER_WAIT_NS,
        Some(hop()),
        None,
        None,
        None,
    );
    assert!(l.finish(&key(FRONT, 6, 1)).is_some());
    l.expire(10 * PEER_WAIT_NS + 1);
    assert_eq!(l.sizes().2, 1);
    let back = l.server_start(
        key(BACK, 4, 0),
        21,
        10 * PEER_WAIT_NS + 2,
        Some(hop_mirrored()),
        None,
        None,
    );
    assert!(resolve(&back).parent_span_id.is_some());
}

#[test]
fn loopback_connections_pair_only_within_their_network_namespace() {
    let mut l = Linker::default();
    let in_ns = |netns| {
        Ends::of(
            Some(addr("127.0.0.1:40000")),
            Some(addr("127.0.0.1:8000")),
            netns,
        )
    };
    // Pod A's client is still waiting when pod B's server reads a request on the same
    // addresses from pod B's client.
    let (a_call, _) = l.client_start(key(FRONT, 6, 0), 11, 10, in_ns(7), None, None, None);
    let (b_call, _) = l.client_start(key(FRONT + 1, 6, 0), 11, 20, in_ns(8), None, None, None);
    let b_back = l.server_start(
        key(BACK + 1, 4, 0),
        21,
        30,
        in_ns(8).map(Ends::mirrored),
        None,
        None,
    );
    let a_back = l.server_start(
        key(BACK, 4, 0),
        21,
        40,
        in_ns(7).map(Ends::mirrored),
        None,
        None,
    );
    assert_eq!(
        resolve(&b_back).parent_span_id,
        Some(resolve(&b_call).span_id)
    );
    assert_eq!(
        resolve(&a_back).parent_span_id,
        Some(resolve(&a_call).span_id)
    );
    // Other addresses name one connection across namespaces (a pod and the host).
    let pod_ip = Ends::of(Some(addr("10.0.0.5:40000")), Some(addr("10.0.0.9:8000")), 7);
    let host_side = Ends::of(Some(addr("10.0.0.9:8000")), Some(addr("10.0.0.5:40000")), 1);
    assert_eq!(pod_ip.map(Ends::mirrored), host_side);
}

#[test]
fn a_loop_of_parents_still_resolves() {
    let a = Rc::new(RefCell::new(SpanNode::new(
        SpanId([1; 8]),
        Parent::Root(TraceId([1; 16])),
        1,
        None,
    )));
    let b = Rc::new(RefCell::new(SpanNode::new(
        SpanId([2; 8]),
        Parent::Local(a.clone()),
        1,
        None,
    )));
    a.borrow_mut().parent = Parent::Local(b.clone());
    let ids = resolve(&a);
    assert_ne!(ids.trace_id, TraceId::default());
    // Break the cycle so the test does not leak.
    a.borrow_mut().parent = Parent::Root(TraceId([1; 16]));
}

#[test]
fn a_client_learns_when_the_server_it_reached_started_in_either_order() {
    let mut l = Linker::default();
    // Client seen first, then its server.
    let (call, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    assert_eq!(resolve(&call).server_start_ns, 0, "no server seen yet");
    l.server_start(key(BACK, 4, 0), 21, 18, Some(hop_mirrored()), None, None);
    assert_eq!(resolve(&call).server_start_ns, 18);
    // Server seen first, then its client.
    let client_side = ends("127.0.0.1:41000", "127.0.0.1:8000");
    let back = l.server_start(
        key(BACK, 7, 0),
        21,
        35,
        Some(client_side.mirrored()),
        None,
        None,
    );
    let (call, _) = l.client_start(
        key(FRONT, 8, 0),
        11,
        40,
        Some(client_side),
        None,
        None,
        None,
    );
    assert_eq!(resolve(&back).parent_span_id, Some(resolve(&call).span_id));
    assert_eq!(resolve(&call).server_start_ns, 35);
    // A server that continues a header's context still marks the client that reached it.
    let other = ends("127.0.0.1:42000", "127.0.0.1:8000");
    let (call, _) = l.client_start(key(FRONT, 9, 0), 11, 50, Some(other), None, None, None);
    l.server_start(
        key(BACK, 9, 0),
        21,
        52,
        Some(other.mirrored()),
        Some(header(3, 4)),
        None,
    );
    assert_eq!(resolve(&call).server_start_ns, 52);
    // The same server seen before its client: it keeps the header's parent, and the
    // client still learns when it started.
    let late = ends("127.0.0.1:43000", "127.0.0.1:8000");
    let back = l.server_start(
        key(BACK, 10, 0),
        21,
        60,
        Some(late.mirrored()),
        Some(header(3, 4)),
        None,
    );
    let (call, _) = l.client_start(key(FRONT, 10, 0), 11, 62, Some(late), None, None, None);
    assert_eq!(resolve(&back).parent_span_id, Some(SpanId([4; 8])));
    assert_eq!(resolve(&call).server_start_ns, 60);
}

/// A server span under a client span already made ends no later than that client span,
/// and never before its own start; one under anything else keeps its end.
#[test]
fn a_server_span_ends_no_later_than_its_client_span_once_that_is_made() {
    let mut l = Linker::default();
    let (call, _) = l.client_start(key(FRONT, 6, 0), 11, 20, Some(hop()), None, None, None);
    let back = l.server_start(key(BACK, 4, 0), 21, 25, Some(hop_mirrored()), None, None);
    assert_eq!(
        resolve(&back).caller_end_ns,
        0,
        "the client span is not made yet"
    );
    assert_eq!(resolve(&back).server_end_ns(25, 90), 90);
    call.borrow_mut().client_end_ns = 80;
    let ids = resolve(&back);
    assert_eq!(ids.caller_end_ns, 80);
    assert_eq!(
        ids.server_end_ns(25, 90),
        80,
        "the client read the answer first"
    );
    assert_eq!(ids.server_end_ns(25, 70), 70, "the server answered first");
    assert_eq!(ids.server_end_ns(85, 90), 85, "never before its own start");
    // The client span's own parent, a server, says nothing about the client's end.
    assert_eq!(resolve(&call).caller_end_ns, 0);
}

/// A server request read before its client's: which client may still adopt it, and what
/// its trace becomes when one does.
#[path = "linking_server_first_tests.rs"]
mod server_first;
