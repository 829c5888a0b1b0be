//! The kernel's connection cache: every traced read and write looks in a 4,096-slot
//! array before the connection table. Connections that share a slot, fds reused after a
//! close, and connections evicted and taken back must all come out right.

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, Guard, free_port, require_root, servers, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// Needs root; an OTLP receiver, and an untraced Python server on a free port.
fn receiver_and_python_server() -> (OtlpReceiver, u16, Guard) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[]);
    (receiver, port, server)
}

/// `get(sock, path)` for the Python clients below: one keep-alive request, its response
/// read whole (the test servers send Content-Length).
const GET: &str = r#"
def get(s, path):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(4096)
"#;

/// Every traced read and write looks in the kernel's connection cache before its table,
/// and a process's fds wrap around the cache after 4,096 slots. With more connections
/// open at once in one process than the cache has slots, so that later ones take the
/// slots of the first, every request is still traced whole, none is counted as lost to a
/// full table, and the closes of all of them are seen.
#[test]
fn connections_beyond_the_kernel_cache_are_traced() {
    const OPEN: usize = loupe_common::CONNECTION_CACHE_SLOTS as usize + 100;
    require_root();
    // The server inherits the limit. Node: one event loop and a listen backlog of 511, so
    // thousands of connections are accepted as fast as they are made.
    raise_open_files_limit(4 * OPEN as u64);
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let _server = servers::node(port, &[]);
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &["--exe", "node", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let mut streams: Vec<TcpStream> = (0..OPEN)
        .map(|_| {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_read_timeout(Some(WAIT)).expect("read timeout");
            stream
        })
        .collect();
    wait_until("every connection to be tracked", WAIT, || {
        agent.metric("loupe_connections_active") >= OPEN as f64
    });
    for stream in &mut streams {
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send request");
    }
    for stream in &mut streams {
        // Node answers in chunks: the response ends with the empty last chunk.
        let mut response = Vec::new();
        let mut buf = [0u8; 512];
        while !response.ends_with(b"\r\n0\r\n\r\n") {
            let n = stream.read(&mut buf).expect("read response");
            assert!(n > 0, "closed early: {response:?}");
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    }
    let spans = receiver.wait_for_spans(OPEN, WAIT);
    // A connection whose lookup missed would be discovered again at each syscall, and
    // one that took another's state would mix two exchanges: a span, but not a whole one.
    let answered = spans
        .iter()
        .filter(|s| s.name == "GET /ok" && s.attr("http.response.status_code") == Some("200"))
        .count();
    assert_eq!(answered, OPEN, "one whole span per connection");
    // The kernel's counters reach /metrics with the agent's housekeeping, once a second.
    thread::sleep(Duration::from_secs(2));
    let metrics = agent.metrics();
    assert_eq!(
        metrics.get("loupe_kernel_connection_table_full_total"),
        Some(&0.0)
    );
    assert_eq!(
        metrics.get("loupe_connections_opened_total"),
        Some(&(OPEN as f64)),
        "each connection became known once"
    );
    drop(streams);
    wait_until("the close of every connection", WAIT, || {
        agent.metric("loupe_connections_active") == 0.0
    });
}

/// A closed connection's fd number, reused by a socket loupe does not trace (a Unix
/// socket pair), must not be taken for the old connection: the kernel side forgets the
/// fd at close, in its cache as in its table. Were either left behind, the request and
/// response passed over the pair would come out as a span of the closed connection.
#[test]
fn a_closed_connections_fd_reused_for_a_unix_socket_is_not_traced() {
    let (receiver, port, _server) = receiver_and_python_server();
    let endpoint = receiver.grpc_endpoint();
    let _agent = Agent::start(
        &["--exe", "python3*"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let client = format!(
        r#"
import os, socket
def get(path):
    s = socket.create_connection(("127.0.0.1", {port}))
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    while s.recv(4096):
        pass
    fd = s.fileno()
    s.close()
    return fd
closed = get(b"/before")
a, b = socket.socketpair()
assert a.fileno() == closed, (a.fileno(), closed)
b.sendall(b"GET /over-the-pair HTTP/1.1\r\nHost: x\r\n\r\n")
a.recv(4096)
a.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
b.recv(4096)
get(b"/after")
"#
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &client])
        .status()
        .expect("run the python client");
    assert!(status.success(), "client failed: {status}");
    // Spans of the client's own requests, the later one made after the pair's exchange.
    let spans = receiver.wait_for_spans(4, WAIT);
    let paths: Vec<_> = spans.iter().filter_map(|s| s.attr("url.path")).collect();
    assert_eq!(
        paths
            .iter()
            .filter(|&&p| p == "/before" || p == "/after")
            .count(),
        4,
        "a client and a server span for each real request: {paths:?}"
    );
    thread::sleep(Duration::from_secs(1));
    let paths: Vec<_> = receiver
        .spans()
        .iter()
        .map(|s| format!("{} {} {:?}", s.kind, s.name, s.attr("url.path")))
        .collect();
    assert!(
        !paths.iter().any(|p| p.contains("over-the-pair")),
        "traffic on the reused fd was traced: {paths:?}"
    );
}

fn raise_open_files_limit(at_least: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct passed, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < at_least {
            limit.rlim_cur = at_least;
            limit.rlim_max = limit.rlim_max.max(at_least);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "raise the open-files limit to {at_least}"
            );
        }
    }
}

/// A long-lived connection whose cache slot another connection took (an fd 4,096
/// higher in the same process) takes it back once that connection closes: its reads and
/// writes after that are answered by the cache, not looked up in the table one by one.
#[test]
fn an_evicted_connection_takes_its_slot_back_when_the_slot_frees() {
    const REQUESTS: usize = 20;
    let (receiver, port, _server) = receiver_and_python_server();
    // The traced process is this client. It waits on stdin between steps, so that the
    // agent is attached before its first connection and the counter is read in between.
    let script = format!(
        r#"
import os, resource, socket, sys
{GET}
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
step = lambda: sys.stdin.readline()
step()
held = socket.create_connection(("127.0.0.1", {port}))
fillers = []
while not fillers or fillers[-1] < held.fileno() + 4095:
    fillers.append(os.open("/dev/null", os.O_RDONLY))
evictor = socket.create_connection(("127.0.0.1", {port}))
assert evictor.fileno() == held.fileno() + 4096, (held.fileno(), evictor.fileno())
get(evictor, b"/evictor")
print("sharing", flush=True)
step()
get(held, b"/while-evicted")
evictor.close()
for fd in fillers:
    os.close(fd)
print("evicted", flush=True)
step()
for _ in range({REQUESTS}):
    get(held, b"/held")
print("done", flush=True)
step()
"#
    );
    let mut client = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the python client");
    let mut to_client = client.stdin.take().expect("client stdin");
    let mut from_client = BufReader::new(client.stdout.take().expect("client stdout"));
    let mut step = |expect: &str| {
        writeln!(to_client, "go").expect("tell the client");
        if !expect.is_empty() {
            let mut line = String::new();
            from_client.read_line(&mut line).expect("client output");
            assert_eq!(line.trim(), expect, "the client stopped early");
        }
    };
    let endpoint = receiver.http_endpoint();
    let agent = Agent::start(
        &["--pid", &client.id().to_string()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let misses = || agent.kernel_counter("loupe_kernel_connection_cache_misses_total");
    step("sharing");
    let sharing = misses();
    step("evicted");
    let before = misses();
    step("done");
    let after = misses();
    step("");
    let _ = client.wait();
    let spans = receiver.wait_for_spans(REQUESTS + 2, WAIT);
    let held = spans
        .iter()
        .filter(|s| s.kind == "client" && s.attr("url.path") == Some("/held"))
        .count();
    assert_eq!(
        held, REQUESTS,
        "every request on the held connection traced"
    );
    // While the evictor held the slot, the held connection's send and receive missed: the
    // counter counts.
    assert!(
        before - sharing >= 2.0,
        "{} misses for a request on an evicted connection",
        before - sharing
    );
    // The first read or write after the evictor closed finds the slot empty in the cache
    // and the connection in the table, and puts it back; left out, each of the requests'
    // sends and receives would miss.
    assert!(
        after - before <= 2.0,
        "{} cache misses over {REQUESTS} requests on the held connection",
        after - before
    );
}

/// `dup2` and `dup3` onto a connection's fd close the connection without a close call.
/// The fd, now a Unix socket pair's end, must not be taken for the connection: an HTTP
/// exchange over it must not come out as a span. A `dup2` that fails closes nothing: the
/// connection goes on as the same connection, not one found anew.
#[test]
fn a_connections_fd_replaced_by_dup2_or_dup3_is_forgotten() {
    let (receiver, port, _server) = receiver_and_python_server();
    let script = format!(
        r#"
import os, socket, sys
{GET}
def over_the_pair(fd, path, **dup):
    a, b = socket.socketpair()
    os.dup2(a.fileno(), fd, **dup)
    os.write(fd, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    b.recv(4096)
    b.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    os.read(fd, 4096)
sys.stdin.readline()
held = socket.create_connection(("127.0.0.1", {port}))
get(held, b"/before")
try:
    os.dup2(4000, held.fileno())  # fd 4000 is not open: EBADF, nothing closed
except OSError:
    pass
get(held, b"/after-failed-dup")
over_the_pair(held.detach(), b"/over-the-dup2")  # inheritable: the dup2 syscall
held = socket.create_connection(("127.0.0.1", {port}))
get(held, b"/before-dup3")
over_the_pair(held.detach(), b"/over-the-dup3", inheritable=False)  # dup3
get(socket.create_connection(("127.0.0.1", {port})), b"/after")
"#
    );
    let agent = run_traced_client(&receiver, &script);
    let real = ["/before", "/after-failed-dup", "/before-dup3", "/after"];
    let spans = receiver.wait_for_spans(real.len(), WAIT);
    let paths = |spans: &[loupe_integration_tests::otlp_receiver::ReceivedSpan]| {
        spans
            .iter()
            .map(|s| format!("{} {:?}", s.kind, s.attr("url.path")))
            .collect::<Vec<_>>()
    };
    assert!(
        real.iter()
            .all(|p| spans.iter().any(|s| s.attr("url.path") == Some(p))),
        "a client span for each real request: {:?}",
        paths(&spans)
    );
    thread::sleep(Duration::from_secs(1));
    let all = paths(&receiver.spans());
    assert!(
        !all.iter().any(|p| p.contains("over-the-dup")),
        "traffic on the fd dup2 or dup3 replaced was traced: {all:?}"
    );
    // Three TCP connections, each known once: the failed dup2 did not end the first.
    assert_eq!(
        agent.metrics().get("loupe_connections_opened_total"),
        Some(&3.0)
    );
}

/// `close_range` (CPython's `os.closerange`) closes connections without a close call per
/// fd. The fds, given next to a Unix socket pair, must not be taken for the two
/// connections they held: an HTTP exchange over the pair must not come out as a span.
#[test]
fn connections_closed_by_close_range_are_forgotten() {
    let (receiver, port, _server) = receiver_and_python_server();
    let script = format!(
        r#"
import os, socket, sys
{GET}
sys.stdin.readline()
first = socket.create_connection(("127.0.0.1", {port}))
second = socket.create_connection(("127.0.0.1", {port}))
get(first, b"/before-1")
get(second, b"/before-2")
fds = sorted([first.detach(), second.detach()])
os.closerange(fds[0], fds[1] + 1)  # one close_range syscall for both
a, b = socket.socketpair()
assert sorted([a.fileno(), b.fileno()]) == fds, "the pair did not take the closed fds"
a.sendall(b"GET /over-the-close-range HTTP/1.1\r\nHost: x\r\n\r\n")
b.recv(4096)
b.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
a.recv(4096)
get(socket.create_connection(("127.0.0.1", {port})), b"/after")
"#
    );
    let agent = run_traced_client(&receiver, &script);
    let real = ["/before-1", "/before-2", "/after"];
    let spans = receiver.wait_for_spans(real.len(), WAIT);
    assert!(
        real.iter()
            .all(|p| spans.iter().any(|s| s.attr("url.path") == Some(p))),
        "a client span for each real request: {:?}",
        spans.iter().map(|s| s.attr("url.path")).collect::<Vec<_>>()
    );
    thread::sleep(Duration::from_secs(1));
    let all: Vec<_> = receiver
        .spans()
        .iter()
        .map(|s| format!("{} {:?}", s.kind, s.attr("url.path")))
        .collect();
    assert!(
        !all.iter().any(|p| p.contains("over-the-close-range")),
        "traffic on the fds close_range closed was traced: {all:?}"
    );
    assert_eq!(
        agent.metrics().get("loupe_connections_opened_total"),
        Some(&3.0)
    );
}

/// Runs the Python client `script` traced by a new agent (started before the script goes
/// on past its first `readline`) until it exits successfully; returns the agent.
fn run_traced_client(receiver: &OtlpReceiver, script: &str) -> Agent {
    let mut client = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run the python client");
    let endpoint = receiver.http_endpoint();
    let agent = Agent::start(
        &["--pid", &client.id().to_string()],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    writeln!(client.stdin.take().expect("client stdin"), "go").expect("start the client");
    assert!(
        client.wait().expect("client").success(),
        "the client failed"
    );
    agent
}
