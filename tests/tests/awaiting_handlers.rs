//! An event-loop handler that awaits one call before it makes the next: Node's
//! `examples/chain/frontend-awaits.js` checks each request with a backend, then asks the
//! backend for the item. When the check of request A answers late, request B has
//! arrived since and is still in flight, so "the latest request in flight" would take A's
//! second call for B's. Both calls must be children of their own request.

mod support;

use std::{thread, time::Duration};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, free_port, http_get, require_root, servers};

const WAIT: Duration = Duration::from_secs(30);
/// Each request makes five spans: the frontend's SERVER and two CLIENTs, and the
/// backend's two SERVERs.
const SPANS_PER_REQUEST: usize = 5;

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, kind: &str, path: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.service_name() == Some(service) && s.kind == kind && s.attr("url.path") == Some(path)
        })
        .collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!("{} {kind} spans of {path} in {spans:#?}", found.len()),
    }
}

fn assert_child(child: &ReceivedSpan, parent: &ReceivedSpan, what: &str) {
    assert_eq!(
        (child.parent_span_id.as_deref(), child.trace_id.as_str()),
        (Some(parent.span_id.as_str()), parent.trace_id.as_str()),
        "{what}: {} {:?} is not under {} {:?}",
        child.kind,
        child.attr("url.path"),
        parent.kind,
        parent.attr("url.path"),
    );
}

#[test]
fn a_call_after_an_awaited_call_belongs_to_its_own_request() {
    check_rounds(&[]);
}

/// With `--inject-traceparent` the kernel writes each call's context on the wire, and
/// the backend's spans continue it: the kernel must follow the awaited response too, or
/// A's second call would carry B's trace to the backend.
#[test]
fn an_injected_call_after_an_awaited_call_carries_its_own_requests_trace() {
    check_rounds(&["--inject-traceparent"]);
}

/// Runs the rounds below with an agent given `extra` arguments, and checks every tree.
fn check_rounds(extra: &[&str]) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (front_port, back_port) = (free_port(), free_port());
    // The backend answers a path `/check/<name>~<check_ms>~<item_ms>` after `check_ms`
    // and `/process/<name>~...` after `item_ms`.
    let _backend = servers::python(back_port, &[("OTEL_SERVICE_NAME", "backend")]);
    let _frontend = servers::example(
        "node",
        "chain/frontend-awaits.js",
        &[front_port, back_port, back_port],
        front_port,
        &[("OTEL_SERVICE_NAME", "frontend")],
    );
    let endpoint = receiver.grpc_endpoint();
    let (front, back) = (front_port.to_string(), back_port.to_string());
    let mut args = vec![
        "--exe", "node", "--exe", "python3*", "--port", &front, "--port", &back,
    ];
    args.extend(extra);
    let agent = Agent::start(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );

    // In each round A's check takes 300 ms; B arrives 100 ms after A, passes its check at
    // once and waits 600 ms for its item, so it is in flight, and was read last, when A's
    // check answers and A asks for its item.
    let rounds = 3;
    let mut items = Vec::new();
    for round in 0..rounds {
        let (a, b) = (format!("a{round}~300~0"), format!("b{round}~0~600"));
        let get = |item: String| {
            thread::spawn(move || http_get(front_port, &format!("/api/items/{item}")))
        };
        let first = get(a.clone());
        thread::sleep(Duration::from_millis(100));
        let second = get(b.clone());
        for answer in [first.join(), second.join()] {
            let (status, _) = answer.expect("client thread").expect("an answer");
            assert_eq!(status, 200);
        }
        items.extend([a, b]);
    }

    let spans = receiver.wait_for_spans(SPANS_PER_REQUEST * items.len(), WAIT);
    for item in &items {
        let request = find(&spans, "frontend", "server", &format!("/api/items/{item}"));
        assert!(request.parent_span_id.is_none(), "{item}: a root");
        for call in ["check", "process"] {
            let path = format!("/{call}/{item}");
            let client = find(&spans, "frontend", "client", &path);
            assert_child(client, request, item);
            assert_child(find(&spans, "backend", "server", &path), client, item);
        }
    }
    assert_eq!(agent.metric("loupe_client_spans_unplaced_total"), 0.0);
}

/// The same race, with the awaited call a lookup in a store loupe does not parse
/// (`examples/chain/store.py`, a binary protocol over a pool of kept-open connections):
/// only the read of the store's answer tells that A's handler woke. The pool's first
/// connection has carried enough to be given up to the probes before the checked
/// rounds, so A's lookups there reach the agent as records without bytes; B's go on a
/// second connection, still captured.
#[test]
fn a_call_after_an_awaited_answer_loupe_does_not_parse_belongs_to_its_own_request() {
    check_store_rounds(&[]);
}

/// With `--inject-traceparent` the kernel must give A's context back to the loop when
/// the store's answer is read, or A's call would carry B's trace to the backend.
#[test]
fn an_injected_call_after_an_awaited_answer_loupe_does_not_parse_carries_its_own_trace() {
    check_store_rounds(&["--inject-traceparent"]);
}

/// Runs the store rounds below with an agent given `extra` arguments, and checks every
/// tree.
fn check_store_rounds(extra: &[&str]) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (front_port, back_port, store_port) = (free_port(), free_port(), free_port());
    let _backend = servers::python(back_port, &[("OTEL_SERVICE_NAME", "backend")]);
    let _store = servers::example("python3", "chain/store.py", &[store_port], store_port, &[]);
    let _frontend = servers::example(
        "node",
        "chain/frontend-store.js",
        &[front_port, back_port, store_port],
        front_port,
        &[("OTEL_SERVICE_NAME", "frontend")],
    );
    let endpoint = receiver.grpc_endpoint();
    let ports = [front_port, back_port, store_port].map(|p| p.to_string());
    let mut args = vec!["--exe", "node", "--exe", "python3*"];
    for port in &ports {
        args.extend(["--port", port.as_str()]);
    }
    args.extend(extra);
    let agent = Agent::start(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let get =
        |item: String| thread::spawn(move || http_get(front_port, &format!("/api/items/{item}")));
    let answered = |client: thread::JoinHandle<Option<(u16, String)>>| {
        let (status, _) = client.join().expect("client thread").expect("an answer");
        assert_eq!(status, 200);
    };

    // One at a time, every lookup goes on the pool's first connection, until both its
    // ends (Node's and the store's) are given up to the probes.
    let mut warm_up = 0;
    while agent.metric("loupe_connections_ignored_total") < 2.0 {
        assert!(warm_up < 40, "the store's connection was never given up");
        answered(get(format!("w{warm_up}~0~0")));
        warm_up += 1;
    }
    // Two at once: the frontend serves several requests on its one thread, and opens
    // the pool's second connection.
    let pair = [get("p0~200~0".into()), get("p1~200~0".into())];
    pair.into_iter().for_each(answered);

    // In each round A's lookup takes 300 ms; B arrives 100 ms after A, gets its answer at
    // once and waits 600 ms for its item, so it is in flight, and was read last, when
    // A's answer comes and A asks for its item.
    let rounds = 3;
    let mut items = Vec::new();
    // Every record of the warm-up has been read once its spans are in.
    receiver.wait_for_spans(3 * (warm_up + 2), WAIT);
    let followed_before = agent.metric("loupe_opaque_answers_followed_total");
    for round in 0..rounds {
        let (a, b) = (format!("a{round}~300~0"), format!("b{round}~0~600"));
        let first = get(a.clone());
        thread::sleep(Duration::from_millis(100));
        let second = get(b.clone());
        [first, second].into_iter().for_each(answered);
        items.extend([a, b]);
    }

    // Each request makes three spans: the frontend's SERVER and CLIENT, the backend's
    // SERVER.
    let requests = warm_up + 2 + items.len();
    let spans = receiver.wait_for_spans(3 * requests, WAIT);
    for item in &items {
        let request = find(&spans, "frontend", "server", &format!("/api/items/{item}"));
        assert!(request.parent_span_id.is_none(), "{item}: a root");
        let path = format!("/process/{item}");
        let client = find(&spans, "frontend", "client", &path);
        assert_child(client, request, item);
        assert_child(find(&spans, "backend", "server", &path), client, item);
    }
    let followed = agent.metric("loupe_opaque_answers_followed_total") - followed_before;
    assert_eq!(
        followed,
        items.len() as f64,
        "every checked lookup's answer followed"
    );
    assert_eq!(agent.metric("loupe_opaque_answers_by_order_total"), 0.0);
}
