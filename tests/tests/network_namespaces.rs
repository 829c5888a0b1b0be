//! Every network namespace has its own loopback: two pods on one node can each have a
//! client talking to a server on `127.0.0.1`, even from the same port to the same port.
//! Their connections have the same addresses, yet each server span must be the child of
//! its own pod's client span.

mod support;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, Guard, free_port, require_root, servers};

const WAIT: Duration = Duration::from_secs(20);
/// The client port both pods' clients use.
const CLIENT_PORT: &str = "40123";

/// A network namespace with its loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Self {
        let name = format!("loupe-{name}-{}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let netns = Self(name);
        run(&["ip", "-n", &netns.0, "link", "set", "lo", "up"]);
        netns
    }

    /// `args` run inside the namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).args(args);
        command
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start a process in the namespace")
    }

    /// Waits until something accepts connections on `port` of the namespace's loopback.
    fn wait_for_port(&self, port: u16) {
        let probe = format!("import socket; socket.create_connection(('127.0.0.1', {port}))");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .command(&["python3", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} in {}",
                self.0
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from the namespace's `CLIENT_PORT` to its own `127.0.0.1:port`.
    fn curl(&self, port: u16, path: &str) -> Child {
        let url = format!("http://127.0.0.1:{port}{path}");
        self.spawn(&[
            "curl",
            "-s",
            "--max-time",
            "20",
            "--local-port",
            CLIENT_PORT,
            &url,
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?}: {status}");
}

/// The server span for `path`, and the client span it names as its parent.
fn server_and_parent<'a>(
    spans: &'a [ReceivedSpan],
    path: &str,
) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let server = spans
        .iter()
        .find(|s| s.kind == "server" && s.attr("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}"));
    let parent = server
        .parent_span_id
        .as_deref()
        .and_then(|id| spans.iter().find(|s| s.span_id == id))
        .unwrap_or_else(|| panic!("the server span for {path} has no parent among {spans:?}"));
    (server, parent)
}

#[test]
fn the_same_loopback_addresses_in_two_pods_stay_apart() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let (pod_a, pod_b) = (Netns::create("a"), Netns::create("b"));
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &[
            "--exe",
            "python3*",
            "--exe",
            "curl",
            "--port",
            &port.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    // Pod A's server takes its connection only after pod B's whole exchange, so pod A's
    // client is still waiting when pod B's server reads a request on the same addresses.
    let port_text = port.to_string();
    let gate = support::scratch_dir("netns-gate").join("b-done");
    let gate_text = gate.display().to_string();
    let _server_a = Guard(pod_a.spawn(&[
        "python3",
        "-c",
        servers::LATE_ACCEPTING_SERVER,
        &port_text,
        &gate_text,
    ]));
    let _server_b = Guard(pod_b.spawn(&[
        "python3",
        "-c",
        servers::LATE_ACCEPTING_SERVER,
        &port_text,
        "0",
    ]));
    pod_a.wait_for_port(port);
    pod_b.wait_for_port(port);
    let mut client_a = pod_a.curl(port, "/from-a");
    // Pod A's request is on its way into the accept queue before pod B's starts.
    thread::sleep(Duration::from_millis(500));
    let mut client_b = pod_b.curl(port, "/from-b");
    let status = client_b.wait().expect("curl");
    assert!(status.success(), "pod b's curl: {status}");
    fs::write(&gate, "").expect("open pod a's server");
    let status = client_a.wait().expect("curl");
    assert!(status.success(), "pod a's curl: {status}");
    let spans = receiver.wait_for_spans(4, WAIT);
    for (path, pod) in [("/from-a", "a"), ("/from-b", "b")] {
        let (server, parent) = server_and_parent(&spans, path);
        assert_eq!(parent.kind, "client", "{pod}");
        assert_eq!(
            parent.attr("url.path"),
            Some(path),
            "pod {pod}'s server under another pod's client"
        );
        assert_eq!(parent.trace_id, server.trace_id);
    }
    // The scene the test sets: pod A's client started before pod B's, and pod A's server
    // read its request after pod B's exchange.
    let (server_a, client_a) = server_and_parent(&spans, "/from-a");
    let (server_b, client_b) = server_and_parent(&spans, "/from-b");
    assert!(client_a.start_ns < client_b.start_ns);
    assert!(server_a.start_ns > server_b.end_ns);
    drop(agent);
}
