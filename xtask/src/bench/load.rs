//! Fixed-rate load: keep-alive HTTP/1.1 connections, each sending on a fixed schedule
//! (driven by one event-loop thread, `paced.rs`), and the blocking keep-alive client of the
//! completeness benchmark.
//!
//! Latency is measured from when a request was due, not from when it was sent, so a slow
//! response that delays the next request is charged to the requests it delayed (a
//! closed-loop tool like wrk would hide that stall).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::http::{self, BodyKind, HttpError, MAX_HEAD};

mod paced;
pub use paced::run;
#[cfg(test)]
use paced::run_with_timeout;

const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Latency samples kept per connection; more are counted but not stored.
const MAX_SAMPLES_PER_CONNECTION: usize = 2_000_000;
const READ_BUFFER: usize = MAX_HEAD + 64 * 1024;
/// Requests answered more than this long after they were due are listed one by one.
pub const LATE_AFTER_US: u32 = 1_500;
/// Late requests listed at most; later ones are only counted.
pub const MAX_LATE: usize = 200_000;

#[derive(Debug, Clone)]
pub struct PacedConfig {
    pub addr: SocketAddr,
    /// Requests per second over all connections.
    pub rate: u64,
    pub connections: u32,
    pub duration: Duration,
    /// List the requests answered more than [`LATE_AFTER_US`] after they were due (they
    /// are counted either way).
    pub list_late: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PacedResult {
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub p50_us: Option<u32>,
    pub p99_us: Option<u32>,
    pub max_us: Option<u32>,
    /// Requests answered more than [`LATE_AFTER_US`] after they were due.
    pub late_count: u64,
    /// The first [`MAX_LATE`] of them, in the order their responses completed, when the
    /// config asked for the list.
    pub late: Vec<LateRequest>,
}

/// One request answered more than [`LATE_AFTER_US`] after it was due: when the stalls
/// that make a p99 happened, to line up with a trace of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateRequest {
    /// When it was due, from the start of the load.
    pub due_us: u64,
    pub latency_us: u32,
    /// When its response completed, on `CLOCK_MONOTONIC` (ftrace's `mono` clock).
    pub done_monotonic_us: u64,
}

impl PacedResult {
    pub fn achieved_rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.completed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// When request `index` of connection `lane` is due, as an offset from the start. Lanes are
/// staggered so the connections together send evenly rather than in bursts.
pub fn due_offset(rate: u64, connections: u32, lane: u32, index: u64) -> Duration {
    let rate = rate.max(1) as f64;
    let seconds = (f64::from(lane) + index as f64 * f64::from(connections.max(1))) / rate;
    Duration::from_secs_f64(seconds)
}

fn exchange(
    live: Connection,
    reused: bool,
    addr: SocketAddr,
    request: &[u8],
) -> Result<(Connection, u16, bool), HttpError> {
    match live.exchange(request) {
        Ok(done) => Ok(done),
        Err(Stale::Closed) if reused => Connection::open(addr)?
            .exchange(request)
            .map_err(Stale::into_error),
        Err(stale) => Err(stale.into_error()),
    }
}

/// One keep-alive connection for a closed-loop client: opened on first use, and opened
/// again after the server closed it.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<Connection>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// Sends one request and waits for its response; returns the status.
    pub fn send(&mut self, request: &[u8]) -> Result<u16, HttpError> {
        let (live, reused) = match self.conn.take() {
            Some(kept) => (kept, true),
            None => (Connection::open(self.addr)?, false),
        };
        let (live, status, keep) = exchange(live, reused, self.addr, request)?;
        if keep {
            self.conn = Some(live);
        }
        Ok(status)
    }
}

enum Stale {
    /// Closed or reset before any byte of the response arrived.
    Closed,
    Failed(HttpError),
}

impl Stale {
    fn into_error(self) -> HttpError {
        match self {
            Stale::Closed => HttpError::Truncated,
            Stale::Failed(err) => err,
        }
    }
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Connection {
    fn open(addr: SocketAddr) -> Result<Self, HttpError> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: vec![0; READ_BUFFER],
            filled: 0,
        })
    }

    /// Sends one request and reads its response; hands the connection back with the status
    /// and whether it may be reused.
    fn exchange(mut self, request: &[u8]) -> Result<(Self, u16, bool), Stale> {
        let fresh = self.filled == 0;
        match self.stream.write_all(request) {
            Ok(()) => {}
            Err(_) if fresh => return Err(Stale::Closed),
            Err(err) => return Err(Stale::Failed(err.into())),
        }
        match self.read_response() {
            Err(HttpError::Truncated) if fresh && self.filled == 0 => Err(Stale::Closed),
            Err(HttpError::Io(err))
                if fresh
                    && self.filled == 0
                    && matches!(
                        err.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                Err(Stale::Closed)
            }
            Err(err) => Err(Stale::Failed(err)),
            Ok((status, keep)) => Ok((self, status, keep)),
        }
    }

    fn read_response(&mut self) -> Result<(u16, bool), HttpError> {
        loop {
            if let Some(head) = http::parse_head(&self.buf[..self.filled])?
                && let Some(consumed) = self.body_end(head.head_len, head.body)?
            {
                self.buf.copy_within(consumed..self.filled, 0);
                self.filled -= consumed;
                return Ok((head.status, !head.close));
            }
            if self.filled == self.buf.len() {
                return Err(HttpError::BodyTooLarge);
            }
            let n = self.stream.read(&mut self.buf[self.filled..])?;
            if n == 0 {
                return Err(HttpError::Truncated);
            }
            self.filled += n;
        }
    }

    /// Where the response ends in the buffer, once all of it is there.
    fn body_end(&self, head_len: usize, body: BodyKind) -> Result<Option<usize>, HttpError> {
        let have = &self.buf[head_len..self.filled];
        Ok(match body {
            BodyKind::Length(len) => (have.len() >= len).then_some(head_len + len),
            BodyKind::Chunked => http::decode_chunked(have)?.map(|(_, used)| head_len + used),
            // Only a close ends it, which the read loop reports as truncation; the fixed-rate
            // target always frames its responses.
            BodyKind::UntilClose => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn lanes_are_staggered_and_evenly_spaced() {
        // 1000 req/s over 4 connections: each lane every 4 ms, lanes 1 ms apart.
        assert_eq!(due_offset(1000, 4, 0, 0), Duration::ZERO);
        assert_eq!(due_offset(1000, 4, 1, 0), Duration::from_millis(1));
        assert_eq!(due_offset(1000, 4, 0, 1), Duration::from_millis(4));
        assert_eq!(due_offset(1000, 4, 3, 2), Duration::from_millis(11));
        assert_eq!(due_offset(0, 0, 0, 1), Duration::from_secs(1));
    }

    /// A keep-alive server that answers each request with a fixed response; `close_every`
    /// closes after that many responses on a connection. Counts the connections it accepts.
    fn serve(
        listener: TcpListener,
        response: &'static [u8],
        close_every: usize,
    ) -> Arc<AtomicUsize> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    let mut answered = 0;
                    loop {
                        let Ok(n) = conn.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            // Written in two parts so the client sees a split response.
                            let (a, b) = response.split_at(response.len() / 2);
                            if conn.write_all(a).is_err() || conn.write_all(b).is_err() {
                                return;
                            }
                            answered += 1;
                            if close_every > 0 && answered % close_every == 0 {
                                return;
                            }
                        }
                    }
                });
            }
        });
        accepted
    }

    /// A listener on a free loopback port.
    fn listen() -> (TcpListener, SocketAddr) {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        (listener, addr)
    }

    fn local_server(response: &'static [u8], close_every: usize) -> SocketAddr {
        let (listener, addr) = listen();
        serve(listener, response, close_every);
        addr
    }

    #[test]
    fn paced_run_sends_at_the_rate_and_measures_latency() {
        let addr = local_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", 0);
        let result = run(&PacedConfig {
            addr,
            rate: 400,
            connections: 4,
            duration: Duration::from_millis(500),
            list_late: false,
        });
        assert_eq!(result.sent, 200);
        assert_eq!(result.completed, 200);
        assert_eq!(result.errors, 0);
        assert_eq!(result.non_2xx, 0);
        assert!(result.p50_us.is_some() && result.p99_us >= result.p50_us);
        assert!(result.max_us >= result.p99_us);
    }

    #[test]
    fn every_connection_opens_before_the_schedule_starts() {
        let (listener, addr) = listen();
        let accepted = serve(listener, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0);
        // 10 req/s over 4 connections for 100 ms: only lane 0 has a request due (lane i is
        // due at i * 100 ms), yet all four connect, and the one that sends reuses its own.
        let result = run(&PacedConfig {
            addr,
            rate: 10,
            connections: 4,
            duration: Duration::from_millis(100),
            list_late: false,
        });
        assert_eq!((result.sent, result.completed, result.errors), (1, 1, 0));
        // The kernel completes a connect before the server's thread accepts it.
        let all_four = super::super::process::poll_until(
            Duration::from_secs(2),
            Duration::from_millis(5),
            || (accepted.load(Ordering::Relaxed) >= 4).then_some(()),
        );
        assert!(all_four.is_some());
        assert_eq!(accepted.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn late_requests_are_listed_with_when_they_completed() {
        // Answers every request 5 ms after it arrives, one connection at a time.
        let (listener, addr) = listen();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    std::thread::sleep(Duration::from_millis(5));
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if conn.write_all(answer).is_err() {
                        break;
                    }
                }
            }
        });
        let before = paced::monotonic_us();
        let config = PacedConfig {
            addr,
            rate: 50,
            connections: 1,
            duration: Duration::from_millis(200),
            list_late: true,
        };
        let result = run(&config);
        let after = paced::monotonic_us();
        assert_eq!(result.completed, 10);
        assert_eq!(result.late_count, 10);
        assert_eq!(result.late.len(), 10);
        for (i, late) in result.late.iter().enumerate() {
            assert!(late.due_us.abs_diff(i as u64 * 20_000) <= 1, "{late:?}");
            assert!(late.latency_us >= 5_000, "{late:?}");
            // Completion less latency less the due offset is when the load started, on
            // the same clock: the run starts its schedule 50 ms after it is called (a
            // microsecond either way for truncation; slack for a slow host after).
            let start = late.done_monotonic_us - u64::from(late.latency_us) - late.due_us;
            assert!(
                (before + 50_000 - 2..before + 150_000).contains(&start),
                "{late:?} started {start}, called at {before}"
            );
            assert!(late.done_monotonic_us <= after);
        }
        assert!(
            result
                .late
                .windows(2)
                .all(|pair| pair[0].done_monotonic_us < pair[1].done_monotonic_us)
        );
        // Counted, not listed, when the list is not asked for.
        let result = run(&PacedConfig {
            list_late: false,
            ..config
        });
        assert_eq!((result.late_count, result.late.len()), (10, 0));
    }

    #[test]
    fn closed_connections_are_reopened_and_chunked_bodies_read() {
        let addr = local_server(
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
            3,
        );
        let result = run(&PacedConfig {
            addr,
            rate: 200,
            connections: 2,
            duration: Duration::from_millis(300),
            list_late: false,
        });
        assert_eq!(result.sent, 60);
        // A close right after a response costs nothing: the next request reconnects.
        assert_eq!(result.completed, 60);
        assert_eq!(result.non_2xx, 60);
    }

    #[test]
    fn keep_alive_client_reuses_and_reopens() {
        let addr = local_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", 2);
        let mut client = KeepAlive::new(addr);
        for _ in 0..5 {
            let status = client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(matches!(status, Ok(200)), "{status:?}");
        }
        let Ok(port) = super::super::process::free_port() else {
            panic!("no port");
        };
        let mut dead = KeepAlive::new(super::super::process::loopback(port));
        assert!(dead.send(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn requests_that_time_out_free_their_lane_for_the_overdue_ones() {
        // Accepts and never answers.
        let (listener, addr) = listen();
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(8).flatten().collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(held);
        });
        // Due at 0, 100 and 200 ms; each waits 150 ms for nothing.
        let result = run_with_timeout(
            &PacedConfig {
                addr,
                rate: 10,
                connections: 1,
                duration: Duration::from_millis(300),
                list_late: false,
            },
            Duration::from_millis(150),
        );
        assert_eq!(result.sent, 3);
        assert_eq!(result.errors, 3);
        assert_eq!(result.completed, 0);
        assert_eq!(result.p99_us, None);
    }

    #[test]
    fn a_dead_target_counts_errors_not_requests() {
        let Ok(port) = super::super::process::free_port() else {
            panic!("no port");
        };
        let result = run(&PacedConfig {
            addr: super::super::process::loopback(port),
            rate: 100,
            connections: 1,
            duration: Duration::from_millis(100),
            list_late: false,
        });
        assert_eq!(result.sent, 0);
        assert_eq!(result.completed, 0);
        assert_eq!(result.errors, 10);
        assert_eq!(result.p99_us, None);
    }
}
