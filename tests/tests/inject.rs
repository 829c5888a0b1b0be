//! `--inject-traceparent` end to end: real clients (curl, and this test process itself
//! writing raw bytes) traced by the real agent, and a server in this process that
//! records every request byte for byte. Run as root, one test at a time.

mod support;
#[path = "inject/wire.rs"]
mod wire;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, require_root, wait_until};
use wire::{RawClient, Recorder, Sink};

const WAIT: Duration = Duration::from_secs(20);
const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";
const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

fn curl(args: &[&str]) {
    let status = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run curl");
    assert!(status.success(), "curl {args:?}");
}

fn wait_metric_at_least(agent: &Agent, name: &str, at_least: f64) {
    wait_until(&format!("{name} >= {at_least}"), WAIT, || {
        agent.metric(name) >= at_least
    });
}

#[test]
fn curl_requests_get_exactly_one_valid_traceparent() {
    require_root();
    let server = Recorder::start();
    let agent = Agent::start(
        &["--inject-traceparent", "--exe", "curl"],
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    assert!(
        agent.stderr().contains("adding traceparent"),
        "{}",
        agent.stderr()
    );

    curl(&[&server.url("/single")]);
    let single = server.get("/single");
    let (trace, span, flags) = single.injected();
    assert_eq!(flags, "01", "a trace loupe starts is sampled");
    assert!(single.head_text().contains("\r\nUser-Agent: curl/"));
    assert!(single.head_text().ends_with("\r\n\r\n"));

    // Keep-alive: two requests on one connection, each with its own header.
    curl(&[&server.url("/keep-1"), &server.url("/keep-2")]);
    let (first, second) = (server.get("/keep-1"), server.get("/keep-2"));
    assert_eq!(first.conn, second.conn, "curl reused the connection");
    let (trace1, span1, _) = first.injected();
    let (trace2, span2, _) = second.injected();
    assert_ne!(span1, span2);
    assert_ne!(trace1, trace2, "unrelated requests start their own traces");
    assert_ne!(span1, span);
    assert_ne!(trace2, trace);

    // A request that already carries a traceparent is sent as it is; tracestate is the
    // application's either way.
    curl(&[
        "-H",
        &format!("traceparent: {INCOMING}"),
        "-H",
        "tracestate: vendor=abc",
        &server.url("/already"),
    ]);
    let already = server.get("/already");
    assert_eq!(already.traceparents(), vec![INCOMING.to_string()]);
    assert!(
        already
            .head_text()
            .contains("\r\ntracestate: vendor=abc\r\n")
    );

    curl(&["-H", "tracestate: vendor=xyz", &server.url("/state-only")]);
    let state_only = server.get("/state-only");
    state_only.injected();
    assert!(
        state_only
            .head_text()
            .contains("\r\ntracestate: vendor=xyz\r\n")
    );

    // A body with Content-Length arrives whole, and the request after it on the same
    // connection gets its own header.
    let body: String = (0..3000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    curl(&[
        "-d",
        &body,
        &server.url("/post"),
        "--next",
        &server.url("/after-post"),
    ]);
    let post = server.get("/post");
    post.injected();
    assert_eq!(post.body, body.as_bytes(), "body intact");
    assert!(post.head_text().contains("\r\nContent-Length: 3000\r\n"));
    let after_post = server.get("/after-post");
    after_post.injected();
    assert_eq!(after_post.conn, post.conn);

    wait_metric_at_least(&agent, "loupe_traceparent_injected_total", 6.0);
    wait_metric_at_least(&agent, "loupe_traceparent_skipped_present_total", 1.0);
    assert_eq!(agent.metric("loupe_traceparent_skipped_unsafe_total"), 0.0);
    assert_eq!(agent.metric("loupe_traceparent_inject_failures_total"), 0.0);
    assert_eq!(agent.metric("loupe_events_malformed_total"), 0.0);
}

#[test]
fn requests_loupe_cannot_check_are_sent_untouched_and_counted() {
    require_root();
    let server = Recorder::start();
    let sink = Sink::start();
    let me = std::process::id().to_string();
    let agent = Agent::start(
        &[
            "--inject-traceparent",
            "--pid",
            &me,
            "--port",
            &server.port.to_string(),
            "--port",
            &sink.port.to_string(),
        ],
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    let unsafe_before = agent.metric("loupe_traceparent_skipped_unsafe_total");

    // A head split across two writes cannot be checked; nothing after it on that
    // connection can be trusted to start where it seems to.
    let split: [&[u8]; 2] = [b"GET /split HTTP/1.1\r\nHost: x\r\n", b"X-Rest: 1\r\n\r\n"];
    let after_split: &[u8] = b"GET /after-split HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&split);
    client.responses(1);
    client.send(&[after_split]);
    client.responses(1);
    assert_eq!(server.get("/split").head, split.concat());
    assert_eq!(server.get("/after-split").head, after_split);

    // Inserting the header does not split the request into several TCP segments.
    let simple: &[u8] = b"GET /one-segment HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&[simple]);
    client.responses(1);
    let one = server.get("/one-segment");
    one.injected();
    assert_eq!(one.head_without_injected(), simple);
    assert_eq!(client.data_segments_sent(), 1, "one write, one segment");

    // A body sent in several writes is followed, so the next request is found.
    let head = b"POST /pieces HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n";
    let body = vec![b'z'; 3000];
    let first: Vec<u8> = [&head[..], &body[..500]].concat();
    let next_request: &[u8] = b"GET /after-pieces HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&[&first, &body[500..1700], &body[1700..]]);
    client.responses(1);
    client.send(&[next_request]);
    client.responses(1);
    let pieces = server.get("/pieces");
    pieces.injected();
    assert_eq!(pieces.head_without_injected(), head);
    assert_eq!(pieces.body, body);
    let after = server.get("/after-pieces");
    after.injected();
    assert_eq!(after.head_without_injected(), next_request);

    // Two requests in one write: the first gets the header, the second goes as it is.
    let pipelined: &[u8] =
        b"GET /pipe-1 HTTP/1.1\r\nHost: x\r\n\r\nGET /pipe-2 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&[pipelined]);
    client.responses(2);
    let cut = pipelined.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let pipe1 = server.get("/pipe-1");
    pipe1.injected();
    assert_eq!(pipe1.head_without_injected(), &pipelined[..cut]);
    assert_eq!(server.get("/pipe-2").head, &pipelined[cut..]);

    // A head longer than the 4 KiB window.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let mut client = RawClient::connect(server.port);
    client.send(&[big.as_bytes()]);
    client.responses(1);
    assert_eq!(server.get("/big").head, big.as_bytes());

    // A chunked body: the request gets the header and its body is intact, but where the
    // body ends is not followed, so the connection is left alone afterwards.
    let chunked_head = b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunks: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";
    let after_chunked: &[u8] = b"GET /after-chunked HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&[&[&chunked_head[..], chunks].concat()]);
    client.responses(1);
    client.send(&[after_chunked]);
    client.responses(1);
    let chunked = server.get("/chunked");
    chunked.injected();
    assert_eq!(chunked.head_without_injected(), chunked_head);
    assert_eq!(chunked.body, chunks);
    assert_eq!(server.get("/after-chunked").head, after_chunked);

    // Header names are case-insensitive: an existing TraceParent is respected. HTTP/1.0
    // requests are HTTP/1.x too.
    let mixed = format!("GET /mixed HTTP/1.1\r\nHost: x\r\nTraceParent: {INCOMING}\r\n\r\n");
    let old: &[u8] = b"GET /http10 HTTP/1.0\r\nHost: x\r\n\r\n";
    let mut client = RawClient::connect(server.port);
    client.send(&[mixed.as_bytes()]);
    client.responses(1);
    client.send(&[old]);
    client.responses(1);
    assert_eq!(server.get("/mixed").head, mixed.as_bytes());
    let http10 = server.get("/http10");
    http10.injected();
    assert_eq!(http10.head_without_injected(), old);

    // A text protocol whose first line looks like a request but is none: that
    // connection is not HTTP/1.x and is left alone without being counted, even when it
    // later sends something that does look like a request.
    let text: [&[u8]; 2] = [b"GET key\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"];
    let mut client = RawClient::connect(sink.port);
    client.send(&text);
    drop(client);
    sink.wait_for(&text.concat());

    // Split head, the request after it, the second pipelined request, the big head and
    // the request after the chunked one; nothing for the text protocol.
    let expected = unsafe_before + 5.0;
    wait_metric_at_least(&agent, "loupe_traceparent_skipped_unsafe_total", expected);
    wait_metric_at_least(&agent, "loupe_traceparent_skipped_present_total", 1.0);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        agent.metric("loupe_traceparent_skipped_unsafe_total"),
        expected
    );
    assert_eq!(agent.metric("loupe_traceparent_inject_failures_total"), 0.0);
    assert_eq!(agent.metric("loupe_events_malformed_total"), 0.0);
}

/// A front server socket and a downstream recorder in this process, and the agent
/// (with `env`) injecting into this process's calls on their ports.
fn front_and_downstream(env: &[(&str, &str)]) -> (TcpListener, u16, Recorder, Agent) {
    let downstream = Recorder::start();
    let front = TcpListener::bind("127.0.0.1:0").expect("bind front");
    let front_port = front.local_addr().unwrap().port();
    let me = std::process::id().to_string();
    let agent = Agent::start(
        &[
            "--inject-traceparent",
            "--pid",
            &me,
            "--port",
            &front_port.to_string(),
            "--port",
            &downstream.port.to_string(),
        ],
        env,
    );
    (front, front_port, downstream, agent)
}

#[test]
fn a_thread_serving_a_request_passes_its_trace_on() {
    require_root();
    let (front, front_port, downstream, _agent) =
        front_and_downstream(&[("OTEL_TRACES_EXPORTER", "none")]);

    // The front server reads each request on one thread and, on that same thread,
    // calls downstream before and after answering it.
    let downstream_port = downstream.port;
    let front_thread = thread::spawn(move || {
        for round in ["valid", "invalid"] {
            let (stream, _) = front.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while line != "\r\n" {
                line.clear();
                reader.read_line(&mut line).expect("read request");
            }
            let mut call = RawClient::connect(downstream_port);
            call.send(&[format!("GET /while-{round} HTTP/1.1\r\nHost: down\r\n\r\n").as_bytes()]);
            call.responses(1);
            let mut writer = stream;
            writer
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
            call.send(&[format!("GET /after-{round} HTTP/1.1\r\nHost: down\r\n\r\n").as_bytes()]);
            call.responses(1);
        }
    });

    let mut client = RawClient::connect(front_port);
    client.send(&[format!(
        "GET /front HTTP/1.1\r\nHost: front\r\ntraceparent: {INCOMING}\r\n\r\n"
    )
    .as_bytes()]);
    client.responses_of_length(0);
    // Uppercase hex is not a valid traceparent (W3C): the request starts a new trace.
    let invalid = INCOMING.to_uppercase();
    let mut client = RawClient::connect(front_port);
    client.send(&[
        format!("GET /front HTTP/1.1\r\nHost: front\r\ntraceparent: {invalid}\r\n\r\n").as_bytes(),
    ]);
    client.responses_of_length(0);
    front_thread.join().expect("front server");

    let (trace, span, flags) = downstream.get("/while-valid").injected();
    assert_eq!(
        trace, INCOMING_TRACE,
        "the incoming request's trace continues"
    );
    assert_ne!(span, INCOMING_PARENT, "a new span for the outgoing call");
    assert_eq!(flags, "01", "the incoming trace-flags");

    let (after_trace, _, _) = downstream.get("/after-valid").injected();
    assert_ne!(
        after_trace, INCOMING_TRACE,
        "once the response is written the thread serves no request"
    );

    let (invalid_trace, _, invalid_flags) = downstream.get("/while-invalid").injected();
    assert_ne!(invalid_trace, INCOMING_TRACE);
    assert_ne!(invalid_trace.to_uppercase(), INCOMING_TRACE.to_uppercase());
    assert_eq!(invalid_flags, "01");
    let (after_invalid, _, _) = downstream.get("/after-invalid").injected();
    assert_ne!(after_invalid, invalid_trace);
}

/// A server that reads one byte ahead on an idle connection (Go's net/http does, to
/// notice a client hanging up) reads a request that arrives then as its first letter and
/// the rest: the kernel still gives its thread the request's context.
#[test]
fn a_request_read_as_its_first_letter_and_the_rest_passes_its_trace_on() {
    require_root();
    let (front, front_port, downstream, _agent) =
        front_and_downstream(&[("OTEL_TRACES_EXPORTER", "none")]);

    let downstream_port = downstream.port;
    let front_thread = thread::spawn(move || {
        let (stream, _) = front.accept().expect("accept");
        for path in ["/after-whole", "/after-split"] {
            if path == "/after-split" {
                let mut first = [0u8; 1];
                (&stream)
                    .read_exact(&mut first)
                    .expect("read the first letter");
                assert_eq!(&first, b"G");
            }
            read_head(&stream);
            let mut call = RawClient::connect(downstream_port);
            call.send(&[format!("GET {path} HTTP/1.1\r\nHost: down\r\n\r\n").as_bytes()]);
            call.responses(1);
            (&stream)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
        }
    });

    // Both requests on one connection: the second comes after the first's answer, as a
    // keep-alive client's next request does.
    let mut client = RawClient::connect(front_port);
    for traceparent in [OTHER, INCOMING] {
        client.send(&[format!(
            "GET /front HTTP/1.1\r\nHost: front\r\ntraceparent: {traceparent}\r\n\r\n"
        )
        .as_bytes()]);
        client.responses_of_length(0);
    }
    front_thread.join().expect("front server");

    let (whole_trace, _, _) = downstream.get("/after-whole").injected();
    assert_eq!(whole_trace, &OTHER[3..35], "a request read whole");
    let (trace, span, flags) = downstream.get("/after-split").injected();
    assert_eq!(trace, INCOMING_TRACE, "the split request's trace continues");
    assert_ne!(span, INCOMING_PARENT, "a new span for the outgoing call");
    assert_eq!(flags, "01");
}

/// Reads one request head from `stream`, through the same fd.
fn read_head(stream: &std::net::TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).expect("read request");
    }
}

/// Answers the request read on `stream` from a child process whose stdout is the
/// connection, as a server that hands connections to workers it forks does.
fn answer_from_a_child(stream: &std::net::TcpStream) {
    let connection = std::os::fd::OwnedFd::from(stream.try_clone().expect("duplicate the fd"));
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys; sys.stdout.buffer.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n')",
        ])
        .stdout(Stdio::from(connection))
        .status()
        .expect("run the child");
    assert!(status.success(), "the child answered");
}

/// Sends `GET /{path}` downstream from a thread of its own, one that read no request, as
/// a handler that hands its call to a worker pool does.
fn call_from_a_worker(downstream_port: u16, path: &'static str) {
    thread::spawn(move || {
        let mut call = RawClient::connect(downstream_port);
        call.send(&[format!("GET {path} HTTP/1.1\r\nHost: down\r\n\r\n").as_bytes()]);
        call.responses(1);
    })
    .join()
    .expect("worker");
}

/// A handler that hands its call to a worker thread: the worker carries the trace of its
/// process's only request in flight, and starts a new one when there are several, or
/// none.
#[test]
fn a_worker_thread_carries_the_trace_of_the_only_request_in_flight() {
    require_root();
    let (front, front_port, downstream, _agent) =
        front_and_downstream(&[("OTEL_TRACES_EXPORTER", "none")]);
    const THIRD: &str = "00-5bf92f3577b34da6a3ce929d0e0e4737-10f067aa0ba902b8-01";
    let third_trace = &THIRD[3..35];
    let other_trace = &OTHER[3..35];
    // The front server takes the connections in this order; all are sent at once.
    let requests = [
        ("/alone", INCOMING),
        ("/first", INCOMING),
        ("/second", OTHER),
        ("/long", INCOMING),
        ("/short", OTHER),
        ("/later", THIRD),
        ("/abandoned", INCOMING),
        ("/next", THIRD),
        ("/duplicated", OTHER),
        ("/handed-to-a-child", INCOMING),
        ("/after-the-child", THIRD),
    ];
    let clients: Vec<RawClient> = requests
        .iter()
        .map(|(path, traceparent)| front_request(front_port, path, traceparent))
        .collect();

    let downstream_port = downstream.port;
    let front_thread = thread::spawn(move || {
        let next = || {
            let (stream, _) = front.accept().expect("accept");
            stream
        };
        // Read on another thread, which then serves nothing.
        let read_elsewhere = |stream: std::net::TcpStream, answer: bool| {
            thread::spawn(move || {
                read_head(&stream);
                if answer {
                    (&stream).write_all(OK).expect("answer");
                }
                stream
            })
            .join()
            .expect("reader")
        };
        // One request in flight: its worker calls while it is, then after it was
        // answered.
        let alone = next();
        read_head(&alone);
        call_from_a_worker(downstream_port, "/worker-alone");
        (&alone).write_all(OK).expect("answer");
        call_from_a_worker(downstream_port, "/worker-after");
        // Two in flight, read on two threads: the call could be for either.
        let first = next();
        read_head(&first);
        let second = read_elsewhere(next(), false);
        call_from_a_worker(downstream_port, "/worker-several");
        (&first).write_all(OK).expect("answer");
        (&second).write_all(OK).expect("answer");
        // A long request, a short one read and answered meanwhile, then a third: two are
        // in flight, although the one before the latest is not.
        let long = next();
        read_head(&long);
        read_elsewhere(next(), true);
        let later = read_elsewhere(next(), false);
        call_from_a_worker(downstream_port, "/worker-two-left");
        (&long).write_all(OK).expect("answer");
        (&later).write_all(OK).expect("answer");
        // A request whose connection closes unanswered is no longer in flight.
        let abandoned = next();
        read_head(&abandoned);
        drop(abandoned);
        let next_one = read_elsewhere(next(), false);
        call_from_a_worker(downstream_port, "/worker-after-abandoned");
        (&next_one).write_all(OK).expect("answer");
        // A request read through a duplicate of its connection's fd, closed at once:
        // the connection stays open under the first fd, so the request is in flight.
        let original = next();
        let duplicate = original.try_clone().expect("duplicate the fd");
        read_head(&duplicate);
        drop(duplicate);
        call_from_a_worker(downstream_port, "/worker-after-duplicate-closed");
        (&original).write_all(OK).expect("answer");
        // A request answered by another process, a child given the connection: counted
        // off the process that read it, so the next request is its only one in flight.
        let handed = next();
        read_head(&handed);
        answer_from_a_child(&handed);
        drop(handed);
        let after_child = next();
        read_head(&after_child);
        call_from_a_worker(downstream_port, "/worker-after-a-child-answered");
        (&after_child).write_all(OK).expect("answer");
    });
    front_thread.join().expect("front server");
    drop(clients);

    let (trace, span, flags) = downstream.get("/worker-alone").injected();
    assert_eq!(trace, INCOMING_TRACE, "the only request in flight's trace");
    assert_ne!(span, INCOMING_PARENT);
    assert_eq!(flags, "01");
    let (after, _, _) = downstream.get("/worker-after").injected();
    assert_ne!(after, INCOMING_TRACE, "answered: no request in flight");
    let (several, _, _) = downstream.get("/worker-several").injected();
    assert_ne!(several, INCOMING_TRACE, "two in flight: neither is chosen");
    assert_ne!(several, other_trace);
    let (two_left, _, _) = downstream.get("/worker-two-left").injected();
    assert_ne!(two_left, INCOMING_TRACE, "two in flight: neither is chosen");
    assert_ne!(two_left, third_trace);
    let (after_abandoned, _, _) = downstream.get("/worker-after-abandoned").injected();
    assert_eq!(
        after_abandoned, third_trace,
        "the request left after the abandoned one's close"
    );
    let (after_child, _, _) = downstream.get("/worker-after-a-child-answered").injected();
    assert_eq!(
        after_child, third_trace,
        "a request another process answered is no longer in flight"
    );
    let (after_duplicate, _, _) = downstream.get("/worker-after-duplicate-closed").injected();
    assert_eq!(
        after_duplicate, other_trace,
        "a request read through a duplicate fd, closed, is still in flight"
    );
}

/// Sends `GET {path}` to the front server with `traceparent`, on a connection kept open.
fn front_request(front_port: u16, path: &str, traceparent: &str) -> RawClient {
    let mut client = RawClient::connect(front_port);
    client.send(&[format!(
        "GET {path} HTTP/1.1\r\nHost: front\r\ntraceparent: {traceparent}\r\n\r\n"
    )
    .as_bytes()]);
    client
}

/// Once the kernel has started a trace on the wire, the span of that call starts it too,
/// whichever request loupe would have put it under: the server it called continues that
/// trace. The request it was made for is kept as a link.
#[test]
fn a_call_the_kernel_sent_in_a_new_trace_starts_it_with_a_link_to_its_request() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let endpoint = receiver.grpc_endpoint();
    let (front, front_port, downstream, agent) = front_and_downstream(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ]);
    let downstream_port = downstream.port;
    // The first request is read, then the second on a thread of its own, which answers
    // it: one request is in flight, but not the latest read, so the kernel sends a
    // worker's call in a new trace, while loupe puts it under the first.
    let front_thread = thread::spawn(move || {
        let (first, _) = front.accept().expect("accept");
        read_head(&first);
        let (second, _) = front.accept().expect("accept");
        thread::spawn(move || {
            read_head(&second);
            (&second).write_all(OK).expect("answer");
        })
        .join()
        .expect("second request");
        call_from_a_worker(downstream_port, "/worker-linked");
        (&first).write_all(OK).expect("answer");
    });
    let mut first = front_request(front_port, "/first", INCOMING);
    thread::sleep(Duration::from_millis(200));
    let mut second = front_request(front_port, "/second", OTHER);
    second.responses_of_length(0);
    first.responses_of_length(0);
    front_thread.join().expect("front server");
    let (wire_trace, wire_span, _) = downstream.get("/worker-linked").injected();
    assert_ne!(wire_trace, INCOMING_TRACE, "the kernel started a trace");

    // This process's own requests to the front server are traced too: wait for the
    // three spans looked at, whichever batch they come in.
    let wanted = [
        ("server", "/first"),
        ("client", "/worker-linked"),
        ("server", "/worker-linked"),
    ];
    wait_until(
        "the request's, the call's and its server's spans",
        WAIT,
        || {
            let spans = receiver.spans();
            wanted.iter().all(|(kind, path)| {
                spans
                    .iter()
                    .any(|s| s.kind == *kind && s.attr("url.path") == Some(path))
            })
        },
    );
    let spans = receiver.spans();
    let find = |kind: &str, path: &str| -> ReceivedSpan {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.kind == kind && s.attr("url.path") == Some(path))
            .collect();
        assert_eq!(found.len(), 1, "one {kind} span of {path} in {spans:#?}");
        found[0].clone()
    };
    let request = find("server", "/first");
    let call = find("client", "/worker-linked");
    let called = find("server", "/worker-linked");
    assert_eq!(request.trace_id, INCOMING_TRACE);
    assert_eq!(
        (
            call.trace_id.as_str(),
            call.span_id.as_str(),
            &call.parent_span_id
        ),
        (wire_trace.as_str(), wire_span.as_str(), &None),
        "the call's span has the ids on the wire and starts their trace"
    );
    assert_eq!(
        call.links,
        vec![(request.trace_id.clone(), request.span_id.clone())],
        "linked to the request loupe saw in flight"
    );
    assert_eq!(
        (called.trace_id.as_str(), called.parent_span_id.as_deref()),
        (call.trace_id.as_str(), Some(call.span_id.as_str())),
        "the server called continues the call's trace"
    );
    assert_eq!(
        agent.metric("loupe_client_spans_linked_to_server_total"),
        1.0
    );
}

#[test]
fn without_the_flag_nothing_is_injected() {
    require_root();
    let server = Recorder::start();
    let agent = Agent::start(&["--exe", "curl"], &[("OTEL_TRACES_EXPORTER", "none")]);
    curl(&[&server.url("/plain"), &server.url("/plain-2")]);
    assert!(server.get("/plain").traceparents().is_empty());
    assert!(server.get("/plain-2").traceparents().is_empty());
    assert_eq!(server.count(), 2);
    assert_eq!(agent.metric("loupe_traceparent_injected_total"), 0.0);
}
