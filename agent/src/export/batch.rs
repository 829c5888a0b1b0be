//! The export queue: spans go in without ever blocking the pipeline, and a task on the tokio
//! runtime sends them on in batches.
//!
//! The pipeline hands spans over in chunks (everything one read of the ring buffer
//! produced), not one by one: a channel operation, a counter update and a wakeup check
//! per span were a tenth of the agent's CPU at steady rates.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::AsyncWrite,
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep_until, timeout_at},
};

use super::{
    config::{BatchConfig, ExportConfig, ExporterConfig},
    console,
    otlp::{OtlpExporter, OtlpStartError, retry::RetryPolicy},
};
use crate::{span::FinishedSpan, telemetry::metrics::Metrics};

/// Time the shutdown waits past its deadline for the worker to notice and return, before
/// abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ExportStartError {
    #[error("the export stage must be started inside a tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Otlp(#[from] OtlpStartError),
}

/// Feeds spans to the export worker. Cheap to clone; `submit` never blocks.
#[derive(Clone)]
pub struct SpanSender {
    /// `None` for the `none` exporter: spans are discarded on arrival.
    tx: Option<mpsc::UnboundedSender<Vec<FinishedSpan>>>,
    queue: Arc<Queue>,
}

/// Counts shared by the senders and the worker.
pub(super) struct Queue {
    /// Spans accepted and not yet delivered or dropped.
    pending: AtomicU64,
    /// Spans in the channel or in the worker's partly taken chunk, not yet in a batch: what
    /// `capacity` bounds (the channel itself is unbounded and carries chunks).
    queued: AtomicU64,
    /// The most spans `queued` may hold: `max_queue_size`.
    capacity: u64,
    /// Spans in the channel at which a sender wakes the worker: one export batch.
    batch_size: usize,
    /// Wakes the worker when a batch is waiting. The worker never waits on the channel
    /// itself: a receiver parked there is woken by every span sent, which at steady rates
    /// costs a thread wakeup per span.
    batch_ready: Notify,
    metrics: Arc<Metrics>,
}

impl Queue {
    fn new(capacity: usize, batch_size: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            capacity: capacity as u64,
            batch_size,
            batch_ready: Notify::new(),
            metrics,
        })
    }

    /// `n` spans left the queue: delivered, printed or dropped.
    pub(super) fn resolved(&self, n: u64) {
        let before = self.pending.fetch_sub(n, Ordering::Relaxed);
        self.metrics
            .export_queue_spans
            .set(before.saturating_sub(n));
    }

    pub(super) fn delivered(&self, n: u64) {
        self.metrics.spans_exported.add(n);
        self.resolved(n);
    }

    pub(super) fn dropped(&self, n: u64) {
        self.metrics.spans_dropped.add(n);
        self.resolved(n);
    }

    /// The worker moved `n` spans into a batch (the console worker: took them).
    pub(super) fn taken(&self, n: usize) {
        self.queued.fetch_sub(n as u64, Ordering::Relaxed);
    }

    pub(super) fn refresh_gauge(&self) {
        self.metrics
            .export_queue_spans
            .set(self.pending.load(Ordering::Relaxed));
    }
}

impl SpanSender {
    /// Queues a span for export; when the queue is full the span is counted as dropped.
    /// The pipeline sends chunks (`submit_all`): one span per call costs a channel
    /// operation per span.
    #[cfg(test)]
    pub fn submit(&self, span: FinishedSpan) {
        self.submit_all(vec![span]);
    }

    /// Whether the queue can take `n` more spans now. Always true for the `none` exporter.
    pub fn has_room(&self, n: usize) -> bool {
        self.tx.is_none()
            || self.queue.queued.load(Ordering::Relaxed) + n as u64 <= self.queue.capacity
    }

    /// Queues spans for export, in order; those the queue has no room for (the last
    /// ones) are counted as dropped.
    pub fn submit_all(&self, mut spans: Vec<FinishedSpan>) {
        let Some(tx) = &self.tx else {
            return;
        };
        let queue = &self.queue;
        let offered = spans.len() as u64;
        if offered == 0 {
            return;
        }
        // Room is claimed before sending, so the worker never takes more than was counted.
        let before = queue.queued.fetch_add(offered, Ordering::Relaxed);
        let accepted = offered.min(queue.capacity.saturating_sub(before));
        if accepted < offered {
            queue
                .queued
                .fetch_sub(offered - accepted, Ordering::Relaxed);
            queue.metrics.spans_dropped.add(offered - accepted);
            spans.truncate(accepted as usize);
            if accepted == 0 {
                return;
            }
        }
        queue.pending.fetch_add(accepted, Ordering::Relaxed);
        if tx.send(spans).is_err() {
            // The worker is gone (after shutdown).
            queue.queued.fetch_sub(accepted, Ordering::Relaxed);
            queue.dropped(accepted);
            return;
        }
        queue.refresh_gauge();
        let mark = queue.batch_size as u64;
        if before < mark && before + accepted >= mark {
            // While the worker is parked the channel only grows, so it passes this mark
            // once per batch.
            queue.batch_ready.notify_one();
        }
    }
}

/// A queue with no worker behind it: whoever holds it takes the spans in batches, as the
/// OTLP worker does (the replay in `pipeline::replay`, which encodes them itself).
pub struct DetachedQueue {
    rx: mpsc::UnboundedReceiver<Vec<FinishedSpan>>,
    leftover: Vec<FinishedSpan>,
    queue: Arc<Queue>,
}

impl DetachedQueue {
    /// A sender and the queue it feeds, holding at most `capacity` spans, taken in
    /// batches of `batch_size`.
    pub fn new(capacity: usize, batch_size: usize, metrics: Arc<Metrics>) -> (SpanSender, Self) {
        let queue = Queue::new(capacity, batch_size, metrics);
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = SpanSender {
            tx: Some(tx),
            queue: Arc::clone(&queue),
        };
        let detached = Self {
            rx,
            leftover: Vec::new(),
            queue,
        };
        (sender, detached)
    }

    /// Moves queued spans into `batch` until it holds `max`, without waiting.
    pub fn fill(&mut self, batch: &mut Vec<FinishedSpan>, max: usize) {
        take_waiting(&mut self.rx, &mut self.leftover, &self.queue, batch, max);
    }

    /// `n` spans taken by `fill` were delivered.
    pub fn delivered(&self, n: usize) {
        self.queue.delivered(n as u64);
    }
}

/// What the shutdown flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Spans delivered (or printed) during the flush.
    pub flushed: u64,
    /// Spans given up during the flush, also counted in `spans_dropped`.
    pub dropped: u64,
    /// True when the worker did not finish in time and was abandoned.
    pub timed_out: bool,
}

/// The running export stage.
pub struct ExportHandle {
    sender: SpanSender,
    shutdown_tx: watch::Sender<Option<Instant>>,
    worker: Option<JoinHandle<ShutdownReport>>,
}

impl ExportHandle {
    #[cfg(test)]
    pub fn submit(&self, span: FinishedSpan) {
        self.sender.submit(span);
    }

    /// A sender for other tasks or threads.
    pub fn sender(&self) -> SpanSender {
        self.sender.clone()
    }

    /// Stops accepting spans and flushes what is queued, giving up at `deadline` from now;
    /// spans not delivered by then are counted as dropped.
    pub fn shutdown(self, deadline: Duration) -> impl Future<Output = ShutdownReport> + Send {
        let at = Instant::now() + deadline;
        self.shutdown_tx.send_replace(Some(at));
        let queue = Arc::clone(&self.sender.queue);
        let worker = self.worker;
        async move {
            let Some(mut worker) = worker else {
                return ShutdownReport::default();
            };
            match timeout_at(at + SHUTDOWN_GRACE, &mut worker).await {
                Ok(Ok(report)) => report,
                Ok(Err(join_error)) => {
                    log::error!("export worker failed: {join_error}");
                    abandon(&queue, false)
                }
                Err(_) => {
                    worker.abort();
                    log::warn!("export flush did not finish in time");
                    abandon(&queue, true)
                }
            }
        }
    }
}

/// Counts everything still pending as dropped, for a worker that can no longer do it.
fn abandon(queue: &Queue, timed_out: bool) -> ShutdownReport {
    let lost = queue.pending.swap(0, Ordering::Relaxed);
    queue.metrics.spans_dropped.add(lost);
    queue.metrics.export_queue_spans.set(0);
    ShutdownReport {
        flushed: 0,
        dropped: lost,
        timed_out,
    }
}

/// Starts the exporter the configuration names. Must be called inside a tokio runtime.
pub fn spawn(
    config: ExportConfig,
    metrics: Arc<Metrics>,
) -> Result<ExportHandle, ExportStartError> {
    spawn_with(config, metrics, RetryPolicy::default(), tokio::io::stdout())
}

/// `spawn` with the retry policy and console output chosen by the caller (tests).
pub(crate) fn spawn_with<W>(
    config: ExportConfig,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    console_out: W,
) -> Result<ExportHandle, ExportStartError>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportStartError::NoRuntime)?;
    let queue = Queue::new(
        config.batch.max_queue_size,
        config.batch.max_export_batch_size,
        Arc::clone(&metrics),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let (tx, worker) = match config.exporter {
        ExporterConfig::None => (None, None),
        ExporterConfig::Otlp(otlp) => {
            let exporter = {
                let _guard = runtime.enter();
                OtlpExporter::new(&otlp, retry, metrics)?
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = OtlpWorker {
                rx,
                leftover: Vec::new(),
                exporter,
                batch: config.batch,
                shutdown: shutdown_rx,
                queue: Arc::clone(&queue),
            };
            (Some(tx), Some(runtime.spawn(worker.run())))
        }
        ExporterConfig::Console => {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker =
                console::ConsoleWorker::new(rx, console_out, shutdown_rx, Arc::clone(&queue));
            (Some(tx), Some(runtime.spawn(worker.run())))
        }
    };
    Ok(ExportHandle {
        sender: SpanSender { tx, queue },
        shutdown_tx,
        worker,
    })
}

struct OtlpWorker {
    rx: mpsc::UnboundedReceiver<Vec<FinishedSpan>>,
    /// Spans of the last chunk taken from the channel that did not fit in the batch,
    /// oldest first.
    leftover: Vec<FinishedSpan>,
    exporter: OtlpExporter,
    batch: BatchConfig,
    shutdown: watch::Receiver<Option<Instant>>,
    queue: Arc<Queue>,
}

impl OtlpWorker {
    async fn run(mut self) -> ShutdownReport {
        let max = self.batch.max_export_batch_size;
        let mut batch: Vec<FinishedSpan> = Vec::with_capacity(max);
        let mut next_export = Instant::now() + self.batch.schedule_delay;
        loop {
            // A shutdown (or a dropped handle) first: what is queued then goes through the
            // flush, which keeps to the shutdown's deadline.
            if self.shutdown.has_changed().unwrap_or(true) {
                break;
            }
            self.take_waiting(&mut batch, max);
            if batch.len() >= max {
                self.export(&mut batch).await;
                next_export = Instant::now() + self.batch.schedule_delay;
                continue;
            }
            // Every sender gone (the pipeline stopped) and nothing left: as a shutdown.
            if self.rx.is_closed() && self.rx.is_empty() && self.leftover.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                // A dropped handle (`Err`) stops the worker like a shutdown does.
                _ = self.shutdown.changed() => break,
                () = self.queue.batch_ready.notified() => {}
                () = sleep_until(next_export) => {
                    self.take_waiting(&mut batch, max);
                    self.export(&mut batch).await;
                    next_export = Instant::now() + self.batch.schedule_delay;
                }
            }
        }
        self.flush(batch).await
    }

    fn take_waiting(&mut self, batch: &mut Vec<FinishedSpan>, max: usize) {
        take_waiting(&mut self.rx, &mut self.leftover, &self.queue, batch, max);
    }

    async fn export(&mut self, batch: &mut Vec<FinishedSpan>) -> (u64, u64) {
        if batch.is_empty() {
            return (0, 0);
        }
        let deadline = Instant::now() + self.batch.export_timeout;
        let outcome = self
            .exporter
            .export(batch, deadline, self.shutdown.clone())
            .await;
        self.queue.resolved(batch.len() as u64);
        batch.clear();
        (outcome.exported, outcome.dropped)
    }

    /// Sends what is left, in batches, until the shutdown deadline.
    async fn flush(mut self, mut batch: Vec<FinishedSpan>) -> ShutdownReport {
        self.rx.close();
        let mut report = ShutdownReport::default();
        loop {
            self.take_waiting(&mut batch, self.batch.max_export_batch_size);
            if batch.is_empty() {
                break;
            }
            // Past the deadline `export` fails fast and counts the batch as dropped.
            let (exported, dropped) = self.export(&mut batch).await;
            report.flushed += exported;
            report.dropped += dropped;
        }
        report
    }
}

/// Moves queued spans into `batch` until it holds `max`, without waiting. `leftover` holds
/// the spans of the last chunk taken from `rx` that did not fit, oldest first.
fn take_waiting(
    rx: &mut mpsc::UnboundedReceiver<Vec<FinishedSpan>>,
    leftover: &mut Vec<FinishedSpan>,
    queue: &Queue,
    batch: &mut Vec<FinishedSpan>,
    max: usize,
) {
    let before = batch.len();
    while batch.len() < max {
        if leftover.is_empty() {
            match rx.try_recv() {
                Ok(chunk) => *leftover = chunk,
                Err(_) => break,
            }
        }
        // Spans left over still count against the queue's capacity.
        let moved = leftover.len().min(max - batch.len());
        batch.extend(leftover.drain(..moved));
        queue.taken(moved);
    }
    if batch.len() > before {
        queue.refresh_gauge();
    }
}

#[cfg(test)]
mod tests;
