//! An HTTP/1 session fed arbitrary syscalls in both directions, with closes in between.
//!
//! Input layout (see `fuzz/README.md`): byte 0 picks the role (bit 0), the limits (bits 1-2)
//! and whether request starts are taken after every syscall (bit 3). Then records, each one
//! syscall or a close: a control byte, a length byte and that many bytes. Control bits:
//! 0 the response direction (else the request direction), 1 a close, 2 the capture is cut
//! (two more bytes, little endian, count the unseen tail; eight with bit 6), 3 nothing
//! captured (sendfile), 4-5 the thread.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::protocol::http1::{
    ExchangeOutcome, HeaderField, Http1Limits, Http1Session, HttpExchange, KeepHeaders,
    MAX_HEADER_VALUE_BYTES,
};
use loupe::protocol::{Chunk, Direction, Role, detect_http1};
use loupe::span::context::PROPAGATION_HEADERS;

const LIMITS: [Http1Limits; 4] = [
    Http1Limits {
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        max_pending_requests: 32,
        // What the agent runs with: only the headers spans use are kept.
        keep_headers: KeepHeaders::Used,
    },
    Http1Limits {
        max_header_bytes: 64,
        max_headers: 2,
        max_pending_requests: 2,
        keep_headers: KeepHeaders::All,
    },
    Http1Limits {
        max_header_bytes: 256,
        max_headers: 8,
        max_pending_requests: 4,
        keep_headers: KeepHeaders::All,
    },
    // Degenerate configuration: nothing may be buffered or kept, and nothing may panic.
    Http1Limits {
        max_header_bytes: 0,
        max_headers: 0,
        max_pending_requests: 0,
        keep_headers: KeepHeaders::All,
    },
];

/// What the session reported so far, checked against what it was fed.
struct Checker {
    role: Role,
    limits: Http1Limits,
    session: Http1Session,
    out: Vec<HttpExchange>,
    clock: u64,
    /// Requests the session reported as started.
    started: u64,
    /// Exchanges emitted, and the id of the last one.
    emitted: u64,
    last_emitted: Option<u64>,
    dropped: u64,
    unparsed: u64,
    /// Bytes moved, seen or not.
    fed: u64,
}

impl Checker {
    fn new(flags: u8) -> Self {
        let role = if flags & 1 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let limits = LIMITS[usize::from((flags >> 1) & 3)];
        Self {
            role,
            limits,
            session: Http1Session::new(role, limits),
            out: Vec::new(),
            clock: 0,
            started: 0,
            emitted: 0,
            last_emitted: None,
            dropped: 0,
            unparsed: 0,
            fed: 0,
        }
    }

    fn direction(&self, response: bool) -> Direction {
        match (self.role, response) {
            (Role::Server, false) | (Role::Client, true) => Direction::Ingress,
            (Role::Server, true) | (Role::Client, false) => Direction::Egress,
        }
    }

    fn chunk(&mut self, response: bool, bytes: &[u8], total_len: u64, tid: u32) {
        self.clock += 1000;
        let chunk = Chunk {
            direction: self.direction(response),
            start_ns: self.clock,
            end_ns: self.clock + 500,
            tid,
            bytes,
            total_len,
        };
        let _ = detect_http1(&chunk);
        self.fed = self.fed.saturating_add(total_len);
        self.session.on_chunk(&chunk, &mut self.out);
        self.check_bounds();
    }

    fn close(&mut self) {
        self.clock += 1000;
        self.session.on_close(self.clock, &mut self.out);
        self.check_bounds();
        assert_eq!(
            self.session.pending_requests(),
            0,
            "requests pending after close"
        );
        assert_eq!(
            self.session.buffered_head_bytes(),
            0,
            "head bytes after close"
        );
        self.drain();
        let stats = self.session.take_stats();
        self.dropped += stats.dropped_requests;
        self.unparsed = self.unparsed.saturating_add(stats.unparsed_bytes);
        assert!(
            self.unparsed <= self.fed,
            "{} unparsed bytes of {} fed",
            self.unparsed,
            self.fed
        );
        // After a close every request started was either emitted or dropped past the limit.
        assert_eq!(
            self.emitted + self.dropped,
            self.started,
            "emitted + dropped != started"
        );
    }

    /// Bounds that must hold between any two syscalls.
    fn check_bounds(&self) {
        let pending_cap = self.limits.max_pending_requests.max(1);
        assert!(self.session.pending_requests() <= pending_cap);
        // Each direction holds fewer bytes than the limit.
        let per_direction = self.limits.max_header_bytes.saturating_sub(1);
        assert!(
            self.session.buffered_head_bytes() <= 2 * per_direction,
            "{} head bytes buffered, limit {}",
            self.session.buffered_head_bytes(),
            self.limits.max_header_bytes
        );
    }

    /// Takes the request starts and checks the exchanges emitted since the last drain.
    fn drain(&mut self) {
        let cap = self.limits.max_pending_requests.max(1);
        let mut starts = Vec::new();
        self.session.append_started(&mut starts);
        assert!(
            starts.len() <= cap,
            "{} starts kept, cap {cap}",
            starts.len()
        );
        if let Some(first) = starts.first() {
            // Older starts are only given up when the list is full.
            assert!(first.request_id >= self.started);
            assert!(first.request_id == self.started || starts.len() == cap);
        }
        for (i, start) in starts.iter().enumerate() {
            assert_eq!(start.request_id, starts[0].request_id + i as u64);
            for (name, _) in &start.headers {
                assert!(PROPAGATION_HEADERS.contains(&name.as_ref()), "{name}");
            }
        }
        if let Some(last) = starts.last() {
            self.started = last.request_id + 1;
        }
        for exchange in std::mem::take(&mut self.out) {
            self.check_exchange(&exchange);
        }
    }

    fn check_exchange(&mut self, e: &HttpExchange) {
        assert_eq!(e.role, self.role);
        assert!(
            e.request_id < self.started,
            "exchange of a request never started"
        );
        assert!(
            self.last_emitted.is_none_or(|last| e.request_id > last),
            "exchanges out of request order"
        );
        self.last_emitted = Some(e.request_id);
        self.emitted += 1;
        let answered = matches!(
            e.outcome,
            ExchangeOutcome::Complete | ExchangeOutcome::ResponseIncomplete
        );
        assert_eq!(e.response.is_some(), answered, "{:?}", e.outcome);
        assert!(e.request_first_start_ns <= e.request_first_end_ns);
        assert!(e.request_first_end_ns <= e.request_last_end_ns);
        check_headers(&e.request.headers, &self.limits);
        if let Some(response) = &e.response {
            assert!(e.response_first_start_ns <= e.response_last_end_ns);
            check_headers(&response.headers, &self.limits);
        }
    }
}

fn check_headers(headers: &[HeaderField], limits: &Http1Limits) {
    assert!(headers.len() <= limits.max_headers);
    for (name, value) in headers {
        assert!(name.len() <= MAX_HEADER_VALUE_BYTES);
        assert!(value.len() <= MAX_HEADER_VALUE_BYTES);
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let drain_each = flags & 8 != 0;
    let mut c = Checker::new(flags);
    let mut closed = true;
    while let [ctl, len, tail @ ..] = rest {
        rest = tail;
        if ctl & 2 != 0 {
            c.close();
            closed = true;
            continue;
        }
        let mut gap = 0u64;
        if ctl & 4 != 0 {
            // Bit 6: the kernel's count is trusted by no one, so any u64 may arrive.
            let width = if ctl & 64 != 0 { 8 } else { 2 };
            let Some((le, tail)) = rest.split_at_checked(width) else {
                break;
            };
            let mut bytes = [0u8; 8];
            bytes[..width].copy_from_slice(le);
            gap = u64::from_le_bytes(bytes);
            rest = tail;
        }
        let (bytes, tail) = rest.split_at(usize::from(*len).min(rest.len()));
        rest = tail;
        let total_len = (bytes.len() as u64).saturating_add(gap);
        let seen: &[u8] = if ctl & 8 != 0 { &[] } else { bytes };
        c.chunk(ctl & 1 != 0, seen, total_len, u32::from((ctl >> 4) & 3));
        closed = false;
        if drain_each {
            c.drain();
        }
    }
    if !closed {
        c.close();
    }
});
