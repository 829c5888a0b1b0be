//! A replay of a traced server's steady traffic through the agent's own per-request work,
//! with no kernel: ring-buffer records written as the probes write them, decoded, turned
//! into spans and request metrics by the pipeline, queued, and encoded as OTLP export
//! requests in the export worker's batches, gzipped as the agent sends them by default.
//!
//! Left out: reading the ring buffer (the records are built in place), the reader's
//! wakeups and once-a-second housekeeping, the export worker's wakeups and the network
//! send. Building the records is the replay's own work, a few dozen instructions each.
//!
//! `cargo xtask bench --instructions` counts the instructions it takes per request under
//! callgrind: a cost of the agent's code that the host's load does not move (with the
//! replay's clock and ids fixed, runs of one build give the same count), where its CPU
//! seconds on these shared machines swing by a third from run to run.

use std::sync::{Arc, mpsc};

use loupe_common::{
    AF_INET, COMM_LEN, ConnEvent, ConnTuple, DataEventHeader, EventKind, data_flags, direction,
    role,
};

use super::{Pipeline, PipelineConfig, SdkSpans};
use crate::{
    events::{clock::Clock, decode, reader::EventSink},
    export::{
        DetachedQueue,
        config::BatchConfig,
        otlp::{compress, encode},
    },
    probes::ProcessMarks,
    process::resource::ResourceDefaults,
    protocol::http1::Http1Limits,
    red,
    sampling::HeadSampler,
    span::{FinishedSpan, SpanAttributes, context::seed_this_thread, route::RouteMatcher},
    telemetry::metrics::Metrics,
};

/// The services `cargo xtask bench` measures, as the probes see them answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// nginx: the response in one `writev`, of which the probe copies only the head.
    Nginx,
    /// Python's `http.server`: the head and the body in two sends, both copied.
    Python,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: loupe-bench\r\n\r\n";
const NGINX_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
Date: Sat, 05 Dec 2026 10:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
Connection: keep-alive\r\n\r\n";
const NGINX_BODY_LEN: u64 = 3;
const PYTHON_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11.7\r\n\
Date: Sat, 05 Dec 2026 10:00:00 GMT\r\nContent-Type: application/json\r\n\
Content-Length: 29\r\n\r\n";
const PYTHON_BODY: &[u8] = b"{\"status\": \"ok\", \"path\": \"/\"}";

/// The bench's fixed-rate client keeps this many connections open.
const CONNECTIONS: u32 = 32;
/// Requests per read of the ring buffer: what 50 ms of polling gathers at a few thousand
/// requests a second.
const REQUESTS_PER_READ: u64 = 128;
const FIRST_FD: u32 = 100;
/// Monotonic time between one request and the next, and within a request.
const REQUEST_GAP_NS: u64 = 250_000;
const SERVICE_TIME_NS: u64 = 40_000;
/// The replay's clock and ids are fixed rather than taken from the host, so that its
/// spans carry the same ids and timestamps in every run and gzip meets the same bytes
/// (only the resource, read from this process, differs: its pid): the monotonic time it
/// starts at (an hour after boot), Unix time at boot (2026-12-05T00:00:00Z), and the
/// seed of its ids.
const START_NS: u64 = 3_600_000_000_000;
const BOOT_UNIX_NS: u64 = 1_796_428_800_000_000_000;
const ID_SEED: u64 = 1;

/// The pipeline, its export queue and a scratch record, replaying one service.
pub struct Replay {
    service: Service,
    pipeline: Pipeline,
    queue: DetachedQueue,
    metrics: Arc<Metrics>,
    tgid: u32,
    clock_ns: u64,
    conn_ids: Vec<u64>,
    record: Vec<u8>,
    batch: Vec<FinishedSpan>,
    batch_size: usize,
    gzip: compress::Gzip,
    /// Every gzipped export request, in order, for the tests that compare two replays.
    #[cfg(test)]
    gzipped: Vec<u8>,
}

/// What a replay produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub spans: u64,
    /// Bytes of encoded OTLP export requests.
    pub encoded_bytes: u64,
    /// The same requests' bytes once gzipped.
    pub gzipped_bytes: u64,
}

impl Replay {
    /// A pipeline with the agent's defaults, its connections opened. Its spans carry the
    /// resource of this process, read from /proc as the agent reads a traced one's; they
    /// are exported even when this process's environment names an OpenTelemetry SDK.
    /// Seeds the calling thread's ids for good (see [`ID_SEED`]): run the replay on the
    /// thread that made it.
    pub fn new(service: Service) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let (red, _red_metrics) = red::new(red::Limits::default(), metrics.clone());
        let config = PipelineConfig {
            sdk_spans: SdkSpans::Export,
            span_attributes: SpanAttributes::Recommended,
            head_sampler: HeadSampler::from_env(|_| None)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
            tail_policy: None,
            max_connections: loupe_common::MAX_CONNECTIONS as usize,
            limits: Http1Limits::default(),
            routes: RouteMatcher::new(&[]).map_err(|e| std::io::Error::other(e.to_string()))?,
            red,
        };
        // The agent's default export queue and batches.
        let batching = BatchConfig::default();
        let (sender, queue) = DetachedQueue::new(
            batching.max_queue_size,
            batching.max_export_batch_size,
            metrics.clone(),
        );
        // Nothing reads the pipeline's notices here; the channel only has to accept them.
        let (notices, _) = mpsc::sync_channel(1);
        let pipeline = Pipeline::new(
            config,
            ResourceDefaults::new(Vec::new()),
            sender,
            metrics.clone(),
            None,
            ProcessMarks::anonymous()?,
            notices,
        );
        let mut replay = Self {
            service,
            pipeline,
            queue,
            metrics,
            tgid: std::process::id(),
            clock_ns: START_NS,
            conn_ids: Vec::new(),
            record: Vec::with_capacity(512),
            batch: Vec::with_capacity(batching.max_export_batch_size),
            batch_size: batching.max_export_batch_size,
            gzip: compress::Gzip::default(),
            #[cfg(test)]
            gzipped: Vec::new(),
        };
        replay
            .pipeline
            .assembler
            .use_clock(Clock::with_offset(BOOT_UNIX_NS));
        seed_this_thread(ID_SEED);
        replay.open_connections();
        Ok(replay)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn open_connections(&mut self) {
        for i in 0..CONNECTIONS {
            let conn_id = self.open(FIRST_FD + i, 40_000 + i as u16);
            self.conn_ids.push(conn_id);
        }
    }

    /// Opens the server connection from client port `remote_port` at `fd`; returns its id.
    fn open(&mut self, fd: u32, remote_port: u16) -> u64 {
        self.open_as(role::SERVER, fd, (8080, remote_port))
    }

    /// Opens a connection of `conn_role` at `fd` between the local and remote `ports`;
    /// returns its id.
    fn open_as(&mut self, conn_role: u8, fd: u32, (local_port, remote_port): (u16, u16)) -> u64 {
        let conn_id = self.tick(1_000);
        let mut tuple = ConnTuple {
            local_port,
            remote_port,
            family: AF_INET,
            ..ConnTuple::default()
        };
        tuple.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        tuple.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"replay");
        let open = ConnEvent {
            kind: EventKind::ConnOpen as u8,
            role: conn_role,
            _pad: [0; 2],
            tgid: self.tgid,
            tid: self.tgid,
            fd,
            conn_id,
            ts_ns: conn_id,
            tuple,
            comm,
        };
        self.record.clear();
        // SAFETY: a loupe-common record with no implicit padding.
        self.record.extend_from_slice(unsafe { as_bytes(&open) });
        self.deliver();
        conn_id
    }

    /// Replays `requests` requests, round robin over the connections, read from the ring
    /// in groups as the agent reads them, and encodes every span that comes out.
    pub fn run(&mut self, requests: u64) -> Outcome {
        let mut outcome = Outcome::default();
        for n in 0..requests {
            let connection = (n % u64::from(CONNECTIONS)) as usize;
            self.request(connection);
            if (n + 1) % REQUESTS_PER_READ == 0 || n + 1 == requests {
                self.pipeline.drained(false);
                self.export(&mut outcome, false);
            }
        }
        self.export(&mut outcome, true);
        outcome
    }

    fn request(&mut self, connection: usize) {
        let fd = FIRST_FD + connection as u32;
        let conn_id = self.conn_ids[connection];
        let arrived = self.tick(REQUEST_GAP_NS);
        self.data(
            fd,
            conn_id,
            direction::INGRESS,
            arrived,
            REQUEST,
            REQUEST.len(),
            0,
        );
        let answered = self.tick(SERVICE_TIME_NS);
        match self.service {
            Service::Nginx => {
                let total = NGINX_HEAD.len() + NGINX_BODY_LEN as usize;
                let flags = data_flags::BODY_SKIPPED;
                self.data(
                    fd,
                    conn_id,
                    direction::EGRESS,
                    answered,
                    NGINX_HEAD,
                    total,
                    flags,
                );
            }
            Service::Python => {
                let head = PYTHON_HEAD;
                self.data(
                    fd,
                    conn_id,
                    direction::EGRESS,
                    answered,
                    head,
                    head.len(),
                    0,
                );
                let sent = self.tick(5_000);
                let body = PYTHON_BODY;
                self.data(fd, conn_id, direction::EGRESS, sent, body, body.len(), 0);
            }
        }
    }

    /// One data record, as the kernel writes it: the header, then the captured bytes.
    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        fd: u32,
        conn_id: u64,
        direction: u8,
        at_ns: u64,
        bytes: &[u8],
        total: usize,
        flags: u8,
    ) {
        let header = DataEventHeader {
            kind: EventKind::Data as u8,
            direction,
            flags,
            _pad: 0,
            tgid: self.tgid,
            tid: self.tgid,
            fd,
            conn_id,
            start_ns: at_ns,
            end_ns: at_ns,
            total_len: total as u64,
            captured_len: bytes.len() as u32,
            _pad2: 0,
        };
        self.record.clear();
        // SAFETY: a loupe-common record with no implicit padding.
        self.record.extend_from_slice(unsafe { as_bytes(&header) });
        self.record.extend_from_slice(bytes);
        self.deliver();
    }

    #[cfg(test)]
    fn close(&mut self, fd: u32, conn_id: u64) {
        let close = loupe_common::CloseEvent {
            kind: EventKind::ConnClose as u8,
            _pad: [0; 3],
            tgid: self.tgid,
            tid: self.tgid,
            fd,
            conn_id,
            ts_ns: self.tick(1_000),
        };
        self.record.clear();
        // SAFETY: a loupe-common record with no implicit padding.
        self.record.extend_from_slice(unsafe { as_bytes(&close) });
        self.deliver();
    }

    fn deliver(&mut self) {
        match decode(&self.record) {
            Ok(event) => self.pipeline.handle(event),
            Err(_) => self.metrics.events_malformed.inc(),
        }
    }

    /// Encodes full batches, as the export worker sends them, and with `all` what is left.
    fn export(&mut self, outcome: &mut Outcome, all: bool) {
        loop {
            self.queue.fill(&mut self.batch, self.batch_size);
            let full = self.batch.len() >= self.batch_size;
            let last = all && !self.batch.is_empty();
            if !full && !last {
                return;
            }
            outcome.spans += self.batch.len() as u64;
            let request = encode::trace_request(&self.batch);
            outcome.encoded_bytes += request.len() as u64;
            // An in-memory write of a buffer that fits it fails only if memory runs out.
            let gzipped = self.gzip.compress(Vec::new(), &request).unwrap_or_default();
            outcome.gzipped_bytes += gzipped.len() as u64;
            #[cfg(test)]
            self.gzipped.extend_from_slice(&gzipped);
            self.queue.delivered(self.batch.len());
            self.batch.clear();
        }
    }

    /// Advances the replay's monotonic clock by `ns` and returns it.
    fn tick(&mut self, ns: u64) -> u64 {
        self.clock_ns += ns;
        self.clock_ns
    }
}

/// The bytes of a record struct.
///
/// # Safety
/// `T` must have no implicit padding, as loupe-common's `repr(C)` records, whose padding is
/// explicit fields, have: every byte read is then initialised.
unsafe fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: the caller's promise; read for the value's own size, while it is borrowed.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::encode::by_resource;

    /// Hands what the pipeline finished to the queue and takes it: exactly one span.
    fn only_span(replay: &mut Replay) -> FinishedSpan {
        replay.pipeline.drained(false);
        let mut spans = Vec::new();
        replay.queue.fill(&mut spans, 10);
        assert_eq!(spans.len(), 1, "one span");
        spans.pop().expect("one span")
    }

    #[test]
    fn every_replayed_request_becomes_one_encoded_span() {
        for service in [Service::Nginx, Service::Python] {
            let mut replay = Replay::new(service).unwrap();
            let outcome = replay.run(1_000);
            assert_eq!(outcome.spans, 1_000, "{service:?}");
            assert!(
                outcome.encoded_bytes > 1_000 * 100,
                "{service:?}: {outcome:?}"
            );
            // Compressed as exported, to a fraction of that.
            assert!(
                outcome.gzipped_bytes > 0 && outcome.gzipped_bytes * 4 < outcome.encoded_bytes,
                "{service:?}: {outcome:?}"
            );
            let metrics = replay.metrics();
            assert_eq!(metrics.parse_errors.get(), 0, "{service:?}");
            assert_eq!(metrics.bytes_unparsed.get(), 0, "{service:?}");
            assert_eq!(metrics.spans_dropped.get(), 0, "{service:?}");
            assert_eq!(metrics.spans_exported.get(), 1_000, "{service:?}");
        }
    }

    #[test]
    fn two_replays_export_the_same_bytes() {
        for service in [Service::Nginx, Service::Python] {
            let exported = || {
                let mut replay = Replay::new(service).unwrap();
                let outcome = replay.run(600);
                (outcome, replay.gzipped)
            };
            let (first, first_bytes) = exported();
            let (second, second_bytes) = exported();
            assert_eq!(first, second, "{service:?}");
            assert_eq!(first_bytes.len() as u64, first.gzipped_bytes, "{service:?}");
            assert!(first_bytes == second_bytes, "{service:?}: the bytes differ");
        }
    }

    #[test]
    fn spans_are_the_servers_own() {
        let mut replay = Replay::new(Service::Python).unwrap();
        replay.request(0);
        replay.request(1);
        replay.pipeline.drained(false);
        let mut spans = Vec::new();
        replay.queue.fill(&mut spans, 10);
        assert_eq!(spans.len(), 2);
        let span = &spans[0].span;
        assert_eq!(&*span.name, "GET /");
        assert_eq!(span.status_code, Some(200));
        assert_eq!(span.route.as_deref(), Some("/"));
        assert_eq!(span.kind, crate::span::SpanKind::Server);
        assert_eq!(
            span.end_unix_ns - span.start_unix_ns,
            SERVICE_TIME_NS + 5_000
        );
        assert_eq!(by_resource(&spans).len(), 1);
    }

    #[test]
    fn a_request_read_on_one_fd_and_answered_on_another_of_its_socket_is_one_span() {
        let mut replay = Replay::new(Service::Python).unwrap();
        // Connection 0's socket under a second fd, as an inetd-style server (busybox
        // httpd) has it: stdin for the request, stdout for the answer.
        let (stdin, stdin_id) = (FIRST_FD, replay.conn_ids[0]);
        let stdout = FIRST_FD + CONNECTIONS;
        let stdout_id = replay.open(stdout, 40_000);
        let at = replay.tick(REQUEST_GAP_NS);
        let request = (direction::INGRESS, REQUEST);
        replay.data(stdin, stdin_id, request.0, at, request.1, REQUEST.len(), 0);
        let at = replay.tick(SERVICE_TIME_NS);
        let (head, body) = (PYTHON_HEAD, PYTHON_BODY);
        replay.data(
            stdout,
            stdout_id,
            direction::EGRESS,
            at,
            head,
            head.len(),
            0,
        );
        replay.data(
            stdout,
            stdout_id,
            direction::EGRESS,
            at,
            body,
            body.len(),
            0,
        );
        let span = only_span(&mut replay);
        assert_eq!(span.span.status_code, Some(200));
        assert_eq!(span.span.error_type, None);
        assert_eq!(
            span.span.end_unix_ns - span.span.start_unix_ns,
            SERVICE_TIME_NS
        );
        assert_eq!(replay.metrics().bytes_unparsed.get(), 0);
        assert_eq!(replay.metrics().parse_errors.get(), 0);
        // The alias's close ends nothing; the connection's own close ends it.
        let key = loupe_common::ConnKey {
            tgid: replay.tgid,
            fd: stdin,
        };
        replay.close(stdout, stdout_id);
        assert!(replay.pipeline.connections.get_mut(&key).is_some());
        replay.close(stdin, stdin_id);
        assert!(replay.pipeline.connections.get_mut(&key).is_none());
    }

    #[test]
    fn a_connection_used_again_after_idling_past_the_timeout_keeps_its_endpoints() {
        let mut replay = Replay::new(Service::Python).unwrap();
        let key = loupe_common::ConnKey {
            tgid: replay.tgid,
            fd: FIRST_FD,
        };
        replay
            .pipeline
            .housekeeping_at(replay.clock_ns + 301_000_000_000);
        assert!(replay.pipeline.connections.get_mut(&key).is_none());
        replay.request(0);
        replay.pipeline.drained(false);
        let mut spans = Vec::new();
        replay.queue.fill(&mut spans, 10);
        let [span] = spans.as_slice() else {
            panic!("one span, got {}", spans.len());
        };
        assert_eq!(span.span.peer_address.as_deref(), Some("127.0.0.1"));
        assert_eq!(span.span.peer_port, Some(40_000));
        assert_eq!(replay.metrics().bytes_unparsed.get(), 0);
    }

    #[test]
    fn a_request_awaiting_its_response_keeps_its_connection_past_the_idle_timeout() {
        let mut replay = Replay::new(Service::Nginx).unwrap();
        let (fd, conn_id) = (FIRST_FD, replay.conn_ids[0]);
        let key = loupe_common::ConnKey {
            tgid: replay.tgid,
            fd,
        };
        let read = |replay: &mut Replay| {
            let at = replay.tick(REQUEST_GAP_NS);
            replay.data(
                fd,
                conn_id,
                direction::INGRESS,
                at,
                REQUEST,
                REQUEST.len(),
                0,
            );
        };
        let mut spans = Vec::new();
        // A long poll: the answer comes after more than the idle timeout.
        read(&mut replay);
        let asked = replay.clock_ns;
        replay.pipeline.housekeeping_at(asked + 400_000_000_000);
        replay.pipeline.drained(false);
        replay.queue.fill(&mut spans, 10);
        assert!(spans.is_empty(), "no span before the answer");
        assert!(replay.pipeline.connections.get_mut(&key).is_some());
        replay.clock_ns = asked + 401_000_000_000;
        let total = NGINX_HEAD.len() + NGINX_BODY_LEN as usize;
        let (at, flags) = (replay.clock_ns, data_flags::BODY_SKIPPED);
        replay.data(fd, conn_id, direction::EGRESS, at, NGINX_HEAD, total, flags);
        let span = only_span(&mut replay);
        assert_eq!(span.span.status_code, Some(200));
        assert_eq!(span.span.error_type, None);
        assert_eq!(
            span.span.end_unix_ns - span.span.start_unix_ns,
            401_000_000_000
        );
        // Past the longer limit the request is given up as unanswered.
        read(&mut replay);
        let asked = replay.clock_ns;
        replay.pipeline.housekeeping_at(asked + 3_601_000_000_000);
        assert!(replay.pipeline.connections.get_mut(&key).is_none());
        replay.pipeline.drained(false);
        spans.clear();
        replay.queue.fill(&mut spans, 10);
        let [span] = spans.as_slice() else {
            panic!("one span, got {}", spans.len());
        };
        assert_eq!(span.span.error_type.as_deref(), Some("no_response"));
        assert_eq!(replay.metrics().parse_errors.get(), 0);
        assert_eq!(replay.metrics().bytes_unparsed.get(), 0);
    }
}

#[cfg(test)]
#[path = "event_loop_tests.rs"]
mod event_loop_tests;

#[cfg(test)]
#[path = "late_client_tests.rs"]
mod late_client_tests;
