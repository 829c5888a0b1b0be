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
/// the file `argv[3]` exists 200 more, then one HTTP request to port `argv[2]`; then it
/// closes the connection and stays.
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
s.close()
print("done", flush=True)
time.sleep(60)
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
        metric(&agent, "loupe_connections_ignored_total") == 1.0
    });
    let unparsed_before = metric(&agent, "loupe_bytes_unparsed_total");
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
    let unparsed = metric(&agent, "loupe_bytes_unparsed_total") - unparsed_before;
    // 4,000 bytes (200 round trips of 10 bytes each way) if the probes still captured the
    // connection; what was already on its way when they were told stays far below.
    assert!(
        unparsed < 1_000.0,
        "{unparsed} bytes of the connection reached the agent during 200 round trips"
    );
    // The agent still hears of the connection's close, and forgets it at once.
    wait_until("the closed connections to be forgotten", WAIT, || {
        metric(&agent, "loupe_connections_active") == 0.0
    });
}

/// The agent's metric `name`; panics when `/metrics` cannot be read or lacks it, so a
/// failed scrape never passes for a zero.
fn metric(agent: &Agent, name: &str) -> f64 {
    *agent
        .metrics()
        .get(name)
        .unwrap_or_else(|| panic!("{name} on /metrics"))
}
