//! Tests for the HTTP/1.x session: a harness that plays syscalls at a session with increasing
//! timestamps, and one file per concern.

mod body;
mod detect;
mod framing;
mod pairing;
mod robustness;

use super::{ExchangeOutcome, Http1Limits, Http1Session, HttpExchange, KeepHeaders, SessionStats};
use crate::protocol::{Chunk, Direction, Role};

/// Plays chunks at a session. Chunk `n` (from 0) runs from `1000 * (n + 1)` to that plus 500.
struct Harness {
    session: Http1Session,
    out: Vec<HttpExchange>,
    role: Role,
    clock: u64,
    tid: u32,
}

impl Harness {
    fn new(role: Role) -> Self {
        Self::with_limits(role, Http1Limits::default())
    }

    /// Most tests inspect every header; `with_exact_limits` runs what production keeps.
    fn with_limits(role: Role, limits: Http1Limits) -> Self {
        Self::with_exact_limits(
            role,
            Http1Limits {
                keep_headers: KeepHeaders::All,
                ..limits
            },
        )
    }

    fn with_exact_limits(role: Role, limits: Http1Limits) -> Self {
        Self {
            session: Http1Session::new(role, limits),
            out: Vec::new(),
            role,
            clock: 0,
            tid: 7,
        }
    }

    fn server() -> Self {
        Self::new(Role::Server)
    }

    fn client() -> Self {
        Self::new(Role::Client)
    }

    fn chunk(&mut self, direction: Direction, bytes: &[u8], total_len: u64) {
        self.clock += 1000;
        let chunk = Chunk {
            direction,
            start_ns: self.clock,
            end_ns: self.clock + 500,
            tid: self.tid,
            bytes,
            total_len,
        };
        self.session.on_chunk(&chunk, &mut self.out);
    }

    fn request_direction(&self) -> Direction {
        match self.role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }

    fn response_direction(&self) -> Direction {
        match self.role {
            Role::Server => Direction::Egress,
            Role::Client => Direction::Ingress,
        }
    }

    /// A complete (not truncated) chunk of request bytes.
    fn req(&mut self, bytes: &[u8]) {
        self.chunk(self.request_direction(), bytes, bytes.len() as u64);
    }

    fn resp(&mut self, bytes: &[u8]) {
        self.chunk(self.response_direction(), bytes, bytes.len() as u64);
    }

    /// Request bytes the capture cut: only `bytes` seen of `total_len`.
    fn req_truncated(&mut self, bytes: &[u8], total_len: u64) {
        self.chunk(self.request_direction(), bytes, total_len);
    }

    fn resp_truncated(&mut self, bytes: &[u8], total_len: u64) {
        self.chunk(self.response_direction(), bytes, total_len);
    }

    /// Response bytes sent from a file (sendfile): counted, never seen.
    fn resp_sendfile(&mut self, total_len: u64) {
        self.chunk(self.response_direction(), &[], total_len);
    }

    fn close(&mut self) {
        self.clock += 1000;
        self.session.on_close(self.clock, &mut self.out);
    }

    fn take(&mut self) -> Vec<HttpExchange> {
        std::mem::take(&mut self.out)
    }

    fn take_one(&mut self) -> HttpExchange {
        let mut out = self.take();
        assert_eq!(out.len(), 1, "expected one exchange, got {out:#?}");
        out.remove(0)
    }

    fn stats(&mut self) -> SessionStats {
        self.session.take_stats()
    }
}

fn status(exchange: &HttpExchange) -> Option<u16> {
    exchange.response.as_ref().map(|r| r.status)
}

fn response_body_len(exchange: &HttpExchange) -> Option<u64> {
    exchange.response.as_ref().map(|r| r.body_len)
}

fn assert_complete(exchange: &HttpExchange, method: &str, target: &str, code: u16) {
    assert_eq!(exchange.request.method, method);
    assert_eq!(exchange.request.target, target);
    assert_eq!(status(exchange), Some(code));
    assert_eq!(exchange.outcome, ExchangeOutcome::Complete);
}

const GET: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\nUser-Agent: loupe-test\r\nAccept: */*\r\n\r\n";
const OK_HELLO: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n").into_bytes()
}

fn ok_with_body(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
