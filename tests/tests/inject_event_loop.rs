//! `--inject-traceparent` on an event loop: a response gives its thread back the context
//! its request carried, but only a context of this very request, still in flight. Node
//! frontends, the test Node server as backend, one agent.

mod support;

use std::{thread, time::Duration};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, Guard, free_port, http_get, require_root, servers};

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

struct Setup {
    receiver: OtlpReceiver,
    front_port: u16,
    _services: [Guard; 2],
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
        _services: [backend, front],
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
