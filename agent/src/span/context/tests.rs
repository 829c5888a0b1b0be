use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TP_SPAN: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";

fn h(pairs: &[(&str, &str)]) -> Vec<HeaderField> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string().into(), (*v).into()))
        .collect()
}

fn ids(ctx: &SpanContext) -> (String, String) {
    (trace_id_hex(&ctx.trace_id), span_id_hex(&ctx.span_id))
}

#[test]
fn no_headers_no_context() {
    assert_eq!(extract(&[]), None);
    assert_eq!(extract(&h(&[("host", "x"), ("accept", "*/*")])), None);
}

#[test]
fn w3c_with_tracestate() {
    let ctx = extract(&h(&[
        ("traceparent", TP),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]));
    let ctx = ctx.unwrap_or_else(|| panic!("traceparent should parse"));
    assert_eq!(ids(&ctx), (TP_TRACE.to_string(), TP_SPAN.to_string()));
    assert_eq!(ctx.trace_flags, 0x01);
    assert!(ctx.is_remote);
    assert_eq!(
        ctx.trace_state.as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
}

#[test]
fn w3c_without_tracestate() {
    let ctx = extract(&h(&[("traceparent", TP)]));
    assert_eq!(ctx.and_then(|c| c.trace_state), None);
}

#[test]
fn tracestate_dropped_when_too_long() {
    let long = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN));
    let ctx = extract(&h(&[("traceparent", TP), ("tracestate", &long)]));
    let ctx = ctx.unwrap_or_else(|| panic!("traceparent should still parse"));
    assert_eq!(ctx.trace_state, None);
}

#[test]
fn tracestate_ignored_without_valid_traceparent() {
    let bad = TP.replace("4bf9", "4BF9");
    let ctx = extract(&h(&[
        ("traceparent", &bad),
        ("tracestate", "rojo=1"),
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-1")),
    ]));
    let ctx = ctx.unwrap_or_else(|| panic!("b3 should be used"));
    assert_eq!(ids(&ctx).0, B3_TRACE);
    assert_eq!(ctx.trace_state, None);
    assert_eq!(extract(&h(&[("tracestate", "rojo=1")])), None);
}

#[test]
fn traceparent_wins_over_everything() {
    let ctx = extract(&h(&[
        ("uber-trace-id", "abc:def:0:1"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("b3", &format!("{B3_TRACE}-{B3_SPAN}-0")),
        ("traceparent", TP),
    ]));
    assert_eq!(ctx.map(|c| ids(&c).0), Some(TP_TRACE.to_string()));
}

#[test]
fn b3_single_wins_over_multi_and_jaeger() {
    let single_trace = "a3ce929d0e0e4736";
    let ctx = extract(&h(&[
        ("uber-trace-id", "abc:def:0:1"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("b3", &format!("{single_trace}-{B3_SPAN}-0")),
    ]));
    let ctx = ctx.unwrap_or_else(|| panic!("b3 single should parse"));
    assert_eq!(ids(&ctx).0, format!("{}{single_trace}", "0".repeat(16)));
    assert_eq!(ctx.trace_flags, 0);
    assert_eq!(ctx.trace_state, None);
}

#[test]
fn b3_multi_wins_over_jaeger() {
    let ctx = extract(&h(&[
        ("uber-trace-id", "abc:def:0:1"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "0"),
    ]));
    let ctx = ctx.unwrap_or_else(|| panic!("b3 multi should parse"));
    assert_eq!(ids(&ctx), (B3_TRACE.to_string(), B3_SPAN.to_string()));
    assert_eq!(ctx.trace_flags, 0);
}

#[test]
fn lone_b3_sampling_falls_through() {
    let ctx = extract(&h(&[
        ("b3", "1"),
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
    ]));
    assert_eq!(ctx.map(|c| ids(&c).0), Some(B3_TRACE.to_string()));
    assert_eq!(extract(&h(&[("b3", "d")])), None);
}

#[test]
fn b3_multi_needs_both_ids() {
    assert_eq!(extract(&h(&[("x-b3-traceid", B3_TRACE)])), None);
    assert_eq!(extract(&h(&[("x-b3-spanid", B3_SPAN)])), None);
}

#[test]
fn b3_multi_debug_flag() {
    let ctx = extract(&h(&[
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "1"),
    ]));
    assert_eq!(ctx.map(|c| c.trace_flags), Some(1));
}

#[test]
fn jaeger_last_resort() {
    let ctx = extract(&h(&[("uber-trace-id", "abc%3Adef%3A0%3A1")]));
    let ctx = ctx.unwrap_or_else(|| panic!("uber-trace-id should parse"));
    assert_eq!(
        ids(&ctx),
        (
            format!("{}abc", "0".repeat(29)),
            format!("{}def", "0".repeat(13))
        )
    );
    assert_eq!(ctx.trace_flags, 1);
    assert!(ctx.is_remote);
}

#[test]
fn everything_malformed_is_none() {
    let ctx = extract(&h(&[
        ("traceparent", "00-xyz"),
        ("b3", "nope"),
        ("x-b3-traceid", "123"),
        ("x-b3-spanid", B3_SPAN),
        ("uber-trace-id", "0:0:0:1"),
    ]));
    assert_eq!(ctx, None);
}

#[test]
fn conflicting_duplicate_traceparent_is_ignored() {
    let other = TP.replace("4bf9", "5bf9");
    assert_eq!(
        extract(&h(&[("traceparent", TP), ("traceparent", &other)])),
        None
    );
    let same = extract(&h(&[("traceparent", TP), ("traceparent", TP)]));
    assert_eq!(same.map(|c| ids(&c).0), Some(TP_TRACE.to_string()));
}

#[test]
fn header_names_are_matched_exactly() {
    // The caller lowercases names; a name with stray case is not ours to fix.
    assert_eq!(extract(&h(&[("Traceparent", TP)])), None);
}

#[test]
fn hex_helpers_and_display_agree() {
    let (t, s, _) = parse_traceparent(TP).unwrap_or_default();
    assert_eq!(trace_id_hex(&t), TP_TRACE);
    assert_eq!(span_id_hex(&s), TP_SPAN);
    assert_eq!(t.to_string(), TP_TRACE);
    assert_eq!(s.to_string(), TP_SPAN);
}

#[test]
fn validity() {
    assert!(!TraceId::default().is_valid());
    assert!(!SpanId::default().is_valid());
    assert!(TraceId([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_valid());
    assert!(SpanId([1, 0, 0, 0, 0, 0, 0, 0]).is_valid());
}

#[test]
fn random_ids_are_valid_and_distinct() {
    let traces: std::collections::HashSet<_> = (0..1000).map(|_| new_trace_id()).collect();
    let spans: std::collections::HashSet<_> = (0..1000).map(|_| new_span_id()).collect();
    assert_eq!(traces.len(), 1000);
    assert_eq!(spans.len(), 1000);
    assert!(traces.iter().all(TraceId::is_valid));
    assert!(spans.iter().all(SpanId::is_valid));
}

#[test]
fn a_seeded_thread_repeats_its_ids_and_another_seed_does_not() {
    let draw = |seed| {
        seed_this_thread(seed);
        (0..3)
            .map(|_| (new_trace_id(), new_span_id()))
            .collect::<Vec<_>>()
    };
    let first = draw(7);
    assert_eq!(draw(7), first);
    assert_ne!(draw(8), first);
    assert!(first.iter().all(|(t, s)| t.is_valid() && s.is_valid()));
    // Threads that were never seeded draw from the operating system's randomness: each
    // starts somewhere else.
    let fresh = || {
        std::thread::spawn(|| (new_trace_id(), new_span_id()))
            .join()
            .unwrap()
    };
    let (one, other) = (fresh(), fresh());
    assert_ne!(one, other);
    assert!(!first.contains(&one) && !first.contains(&other));
}

#[test]
fn new_ids_round_trip_through_traceparent() {
    let (t, s) = (new_trace_id(), new_span_id());
    let tp = format_traceparent(&t, &s, 1);
    assert_eq!(parse_traceparent(&tp), Some((t, s, 1)));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,80}") {
            let _ = parse_traceparent(&s);
            let _ = parse_b3_single(&s);
            let _ = parse_uber_trace_id(&s);
        }

        #[test]
        fn traceparent_round_trips(t in any::<[u8; 16]>(), s in any::<[u8; 8]>(), f in any::<u8>()) {
            let (t, s) = (TraceId(t), SpanId(s));
            let parsed = parse_traceparent(&format_traceparent(&t, &s, f));
            if t.is_valid() && s.is_valid() {
                prop_assert_eq!(parsed, Some((t, s, f)));
            } else {
                prop_assert_eq!(parsed, None);
            }
        }

        #[test]
        fn extracted_context_is_always_valid(
            tp in "[0-9a-f-]{50,60}",
            b3 in "[0-9a-fd-]{0,40}",
            uber in "[0-9a-f:]{0,40}",
        ) {
            let headers = h(&[("traceparent", &tp), ("b3", &b3), ("uber-trace-id", &uber)]);
            if let Some(ctx) = extract(&headers) {
                prop_assert!(ctx.trace_id.is_valid());
                prop_assert!(ctx.span_id.is_valid());
                prop_assert!(ctx.is_remote);
            }
        }
    }
}

#[test]
fn propagation_headers_name_everything_extract_reads() {
    let sets: Vec<Vec<(&str, &str)>> = vec![
        vec![
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "k=v"),
        ],
        vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
        vec![
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "1"),
        ],
        vec![(
            "uber-trace-id",
            "80f198ee56343ba864fe8b2a57d3eff7:e457b5a2e4d86bd1:0:1",
        )],
    ];
    for set in sets {
        let all: Vec<HeaderField> = set
            .iter()
            .map(|(k, v)| (k.to_string().into(), (*v).into()))
            .chain([("host".into(), "x".into())])
            .collect();
        let kept: Vec<HeaderField> = all
            .iter()
            .filter(|(k, _)| PROPAGATION_HEADERS.contains(&k.as_ref()))
            .cloned()
            .collect();
        assert!(extract(&all).is_some());
        assert_eq!(extract(&kept), extract(&all), "{set:?}");
    }
}
