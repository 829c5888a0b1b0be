//! The fixed-rate load's event loop: every connection served by one thread.
//!
//! One thread waiting in `ppoll` disturbs the measured host far less than a thread per
//! connection: 32 threads each sleeping until their next request added 10,000 thread
//! wakeups a second at 10k req/s to a two-core host, and every one of them preempts the
//! agent (it runs at idle priority) and competes with the service for a core.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use super::super::http::{self, BodyKind, HttpError};
use super::super::process::interrupted;
use super::{
    IO_TIMEOUT, LATE_AFTER_US, LateRequest, MAX_LATE, MAX_SAMPLES_PER_CONNECTION, PacedConfig,
    PacedResult, READ_BUFFER, due_offset,
};

/// The longest the loop sleeps without checking for an interrupt or a timeout.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// A request on the wire, waiting for its response.
struct InFlight {
    due: Instant,
    sent_at: Instant,
    /// Sent on a connection that sat idle before (kept after a response, or opened ahead
    /// of the schedule): a close before any byte of the response means the server dropped
    /// it while idle, and the request goes again.
    reused: bool,
}

/// One connection's schedule and state.
struct Lane {
    number: u32,
    /// Index of the next request this lane sends.
    next: u64,
    conn: Option<Conn>,
    in_flight: Option<InFlight>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
    served: u64,
    /// Opened before the schedule started and not used yet.
    ahead: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Self> {
        // Blocking connect, then nonblocking for the loop. On loopback a connect is
        // immediate; one that waits (a full accept backlog dropping the SYN) stalls every
        // lane for up to IO_TIMEOUT, and their latencies show it.
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            buf: vec![0; READ_BUFFER],
            filled: 0,
            served: 0,
            ahead: false,
        })
    }

    /// Writes the whole request; a request that does not fit in an empty socket buffer
    /// at once is an error, as the fixed-rate requests are small.
    fn send(&self, request: &[u8]) -> io::Result<()> {
        match (&self.stream).write(request)? {
            n if n == request.len() => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::WouldBlock, "short write")),
        }
    }
}

/// What reading a readable connection came to.
enum Progress {
    /// The response is not complete yet.
    Waiting,
    /// The response's status and whether the connection may carry another request.
    Done(u16, bool),
    /// Closed or reset before any byte of the response.
    ClosedEarly,
    Failed,
}

fn read_available(conn: &mut Conn) -> Progress {
    loop {
        match response_end(conn) {
            Ok(Some((consumed, status, keep))) => {
                conn.buf.copy_within(consumed..conn.filled, 0);
                conn.filled -= consumed;
                return Progress::Done(status, keep);
            }
            Ok(None) => {}
            Err(_) => return Progress::Failed,
        }
        if conn.filled == conn.buf.len() {
            return Progress::Failed;
        }
        let early = conn.filled == 0;
        match conn.stream.read(&mut conn.buf[conn.filled..]) {
            Ok(0) if early => return Progress::ClosedEarly,
            Ok(0) => return Progress::Failed,
            Ok(n) => conn.filled += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Progress::Waiting,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if early
                    && matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Progress::ClosedEarly;
            }
            Err(_) => return Progress::Failed,
        }
    }
}

/// Where the buffered response ends, with its status and keep-alive, once all of it is in.
fn response_end(conn: &Conn) -> Result<Option<(usize, u16, bool)>, HttpError> {
    let Some(head) = http::parse_head(&conn.buf[..conn.filled])? else {
        return Ok(None);
    };
    let have = &conn.buf[head.head_len..conn.filled];
    let end = match head.body {
        BodyKind::Length(len) => (have.len() >= len).then_some(head.head_len + len),
        BodyKind::Chunked => http::decode_chunked(have)?.map(|(_, used)| head.head_len + used),
        // Only a close ends it; the fixed-rate targets always frame their responses.
        BodyKind::UntilClose => None,
    };
    Ok(end.map(|end| (end, head.status, !head.close)))
}

#[derive(Default)]
struct Tally {
    sent: u64,
    completed: u64,
    errors: u64,
    non_2xx: u64,
    latencies_us: Vec<u32>,
    late_count: u64,
    late: Vec<LateRequest>,
}

struct Loop<'a> {
    config: &'a PacedConfig,
    request: Vec<u8>,
    start: Instant,
    end: Instant,
    tally: Tally,
}

impl Loop<'_> {
    fn due(&self, lane: &Lane) -> Instant {
        self.start
            + due_offset(
                self.config.rate,
                self.config.connections,
                lane.number,
                lane.next,
            )
    }

    /// Sends the lane's next request if it is due; returns when it will next be due.
    fn send_if_due(&mut self, lane: &mut Lane, now: Instant) -> Option<Instant> {
        loop {
            let due = self.due(lane);
            if due >= self.end {
                return None;
            }
            if due > now {
                return Some(due);
            }
            lane.next += 1;
            if self.put(lane, due, now) {
                self.tally.sent += 1;
                return None;
            }
            // The request could not go out: counted; the next one may be due already.
            self.tally.errors += 1;
        }
    }

    /// Puts a request due at `due` on the lane's connection, or on a new one when there is
    /// none or the server closed a kept one while idle; false when it could not go out.
    fn put(&self, lane: &mut Lane, due: Instant, now: Instant) -> bool {
        let kept = lane.conn.take();
        let reused = kept
            .as_ref()
            .is_some_and(|conn| conn.served > 0 || conn.ahead);
        let (mut conn, reused) = match kept {
            Some(conn) if conn.send(&self.request).is_ok() => (conn, reused),
            Some(_) if !reused => return false,
            _ => match Conn::open(self.config.addr) {
                Ok(conn) if conn.send(&self.request).is_ok() => (conn, false),
                _ => return false,
            },
        };
        conn.ahead = false;
        lane.conn = Some(conn);
        lane.in_flight = Some(InFlight {
            due,
            sent_at: now,
            reused,
        });
        true
    }

    fn on_readable(&mut self, lane: &mut Lane) {
        let (Some(conn), Some(flight)) = (lane.conn.as_mut(), lane.in_flight.as_ref()) else {
            return;
        };
        match read_available(conn) {
            Progress::Waiting => {}
            Progress::Done(status, keep) => {
                conn.served += 1;
                self.tally.completed += 1;
                if !(200..300).contains(&status) {
                    self.tally.non_2xx += 1;
                }
                let now = Instant::now();
                let latency =
                    u32::try_from(now.duration_since(flight.due).as_micros()).unwrap_or(u32::MAX);
                if self.tally.latencies_us.len()
                    < MAX_SAMPLES_PER_CONNECTION * self.config.connections.max(1) as usize
                {
                    self.tally.latencies_us.push(latency);
                }
                if latency > LATE_AFTER_US {
                    self.tally.late_count += 1;
                    if self.config.list_late && self.tally.late.len() < MAX_LATE {
                        let due = flight.due.saturating_duration_since(self.start);
                        self.tally.late.push(LateRequest {
                            due_us: u64::try_from(due.as_micros()).unwrap_or(u64::MAX),
                            latency_us: latency,
                            // Read here rather than derived from `Instant`, which would
                            // need a pair of readings that a stalled vCPU can split.
                            done_monotonic_us: monotonic_us(),
                        });
                    }
                }
                lane.in_flight = None;
                if !keep {
                    lane.conn = None;
                }
            }
            Progress::ClosedEarly if flight.reused => {
                // The server closed the idle connection: the same request goes again once,
                // on a new connection, as HTTP clients do.
                // Already counted as sent.
                let due = flight.due;
                lane.conn = None;
                lane.in_flight = None;
                if !self.put(lane, due, Instant::now()) {
                    self.tally.errors += 1;
                }
            }
            Progress::ClosedEarly | Progress::Failed => {
                self.tally.errors += 1;
                lane.conn = None;
                lane.in_flight = None;
            }
        }
    }
}

pub fn run(config: &PacedConfig) -> PacedResult {
    run_with_timeout(config, IO_TIMEOUT)
}

/// [`run`], a request failing when its response takes longer than `timeout`.
pub(super) fn run_with_timeout(config: &PacedConfig, timeout: Duration) -> PacedResult {
    // Every connection opens before the schedule starts, so that the server's accepting
    // it (a thread per connection in Python's ThreadingHTTPServer) is not charged to the
    // first requests: that start-up put 40-50 requests of a 15 s soak over 10 ms, in
    // every mode, a seventh of what a p99 of 30,000 requests allows. One that fails to
    // open is opened again when its first request is due.
    let ahead: Vec<Option<Conn>> = (0..config.connections)
        .map(|_| {
            Conn::open(config.addr).ok().map(|mut conn| {
                conn.ahead = true;
                conn
            })
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(50);
    let mut state = Loop {
        config,
        request: format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: loupe-bench\r\n\r\n",
            config.addr
        )
        .into_bytes(),
        start,
        end: start + config.duration,
        tally: Tally::default(),
    };
    let mut lanes: Vec<Lane> = (0..config.connections)
        .zip(ahead)
        .map(|(number, conn)| Lane {
            number,
            next: 0,
            conn,
            in_flight: None,
        })
        .collect();
    let mut polled: Vec<libc::pollfd> = Vec::with_capacity(lanes.len());
    let mut polled_lanes: Vec<usize> = Vec::with_capacity(lanes.len());
    loop {
        if interrupted() {
            break;
        }
        let now = Instant::now();
        let mut wake = now + MAX_WAIT;
        let mut busy = false;
        polled.clear();
        polled_lanes.clear();
        for (i, lane) in lanes.iter_mut().enumerate() {
            // A timed-out request frees its lane first, so the lane's overdue requests go
            // out (or count as errors) in this same pass.
            if lane
                .in_flight
                .as_ref()
                .is_some_and(|flight| now.duration_since(flight.sent_at) > timeout)
            {
                state.tally.errors += 1;
                lane.in_flight = None;
                lane.conn = None;
            }
            if lane.in_flight.is_none()
                && let Some(due) = state.send_if_due(lane, now)
            {
                wake = wake.min(due);
                busy = true;
            }
            if let (Some(flight), Some(conn)) = (&lane.in_flight, &lane.conn) {
                wake = wake.min(flight.sent_at + timeout);
                busy = true;
                polled.push(libc::pollfd {
                    fd: conn.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                polled_lanes.push(i);
            }
        }
        if !busy {
            break;
        }
        let wait = wake.saturating_duration_since(Instant::now());
        let wait = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `polled` is a live array of `polled.len()` pollfds; the timeout outlives
        // the call and no signal mask is passed.
        let ready = unsafe {
            libc::ppoll(
                polled.as_mut_ptr(),
                polled.len() as libc::nfds_t,
                &wait,
                std::ptr::null(),
            )
        };
        if ready <= 0 {
            continue;
        }
        for (entry, &i) in polled.iter().zip(&polled_lanes) {
            if entry.revents != 0 {
                state.on_readable(&mut lanes[i]);
            }
        }
    }
    let seconds = start
        .elapsed()
        .as_secs_f64()
        .min(config.duration.as_secs_f64());
    let Tally {
        sent,
        completed,
        errors,
        non_2xx,
        mut latencies_us,
        late_count,
        late,
    } = state.tally;
    latencies_us.sort_unstable();
    PacedResult {
        sent,
        completed,
        errors,
        non_2xx,
        seconds,
        p50_us: super::super::stats::percentile(&latencies_us, 50.0),
        p99_us: super::super::stats::percentile(&latencies_us, 99.0),
        max_us: latencies_us.last().copied(),
        late_count,
        late,
    }
}

/// Now on `CLOCK_MONOTONIC`, in microseconds.
pub(super) fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}
