//! Connections that carry no HTTP/1.x (TLS, a database's protocol, a WebSocket after its
//! upgrade): once one lives on, the probes stop capturing it, so its bytes no longer cross
//! the ring buffer only to be dropped.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, Guard, free_port, require_root, servers, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// Round trips of TLS-looking records on one connection to port `argv[1]`: 20, then once
/// the file `argv[3]` exists 200 more, then one HTTP request to port `argv[2]`.
const OPAQUE_CLIENT: &str = r#"
import os, socket, sys, time, urllib.request

opaque_port, http_port, trigger = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", opaque_port))

def round_trip():
    s.sendall(b"\x17\x03\x03\x00\x05hello")
    s.recv(4096)

for _ in range(20):
    round_trip()
print("warmed", flush=True)
while not os.path.exists(trigger):
    time.sleep(0.01)
for _ in range(200):
    round_trip()
urllib.request.urlopen("http://127.0.0.1:%d/sentinel" % http_port).read()
print("done", flush=True)
"#;

#[test]
fn a_long_lived_connection_without_http_stops_being_captured() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let http_port = free_port();
    let _server = servers::python(http_port, &[]);
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &["--exe", "python3*"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    // An echo peer in this process, which loupe does not trace.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo peer");
    let opaque_port = listener.local_addr().expect("its port").port();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let dir = support::scratch_dir("opaque-client");
    let (script, trigger) = (dir.join("client.py"), dir.join("go"));
    std::fs::write(&script, OPAQUE_CLIENT).expect("write client.py");
    let mut client = Guard(
        Command::new("python3")
            .arg(&script)
            .arg(opaque_port.to_string())
            .arg(http_port.to_string())
            .arg(&trigger)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client.py"),
    );
    let mut lines = BufReader::new(client.0.stdout.take().expect("client's stdout")).lines();
    let mut next_line = || lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(next_line(), "warmed");
    wait_until("the connection to be given up to the probes", WAIT, || {
        agent.metric("loupe_connections_ignored_total") == 1.0
    });
    let read_before = agent.metric("loupe_events_read_total");
    std::fs::write(&trigger, b"").expect("write the trigger");
    assert_eq!(next_line(), "done");
    // The ring buffer keeps order: once the request after the round trips is a span,
    // every record of the round trips has been read.
    wait_until("the sentinel's spans", WAIT, || {
        receiver
            .spans()
            .iter()
            .filter(|s| s.attr("url.path") == Some("/sentinel"))
            .count()
            == 2
    });
    let read = agent.metric("loupe_events_read_total") - read_before;
    // 400 records (200 writes and 200 reads) if the probes still captured the connection;
    // the sentinel's own, and those already on their way when the probes were told,
    // stay far below.
    assert!(
        read < 60.0,
        "{read} ring-buffer records read during 200 round trips"
    );
}
