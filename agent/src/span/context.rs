//! Trace context propagation: reading the parent context a request carries in its headers,
//! and minting fresh ids for the spans loupe builds.
//!
//! Formats, in order of precedence (the first one that parses wins, so a malformed
//! `traceparent` falls through to B3):
//! 1. W3C Trace Context: `traceparent`, with `tracestate` passed on raw (at most 512 bytes).
//! 2. B3 single header: `b3`.
//! 3. B3 multi header: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`.
//! 4. Jaeger: `uber-trace-id`.
//!
//! A header that appears several times with different values is ambiguous and ignored,
//! except `tracestate`, which HTTP lets senders split across several lines.

mod b3;
mod hex;
mod ids;
mod jaeger;
mod w3c;

use std::fmt;

pub use b3::parse_b3_single;
pub use ids::{new_span_id, new_trace_id, seed_this_thread};
pub use jaeger::parse_uber_trace_id;
pub use w3c::{TRACESTATE_MAX_LEN, format_traceparent, parse_traceparent};

use super::{SpanContext, SpanId, TraceId};
use crate::protocol::http1::HeaderField;

impl TraceId {
    /// All zeroes is the spec's "invalid" trace id.
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl SpanId {
    /// All zeroes is the spec's "invalid" span id.
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
}

/// Lowercase hex, the form every propagation format and OTLP/JSON use.
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

#[cfg(test)]
pub fn trace_id_hex(id: &TraceId) -> String {
    hex::encode(&id.0)
}

#[cfg(test)]
pub fn span_id_hex(id: &SpanId) -> String {
    hex::encode(&id.0)
}

/// The value of header `name`, or `None` when it is absent or repeated with different values.
fn header<'a>(headers: &'a [HeaderField], name: &str) -> Option<&'a str> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    let first = values.next()?;
    values.all(|v| v == first).then_some(first)
}

/// Every header [`extract`] reads: a request's other headers never matter for linking.
pub const PROPAGATION_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
];

/// Extracts the parent context from request headers (names already lowercased). The
/// context is marked remote. See the module docs for the precedence between formats.
pub fn extract(headers: &[HeaderField]) -> Option<SpanContext> {
    // Most requests carry no context: one check instead of a search per format.
    if headers.is_empty() {
        return None;
    }
    extract_w3c(headers)
        .or_else(|| header(headers, "b3").and_then(parse_b3_single).map(remote))
        .or_else(|| extract_b3_multi(headers).map(remote))
        .or_else(|| {
            header(headers, "uber-trace-id")
                .and_then(parse_uber_trace_id)
                .map(remote)
        })
}

fn remote((trace_id, span_id, trace_flags): (TraceId, SpanId, u8)) -> SpanContext {
    SpanContext {
        trace_id,
        span_id,
        trace_flags,
        trace_state: None,
        is_remote: true,
    }
}

fn extract_w3c(headers: &[HeaderField]) -> Option<SpanContext> {
    let parsed = parse_traceparent(header(headers, "traceparent")?)?;
    let states = headers
        .iter()
        .filter(|(n, _)| n == "tracestate")
        .map(|(_, v)| v.as_str());
    Some(SpanContext {
        trace_state: w3c::tracestate(states),
        ..remote(parsed)
    })
}

fn extract_b3_multi(headers: &[HeaderField]) -> Option<(TraceId, SpanId, u8)> {
    b3::parse_b3_multi(
        header(headers, "x-b3-traceid")?,
        header(headers, "x-b3-spanid")?,
        header(headers, "x-b3-sampled"),
        header(headers, "x-b3-flags"),
    )
}

#[cfg(test)]
mod tests;
