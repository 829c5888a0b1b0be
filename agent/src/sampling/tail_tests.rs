use super::*;
use crate::{export::testutil, span::SpanKind};

fn policy() -> TailPolicy {
    TailPolicy {
        keep_errors: true,
        latency_threshold: Some(Duration::from_millis(500)),
        ratio: 0.0,
        wait: Duration::from_secs(2),
        max_traces: 4,
        max_spans: 100,
    }
}

fn span(trace: u8, status: u16, duration_ms: u64) -> FinishedSpan {
    let mut span = testutil::http_span(SpanKind::Server, Some(status));
    span.trace_id = TraceId([trace; 16]);
    span.end_unix_ns = span.start_unix_ns + duration_ms * 1_000_000;
    testutil::finished(&testutil::resource("s"), span)
}

#[test]
fn keeps_errors_and_slow_traces_drops_the_rest() {
    let mut tail = TailSampler::new(policy());
    let t0 = Instant::now();
    assert!(
        tail.offer(span(1, 200, 10), t0).kept.is_empty(),
        "held, not released"
    );
    tail.offer(span(1, 500, 10), t0);
    tail.offer(span(2, 200, 900), t0);
    tail.offer(span(3, 200, 10), t0);
    assert_eq!(tail.held(), (3, 4));
    assert!(
        tail.tick(t0 + Duration::from_secs(1)).kept.is_empty(),
        "still waiting"
    );
    let out = tail.tick(t0 + Duration::from_secs(3));
    let kept: Vec<u8> = out.kept.iter().map(|s| s.span.trace_id.0[0]).collect();
    assert_eq!(
        kept.len(),
        3,
        "both spans of the error trace and the slow one"
    );
    assert!(kept.contains(&1) && kept.contains(&2) && !kept.contains(&3));
    assert_eq!(out.dropped, 1);
    assert_eq!(tail.held(), (0, 0));
    // A late span follows its trace's decision.
    let late = tail.offer(span(1, 200, 1), t0 + Duration::from_secs(4));
    assert_eq!(late.kept.len(), 1);
    let late = tail.offer(span(3, 200, 1), t0 + Duration::from_secs(4));
    assert_eq!(late.dropped, 1);
}

#[test]
fn a_full_buffer_decides_early_and_counts_it() {
    let mut tail = TailSampler::new(policy());
    let t0 = Instant::now();
    let mut forced = 0;
    let mut kept = 0;
    for trace in 0..10u8 {
        let out = tail.offer(span(trace, 500, 1), t0);
        forced += out.forced;
        kept += out.kept.len();
    }
    assert_eq!(tail.held().0, 4);
    assert_eq!(forced, 6);
    assert_eq!(kept, 6, "early decisions still keep error traces");
    assert_eq!(tail.flush().kept.len(), 4);
}

#[test]
fn ratio_one_keeps_everything() {
    let mut tail = TailSampler::new(TailPolicy {
        ratio: 1.0,
        ..policy()
    });
    let t0 = Instant::now();
    tail.offer(span(7, 200, 1), t0);
    assert_eq!(tail.tick(t0 + Duration::from_secs(5)).kept.len(), 1);
}
