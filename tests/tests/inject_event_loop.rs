//! `--inject-traceparent` on an event loop: a response gives its thread back the context
//! its request carried, but only a context of this very request, still in flight. Node
//! frontends, the test Node server as backend, one agent.

mod support;

use std::{net::TcpStream, thread, time::Duration};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, Guard, free_port, http_get, keep_alive_get, require_root, servers};

const WAIT: Duration = Duration::from_secs(30);

/// Each request first sends a chunked POST (`/chunk/<id>`) or a GET (`/check/<id>`) on
/// one pooled keep-alive socket, then `/process/<id>` on a fresh connection. After the
/// chunked request loupe no longer follows that socket's request boundaries, so the
/// GET goes out untouched: its response must not give back the context the chunked
/// request carried.
const STALE_SOCKET: &str = r#"
const http = require('http');
const port = +process.argv[2], up = +process.argv[3];
const pooled = new http.Agent({ keepAlive: true, maxSockets: 1 });
function call(path, method, agent, chunked) {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port: up, path, method, agent }, (resp) => {
      resp.resume(); resp.on('end', () => resolve(resp.statusCode));
    });
    r.on('error', reject);
    if (chunked) r.write('x');
    r.end();
  });
}
http.createServer(async (req, res) => {
  const item = req.url.split('/').pop();
  if (req.url.startsWith('/chunk/')) {
    await call('/chunk/' + item, 'POST', pooled, true);
  } else {
    await call('/check/' + item, 'GET', pooled, false);
    await call('/process/' + item, 'GET', false, false);
  }
  res.writeHead(200, { 'Content-Length': 2 }); res.end('ok');
}).listen(port, '127.0.0.1');
"#;

/// Each request fires a call it does not wait for (`/slow`, answered after 300 ms) and
/// answers after 50 ms; a timer calls `/tick/<n>` every 300 ms outside any request.
const FIRE_AND_FORGET: &str = r#"
const http = require('http');
const port = +process.argv[2], up = +process.argv[3];
function call(path) {
  const r = http.request({ host: '127.0.0.1', port: up, path, agent: false }, (resp) => resp.resume());
  r.on('error', () => {}); r.end();
}
let ticks = 0;
setInterval(() => call('/tick/' + (ticks++)), 300);
http.createServer((req, res) => {
  call('/slow');
  setTimeout(() => { res.writeHead(200, { 'Content-Length': 2 }); res.end('ok'); }, 50);
}).listen(port, '127.0.0.1');
"#;

/// Each request (`/api/items/<id>`) calls `/process/<id>` on a connection of its own;
/// `/warm` answers at once.
const CONNECTION_PER_CALL: &str = r#"
const http = require('http');
const port = +process.argv[2], up = +process.argv[3];
http.createServer((req, res) => {
  const done = (status) => { res.writeHead(status, { 'Content-Length': 2 }); res.end('ok'); };
  if (req.url === '/warm') return done(200);
  const item = req.url.split('/').pop();
  const r = http.request({ host: '127.0.0.1', port: up, path: '/process/' + item, agent: false },
    (resp) => { resp.resume(); resp.on('end', () => done(200)); });
  r.on('error', () => done(502));
  r.end();
}).listen(port, '127.0.0.1');
"#;

struct Setup {
    receiver: OtlpReceiver,
    front_port: u16,
    /// The backend, then the frontend.
    services: [Guard; 2],
    agent: Agent,
}

fn start(name: &str, frontend: &str) -> Setup {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (front_port, back_port) = (free_port(), free_port());
    let backend = servers::node(back_port, &[("OTEL_SERVICE_NAME", "backend")]);
    let front = servers::node_program(
        name,
        frontend,
        &[front_port, back_port],
        front_port,
        &[("OTEL_SERVICE_NAME", "frontend")],
    );
    let endpoint = receiver.grpc_endpoint();
    let (f, b) = (front_port.to_string(), back_port.to_string());
    let agent = Agent::start(
        &[
            "--exe",
            "node",
            "--port",
            &f,
            "--port",
            &b,
            "--inject-traceparent",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    Setup {
        receiver,
        front_port,
        services: [backend, front],
        agent,
    }
}

fn with_path<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    kind: &str,
    path: &str,
) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.service_name() == Some(service) && s.kind == kind && s.attr("url.path") == Some(path)
        })
        .collect()
}

#[test]
fn a_socket_whose_request_went_out_untouched_gives_back_no_older_context() {
    let s = start("inject-stale-socket", STALE_SOCKET);
    assert_eq!(http_get(s.front_port, "/chunk/c").map(|r| r.0), Some(200));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(s.front_port, "/api/items/a").map(|r| r.0),
        Some(200)
    );
    // Frontend: two SERVER and three CLIENT spans; backend: three SERVER spans.
    let spans = s.receiver.wait_for_spans(8, WAIT);
    let [request] = with_path(&spans, "frontend", "server", "/api/items/a")[..] else {
        panic!("one frontend span of request a in {spans:#?}");
    };
    let [process] = with_path(&spans, "backend", "server", "/process/a")[..] else {
        panic!("one backend span of /process/a in {spans:#?}");
    };
    assert_eq!(
        process.trace_id, request.trace_id,
        "/process/a continues request a's trace, not the chunked request's: {spans:#?}"
    );
    drop(s.agent);
}

#[test]
fn a_response_arriving_after_its_request_ended_gives_back_no_context() {
    let s = start("inject-fire-and-forget", FIRE_AND_FORGET);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(s.front_port, "/fire/f").map(|r| r.0), Some(200));
    // /slow answers 250 ms after /fire/f ended; the ticks after it must start traces of
    // their own.
    thread::sleep(Duration::from_millis(1500));
    let spans = s.receiver.wait_for_spans(12, WAIT);
    let [request] = with_path(&spans, "frontend", "server", "/fire/f")[..] else {
        panic!("one frontend span of /fire/f in {spans:#?}");
    };
    // Only ticks after /fire/f's response: a timer that fires while the request is in
    // flight runs on the thread serving it, and is placed in its trace by design.
    let ticks: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/tick/")))
        .filter(|s| s.start_ns > request.end_ns)
        .collect();
    assert!(
        ticks.len() >= 6,
        "ticks on both sides after the request: {spans:#?}"
    );
    for tick in ticks {
        assert_ne!(
            tick.trace_id,
            request.trace_id,
            "{} {:?} joined the finished request's trace",
            tick.kind,
            tick.attr("url.path")
        );
    }
    drop(s.agent);
}

/// Node connects in the turn of the handler that calls, but writes the request only
/// once connected, in a later turn of its loop, after reading whatever else arrived. The
/// frontend is stopped while A and B arrive on two open connections, so it reads both in
/// one turn and each handler's call goes out after the other request was read: each
/// must still carry its own request's context.
#[test]
fn a_call_on_a_new_connection_carries_the_context_of_the_request_that_opened_it() {
    let s = start("inject-connection-per-call", CONNECTION_PER_CALL);
    let front = s.services[1].pid() as i32;
    let mut clients: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", s.front_port)).expect("connect");
            assert_eq!(keep_alive_get(&mut stream, "/warm"), 200);
            stream
        })
        .collect();
    // SAFETY: plain syscall on the frontend's pid, which the guard keeps alive.
    assert_eq!(unsafe { libc::kill(front, libc::SIGSTOP) }, 0);
    let requests: Vec<_> = ["a", "b"]
        .into_iter()
        .zip(clients.drain(..))
        .map(|(item, mut stream)| {
            thread::spawn(move || keep_alive_get(&mut stream, &format!("/api/items/{item}")))
        })
        .collect();
    // Both requests are in the frontend's socket buffers before it runs again.
    thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(front, libc::SIGCONT) }, 0);
    for request in requests {
        assert_eq!(request.join().expect("client thread"), 200);
    }
    // Frontend: four SERVER spans and two CLIENT spans; backend: two SERVER spans.
    let spans = s.receiver.wait_for_spans(8, WAIT);
    for item in ["a", "b"] {
        let [request] = with_path(&spans, "frontend", "server", &format!("/api/items/{item}"))[..]
        else {
            panic!("one frontend span of request {item} in {spans:#?}");
        };
        let path = format!("/process/{item}");
        let [call] = with_path(&spans, "frontend", "client", &path)[..] else {
            panic!("one frontend CLIENT span of {path} in {spans:#?}");
        };
        let [process] = with_path(&spans, "backend", "server", &path)[..] else {
            panic!("one backend span of {path} in {spans:#?}");
        };
        assert_eq!(
            (call.parent_span_id.as_deref(), call.trace_id.as_str()),
            (Some(request.span_id.as_str()), request.trace_id.as_str()),
            "{path} is a call of request {item}: {spans:#?}"
        );
        assert_eq!(
            (process.parent_span_id.as_deref(), process.trace_id.as_str()),
            (Some(call.span_id.as_str()), call.trace_id.as_str()),
            "the backend continues the context {path} carried: {spans:#?}"
        );
    }
    drop(s.agent);
}
