use std::time::Duration;

use super::*;
use crate::export::{
    config::{Compression, OtlpConfig, Protocol},
    otlp::test_receiver::{Answer, RefusingAddr, TestReceiver},
    testutil::{batch, resource},
};

const FAST_RETRY: RetryPolicy = RetryPolicy {
    initial_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(40),
};

fn otlp_config(endpoint: String, protocol: Protocol, batch: BatchConfig) -> ExportConfig {
    ExportConfig {
        exporter: ExporterConfig::Otlp(OtlpConfig {
            endpoint: endpoint.parse().unwrap(),
            protocol,
            headers: Vec::new(),
            timeout: Duration::from_secs(2),
            compression: Compression::Gzip,
            tls: Default::default(),
        }),
        batch,
    }
}

fn batching(delay_ms: u64, queue: usize, max_batch: usize) -> BatchConfig {
    BatchConfig {
        schedule_delay: Duration::from_millis(delay_ms),
        export_timeout: Duration::from_secs(5),
        max_queue_size: queue,
        max_export_batch_size: max_batch,
    }
}

/// The receiver records a request before the exporter has read its answer, so the export
/// counters are final only once `shutdown` has joined the worker; tests read them after it.
fn start(config: ExportConfig) -> (ExportHandle, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let handle = spawn_with(config, Arc::clone(&metrics), FAST_RETRY, tokio::io::sink()).unwrap();
    (handle, metrics)
}

/// An exporter sending to `receiver` over `protocol`.
fn start_to(
    receiver: &TestReceiver,
    protocol: Protocol,
    batch: BatchConfig,
) -> (ExportHandle, Arc<Metrics>) {
    let endpoint = match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::HttpProtobuf => receiver.http_url(),
    };
    start(otlp_config(endpoint, protocol, batch))
}

/// An exporter sending over gRPC to a port that refuses connections, which it must hold
/// for as long as the exporter runs.
fn start_to_dead_collector(batch: BatchConfig) -> (ExportHandle, Arc<Metrics>, RefusingAddr) {
    let dead = RefusingAddr::new();
    let (handle, metrics) = start(otlp_config(
        format!("http://{}", dead.addr),
        Protocol::Grpc,
        batch,
    ));
    (handle, metrics, dead)
}

#[tokio::test]
async fn a_full_batch_is_sent_without_waiting_for_the_timer() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 100, 3));
    for span in batch(&resource("svc"), 3) {
        handle.submit(span);
    }
    assert!(receiver.wait_for_spans(3, Duration::from_secs(3)).await);
    assert_eq!(receiver.received().len(), 1, "one request for the batch");
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(metrics.spans_exported.get(), 3);
    assert_eq!(metrics.export_queue_spans.get(), 0);
}

#[tokio::test]
async fn a_parked_worker_wakes_for_a_full_batch() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 100, 3));
    // The worker runs and parks with nothing queued.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans = batch(&resource("svc"), 3);
    handle.submit(spans[0].clone());
    handle.submit(spans[1].clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.span_count(), 0, "two spans are not a batch yet");
    handle.submit(spans[2].clone());
    assert!(receiver.wait_for_spans(3, Duration::from_secs(3)).await);
    assert_eq!(receiver.received().len(), 1, "one request for the batch");
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(metrics.spans_exported.get(), 3);
}

#[tokio::test]
async fn the_timer_sends_partial_batches() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::Grpc, batching(100, 100, 50));
    let spans = batch(&resource("svc"), 2);
    handle.submit(spans[0].clone());
    assert!(receiver.wait_for_spans(1, Duration::from_secs(3)).await);
    handle.sender().submit(spans[1].clone());
    assert!(receiver.wait_for_spans(2, Duration::from_secs(3)).await);
    assert_eq!(receiver.received().len(), 2);
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(metrics.spans_exported.get(), 2);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 4, 4));
    // The current-thread runtime cannot run the worker until this test yields, so the
    // queue holds exactly its capacity.
    for span in batch(&resource("svc"), 10) {
        handle.submit(span);
    }
    assert_eq!(metrics.spans_dropped.get(), 6);
    let report = handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.flushed, 4);
    assert_eq!(receiver.span_count(), 4);
    assert_eq!(metrics.spans_exported.get(), 4);
    assert_eq!(metrics.spans_dropped.get(), 6);
}

/// The span ids of every span the receiver got, request by request.
fn ids_by_request(receiver: &TestReceiver) -> Vec<Vec<u64>> {
    receiver
        .received()
        .iter()
        .map(|r| {
            r.request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| u64::from_be_bytes(s.span_id.as_slice().try_into().unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_chunk_larger_than_a_batch_goes_out_in_batches_of_the_maximum() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(100, 100, 4));
    handle.sender().submit_all(batch(&resource("svc"), 10));
    assert!(receiver.wait_for_spans(10, Duration::from_secs(3)).await);
    handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        ids_by_request(&receiver),
        vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]],
        "every request holds at most max_export_batch_size spans, in submission order"
    );
    assert_eq!(metrics.spans_exported.get(), 10);
    assert_eq!(metrics.spans_dropped.get(), 0);
    assert_eq!(metrics.export_queue_spans.get(), 0);
}

#[tokio::test]
async fn a_chunk_beyond_the_room_left_keeps_its_first_spans_and_counts_the_rest() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 6, 100));
    let spans = batch(&resource("svc"), 9);
    // The worker cannot run before this test yields: the queue fills to its capacity.
    handle.sender().submit_all(spans[..4].to_vec());
    handle.sender().submit_all(spans[4..].to_vec());
    assert_eq!(metrics.spans_dropped.get(), 3);
    assert_eq!(metrics.export_queue_spans.get(), 6);
    let report = handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.flushed, 6);
    assert_eq!(ids_by_request(&receiver).concat(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(metrics.spans_dropped.get(), 3);
}

#[tokio::test]
async fn spans_left_in_a_partly_taken_chunk_still_count_against_the_queue() {
    // The first batch stays in flight, retried, for the whole test.
    let (handle, metrics, _dead) = start_to_dead_collector(batching(60_000, 6, 4));
    let sender = handle.sender();
    sender.submit_all(batch(&resource("svc"), 6));
    // The worker takes the chunk: 4 spans into the batch in flight, 2 left waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sender.has_room(4) && !sender.has_room(5));
    sender.submit_all(batch(&resource("svc"), 10));
    assert_eq!(metrics.spans_dropped.get(), 6, "room for 4 of 10");
    handle.shutdown(Duration::from_millis(200)).await;
    assert_eq!(
        metrics.spans_dropped.get() + metrics.spans_exported.get(),
        16,
        "every span offered is delivered or counted"
    );
}

#[tokio::test]
async fn chunks_wake_a_parked_worker_once_a_batch_is_waiting() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 100, 5));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans = batch(&resource("svc"), 7);
    handle.sender().submit_all(spans[..3].to_vec());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.span_count(), 0, "three spans are not a batch yet");
    // This chunk passes the mark: one batch of 5 goes, 2 wait for the timer.
    handle.sender().submit_all(spans[3..].to_vec());
    assert!(receiver.wait_for_spans(5, Duration::from_secs(3)).await);
    assert_eq!(ids_by_request(&receiver), vec![vec![1, 2, 3, 4, 5]]);
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.flushed, 2, "the rest goes with the shutdown flush");
    assert_eq!(metrics.spans_exported.get(), 7);
}

#[tokio::test]
async fn shutdown_flushes_everything_queued() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = TestReceiver::start().await;
        // A long timer: only the shutdown can send these.
        let (handle, metrics) = start_to(&receiver, protocol, batching(60_000, 100, 4));
        for span in batch(&resource("svc"), 10) {
            handle.submit(span);
        }
        let report = handle.shutdown(Duration::from_secs(3)).await;
        assert_eq!(
            report,
            ShutdownReport {
                flushed: 10,
                dropped: 0,
                timed_out: false
            },
            "{protocol}"
        );
        assert_eq!(receiver.span_count(), 10, "{protocol}");
        assert_eq!(metrics.spans_exported.get(), 10, "{protocol}");
        assert_eq!(metrics.export_queue_spans.get(), 0, "{protocol}");
    }
}

#[tokio::test]
async fn shutdown_with_a_dead_collector_ends_on_time_and_counts_the_loss() {
    let (handle, metrics, _dead) = start_to_dead_collector(batching(60_000, 100, 4));
    for span in batch(&resource("svc"), 10) {
        handle.submit(span);
    }
    let started = Instant::now();
    let report = handle.shutdown(Duration::from_millis(500)).await;
    let elapsed = started.elapsed();
    // The flush gives up at the deadline instead of retrying for the 5 s export timeout.
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(report.flushed, 0);
    assert_eq!(report.dropped, 10);
    assert!(!report.timed_out);
    assert_eq!(metrics.spans_dropped.get(), 10);
    assert_eq!(metrics.spans_exported.get(), 0);
    assert!(metrics.export_failures.get() >= 1);
    assert_eq!(metrics.export_queue_spans.get(), 0);
}

#[tokio::test]
async fn the_queue_keeps_working_after_a_collector_outage() {
    let receiver = TestReceiver::start().await;
    let down = Answer::Unavailable { retry_after: None };
    receiver.script(&[down; 3]);
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(50, 100, 2));
    for span in batch(&resource("svc"), 6) {
        handle.submit(span);
    }
    assert!(receiver.wait_for_spans(6, Duration::from_secs(5)).await);
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
    assert_eq!(metrics.export_failures.get(), 3);
    assert_eq!(metrics.spans_exported.get(), 6);
    assert_eq!(metrics.spans_dropped.get(), 0);
}

#[tokio::test]
async fn none_exporter_accepts_and_discards() {
    let config = ExportConfig {
        exporter: ExporterConfig::None,
        batch: BatchConfig::default(),
    };
    let (handle, metrics) = start(config);
    for span in batch(&resource("svc"), 3) {
        handle.submit(span);
    }
    assert_eq!(
        handle.shutdown(Duration::from_secs(1)).await,
        ShutdownReport::default()
    );
    assert_eq!(metrics.spans_exported.get(), 0);
    assert_eq!(metrics.spans_dropped.get(), 0);
    assert_eq!(metrics.export_queue_spans.get(), 0);
}

#[test]
fn spawning_outside_a_runtime_is_an_error() {
    let config = ExportConfig {
        exporter: ExporterConfig::Console,
        batch: BatchConfig::default(),
    };
    assert!(matches!(
        spawn(config, Arc::new(Metrics::default())),
        Err(ExportStartError::NoRuntime)
    ));
}

#[tokio::test]
async fn spans_sent_after_shutdown_are_counted_as_dropped() {
    let receiver = TestReceiver::start().await;
    let (handle, metrics) = start_to(&receiver, Protocol::HttpProtobuf, batching(60_000, 100, 10));
    let late = handle.sender();
    handle.shutdown(Duration::from_secs(1)).await;
    for span in batch(&resource("svc"), 2) {
        late.submit(span);
    }
    assert_eq!(metrics.spans_dropped.get(), 2);
    assert_eq!(metrics.export_queue_spans.get(), 0);
}
