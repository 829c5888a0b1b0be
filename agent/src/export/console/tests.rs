use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::AsyncWrite;

use super::*;
use crate::{
    export::{
        batch::spawn_with,
        config::{BatchConfig, ExportConfig, ExporterConfig},
        otlp::retry::RetryPolicy,
        testutil::{finished, http_span, resource, span_id, trace_id},
    },
    span::SpanKind,
    telemetry::metrics::Metrics,
};

fn span_of(trace: u8, id: u8, parent: Option<u8>) -> FinishedSpan {
    let mut s = http_span(SpanKind::Server, Some(200));
    s.trace_id = trace_id(trace);
    s.span_id = span_id(id);
    s.parent_span_id = parent.map(span_id);
    finished(&resource("svc"), s)
}

fn ids(ready: &[ReadyTrace]) -> Vec<(u8, usize)> {
    ready.iter().map(|(id, s)| (id.0[15], s.len())).collect()
}

#[test]
fn buffer_releases_traces_after_they_go_quiet() {
    let t0 = Instant::now();
    let mut buffer = TraceBuffer::new(100, Duration::from_secs(1));
    assert!(buffer.push(span_of(1, 1, None), t0).is_empty());
    assert!(
        buffer
            .push(span_of(2, 1, None), t0 + Duration::from_millis(500))
            .is_empty()
    );
    assert!(
        buffer
            .push(span_of(1, 2, Some(1)), t0 + Duration::from_millis(900))
            .is_empty()
    );
    assert_eq!(buffer.held(), 3);
    // Trace 1 got a span at 900 ms, so at 1.6 s only trace 2 is quiet.
    assert_eq!(
        ids(&buffer.take_idle(t0 + Duration::from_millis(1600))),
        [(2, 1)]
    );
    assert!(
        buffer
            .take_idle(t0 + Duration::from_millis(1800))
            .is_empty()
    );
    assert_eq!(
        ids(&buffer.take_idle(t0 + Duration::from_millis(1900))),
        [(1, 2)]
    );
    assert_eq!(buffer.held(), 0);
}

#[test]
fn take_all_returns_everything_in_arrival_order() {
    let t0 = Instant::now();
    let mut buffer = TraceBuffer::new(100, Duration::from_secs(1));
    for (i, trace) in [3u8, 1, 2].into_iter().enumerate() {
        buffer.push(
            span_of(trace, 1, None),
            t0 + Duration::from_millis(i as u64),
        );
    }
    assert_eq!(ids(&buffer.take_all()), [(3, 1), (1, 1), (2, 1)]);
    assert_eq!(buffer.held(), 0);
}

#[test]
fn a_full_buffer_prints_the_quietest_traces_early() {
    let t0 = Instant::now();
    let mut buffer = TraceBuffer::new(8, Duration::from_secs(60));
    let mut forced = Vec::new();
    for i in 0..8u8 {
        forced.extend(buffer.push(
            span_of(i, 1, None),
            t0 + Duration::from_millis(u64::from(i)),
        ));
    }
    assert!(forced.is_empty());
    // Room is made before the new span goes in, so trace 0 is printed early and its late
    // span starts a new entry.
    forced.extend(buffer.push(span_of(0, 2, Some(1)), t0 + Duration::from_millis(100)));
    assert_eq!(
        ids(&forced),
        [(0, 1), (1, 1)],
        "evicted down to 6 before adding"
    );
    assert_eq!(buffer.held(), 7);
    let mut total: usize = forced.iter().map(|(_, s)| s.len()).sum();
    for i in 20..200u8 {
        let out = buffer.push(
            span_of(i, 1, None),
            t0 + Duration::from_millis(u64::from(i)),
        );
        total += out.iter().map(|(_, s)| s.len()).sum::<usize>();
        assert!(buffer.held() <= 8);
    }
    total += buffer
        .take_all()
        .iter()
        .map(|(_, s)| s.len())
        .sum::<usize>();
    assert_eq!(total, 9 + 180, "no span is lost");
}

/// An output the test can read while the worker owns the writer.
#[derive(Clone, Default)]
struct SharedOut(Arc<Mutex<Vec<u8>>>);

impl SharedOut {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl AsyncWrite for SharedOut {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn console_config() -> ExportConfig {
    ExportConfig {
        exporter: ExporterConfig::Console,
        batch: BatchConfig::default(),
    }
}

#[tokio::test(start_paused = true)]
async fn worker_prints_a_trace_once_it_is_quiet() {
    let out = SharedOut::default();
    let metrics = Arc::new(Metrics::default());
    let handle = spawn_with(
        console_config(),
        Arc::clone(&metrics),
        RetryPolicy::default(),
        out.clone(),
    )
    .unwrap();
    handle.submit(span_of(1, 2, Some(1)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    handle.submit(span_of(1, 1, None));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(out.text(), "", "trace still active");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = out.text();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.starts_with("trace ab000000000000000000000000000001\n"),
        "{text}"
    );
    assert!(
        text.lines().nth(2).unwrap().starts_with("    svc  server"),
        "{text}"
    );
    assert_eq!(metrics.spans_exported.get(), 2);
    assert_eq!(metrics.export_queue_spans.get(), 0);
    let report = handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report, ShutdownReport::default());
}

#[tokio::test(start_paused = true)]
async fn shutdown_prints_what_is_still_buffered() {
    let out = SharedOut::default();
    let metrics = Arc::new(Metrics::default());
    let handle = spawn_with(
        console_config(),
        Arc::clone(&metrics),
        RetryPolicy::default(),
        out.clone(),
    )
    .unwrap();
    handle.submit(span_of(1, 1, None));
    handle.submit(span_of(2, 1, None));
    let report = handle.shutdown(Duration::from_secs(4)).await;
    assert_eq!(report.flushed, 2);
    assert_eq!(report.dropped, 0);
    assert_eq!(out.text().matches("trace ").count(), 2);
    assert_eq!(metrics.spans_exported.get(), 2);
    assert_eq!(metrics.spans_dropped.get(), 0);
}
