//! The userspace pipeline, run on the ring-buffer reader thread:
//! event -> connection table -> HTTP/1 session -> span assembly -> exporter.

mod assemble;
pub mod connections;

use std::{
    collections::HashMap,
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
    probes::{CounterMap, maps::read_counters},
    process::resource::ResourceDefaults,
    protocol::{
        Chunk, Direction,
        http1::{Http1Limits, Http1Session, HttpExchange},
    },
    span::{FinishedSpan, Resource, route::RouteMatcher},
    telemetry::metrics::Metrics,
};

use assemble::SpanAssembler;
use connections::{Connection, ConnectionTable};

/// A connection with no traffic for this long is forgotten (its session flushed).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

pub struct PipelineConfig {
    pub max_connections: usize,
    pub limits: Http1Limits,
    pub routes: RouteMatcher,
}

pub struct Pipeline {
    connections: ConnectionTable,
    limits: Http1Limits,
    assembler: SpanAssembler,
    resources: HashMap<u32, Arc<Resource>>,
    resource_defaults: ResourceDefaults,
    exporter: SpanSender,
    metrics: Arc<Metrics>,
    counters: CounterMap,
    execs: SyncSender<u32>,
    exchanges: Vec<HttpExchange>,
    last_housekeeping: Instant,
}

impl Pipeline {
    pub fn new(
        config: PipelineConfig,
        resource_defaults: ResourceDefaults,
        exporter: SpanSender,
        metrics: Arc<Metrics>,
        counters: CounterMap,
        execs: SyncSender<u32>,
    ) -> Self {
        Self {
            connections: ConnectionTable::new(config.max_connections),
            limits: config.limits,
            assembler: SpanAssembler::new(config.routes, Clock::measure()),
            resources: HashMap::new(),
            resource_defaults,
            exporter,
            metrics,
            counters,
            execs,
            exchanges: Vec::new(),
            last_housekeeping: Instant::now(),
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
        let known = self
            .connections
            .get_mut(&key)
            .is_some_and(|c| c.conn_id == header.conn_id);
        if !known {
            // The open record was lost (ring buffer full) or the fd was reused without a
            // close we saw: start over with what this record tells.
            self.open(key, Connection::new(header.conn_id, None, header.end_ns));
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            self.metrics.bytes_unparsed.add(header.total_len);
            return;
        };
        conn.last_activity_ns = header.end_ns;
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
        let limits = self.limits;
        match conn.session_for(&chunk, |role| Http1Session::new(role, limits)) {
            Some(session) => {
                session.on_chunk(&chunk, &mut self.exchanges);
                let stats = session.take_stats();
                self.metrics.parse_errors.add(stats.parse_errors);
                self.metrics.bytes_unparsed.add(stats.unparsed_bytes);
                self.metrics
                    .exchanges_incomplete
                    .add(stats.requests_without_response);
            }
            None => self.metrics.bytes_unparsed.add(header.total_len),
        }
        let (local, remote) = (conn.local, conn.remote);
        self.emit(key.tgid, local, remote);
    }

    fn finish_connection(&mut self, key: ConnKey, mut conn: Connection, ts_ns: u64) {
        if let connections::ProtocolState::Http1(session) = &mut conn.protocol {
            session.on_close(ts_ns, &mut self.exchanges);
            let stats = session.take_stats();
            self.metrics.parse_errors.add(stats.parse_errors);
            self.metrics.bytes_unparsed.add(stats.unparsed_bytes);
            self.metrics
                .exchanges_incomplete
                .add(stats.requests_without_response);
        }
        self.emit(key.tgid, conn.local, conn.remote);
    }

    /// Turns pending exchanges into spans and hands them to the exporter.
    fn emit(
        &mut self,
        tgid: u32,
        local: Option<std::net::SocketAddr>,
        remote: Option<std::net::SocketAddr>,
    ) {
        if self.exchanges.is_empty() {
            return;
        }
        let resource = self.resource(tgid, None);
        for exchange in self.exchanges.drain(..) {
            let span = self.assembler.assemble(&exchange, local, remote);
            self.metrics.spans_created.inc();
            self.exporter.submit(FinishedSpan {
                resource: resource.clone(),
                span,
            });
        }
    }

    /// The resource of a process, read from /proc the first time the process shows up,
    /// while it is most likely still alive.
    fn resource(&mut self, tgid: u32, comm: Option<&[u8]>) -> Arc<Resource> {
        let defaults = &self.resource_defaults;
        self.resources
            .entry(tgid)
            .or_insert_with(|| {
                let comm = comm.map(|c| {
                    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                    String::from_utf8_lossy(&c[..end]).into_owned()
                });
                Arc::new(defaults.for_process(tgid, comm.as_deref()))
            })
            .clone()
    }

    fn housekeeping(&mut self) {
        let now = monotonic_now_ns();
        let idle_ns = IDLE_TIMEOUT.as_nanos() as u64;
        let dead: Vec<u32> = self
            .connections
            .tgids()
            .into_iter()
            .filter(|&tgid| !alive(tgid))
            .collect();
        let expired = self.connections.drain_where(|key, conn| {
            dead.contains(&key.tgid) || now.saturating_sub(conn.last_activity_ns) > idle_ns
        });
        for (key, conn) in expired {
            self.finish_connection(key, conn, now);
        }
        self.resources.retain(|tgid, _| alive(*tgid));
        self.metrics
            .connections_active
            .set(self.connections.len() as u64);

        let kernel = read_counters(&self.counters);
        self.metrics
            .ringbuf_drops
            .set(kernel[loupe_common::counter::RINGBUF_DROPS as usize]);
        self.metrics
            .kernel_pending_full
            .set(kernel[loupe_common::counter::PENDING_FULL as usize]);
        self.metrics
            .kernel_conn_table_full
            .set(kernel[loupe_common::counter::CONN_TABLE_FULL as usize]);
        self.metrics
            .kernel_read_failures
            .set(kernel[loupe_common::counter::READ_FAILURES as usize]);
        self.metrics.set_injection_counters(&kernel);
        self.assembler.set_clock(Clock::measure());
    }
}

fn alive(tgid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(tgid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl EventSink for Pipeline {
    fn handle(&mut self, event: Event<'_>) {
        match event {
            Event::ConnOpen(open) => {
                let key = ConnKey {
                    tgid: open.tgid,
                    fd: open.fd,
                };
                self.resource(open.tgid, Some(&open.comm));
                self.open(
                    key,
                    Connection::new(open.conn_id, Some(&open.tuple), open.ts_ns),
                );
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
                if let Some(conn) = self.connections.remove(&key) {
                    self.finish_connection(key, conn, close.ts_ns);
                }
            }
            Event::ProcessExec(exec) => {
                // The program changed, and with it possibly the service name.
                self.resources.remove(&exec.tgid);
                let _ = self.execs.try_send(exec.tgid);
            }
            Event::ServerContext(_) | Event::ClientContext(_) => {}
        }
    }

    fn tick(&mut self) {
        if self.last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            self.housekeeping();
            self.last_housekeeping = Instant::now();
        }
    }

    fn finish(&mut self) {
        self.housekeeping();
    }
}
