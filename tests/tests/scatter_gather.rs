//! Servers that move their bytes only with the scatter/gather syscalls: `recvmsg` and
//! `sendmsg`, or `readv` and `writev`. Each request lands in two buffers split inside its
//! request line. Run as root (`cargo xtask test`), one test at a time.

mod support;

use std::{net::TcpStream, thread, time::Duration};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{
    Agent, Guard, curl, free_port, keep_alive_get, require_root, servers,
    spans::{attr, find, names, server_spans},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const MODES: [&str; 2] = ["msg", "vec"];
const BODIES_SKIPPED: &str = "loupe_kernel_response_bodies_skipped_total";

/// Both servers (`msg` and `vec`) with their responses split at `split`, traced by an
/// agent exporting to a fresh receiver; each server's port, in `MODES` order.
fn trace_servers(split: &str) -> (OtlpReceiver, Agent, Vec<(Guard, u16)>) {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let servers: Vec<(Guard, u16)> = MODES
        .iter()
        .map(|mode| {
            let port = free_port();
            let service = format!("scatter-gather-{mode}");
            let server =
                servers::scatter_gather(port, mode, split, &[("OTEL_SERVICE_NAME", &service)]);
            (server, port)
        })
        .collect();
    let pids: Vec<String> = servers.iter().map(|(s, _)| s.pid().to_string()).collect();
    let agent = Agent::start(
        &["--pid", &pids[0], "--pid", &pids[1]],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint())],
    );
    (receiver, agent, servers)
}

/// Requests `paths` from each server over one keep-alive connection (later requests
/// reuse the buffers' split) and checks the statuses curl saw.
fn request(servers: &[(Guard, u16)], paths: &[&str], statuses: &[u16]) {
    for (_, port) in servers {
        let urls: Vec<String> = paths
            .iter()
            .map(|path| format!("http://127.0.0.1:{port}{path}"))
            .collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        assert_eq!(curl(&urls), statuses);
    }
}

/// The spans both servers' tests expect of `mode`'s server on `port`: `/users/12345`
/// answered 200, `/missing` 404, `/fail` 500 as an error.
fn check_spans(spans: &[ReceivedSpan], mode: &str, port: u16) {
    let user = find(spans, "GET /users/{id}");
    assert_eq!(attr(user, "url.path"), "/users/12345", "{mode}");
    assert_eq!(attr(user, "http.response.status_code"), "200", "{mode}");
    assert_eq!(attr(user, "server.port"), port.to_string(), "{mode}");
    let missing = find(spans, "GET /missing");
    assert_eq!(attr(missing, "http.response.status_code"), "404", "{mode}");
    let fail = find(spans, "GET /fail");
    assert_eq!(attr(fail, "http.response.status_code"), "500", "{mode}");
    assert_eq!(fail.status_code, "error", "{mode}");
}

/// Each response leaves in two buffers split inside its status line, so a span comes out
/// whole only if every buffer of a call was captured, in order; no body is skipped.
#[test]
fn scatter_gather_syscalls_are_captured_across_their_buffers() {
    let (receiver, mut agent, servers) = trace_servers("status");
    request(
        &servers,
        &["/users/12345", "/missing", "/fail"],
        &[200, 404, 500],
    );
    let spans = receiver.wait_for_spans(6, WAIT);
    for (mode, (_, port)) in MODES.iter().zip(&servers) {
        let spans = server_spans(&spans, &format!("scatter-gather-{mode}"));
        assert_eq!(spans.len(), 3, "{mode}: {:#?}", names(&spans));
        check_spans(&spans, mode, *port);
        let user = find(&spans, "GET /users/{id}");
        assert!(attr(user, "user_agent.original").starts_with("curl/"));
    }
    // A first buffer that is not a whole head never ends the copy.
    assert_eq!(agent.kernel_counter(BODIES_SKIPPED), 0.0);
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

/// Each response leaves as its head and then its body, as nginx writes them: the probe
/// copies only the head, and the agent keeps the framing from it. A chunked body skipped
/// this way cannot be followed: its span still comes out whole, and the process's
/// responses are copied whole from then on, so the requests after it are parsed as
/// before.
#[test]
fn a_response_head_in_its_own_buffer_is_copied_without_its_body() {
    let (receiver, mut agent, servers) = trace_servers("head");
    let mut streams: Vec<TcpStream> = servers
        .iter()
        .map(|(_, port)| TcpStream::connect(("127.0.0.1", *port)).expect("connect"))
        .collect();
    for stream in &mut streams {
        assert_eq!(keep_alive_get(stream, "/users/12345"), 200);
        assert_eq!(keep_alive_get(stream, "/chunked"), 200);
    }
    // The agent reads records in batches: the later requests wait until it has seen that
    // the chunked bodies could not be followed.
    wait_until(
        "both servers to get their responses copied whole",
        WAIT,
        || agent.metric("loupe_response_body_skips_stopped_total") == 2.0,
    );
    // A second apart, a chunked span ended by the next request would show it.
    thread::sleep(Duration::from_secs(1));
    for stream in &mut streams {
        assert_eq!(keep_alive_get(stream, "/missing"), 404);
        assert_eq!(keep_alive_get(stream, "/fail"), 500);
    }
    drop(streams);
    let spans = receiver.wait_for_spans(8, WAIT);
    for (mode, (_, port)) in MODES.iter().zip(&servers) {
        let spans = server_spans(&spans, &format!("scatter-gather-{mode}"));
        assert_eq!(spans.len(), 4, "{mode}: {:#?}", names(&spans));
        check_spans(&spans, mode, *port);
        let user = find(&spans, "GET /users/{id}");
        assert_eq!(attr(user, "user_agent.original"), "loupe-test", "{mode}");
        let chunked = find(&spans, "GET /chunked");
        assert_eq!(attr(chunked, "http.response.status_code"), "200", "{mode}");
        // The chunked response ends with the write that carried it, not when the agent
        // learnt that it had ended (the next request, a second later).
        let missing = find(&spans, "GET /missing");
        assert!(chunked.end_ns + 500_000_000 < missing.start_ns, "{mode}");
    }
    // Each server's first two responses, the chunked one included; none after it.
    assert_eq!(agent.kernel_counter(BODIES_SKIPPED), 4.0);
    assert_eq!(agent.metric("loupe_response_body_skips_stopped_total"), 2.0);
    assert_eq!(agent.metric("loupe_parse_errors_total"), 0.0);
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}
