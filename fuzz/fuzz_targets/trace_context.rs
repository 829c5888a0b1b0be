//! Trace-context headers: W3C `traceparent`/`tracestate`, B3 single and multi header, and
//! Jaeger `uber-trace-id`, parsed from arbitrary text.
//!
//! Input layout: lines of `name: value` (a line without a colon is a value alone). Every
//! line's value goes through each single-header parser; the lines together, as headers, go
//! through `extract`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe::span::context::{
    TRACESTATE_MAX_LEN, extract, format_traceparent, parse_b3_single, parse_traceparent,
    parse_uber_trace_id,
};
use loupe::span::{SpanId, TraceId};

type Parsed = (TraceId, SpanId, u8);

fn valid(parsed: &Parsed) {
    assert!(parsed.0.is_valid(), "all-zero trace id accepted");
    assert!(parsed.1.is_valid(), "all-zero span id accepted");
}

/// Re-serialised as W3C, any parsed context reads back the same.
fn w3c_round_trip(parsed: &Parsed) {
    let (trace, span, flags) = parsed;
    let text = format_traceparent(trace, span, *flags);
    assert_eq!(parse_traceparent(&text).as_ref(), Some(parsed), "{text}");
}

fn check_traceparent(value: &str) {
    let Some(parsed) = parse_traceparent(value) else {
        return;
    };
    valid(&parsed);
    w3c_round_trip(&parsed);
    // Version 00 has exactly one spelling: lowercase, 55 characters.
    let trimmed = value.trim_matches([' ', '\t']);
    let text = format_traceparent(&parsed.0, &parsed.1, parsed.2);
    if trimmed.starts_with("00") {
        assert_eq!(text, trimmed);
    } else {
        assert_eq!(text[2..], trimmed[2..55]);
    }
}

/// B3 and Jaeger: sampled or not, and their own spelling of the ids reads back the same.
fn check_other_format(
    value: &str,
    parse: fn(&str) -> Option<Parsed>,
    format: fn(&Parsed) -> String,
) {
    let Some(parsed) = parse(value) else {
        return;
    };
    valid(&parsed);
    assert!(parsed.2 <= 1, "flags {}", parsed.2);
    w3c_round_trip(&parsed);
    let text = format(&parsed);
    assert_eq!(parse(&text).as_ref(), Some(&parsed), "{text}");
}

fn b3_single((trace, span, flags): &Parsed) -> String {
    format!("{trace}-{span}-{flags}")
}

fn uber_trace_id((trace, span, flags): &Parsed) -> String {
    format!("{trace}:{span}:0:{flags:x}")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut headers = Vec::new();
    for line in text.lines() {
        let (name, value) = line.split_once(':').unwrap_or(("", line));
        for v in [line, value] {
            check_traceparent(v);
            check_other_format(v, parse_b3_single, b3_single);
            check_other_format(v, parse_uber_trace_id, uber_trace_id);
        }
        headers.push((name.trim().to_ascii_lowercase().into(), value.into()));
    }
    if let Some(ctx) = extract(&headers) {
        assert!(ctx.is_remote);
        valid(&(ctx.trace_id, ctx.span_id, ctx.trace_flags));
        w3c_round_trip(&(ctx.trace_id, ctx.span_id, ctx.trace_flags));
        if let Some(state) = &ctx.trace_state {
            assert!(!state.is_empty() && state.len() <= TRACESTATE_MAX_LEN);
        }
    }
});
