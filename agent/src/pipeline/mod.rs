//! The userspace pipeline, run on the ring-buffer reader thread:
//! event -> connection table -> HTTP/1 session -> span assembly -> exporter.

mod aliases;
mod assemble;
mod awaiting_client;
pub mod connections;
mod emit;
mod housekeeping;
mod injected;
mod linking;
mod opaque_calls;
mod process_marks;
mod processes;
pub mod replay;
mod serving;
mod texts;
mod whole_responses;

use std::{
    sync::{Arc, mpsc::SyncSender},
    time::{Duration, Instant},
};

use loupe_common::{ConnKey, data_flags, direction};

use crate::{
    events::{
        Event,
        clock::{Clock, monotonic_now_ns},
        reader::EventSink,
    },
    export::SpanSender,
    probes::{CounterMap, ProcessMarks},
    process::{
        instrumented::OTLP_PORTS,
        resource::ResourceDefaults,
        selector::{ExecNotice, Notice},
    },
    protocol::{
        Chunk, Direction, Role,
        http1::{Http1Limits, Http1Session, HttpExchange, RequestStart},
    },
    red::RedRecorder,
    sampling::{HeadSampler, TailPolicy, TailSampler},
    span::{FinishedSpan, SpanAttributes, context::extract, route::RouteMatcher},
    telemetry::metrics::Metrics,
};

use assemble::SpanAssembler;
use awaiting_client::AwaitingClient;
use connections::{Connection, ConnectionTable, Detection, Ends};
use emit::ReadySpan;
use injected::InjectedIds;
use linking::{ClientPlacement, Linker, RequestKey};
use process_marks::MarkedProcesses;
use processes::Processes;
use serving::ReadFor;
use whole_responses::WholeResponses;

const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
const SAMPLED: u8 = 0x01;
/// Finished spans handed to the export queue together; they also go whenever the ring
/// buffer has been read empty, so none waits longer than one poll interval.
const OUTBOX_SPANS: usize = 128;

/// What to do with spans of processes that run an OpenTelemetry SDK themselves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SdkSpans {
    /// Do not export them: the SDK already does. Their trace context is still used.
    Skip,
    /// Export them anyway, next to the SDK's own.
    Export,
}

pub struct PipelineConfig {
    pub sdk_spans: SdkSpans,
    pub span_attributes: SpanAttributes,
    pub head_sampler: HeadSampler,
    pub tail_policy: Option<TailPolicy>,
    pub max_connections: usize,
    pub limits: Http1Limits,
    pub routes: RouteMatcher,
    /// Request metrics, fed every finished span before any sampling.
    pub red: RedRecorder,
}

pub struct Pipeline {
    connections: ConnectionTable,
    limits: Http1Limits,
    assembler: SpanAssembler,
    processes: Processes,
    sdk_spans: SdkSpans,
    head_sampler: HeadSampler,
    tail_sampler: Option<TailSampler>,
    exporter: SpanSender,
    /// Spans on their way to `exporter`, sent in chunks.
    outbox: Vec<FinishedSpan>,
    /// Spans made since `spans_created` was last told: counted once per read of the ring
    /// buffer, not with a locked add per span.
    created_unreported: u64,
    red: RedRecorder,
    metrics: Arc<Metrics>,
    /// The kernel's counters; `None` in the replay, which runs without the kernel.
    counters: Option<CounterMap>,
    whole_responses: WholeResponses,
    /// Processes that serve several requests on one thread: the probes report their
    /// calls on connections they stopped capturing (see `opaque_calls`).
    event_loops: MarkedProcesses,
    /// To the selector's thread, which keeps the kernel's tables.
    notices: SyncSender<Notice>,
    exchanges: Vec<HttpExchange>,
    starts: Vec<RequestStart>,
    linker: Linker,
    injected: InjectedIds,
    /// Spans waiting for the request record of the client of their trace's SERVER span.
    awaiting_client: AwaitingClient<ReadySpan>,
    /// When the reader last found the ring buffer empty (monotonic clock): every record
    /// written before then has been handled.
    read_empty_ns: u64,
    last_housekeeping: Instant,
    housekeeping_runs: u32,
}

impl Pipeline {
    pub fn new(
        config: PipelineConfig,
        resource_defaults: ResourceDefaults,
        exporter: SpanSender,
        metrics: Arc<Metrics>,
        counters: Option<CounterMap>,
        marks: ProcessMarks,
        notices: SyncSender<Notice>,
    ) -> Self {
        Self {
            connections: ConnectionTable::new(config.max_connections),
            limits: config.limits,
            assembler: SpanAssembler::new(config.routes, Clock::measure())
                .with_attributes(config.span_attributes),
            processes: Processes::new(resource_defaults),
            sdk_spans: config.sdk_spans,
            head_sampler: config.head_sampler,
            tail_sampler: config.tail_policy.map(TailSampler::new),
            exporter,
            outbox: Vec::with_capacity(OUTBOX_SPANS),
            created_unreported: 0,
            red: config.red,
            metrics,
            counters,
            whole_responses: WholeResponses::new(marks.whole_responses),
            event_loops: MarkedProcesses::new(marks.event_loops),
            notices,
            exchanges: Vec::new(),
            starts: Vec::new(),
            linker: Linker::default(),
            injected: InjectedIds::default(),
            awaiting_client: AwaitingClient::default(),
            read_empty_ns: 0,
            last_housekeeping: Instant::now(),
            housekeeping_runs: 0,
        }
    }

    fn open(&mut self, key: ConnKey, conn: Connection) {
        match self.connections.insert(key, conn) {
            Ok(Some(old)) => self.finish_connection(key, old, monotonic_now_ns()),
            Ok(None) => {}
            Err(_) => self.metrics.connections_dropped.inc(),
        }
        self.metrics.connections_opened.inc();
    }

    fn on_data(&mut self, key: ConnKey, header: &loupe_common::DataEventHeader, payload: &[u8]) {
        let (key, conn_id) = self.connections.resolve(key, header.conn_id);
        let known = self
            .connections
            .get_mut(&key)
            .is_some_and(|c| c.conn_id == conn_id);
        if !known {
            // Finished while idle, the open record lost (ring buffer full), or the fd reused
            // without a close we saw: start over with what this record tells, and the
            // endpoints when the connection was only idle.
            let mut conn = Connection::new(conn_id, None, header.end_ns);
            self.connections.unpark(&key, &mut conn);
            self.open(key, conn);
        }
        let uncaptured = header.flags & data_flags::UNCAPTURED != 0;
        let Some(conn) = self.connections.get_mut(&key) else {
            if !uncaptured {
                self.metrics.bytes_unparsed.add(header.total_len);
            }
            return;
        };
        conn.last_activity_ns = header.end_ns;
        let egress = header.direction == direction::EGRESS;
        let dialed = *conn.dialed.get_or_insert(egress);
        if uncaptured {
            // A call on a connection the probes stopped capturing: only that it happened.
            if dialed {
                let hint = conn.first_call_hint(egress);
                self.follow_opaque_call((key, conn_id), header.tid, egress, hint.as_ref());
            }
            return;
        }
        let chunk = Chunk {
            direction: if header.direction == direction::INGRESS {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            start_ns: header.start_ns,
            end_ns: header.end_ns,
            tid: header.tid,
            bytes: if header.flags & data_flags::SENDFILE != 0 {
                &[]
            } else {
                payload
            },
            total_len: header.total_len,
        };
        let mut joined = Vec::new();
        let (chunk, given_up) = conn.join_held(chunk, &mut joined);
        self.metrics.bytes_unparsed.add(given_up);
        let limits = self.limits;
        let mut role = None;
        let mut read_for = None;
        let mut opaque_call = false;
        match conn.session_for(&chunk, |role| Http1Session::new(role, limits)) {
            Detection::Http1(session) => {
                // Only a record whose body buffer went uncopied is checked, before and after.
                let skipped_in_step =
                    header.flags & data_flags::BODY_SKIPPED != 0 && session.responses_in_step();
                let ingress = chunk.direction == Direction::Ingress;
                // Taken before the response can complete and its request leave the session.
                let request = |request_id| RequestKey {
                    tgid: key.tgid,
                    fd: key.fd,
                    conn_id,
                    request_id,
                };
                if ingress && session.role() == Role::Client {
                    read_for = session
                        .request_awaiting_response()
                        .map(|id| ReadFor::Response(request(id)));
                }
                session.on_chunk(&chunk, &mut self.exchanges);
                if ingress && session.role() == Role::Server {
                    read_for = session
                        .request_being_read()
                        .map(|id| ReadFor::Request(request(id)));
                }
                if skipped_in_step && !session.responses_in_step() {
                    // The buffer left uncopied held more than its response's body.
                    self.whole_responses.copy_whole(key.tgid, &self.metrics);
                }
                session.append_started(&mut self.starts);
                role = Some(session.role());
                let stats = session.take_stats();
                self.metrics.parse_errors.add(stats.parse_errors);
                self.metrics.bytes_unparsed.add(stats.unparsed_bytes);
                self.metrics
                    .exchanges_incomplete
                    .add(stats.requests_without_response);
            }
            Detection::Held => {}
            Detection::None => {
                self.metrics.bytes_unparsed.add(chunk.total_len);
                opaque_call = dialed;
            }
        }
        let stop_capturing = conn.count_chunk_after_http();
        let opaque_hint = if opaque_call {
            conn.first_call_hint(egress)
        } else {
            None
        };
        let (conn_id, local, remote, ends) = (conn.conn_id, conn.local, conn.remote, conn.ends());
        let hint = conn.parent_hint.clone();
        if let Some(role) = role {
            self.link_starts(key, conn_id, role, ends, hint.as_ref());
        }
        if let Some(read) = read_for {
            // Before `emit`, which lets go of a request whose response just completed.
            self.linker.on_read(header.tgid, header.tid, read);
        }
        if opaque_call {
            let conn = (key, conn_id);
            self.follow_opaque_call(conn, header.tid, egress, opaque_hint.as_ref());
        }
        self.emit(key, conn_id, local, remote, ends);
        if stop_capturing {
            self.stop_capturing(key, conn_id);
        }
    }

    /// Follows a call its process made on a connection loupe does not parse: the read
    /// of its answer tells which request the thread's next calls belong to.
    fn follow_opaque_call(
        &mut self,
        conn: (ConnKey, u64),
        tid: u32,
        egress: bool,
        hint: Option<&linking::NodeRef>,
    ) {
        if let Some(answer) = self.linker.on_opaque_call(conn, tid, egress, hint)
            && answer.first_read
        {
            if answer.request.is_some() {
                self.metrics.opaque_answers_followed.inc();
            }
            if answer.by_order {
                self.metrics.opaque_answers_by_order.inc();
            }
        }
        self.mark_event_loops();
    }

    /// Has the probes report the calls of processes the linker found to be event loops
    /// on connections they stopped capturing.
    fn mark_event_loops(&mut self) {
        let Some(found) = self.linker.take_event_loops() else {
            return;
        };
        for tgid in found {
            if self.event_loops.mark(tgid) {
                log::info!(
                    "process {tgid}: serves several requests on one thread and calls out \
                     on connections loupe does not parse; loupe follows those calls"
                );
            }
        }
    }

    /// Has the probes stop capturing a connection that carries no more HTTP/1.x. The
    /// kernel sends nothing more of its bytes, only its close, which ends it here, and,
    /// for an event loop's calls, records without bytes; what was already on its way is
    /// counted as unparsed.
    fn stop_capturing(&mut self, key: ConnKey, conn_id: u64) {
        // Each fd of the socket is its own connection to the probes. When the selector's
        // thread is behind, the next chunk asks again.
        let notices = &self.notices;
        let asked = std::iter::once((key, conn_id))
            .chain(self.connections.aliases_of(&key).iter().copied())
            .all(|(key, conn_id)| notices.try_send(Notice::NotHttp { key, conn_id }).is_ok());
        if asked && let Some(conn) = self.connections.get_mut(&key) {
            conn.give_up();
        }
    }

    /// Gives every request whose head was just seen its place in a trace.
    fn link_starts(
        &mut self,
        key: ConnKey,
        conn_id: u64,
        role: Role,
        peers: Option<Ends>,
        hint: Option<&linking::NodeRef>,
    ) {
        // Taken and put back drained, keeping its capacity for the next request.
        let mut starts = std::mem::take(&mut self.starts);
        for start in starts.drain(..) {
            let request_key = RequestKey {
                tgid: key.tgid,
                fd: key.fd,
                conn_id,
                request_id: start.request_id,
            };
            let header = extract(&start.headers);
            match role {
                Role::Server => {
                    // Only a client loupe traces can adopt this span later; its connection
                    // is known by now (its open record precedes its first write). For
                    // other peers nothing is queued, which keeps the linker's peer queues
                    // to the traffic between traced processes.
                    let traced_peer =
                        peers.filter(|ends| self.connections.has_ends(ends.mirrored()));
                    self.linker.server_start(
                        request_key,
                        start.tid,
                        start.end_ns,
                        traced_peer,
                        header,
                        self.injected.server_ids(key),
                    );
                    self.mark_event_loops();
                }
                Role::Client => {
                    let (_, placement) = self.linker.client_start(
                        request_key,
                        start.tid,
                        start.start_ns,
                        peers,
                        header,
                        self.injected.client_ids(key.tgid, start.tid),
                        hint,
                    );
                    match placement {
                        ClientPlacement::Unplaced => self.metrics.client_spans_unplaced.inc(),
                        ClientPlacement::Guessed => self.metrics.client_spans_guessed.inc(),
                        ClientPlacement::LinkedToServer => {
                            self.metrics.client_spans_linked_to_server.inc()
                        }
                        _ => {}
                    }
                }
            }
        }
        self.starts = starts;
    }

    fn finish_connection(&mut self, key: ConnKey, mut conn: Connection, ts_ns: u64) {
        self.metrics.bytes_unparsed.add(conn.held_len());
        self.linker.forget_connection(&key);
        let ends = conn.ends();
        if let connections::ProtocolState::Http1(session) = &mut conn.protocol {
            session.on_close(ts_ns, &mut self.exchanges);
            session.append_started(&mut self.starts);
            let role = session.role();
            let hint = conn.parent_hint.clone();
            self.link_starts(key, conn.conn_id, role, ends, hint.as_ref());
            let stats = session.take_stats();
            self.metrics.parse_errors.add(stats.parse_errors);
            self.metrics.bytes_unparsed.add(stats.unparsed_bytes);
            self.metrics
                .exchanges_incomplete
                .add(stats.requests_without_response);
        }
        self.emit(key, conn.conn_id, conn.local, conn.remote, ends);
    }
}

impl EventSink for Pipeline {
    fn handle(&mut self, event: Event<'_>) {
        match event {
            Event::ConnOpen(open) => {
                let key = ConnKey {
                    tgid: open.tgid,
                    fd: open.fd,
                };
                let process = self.processes.get(open.tgid, Some(&open.comm));
                if open.role == loupe_common::role::CLIENT
                    && OTLP_PORTS.contains(&open.tuple.remote_port)
                {
                    process.sdk = true;
                }
                self.connections.forget_parked(&key);
                let mut conn = Connection::new(open.conn_id, Some(&open.tuple), open.ts_ns);
                if let Some(replaced) = self.connections.adopt_as_alias(key, &conn) {
                    if let Some(old) = replaced {
                        self.finish_connection(key, old, open.ts_ns);
                    }
                    return;
                }
                match open.role {
                    loupe_common::role::CLIENT => {
                        conn.parent_hint = self.linker.serving(open.tgid, open.tid);
                        conn.dialed = Some(true);
                    }
                    loupe_common::role::SERVER => conn.dialed = Some(false),
                    _ => {}
                }
                self.open(key, conn);
            }
            Event::Data { header, payload } => {
                let key = ConnKey {
                    tgid: header.tgid,
                    fd: header.fd,
                };
                self.on_data(key, &header, payload);
            }
            Event::ConnClose(close) => {
                let key = ConnKey {
                    tgid: close.tgid,
                    fd: close.fd,
                };
                if let Some((key, conn)) = self.connections.close(&key) {
                    self.finish_connection(key, conn, close.ts_ns);
                }
            }
            Event::ProcessExec(exec) => {
                // The program changed, and with it possibly the service name.
                let had_connections = self.processes.forget(exec.tgid);
                self.linker.forget_program(exec.tgid);
                self.event_loops.forget(exec.tgid);
                self.whole_responses.forget(exec.tgid);
                let notice = Notice::Exec(ExecNotice {
                    tgid: exec.tgid,
                    at_ns: exec.ts_ns,
                    had_connections,
                });
                // Only the selector's thread can drop the old program's connection
                // entries, which nothing else would: that notice waits for room. Others
                // have the /proc scan as a backstop.
                let _ = if had_connections {
                    self.notices.send(notice).map_err(|_| ())
                } else {
                    self.notices.try_send(notice).map_err(|_| ())
                };
            }
            Event::ServerContext(ctx) => self.injected.on_server(&ctx),
            Event::ClientContext(ctx) => self.injected.on_client(&ctx),
        }
    }

    fn drained(&mut self, holding: bool) {
        self.release_awaiting_client();
        // While the reader holds back for the queue, a partial outbox the queue has no room
        // for waits with the records still in the ring.
        if !holding || self.exporter.has_room(self.outbox.len()) {
            self.flush_outbox();
        } else {
            self.report_created();
        }
    }

    fn has_room(&self) -> bool {
        // Room for what waits in the outbox and the next span.
        self.exporter.has_room(self.outbox.len() + 1)
    }

    fn read_empty(&mut self, at_ns: u64) {
        self.read_empty_ns = self.read_empty_ns.max(at_ns);
    }

    fn tick(&mut self) {
        if !self.awaiting_client.is_empty() {
            // With no records coming, the reader's empty reads still end waits.
            self.release_awaiting_client();
            // A reader holding back for the queue flushes once it has room.
            if self.exporter.has_room(self.outbox.len()) {
                self.flush_outbox();
            }
        }
        if self.last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            self.housekeeping();
            self.last_housekeeping = Instant::now();
            // Housekeeping finishes idle connections and releases tail decisions.
            self.flush_outbox();
        }
    }

    fn finish(&mut self) {
        self.housekeeping();
        self.release_all_awaiting_client();
        // Finished spans waiting for a tail decision are decided now, not lost.
        if let Some(released) = self.tail_sampler.as_mut().map(TailSampler::flush) {
            self.release(released);
        }
        self.flush_outbox();
    }
}
