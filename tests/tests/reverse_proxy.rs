//! nginx as a reverse proxy in front of an unmodified Python service, both traced by one
//! agent, with many requests in flight at once on nginx's one event-loop thread. Every
//! request must form the tree nginx SERVER -> nginx CLIENT -> backend SERVER in one trace,
//! for the same item all the way down.

mod support;

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, Guard, free_port, keep_alive_get, require_root, servers, wait_for_port};

const WAIT: Duration = Duration::from_secs(30);
const CLIENTS: usize = 10;
const PER_CLIENT: usize = 15;

fn backend(port: u16) -> Guard {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/walkthrough/data-processor.py");
    let guard = Guard(
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .env("OTEL_SERVICE_NAME", "data-processor")
            .stdout(Stdio::null())
            .spawn()
            .expect("start data-processor"),
    );
    wait_for_port(port);
    guard
}

/// Sends `CLIENTS` keep-alive clients' requests at once through the proxy at `port` and
/// returns what the receiver got: three spans per request.
fn concurrent_requests(receiver: &OtlpReceiver, port: u16) -> Vec<ReceivedSpan> {
    support::concurrent_gets_exported(
        receiver,
        port,
        (CLIENTS, PER_CLIENT),
        |c, i| format!("/process/{c}-{i}"),
        3,
    )
}

/// The nginx SERVER spans that form nginx SERVER -> nginx CLIENT -> backend SERVER for
/// the same item, and how many nginx SERVER spans there were.
fn exact_trees(spans: &[ReceivedSpan]) -> (usize, usize) {
    support::spans::exact_proxy_trees(spans, "nginx", "data-processor")
}

fn start_agent(receiver: &OtlpReceiver, proxy_port: u16, backend_port: u16) -> Agent {
    let endpoint = receiver.grpc_endpoint();
    Agent::start(
        &[
            "--exe",
            "nginx",
            "--exe",
            "python3*",
            "--port",
            &proxy_port.to_string(),
            "--port",
            &backend_port.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
}

fn proxied_requests_form_exact_trees(keepalive: bool) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (proxy_port, backend_port) = (free_port(), free_port());
    let _backend = backend(backend_port);
    let _proxy = servers::nginx_proxy(proxy_port, backend_port, keepalive);
    let agent = start_agent(&receiver, proxy_port, backend_port);
    let spans = concurrent_requests(&receiver, proxy_port);
    let (exact, fronts) = exact_trees(&spans);
    let total = CLIENTS * PER_CLIENT;
    eprintln!("proxied exact trees (keepalive {keepalive}): {exact}/{fronts}");
    assert_eq!(fronts, total);
    assert_eq!(
        exact, total,
        "every proxied request forms nginx SERVER -> nginx CLIENT -> backend SERVER"
    );
    support::spans::assert_clients_cover_their_servers(&spans, &agent);
    drop(agent);
}

#[test]
fn requests_proxied_over_a_new_connection_each_stay_connected() {
    proxied_requests_form_exact_trees(false);
}

#[test]
fn requests_proxied_over_keep_alive_connections_stay_connected() {
    proxied_requests_form_exact_trees(true);
}

/// Longer than the five seconds a request whose exchange has ended waits for its peer.
const ACCEPT_AFTER: Duration = Duration::from_secs(7);

#[test]
fn a_request_left_in_the_backends_accept_queue_stays_connected() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (proxy_port, backend_port) = (free_port(), free_port());
    let _proxy = servers::nginx_proxy(proxy_port, backend_port, false);
    // The agent first: the backend is traced from its exec, before it sleeps.
    let agent = start_agent(&receiver, proxy_port, backend_port);
    let _backend = Guard(
        Command::new("python3")
            .args(["-c", servers::LATE_ACCEPTING_SERVER])
            .arg(backend_port.to_string())
            .arg(ACCEPT_AFTER.as_secs_f64().to_string())
            .env("OTEL_SERVICE_NAME", "data-processor")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the late backend"),
    );
    wait_for_port(backend_port);
    let mut stream = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    assert_eq!(keep_alive_get(&mut stream, "/process/late"), 200);
    let spans = receiver.wait_for_spans(3, WAIT);
    assert_eq!(spans.len(), 3, "the request exported as three spans");
    let call = spans
        .iter()
        .find(|s| s.kind == "client")
        .expect("nginx's client span");
    assert!(
        call.duration_ns() > ACCEPT_AFTER.as_nanos() as u64 - 1_500_000_000,
        "the request waited in the accept queue ({} ms)",
        call.duration_ns() / 1_000_000
    );
    assert_eq!(
        exact_trees(&spans),
        (1, 1),
        "nginx SERVER -> nginx CLIENT -> backend SERVER, although the backend read the \
         request seconds after nginx sent it"
    );
    drop(agent);
}
