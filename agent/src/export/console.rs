//! The console exporter: whole traces printed to stdout as trees.
//!
//! Spans of one trace finish at different times and in different processes, so they are
//! held per trace and printed once the trace has been quiet for a moment.

pub mod tree;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior, interval, timeout_at},
};

use super::batch::{Queue, ShutdownReport};
use crate::span::{FinishedSpan, TraceId};

/// A trace with no new span for this long is considered complete.
pub const TRACE_IDLE: Duration = Duration::from_secs(1);
/// Spans held at most; past it the quietest traces are printed early.
pub const BUFFER_LIMIT: usize = 10_000;
const TICK: Duration = Duration::from_millis(250);
/// Chunks of spans taken from the queue per wakeup.
const RECEIVE_CHUNK: usize = 16;

struct PendingTrace {
    spans: Vec<FinishedSpan>,
    first_seen: Instant,
    last_seen: Instant,
}

/// Spans grouped per trace until the trace is ready to print.
pub struct TraceBuffer {
    traces: HashMap<TraceId, PendingTrace>,
    held: usize,
    limit: usize,
    idle: Duration,
}

/// A trace ready to print.
pub type ReadyTrace = (TraceId, Vec<FinishedSpan>);

impl TraceBuffer {
    pub fn new(limit: usize, idle: Duration) -> Self {
        Self {
            traces: HashMap::new(),
            held: 0,
            limit: limit.max(1),
            idle,
        }
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds a span; returns traces forced out because the buffer is full.
    pub fn push(&mut self, span: FinishedSpan, now: Instant) -> Vec<ReadyTrace> {
        let evicted = if self.held >= self.limit {
            // Print down to three quarters so that eviction is not paid on every span.
            self.evict_to(self.limit - self.limit / 4)
        } else {
            Vec::new()
        };
        let trace = self
            .traces
            .entry(span.span.trace_id)
            .or_insert_with(|| PendingTrace {
                spans: Vec::new(),
                first_seen: now,
                last_seen: now,
            });
        trace.spans.push(span);
        trace.last_seen = now;
        self.held += 1;
        evicted
    }

    /// Traces quiet for the idle time, oldest first.
    pub fn take_idle(&mut self, now: Instant) -> Vec<ReadyTrace> {
        let idle = self.idle;
        let ready: Vec<TraceId> = self
            .traces
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_seen) >= idle)
            .map(|(id, _)| *id)
            .collect();
        self.take(ready)
    }

    /// Every held trace, oldest first.
    pub fn take_all(&mut self) -> Vec<ReadyTrace> {
        let all: Vec<TraceId> = self.traces.keys().copied().collect();
        self.take(all)
    }

    fn evict_to(&mut self, target: usize) -> Vec<ReadyTrace> {
        let mut by_quiet: Vec<(Instant, TraceId, usize)> = self
            .traces
            .iter()
            .map(|(id, t)| (t.last_seen, *id, t.spans.len()))
            .collect();
        by_quiet.sort_by_key(|(last, _, _)| *last);
        let mut chosen = Vec::new();
        let mut remaining = self.held;
        for (_, id, len) in by_quiet {
            if remaining <= target {
                break;
            }
            remaining -= len;
            chosen.push(id);
        }
        self.take(chosen)
    }

    fn take(&mut self, ids: Vec<TraceId>) -> Vec<ReadyTrace> {
        let mut out: Vec<(Instant, ReadyTrace)> = ids
            .into_iter()
            .filter_map(|id| {
                let trace = self.traces.remove(&id)?;
                self.held -= trace.spans.len();
                Some((trace.first_seen, (id, trace.spans)))
            })
            .collect();
        out.sort_by_key(|(first, _)| *first);
        out.into_iter().map(|(_, t)| t).collect()
    }
}

pub(super) struct ConsoleWorker<W> {
    rx: mpsc::UnboundedReceiver<Vec<FinishedSpan>>,
    out: W,
    shutdown: watch::Receiver<Option<Instant>>,
    queue: Arc<Queue>,
    buffer: TraceBuffer,
}

impl<W: AsyncWrite + Unpin + Send> ConsoleWorker<W> {
    pub(super) fn new(
        rx: mpsc::UnboundedReceiver<Vec<FinishedSpan>>,
        out: W,
        shutdown: watch::Receiver<Option<Instant>>,
        queue: Arc<Queue>,
    ) -> Self {
        Self {
            rx,
            out,
            shutdown,
            queue,
            buffer: TraceBuffer::new(BUFFER_LIMIT, TRACE_IDLE),
        }
    }

    pub(super) async fn run(mut self) -> ShutdownReport {
        let mut ticker = interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut received = Vec::with_capacity(RECEIVE_CHUNK);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                n = self.rx.recv_many(&mut received, RECEIVE_CHUNK) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    let mut ready = Vec::new();
                    for chunk in received.drain(..) {
                        self.queue.taken(chunk.len());
                        for span in chunk {
                            ready.extend(self.buffer.push(span, now));
                        }
                    }
                    self.queue.refresh_gauge();
                    self.print(ready).await;
                }
                _ = ticker.tick() => {
                    let ready = self.buffer.take_idle(Instant::now());
                    self.print(ready).await;
                }
            }
        }
        self.flush().await
    }

    async fn flush(mut self) -> ShutdownReport {
        self.rx.close();
        while let Ok(chunk) = self.rx.try_recv() {
            self.queue.taken(chunk.len());
            for span in chunk {
                let ready = self.buffer.push(span, Instant::now());
                self.print(ready).await;
            }
        }
        let ready = self.buffer.take_all();
        let count = ready.iter().map(|(_, s)| s.len() as u64).sum();
        let deadline = *self.shutdown.borrow();
        let printed = match deadline {
            Some(at) => timeout_at(at, self.print(ready)).await.unwrap_or(0),
            None => self.print(ready).await,
        };
        if printed < count {
            self.queue.dropped(count - printed);
        }
        ShutdownReport {
            flushed: printed,
            dropped: count - printed,
            timed_out: false,
        }
    }

    /// Prints the traces; returns how many spans reached the output.
    async fn print(&mut self, traces: Vec<ReadyTrace>) -> u64 {
        if traces.is_empty() {
            return 0;
        }
        let mut text = String::new();
        let mut spans = 0u64;
        for (id, trace) in &traces {
            text.push_str(&tree::render_trace(id, trace));
            spans += trace.len() as u64;
        }
        let written = self.out.write_all(text.as_bytes()).await;
        let flushed = match written {
            Ok(()) => self.out.flush().await,
            Err(e) => Err(e),
        };
        match flushed {
            Ok(()) => {
                self.queue.delivered(spans);
                spans
            }
            Err(e) => {
                log::debug!("console exporter cannot write: {e}");
                self.queue.dropped(spans);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests;
