//! Metrics exporter to in-test receiver, over real sockets.

use std::{sync::Arc, time::Duration};

use hyper::http::{HeaderName, HeaderValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

use super::*;
use crate::{
    export::{
        config::{Compression, OtlpConfig, Protocol},
        otlp::test_receiver::{Answer, ReceivedMetrics, RefusingAddr, TestReceiver},
        testutil::{http_span, resource},
    },
    red::{self, Limits, RedRecorder},
    span::SpanKind,
};

const FAST_RETRY: RetryPolicy = RetryPolicy {
    initial_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(40),
};
const WAIT: Duration = Duration::from_secs(5);

fn config(
    receiver: &TestReceiver,
    protocol: Protocol,
    compression: Compression,
    interval: Duration,
) -> MetricsExportConfig {
    let endpoint = match protocol {
        Protocol::Grpc => receiver.grpc_metrics_endpoint(),
        Protocol::HttpProtobuf => receiver.http_metrics_url(),
    };
    MetricsExportConfig {
        exporter: MetricsExporter::Otlp(OtlpConfig {
            endpoint: endpoint.parse().unwrap(),
            protocol,
            headers: vec![(
                HeaderName::from_static("api-key"),
                HeaderValue::from_static("s3cret"),
            )],
            timeout: Duration::from_secs(2),
            compression,
            tls: Default::default(),
        }),
        interval,
        timeout: Duration::from_secs(3),
    }
}

fn setup() -> (RedRecorder, RedMetrics, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let (recorder, reader) = red::new(Limits::default(), Arc::clone(&metrics));
    (recorder, reader, metrics)
}

fn record(recorder: &RedRecorder, n: usize) {
    let shop = resource("shop");
    for _ in 0..n {
        let mut span = http_span(SpanKind::Server, Some(200));
        span.route = Some("/users/{id}".into());
        recorder.record(&shop, &span);
    }
}

/// The count of the one server data point a request carries.
fn server_count(received: &ReceivedMetrics) -> u64 {
    let rm = &received.request.resource_metrics;
    assert_eq!(rm.len(), 1);
    let metric = &rm[0].scope_metrics[0].metrics[0];
    assert_eq!(metric.name, "http.server.request.duration");
    match &metric.data {
        Some(Data::Histogram(h)) => h.data_points[0].count,
        other => panic!("not a histogram: {other:?}"),
    }
}

async fn round_trip(protocol: Protocol, compression: Compression) {
    let receiver = TestReceiver::start().await;
    let (recorder, reader, metrics) = setup();
    record(&recorder, 3);
    let handle = spawn_with(
        config(&receiver, protocol, compression, Duration::from_millis(50)),
        reader.clone(),
        Arc::clone(&metrics),
        FAST_RETRY,
    )
    .unwrap();
    assert!(receiver.wait_for_metrics(1, WAIT).await);
    let got = receiver.received_metrics()[0].clone();
    assert_eq!(got.grpc, protocol == Protocol::Grpc);
    assert_eq!(got.gzip, compression == Compression::Gzip);
    assert_eq!(
        got.headers.get("api-key").map(String::as_str),
        Some("s3cret")
    );
    if protocol == Protocol::HttpProtobuf {
        assert_eq!(got.path, "/v1/metrics");
    }
    // Lossless: what arrived is what the conversion built, at the time it was sent.
    let rm = &got.request.resource_metrics[0];
    let metric = &rm.scope_metrics[0].metrics[0];
    let Some(Data::Histogram(h)) = &metric.data else {
        panic!("not a histogram")
    };
    let expected = otlp::to_request(&reader.snapshot(), h.data_points[0].time_unix_nano);
    assert_eq!(got.request, expected);
    assert_eq!(server_count(&got), 3);
    handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(metrics.metric_export_failures.get(), 0);
    assert!(metrics.metric_points_exported.get() >= 1);
}

#[tokio::test]
async fn http_round_trip() {
    round_trip(Protocol::HttpProtobuf, Compression::None).await;
}

#[tokio::test]
async fn http_gzip_round_trip() {
    round_trip(Protocol::HttpProtobuf, Compression::Gzip).await;
}

#[tokio::test]
async fn grpc_round_trip() {
    round_trip(Protocol::Grpc, Compression::None).await;
}

#[tokio::test]
async fn grpc_gzip_round_trip() {
    round_trip(Protocol::Grpc, Compression::Gzip).await;
}

#[tokio::test]
async fn every_export_carries_the_cumulative_counts() {
    let receiver = TestReceiver::start().await;
    let (recorder, reader, metrics) = setup();
    record(&recorder, 2);
    let handle = spawn_with(
        config(
            &receiver,
            Protocol::HttpProtobuf,
            Compression::None,
            Duration::from_millis(50),
        ),
        reader,
        metrics,
        FAST_RETRY,
    )
    .unwrap();
    assert!(receiver.wait_for_metrics(1, WAIT).await);
    record(&recorder, 3);
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let received = receiver.received_metrics();
        if received.last().map(server_count) == Some(5) {
            // Start time stays put across exports: one cumulative stream.
            let start = |r: &ReceivedMetrics| match &r.request.resource_metrics[0].scope_metrics[0]
                .metrics[0]
                .data
            {
                Some(Data::Histogram(h)) => h.data_points[0].start_time_unix_nano,
                _ => 0,
            };
            assert_eq!(start(&received[0]), start(received.last().unwrap()));
            break;
        }
        assert!(tokio::time::Instant::now() < until, "never saw 5");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_flushes_once() {
    let receiver = TestReceiver::start().await;
    let (recorder, reader, metrics) = setup();
    let handle = spawn_with(
        config(
            &receiver,
            Protocol::Grpc,
            Compression::None,
            Duration::from_secs(3600),
        ),
        reader,
        metrics,
        FAST_RETRY,
    )
    .unwrap();
    record(&recorder, 4);
    handle.shutdown(Duration::from_secs(2)).await;
    let received = receiver.received_metrics();
    assert_eq!(received.len(), 1, "one flush at shutdown");
    assert_eq!(server_count(&received[0]), 4);
}

#[tokio::test]
async fn nothing_recorded_nothing_sent() {
    let receiver = TestReceiver::start().await;
    let (_recorder, reader, metrics) = setup();
    let handle = spawn_with(
        config(
            &receiver,
            Protocol::HttpProtobuf,
            Compression::None,
            Duration::from_millis(20),
        ),
        reader,
        metrics,
        FAST_RETRY,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    handle.shutdown(Duration::from_secs(1)).await;
    assert!(receiver.received_metrics().is_empty());
    assert!(receiver.attempts().is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried_and_counted() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let receiver = TestReceiver::start().await;
        receiver.script(&[
            Answer::Unavailable { retry_after: None },
            Answer::Unavailable { retry_after: None },
        ]);
        let (recorder, reader, metrics) = setup();
        record(&recorder, 1);
        let handle = spawn_with(
            config(
                &receiver,
                protocol,
                Compression::None,
                Duration::from_secs(3600),
            ),
            reader,
            Arc::clone(&metrics),
            FAST_RETRY,
        )
        .unwrap();
        handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(receiver.received_metrics().len(), 1, "{protocol}");
        assert_eq!(receiver.attempts().len(), 3, "{protocol}");
        assert_eq!(metrics.metric_export_failures.get(), 2, "{protocol}");
        assert_eq!(metrics.metric_points_exported.get(), 1, "{protocol}");
    }
}

#[tokio::test]
async fn a_refused_export_is_made_good_by_the_next() {
    let receiver = TestReceiver::start().await;
    receiver.script(&[Answer::Reject]);
    let (recorder, reader, metrics) = setup();
    record(&recorder, 2);
    let handle = spawn_with(
        config(
            &receiver,
            Protocol::HttpProtobuf,
            Compression::None,
            Duration::from_millis(50),
        ),
        reader,
        Arc::clone(&metrics),
        FAST_RETRY,
    )
    .unwrap();
    assert!(receiver.wait_for_metrics(1, WAIT).await);
    handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(metrics.metric_export_failures.get(), 1, "not retried");
    assert_eq!(server_count(&receiver.received_metrics()[0]), 2);
}

#[tokio::test]
async fn partial_success_is_not_counted_as_exported() {
    let receiver = TestReceiver::start().await;
    receiver.script(&[Answer::Partial { rejected: 1 }]);
    let (recorder, reader, metrics) = setup();
    record(&recorder, 1);
    let handle = spawn_with(
        config(
            &receiver,
            Protocol::Grpc,
            Compression::None,
            Duration::from_secs(3600),
        ),
        reader,
        Arc::clone(&metrics),
        FAST_RETRY,
    )
    .unwrap();
    handle.shutdown(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_metrics().len(), 1);
    assert_eq!(metrics.metric_points_exported.get(), 0);
}

#[tokio::test]
async fn a_dead_collector_costs_nothing_but_failures() {
    let dead = RefusingAddr::new();
    let addr = dead.addr;
    let (recorder, reader, metrics) = setup();
    record(&recorder, 1);
    let mut cfg = MetricsExportConfig {
        exporter: MetricsExporter::None,
        interval: Duration::from_secs(3600),
        timeout: Duration::from_millis(300),
    };
    cfg.exporter = MetricsExporter::Otlp(OtlpConfig {
        endpoint: format!("http://{addr}/v1/metrics").parse().unwrap(),
        protocol: Protocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_millis(100),
        compression: Compression::None,
        tls: Default::default(),
    });
    let handle = spawn_with(cfg, reader, Arc::clone(&metrics), FAST_RETRY).unwrap();
    let started = tokio::time::Instant::now();
    handle.shutdown(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(metrics.metric_export_failures.get() >= 1);
    assert_eq!(metrics.metric_points_exported.get(), 0);
}

#[tokio::test]
async fn the_none_exporter_runs_nothing() {
    let (recorder, reader, metrics) = setup();
    record(&recorder, 1);
    let handle = spawn_with(
        MetricsExportConfig {
            exporter: MetricsExporter::None,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
        },
        reader,
        metrics,
        FAST_RETRY,
    )
    .unwrap();
    assert!(handle.worker.is_none());
    handle.shutdown(Duration::from_secs(1)).await;
}
