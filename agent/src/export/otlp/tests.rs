//! Exporter-to-receiver round trips over real sockets.

use std::{sync::Arc, time::Duration};

use hyper::http::{HeaderName, HeaderValue};
use tokio::{sync::watch, time::Instant};

use super::{
    test_receiver::{Answer, RefusingAddr, TestReceiver},
    *,
};
use crate::export::{
    config::{Compression, OtlpConfig, Protocol},
    testutil::{batch, resource},
};

const FAST_RETRY: RetryPolicy = RetryPolicy {
    initial_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(40),
};

fn config(receiver: &TestReceiver, protocol: Protocol, compression: Compression) -> OtlpConfig {
    let endpoint = match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::HttpProtobuf => receiver.http_url(),
    };
    OtlpConfig {
        endpoint: endpoint.parse().unwrap(),
        protocol,
        headers: vec![
            (
                HeaderName::from_static("api-key"),
                HeaderValue::from_static("s3cret"),
            ),
            (
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("team a"),
            ),
        ],
        timeout: Duration::from_secs(2),
        compression,
        tls: Default::default(),
    }
}

fn no_shutdown() -> watch::Receiver<Option<Instant>> {
    // The sender is dropped: the deadline can no longer move, which `Deadline` handles.
    watch::channel(None).1
}

async fn round_trip(protocol: Protocol, compression: Compression) {
    let receiver = TestReceiver::start().await;
    let metrics = Arc::new(Metrics::default());
    let mut exporter = OtlpExporter::new(
        &config(&receiver, protocol, compression),
        FAST_RETRY,
        Arc::clone(&metrics),
    )
    .unwrap();
    let spans = batch(&resource("checkout"), 5);
    let outcome = exporter
        .export(
            &spans,
            Instant::now() + Duration::from_secs(5),
            no_shutdown(),
        )
        .await;
    assert_eq!(
        outcome,
        BatchOutcome {
            exported: 5,
            dropped: 0,
            failed_attempts: 0
        }
    );
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.request, convert::to_request(&spans), "lossless");
    assert_eq!(got.grpc, protocol == Protocol::Grpc);
    assert_eq!(got.gzip, compression == Compression::Gzip);
    assert_eq!(
        got.headers.get("api-key").map(String::as_str),
        Some("s3cret")
    );
    assert_eq!(
        got.headers.get("x-tenant").map(String::as_str),
        Some("team a")
    );
    let agent = got.headers.get("user-agent").cloned().unwrap_or_default();
    assert!(sent_by_loupe("POST", || Some(&agent)), "{agent}");
    if protocol == Protocol::HttpProtobuf {
        assert_eq!(got.path, "/v1/traces");
        assert_eq!(
            got.headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
    }
    assert_eq!(metrics.spans_exported.get(), 5);
    assert_eq!(metrics.spans_dropped.get(), 0);
    assert_eq!(metrics.export_failures.get(), 0);
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
async fn http_round_trip() {
    round_trip(Protocol::HttpProtobuf, Compression::None).await;
}

#[tokio::test]
async fn http_gzip_round_trip() {
    round_trip(Protocol::HttpProtobuf, Compression::Gzip).await;
}

struct Run {
    outcome: BatchOutcome,
    metrics: Arc<Metrics>,
    elapsed: Duration,
}

async fn export_with(
    receiver: &TestReceiver,
    protocol: Protocol,
    answers: &[Answer],
    budget: Duration,
) -> Run {
    receiver.script(answers);
    let metrics = Arc::new(Metrics::default());
    let mut exporter = OtlpExporter::new(
        &config(receiver, protocol, Compression::None),
        FAST_RETRY,
        Arc::clone(&metrics),
    )
    .unwrap();
    let started = Instant::now();
    let outcome = exporter
        .export(
            &batch(&resource("svc"), 4),
            Instant::now() + budget,
            no_shutdown(),
        )
        .await;
    Run {
        outcome,
        metrics,
        elapsed: started.elapsed(),
    }
}

const BOTH: [Protocol; 2] = [Protocol::Grpc, Protocol::HttpProtobuf];

#[tokio::test]
async fn retries_until_the_receiver_recovers() {
    for protocol in BOTH {
        let receiver = TestReceiver::start().await;
        let unavailable = Answer::Unavailable { retry_after: None };
        let run = export_with(
            &receiver,
            protocol,
            &[unavailable, unavailable, unavailable],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(run.outcome.exported, 4, "{protocol}");
        assert_eq!(run.outcome.failed_attempts, 3, "{protocol}");
        assert_eq!(run.metrics.export_failures.get(), 3, "{protocol}");
        assert_eq!(run.metrics.spans_exported.get(), 4, "{protocol}");
        assert_eq!(run.metrics.spans_dropped.get(), 0, "{protocol}");
        assert_eq!(receiver.attempts().len(), 4, "{protocol}");
        assert_eq!(receiver.span_count(), 4, "{protocol}");
    }
}

#[tokio::test]
async fn permanent_errors_drop_the_batch_without_retry() {
    for protocol in BOTH {
        let receiver = TestReceiver::start().await;
        let run = export_with(
            &receiver,
            protocol,
            &[Answer::Reject],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            run.outcome,
            BatchOutcome {
                exported: 0,
                dropped: 4,
                failed_attempts: 1
            },
            "{protocol}"
        );
        assert_eq!(run.metrics.spans_dropped.get(), 4, "{protocol}");
        assert_eq!(run.metrics.export_failures.get(), 1, "{protocol}");
        assert_eq!(receiver.attempts().len(), 1, "{protocol}");
    }
}

#[tokio::test]
async fn server_requested_pause_is_honoured() {
    for protocol in BOTH {
        let receiver = TestReceiver::start().await;
        let pause = Answer::Unavailable {
            retry_after: Some(Duration::from_secs(1)),
        };
        let run = export_with(&receiver, protocol, &[pause], Duration::from_secs(5)).await;
        assert_eq!(run.outcome.exported, 4, "{protocol}");
        let attempts = receiver.attempts();
        assert_eq!(attempts.len(), 2, "{protocol}");
        let gap = attempts[1] - attempts[0];
        assert!(gap >= Duration::from_millis(950), "{protocol}: {gap:?}");
    }
}

#[tokio::test]
async fn a_pause_beyond_the_deadline_gives_up_at_once() {
    for protocol in BOTH {
        let receiver = TestReceiver::start().await;
        let pause = Answer::Unavailable {
            retry_after: Some(Duration::from_secs(30)),
        };
        let run = export_with(&receiver, protocol, &[pause], Duration::from_secs(3)).await;
        assert_eq!(run.outcome.dropped, 4, "{protocol}");
        assert_eq!(run.outcome.failed_attempts, 1, "{protocol}");
        assert!(
            run.elapsed < Duration::from_secs(1),
            "{protocol}: {:?}",
            run.elapsed
        );
    }
}

#[tokio::test]
async fn partial_success_counts_rejected_spans_as_dropped() {
    for protocol in BOTH {
        let receiver = TestReceiver::start().await;
        let run = export_with(
            &receiver,
            protocol,
            &[Answer::Partial { rejected: 3 }],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            run.outcome,
            BatchOutcome {
                exported: 1,
                dropped: 3,
                failed_attempts: 0
            },
            "{protocol}"
        );
        assert_eq!(run.metrics.spans_dropped.get(), 3);
    }
}

#[tokio::test]
async fn a_collector_that_is_down_costs_the_batch_and_nothing_else() {
    for protocol in BOTH {
        let dead = RefusingAddr::new();
        let addr = dead.addr;
        let endpoint = match protocol {
            Protocol::Grpc => format!("http://{addr}"),
            Protocol::HttpProtobuf => format!("http://{addr}/v1/traces"),
        };
        let metrics = Arc::new(Metrics::default());
        let mut exporter = OtlpExporter::new(
            &OtlpConfig {
                endpoint: endpoint.parse().unwrap(),
                protocol,
                headers: Vec::new(),
                timeout: Duration::from_millis(200),
                compression: Compression::Gzip,
                tls: Default::default(),
            },
            FAST_RETRY,
            Arc::clone(&metrics),
        )
        .unwrap();
        let started = Instant::now();
        let outcome = exporter
            .export(
                &batch(&resource("svc"), 3),
                Instant::now() + Duration::from_millis(400),
                no_shutdown(),
            )
            .await;
        let elapsed = started.elapsed();
        assert_eq!(outcome.exported, 0, "{protocol}");
        assert_eq!(outcome.dropped, 3, "{protocol}");
        assert!(
            outcome.failed_attempts >= 2,
            "{protocol}: retried {outcome:?}"
        );
        assert_eq!(metrics.export_failures.get(), outcome.failed_attempts);
        assert_eq!(metrics.spans_dropped.get(), 3);
        assert!(elapsed < Duration::from_secs(1), "{protocol}: {elapsed:?}");
    }
}

#[tokio::test]
async fn shutdown_cuts_a_retrying_export_short() {
    let dead = RefusingAddr::new();
    let addr = dead.addr;
    let metrics = Arc::new(Metrics::default());
    let mut exporter = OtlpExporter::new(
        &OtlpConfig {
            endpoint: format!("http://{addr}/v1/traces").parse().unwrap(),
            protocol: Protocol::HttpProtobuf,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            compression: Compression::None,
            tls: Default::default(),
        },
        FAST_RETRY,
        Arc::clone(&metrics),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(None);
    let started = Instant::now();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send_replace(Some(Instant::now() + Duration::from_millis(100)));
        // Keep the sender alive until the export is over.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let outcome = exporter
        .export(
            &batch(&resource("svc"), 2),
            Instant::now() + Duration::from_secs(30),
            stop_rx,
        )
        .await;
    stopper.abort();
    assert_eq!(outcome.dropped, 2);
    let elapsed = started.elapsed();
    // Retried until the shutdown came, then stopped by its deadline (or just before, when
    // the next pause would overrun it) instead of the batch's 30 s.
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(outcome.failed_attempts >= 2, "{outcome:?}");
}

#[test]
fn loupes_own_exports_are_recognised_by_their_user_agent() {
    // What this agent sends, and what an agent of another version sends.
    assert!(sent_by_loupe("POST", || Some(USER_AGENT)));
    assert!(sent_by_loupe("POST", || Some("loupe/9.4.1")));
    // Other clients of a collector, and requests that are not exports.
    assert!(!sent_by_loupe("POST", || Some(
        "OTel-OTLP-Exporter-Python/1.27.0"
    )));
    assert!(!sent_by_loupe("POST", || Some("curl/8.5.0 loupe/1")));
    assert!(!sent_by_loupe("POST", || None));
    assert!(!sent_by_loupe("GET", || Some(USER_AGENT)));
    // Only a POST has its User-Agent looked up.
    assert!(!sent_by_loupe("GET", || unreachable!(
        "asked for a GET's User-Agent"
    )));
}
