//! End to end: unmodified servers on loopback, traced by the real agent, exporting to a
//! real OTLP receiver. Run as root (`cargo xtask test`), one test at a time.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{
    Agent, curl, free_port, http_get, require_root, servers,
    spans::{attr, find, names, server_spans},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";

fn duration_ms(span: &ReceivedSpan) -> f64 {
    (span.end_ns.saturating_sub(span.start_ns)) as f64 / 1e6
}

/// The checks every server's spans must pass, whatever the server.
fn check_server_spans(spans: &[ReceivedSpan], port: u16) {
    let ok = find(spans, "GET /ok");
    assert_eq!(attr(ok, "http.request.method"), "GET");
    assert_eq!(attr(ok, "url.path"), "/ok");
    assert_eq!(attr(ok, "url.scheme"), "http");
    assert_eq!(attr(ok, "http.response.status_code"), "200");
    assert_eq!(attr(ok, "network.protocol.version"), "1.1");
    assert_eq!(attr(ok, "server.port"), port.to_string());
    assert_eq!(attr(ok, "client.address"), "127.0.0.1");
    assert!(attr(ok, "user_agent.original").starts_with("curl/"));
    assert_eq!(ok.status_code, "unset");
    // The conventions' opt-in attributes only with --span-attributes all.
    for opt_in in [
        "client.port",
        "network.local.address",
        "network.local.port",
        "http.response.body.size",
    ] {
        assert!(
            !ok.attributes.contains_key(opt_in),
            "{opt_in} by default: {:?}",
            ok.attributes
        );
    }
    assert_eq!(attr(ok, "network.peer.address"), "127.0.0.1");

    let missing = find(spans, "GET /missing");
    assert_eq!(attr(missing, "http.response.status_code"), "404");
    assert_eq!(
        missing.status_code, "unset",
        "4xx is not an error on the server side"
    );

    let fail = find(spans, "GET /fail");
    assert_eq!(attr(fail, "http.response.status_code"), "500");
    assert_eq!(fail.status_code, "error");
    assert_eq!(attr(fail, "error.type"), "500");

    // Ids in the path collapse into a low-cardinality route.
    let user = find(spans, "GET /users/{id}");
    assert_eq!(attr(user, "url.path"), "/users/12345");
    assert_eq!(attr(user, "http.route"), "/users/{id}");

    let slow = find(spans, "GET /slow");
    assert!(
        duration_ms(slow) >= servers::SLOW_MS as f64,
        "the span must cover the handler's {} ms sleep, got {:.1} ms",
        servers::SLOW_MS,
        duration_ms(slow)
    );
    assert!(duration_ms(ok) < duration_ms(slow));

    // The incoming traceparent is joined: same trace, the caller's span as parent.
    let joined = find(spans, "GET /joined");
    assert_eq!(joined.trace_id, INCOMING_TRACE);
    assert_eq!(joined.parent_span_id.as_deref(), Some(INCOMING_PARENT));
    assert_ne!(joined.span_id, INCOMING_PARENT);
    // Without one, a new trace is started.
    assert_ne!(ok.trace_id, INCOMING_TRACE);
    assert!(ok.parent_span_id.is_none());
}

fn drive(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    // One curl with several URLs reuses one keep-alive connection.
    let statuses = curl(&[
        &format!("{base}/ok"),
        &format!("{base}/missing"),
        &format!("{base}/fail"),
        &format!("{base}/users/12345"),
    ]);
    assert_eq!(statuses, vec![200, 404, 500, 200]);
    assert_eq!(curl(&[&format!("{base}/slow")]), vec![200]);
    let traceparent = format!("traceparent: 00-{INCOMING_TRACE}-{INCOMING_PARENT}-01");
    assert_eq!(
        curl(&["-H", &traceparent, &format!("{base}/joined")]),
        vec![200]
    );
}

#[test]
fn python_threading_server_over_grpc() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-orders")]);
    let pid = server.pid().to_string();
    let endpoint = receiver.grpc_endpoint();
    let mut agent = Agent::start(
        &["--pid", &pid],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            ),
        ],
    );
    drive(port);
    let spans = receiver.wait_for_spans(6, WAIT);
    let spans = server_spans(&spans, "py-orders");
    assert_eq!(spans.len(), 6, "one span per request: {:#?}", names(&spans));
    check_server_spans(&spans, port);
    let resource = &spans[0].resource;
    assert_eq!(resource.get("process.pid"), Some(&pid));
    assert_eq!(
        resource.get("telemetry.distro.name").map(String::as_str),
        Some("loupe")
    );
    assert!(
        resource
            .get("process.executable.name")
            .is_some_and(|n| n.starts_with("python3"))
    );
    assert_eq!(
        resource
            .get("deployment.environment.name")
            .map(String::as_str),
        Some("test"),
        "the agent's own resource attributes are added"
    );
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

#[test]
fn node_http_server_over_http_protobuf() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let _server = servers::node(port, &[("OTEL_SERVICE_NAME", "node-front")]);
    let endpoint = receiver.http_endpoint();
    let mut agent = Agent::start(
        &["--exe", "node", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    drive(port);
    let spans = receiver.wait_for_spans(6, WAIT);
    let spans = server_spans(&spans, "node-front");
    assert_eq!(spans.len(), 6, "one span per request: {:#?}", names(&spans));
    check_server_spans(&spans, port);
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

#[test]
fn nginx_server_and_curl_client_spans() {
    let (stderr, unstamped) = nginx_and_curl(&[]);
    // This kernel (5.15 or later, x86_64 or arm64) takes read and write arguments at the
    // exit; a refused exit program would otherwise hide behind the fallback.
    assert!(
        stderr.contains("reads hooked at their return, writes at their return"),
        "{stderr}"
    );
    // curl's requests find when they went out in their sockets at their writes' return
    // (nginx's responses need no start): hardly any of the 7 can have been held back or
    // preempted for a millisecond after sending.
    assert!(
        unstamped <= 3.0,
        "{unstamped} client writes without a start"
    );
}

#[test]
fn nginx_server_and_curl_client_spans_with_data_syscalls_hooked_at_entry() {
    let (stderr, unstamped) = nginx_and_curl(&["--data-probes", "entry"]);
    assert!(
        stderr.contains("reads hooked at entry and return, writes at entry and return"),
        "{stderr}"
    );
    assert_eq!(unstamped, 0.0);
}

/// Traces nginx and curl with `extra` flags and checks both sides' spans; returns the
/// agent's log and `loupe_kernel_write_start_unknown_total`.
fn nginx_and_curl(extra: &[&str]) -> (String, f64) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let _server = servers::nginx(port);
    let endpoint = receiver.grpc_endpoint();
    let port_arg = port.to_string();
    let mut args = vec![
        "--exe",
        "nginx",
        "--exe",
        "curl",
        "--port",
        &port_arg,
        "--span-attributes",
        "all",
    ];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    drive(port);
    let base = format!("http://127.0.0.1:{port}");
    // A body sent with sendfile: counted, never captured.
    assert_eq!(curl(&[&format!("{base}/static/file.txt")]), vec![200]);
    let all = receiver.wait_for_spans(14, WAIT);
    let nginx: Vec<_> = server_spans(&all, "nginx");
    assert_eq!(nginx.len(), 7, "{:#?}", names(&all));
    // nginx has no slow path; the rest of the server checks apply.
    let ok = find(&nginx, "GET /ok");
    assert_eq!(attr(ok, "http.response.status_code"), "200");
    assert_eq!(find(&nginx, "GET /fail").status_code, "error");
    assert_eq!(find(&nginx, "GET /missing").status_code, "unset");
    assert_eq!(find(&nginx, "GET /joined").trace_id, INCOMING_TRACE);
    let file = find(&nginx, "GET /static/file.txt");
    assert_eq!(attr(file, "http.response.body.size"), "20000");
    assert_eq!(attr(ok, "network.local.port"), port.to_string());

    let clients: Vec<_> = all.iter().filter(|s| s.kind == "client").cloned().collect();
    assert_eq!(clients.len(), 7, "{:#?}", names(&all));
    assert!(
        clients
            .iter()
            .all(|s| s.resource.get("service.name").map(String::as_str) == Some("curl"))
    );
    let missing = clients
        .iter()
        .find(|s| s.attributes.get("url.path").map(String::as_str) == Some("/missing"))
        .expect("client span for /missing");
    assert_eq!(
        missing.status_code, "error",
        "4xx is an error on the client side"
    );
    assert_eq!(attr(missing, "server.port"), port.to_string());
    // curl's Host header names the address and port it connected to.
    assert_eq!(attr(missing, "url.full"), format!("{base}/missing"));
    // curl sent the traceparent itself, so its span keeps those ids.
    let joined_client = clients
        .iter()
        .find(|s| s.attributes.get("url.path").map(String::as_str) == Some("/joined"))
        .expect("client span for /joined");
    assert_eq!(joined_client.trace_id, INCOMING_TRACE);
    // Each client span starts before its server span: the client's first write begins
    // before the server's read can return. (The ends carry no such order: the client may
    // read the response before the server's write has returned.)
    for server in &nginx {
        let path = server.attributes.get("url.path");
        let Some(client) = clients
            .iter()
            .find(|c| c.attributes.get("url.path") == path)
        else {
            continue;
        };
        assert!(
            client.start_ns <= server.start_ns,
            "{path:?}: client starts at {}, after the server at {}",
            client.start_ns,
            server.start_ns
        );
    }
    // The kernel's counters reach /metrics with the agent's housekeeping, once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let metrics = agent.metrics();
    let unstamped = *metrics
        .get("loupe_kernel_write_start_unknown_total")
        .expect("the write-start counter is exported");
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    (agent.stderr(), unstamped)
}

#[test]
fn connection_opened_before_the_agent_started_is_traced() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-early")]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(support::keep_alive_get(&mut stream, "/before"), 200);
    let endpoint = receiver.grpc_endpoint();
    let pid = server.pid().to_string();
    let mut agent = Agent::start(
        &["--pid", &pid, "--span-attributes", "all"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    // Same connection, accepted long before loupe was watching. The server's thread was
    // already blocked in a read when the probes attached: that one read's entry was never
    // seen, so the first request may be missed (counted as a response without request).
    assert_eq!(support::keep_alive_get(&mut stream, "/warmup"), 200);
    assert_eq!(support::keep_alive_get(&mut stream, "/after"), 200);
    assert_eq!(support::keep_alive_get(&mut stream, "/fail"), 500);
    wait_until("the two requests after the first", WAIT, || {
        let spans = server_spans(&receiver.spans(), "py-early");
        ["GET /after", "GET /fail"]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
    });
    let spans: Vec<_> = server_spans(&receiver.spans(), "py-early")
        .into_iter()
        .filter(|s| s.name != "GET /warmup")
        .collect();
    assert_eq!(spans.len(), 2, "{:#?}", names(&spans));
    let after = find(&spans, "GET /after");
    assert_eq!(
        attr(after, "client.port"),
        stream.local_addr().unwrap().port().to_string(),
        "the tuple of a pre-existing connection is known too"
    );
    assert_eq!(attr(after, "user_agent.original"), "loupe-test");
    assert_eq!(find(&spans, "GET /fail").status_code, "error");
    drop(stream);
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

/// Waits for a trigger file, then forks a child that serves HTTP: a process that did not
/// exist when loupe started and never calls exec.
const FORKING_PARENT: &str = r#"
import os, sys, time

port, trigger = int(sys.argv[1]), sys.argv[2]
while not os.path.exists(trigger):
    time.sleep(0.01)
if os.fork() == 0:
    serve_ok(port)
else:
    os.wait()
"#;

/// The kernel marks a traced process's children as traced when they are forked, so a
/// child's first request is traced before the agent's /proc scan (every 2 s) could see it.
#[test]
fn a_child_forked_after_the_start_is_traced_from_its_first_request() {
    use std::os::unix::process::CommandExt as _;
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let dir = support::scratch_dir("forking-parent");
    let script = dir.join("parent.py");
    let trigger = dir.join("fork-now");
    std::fs::write(
        &script,
        servers::PYTHON_SERVE_OK.to_owned() + FORKING_PARENT,
    )
    .expect("write parent.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg(port.to_string())
        .arg(&trigger)
        .env("OTEL_SERVICE_NAME", "forked")
        .process_group(0);
    let parent = support::Guard(cmd.spawn().expect("spawn parent.py"));
    let endpoint = receiver.grpc_endpoint();
    let _agent = Agent::start(
        &["--pid", &parent.pid().to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    std::fs::write(&trigger, b"").expect("write trigger");
    support::wait_for_port(port);
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/first")]),
        vec![200]
    );
    let spans = receiver.wait_for_spans(1, WAIT);
    let spans = server_spans(&spans, "forked");
    assert_eq!(spans.len(), 1, "{:#?}", names(&spans));
    assert_eq!(attr(&spans[0], "url.path"), "/first");
    assert_ne!(
        spans[0].resource.get("process.pid"),
        Some(&parent.pid().to_string()),
        "served by the child"
    );
}

/// A collector that loupe traces receives loupe's own exports. Were they spans, each
/// export would make a span to export, without end: here the collector is this test
/// process, and the only spans it may show are the requests the test makes itself.
#[test]
fn a_traced_collector_shows_no_spans_of_loupes_own_exports() {
    require_root();
    let receiver = OtlpReceiver::start().unwrap();
    let own_pid = std::process::id().to_string();
    let agent = Agent::start(
        &["--pid", &own_pid],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ],
    );
    // Three requests of the test's own, to loupe's admin address: three client spans,
    // then the exports that carry them (200 ms schedule) reach the traced receiver.
    for _ in 0..3 {
        assert_eq!(
            http_get(agent.admin_port, "/healthz").map(|r| r.0),
            Some(200)
        );
    }
    receiver.wait_for_spans(3, WAIT);
    // Long enough for ten more export rounds, had the exports become spans.
    std::thread::sleep(Duration::from_secs(2));
    let spans = receiver.spans();
    let exports: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.path") == Some("/v1/traces"))
        .collect();
    assert!(exports.is_empty(), "export spans: {:#?}", names(&spans));
    let own: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == "client" && s.attr("url.path") == Some("/healthz"))
        .collect();
    assert!(
        own.len() >= 3,
        "the test's own requests: {:#?}",
        names(&spans)
    );
    // The exports did reach the traced receiver, and were recognised there.
    assert!(agent.metric("loupe_spans_skipped_own_export_total") >= 1.0);
}

/// A plain read or write whose capture fits a small record is written straight into the
/// ring buffer, a larger one through the per-CPU scratch event: requests whose heads end
/// on either side of that size keep every byte of their last header, and the responses
/// (the Python server writes the head, then a body that echoes the path) their status.
/// Both with reads and writes hooked at their return and at entry and return.
#[test]
fn heads_on_either_side_of_the_small_record_size_keep_their_last_header() {
    require_root();
    for extra in [&[][..], &["--data-probes", "entry"][..]] {
        small_and_large_heads(extra);
    }
}

fn small_and_large_heads(extra: &[&str]) {
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-sizes")]);
    let pid = server.pid().to_string();
    let endpoint = receiver.http_endpoint();
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(&args, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
    let small = loupe_common::SMALL_CAPTURE;
    // The padding is the last header's value, so a capture cut short by more than the
    // blank line's bytes shows in `user_agent.original`.
    let frame =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: \r\n\r\n").len();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sent = Vec::new();
    for (i, head_len) in [small - 1, small, small + 1, 3 * small]
        .into_iter()
        .enumerate()
    {
        let path = format!("/size/{i}");
        let agent_name = format!("ua-{}", "x".repeat(head_len - frame(&path) - 3));
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent_name}\r\n\r\n");
        assert_eq!(request.len(), head_len);
        stream.write_all(request.as_bytes()).expect("send");
        read_response(&mut stream, &format!("python {path}\n"));
        sent.push((path, agent_name));
    }
    let spans = receiver.wait_for_spans(sent.len(), WAIT);
    let spans = server_spans(&spans, "py-sizes");
    assert_eq!(spans.len(), sent.len(), "{:#?}", names(&spans));
    for (path, agent_name) in &sent {
        let span = spans
            .iter()
            .find(|s| s.attributes.get("url.path") == Some(path))
            .unwrap_or_else(|| panic!("no span for {path} ({extra:?})"));
        // The agent exports 256 characters of it at most.
        let exported: String = agent_name.chars().take(256).collect();
        assert_eq!(attr(span, "user_agent.original"), exported, "{extra:?}");
        assert_eq!(attr(span, "http.response.status_code"), "200");
    }
    let metrics = agent.metrics();
    for clean in ["loupe_parse_errors_total", "loupe_events_malformed_total"] {
        assert_eq!(metrics.get(clean), Some(&0.0), "{clean} ({extra:?})");
    }
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

/// Reads one response with a `Content-Length` body from `stream` and checks its body.
fn read_response(stream: &mut TcpStream, body: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let whole = loop {
        let n = stream.read(&mut buf).expect("read response");
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n")
            && head.starts_with("HTTP/1.")
            && rest.len() >= body.len()
        {
            break rest.to_owned();
        }
    };
    assert_eq!(whole, body);
}

/// busybox httpd answers on stdout the request it read on stdin: one socket under two fds.
#[test]
fn a_server_answering_on_another_fd_of_the_socket_it_read_from() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let dir = support::scratch_dir("busybox-httpd");
    std::fs::write(dir.join("hello.txt"), "hello from busybox\n").expect("write hello.txt");
    let _server = servers::busybox_httpd(port, &dir);
    let endpoint = receiver.grpc_endpoint();
    let _agent = Agent::start(
        &[
            "--exe",
            "busybox",
            "--port",
            &port.to_string(),
            "--span-attributes",
            "all",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    assert_eq!(curl(&[&url, &url]), vec![200, 200]);
    let spans = receiver.wait_for_spans(2, WAIT);
    let served = server_spans(&spans, "busybox");
    assert_eq!(served.len(), 2, "{:#?}", names(&spans));
    for span in &served {
        assert_eq!(attr(span, "http.response.status_code"), "200");
        // Sent with sendfile on stdout: counted, never captured.
        assert_eq!(attr(span, "http.response.body.size"), "19");
        assert_eq!(span.attributes.get("error.type"), None, "{span:#?}");
    }
}
