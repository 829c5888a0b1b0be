//! Span batches straight to OTLP protobuf bytes (`ExportTraceServiceRequest`).
//!
//! Building the generated message structs first cost an allocation per attribute key and
//! value, per span, and a deep copy per send; at full load that was the largest part of
//! the agent's CPU. This writer produces the same bytes from `FinishedSpan`s with no
//! per-span allocation: attributes, whose lengths are known up front, go straight into their
//! span; each span is written into a reusable scratch buffer and copied behind its length.
//! `convert` stays the reference it is tested against.

use std::sync::Arc;

use super::const_attr::{self, ConstAttr};
use crate::span::{AttrValue, FinishedSpan, HttpSpan, Resource, SpanKind};

pub const SCOPE_NAME: &str = "loupe";
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

// opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto, resource/v1.
const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const STATUS_CODE_ERROR: u64 = 2;
const SPAN_ATTRIBUTES: u32 = 9;
const RESOURCE_ATTRIBUTES: u32 = 1;

/// Encodes `batch` as an `ExportTraceServiceRequest`, one `ResourceSpans` per distinct
/// resource in first-seen order.
pub fn trace_request(batch: &[FinishedSpan]) -> Vec<u8> {
    let groups = by_resource(batch);
    let mut out = Vec::with_capacity(batch.len() * 640 + 256);
    let mut writer = Writer::default();
    for (resource, spans) in groups {
        writer.resource_spans(&mut out, resource, &spans);
    }
    out
}

/// The spans of `batch` grouped by resource, resources in first-seen order.
pub fn by_resource(batch: &[FinishedSpan]) -> Vec<(&Arc<Resource>, Vec<&HttpSpan>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&HttpSpan>)> = Vec::new();
    for finished in batch {
        // The pointer test is the common case; equal content covers resources built twice
        // for the same process.
        match groups
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, &finished.resource) || **r == finished.resource)
        {
            Some((_, spans)) => spans.push(&finished.span),
            None => groups.push((&finished.resource, vec![&finished.span])),
        }
    }
    groups
}

/// Reusable scratch buffers for the spans of a resource and for one span, so a batch
/// allocates a handful of buffers rather than several per span.
#[derive(Default)]
struct Writer {
    spans: Vec<u8>,
    span: Vec<u8>,
}

impl Writer {
    /// Appends one `ResourceSpans` to `out`. The spans, the bulk of it, are written once
    /// into a buffer whose length then heads them; the wrappers are small.
    fn resource_spans(&mut self, out: &mut Vec<u8>, resource: &Resource, spans: &[&HttpSpan]) {
        let mut scope = Vec::with_capacity(32);
        string(&mut scope, 1, SCOPE_NAME);
        string(&mut scope, 2, SCOPE_VERSION);
        self.spans.clear();
        let mut encoded = std::mem::take(&mut self.spans);
        for span in spans {
            self.span.clear();
            let mut body = std::mem::take(&mut self.span);
            self.write_span(&mut body, span);
            message(&mut encoded, 2, &body);
            self.span = body;
        }

        let mut proto_resource = Vec::with_capacity(256);
        for (key, value) in &resource.attributes {
            match value {
                AttrValue::Str(s) => str_attr(&mut proto_resource, RESOURCE_ATTRIBUTES, key, s),
                AttrValue::Int(i) => int_attr(&mut proto_resource, RESOURCE_ATTRIBUTES, key, *i),
            }
        }

        // ScopeSpans { scope = 1; spans = 2 }
        let scope_spans_len = field_len(1, scope.len()) + encoded.len();
        // ResourceSpans { resource = 1; scope_spans = 2 }
        let resource_spans_len = field_len(1, proto_resource.len()) + field_len(2, scope_spans_len);
        key(out, 1, LEN);
        varint(out, resource_spans_len as u64);
        message(out, 1, &proto_resource);
        key(out, 2, LEN);
        varint(out, scope_spans_len as u64);
        message(out, 1, &scope);
        out.extend_from_slice(&encoded);
        self.spans = encoded;
    }

    fn write_span(&mut self, out: &mut Vec<u8>, span: &HttpSpan) {
        bytes(out, 1, &span.trace_id.0);
        bytes(out, 2, &span.span_id.0);
        if let Some(state) = span.trace_state.as_deref().filter(|s| !s.is_empty()) {
            string(out, 3, state);
        }
        if let Some(parent) = span.parent_span_id {
            bytes(out, 4, &parent.0);
        }
        string(out, 5, &span.name);
        let kind = match span.kind {
            SpanKind::Server => SPAN_KIND_SERVER,
            SpanKind::Client => SPAN_KIND_CLIENT,
        };
        key(out, 6, VARINT);
        varint(out, kind);
        key(out, 7, FIXED64);
        out.extend_from_slice(&span.start_unix_ns.to_le_bytes());
        key(out, 8, FIXED64);
        out.extend_from_slice(&span.end_unix_ns.max(span.start_unix_ns).to_le_bytes());
        for_each_attribute(span, |key, value| match value {
            Attr::Str(value) => str_attr(out, SPAN_ATTRIBUTES, key, value),
            Attr::Int(value) => int_attr(out, SPAN_ATTRIBUTES, key, value),
            Attr::Const(attr) => {
                debug_assert_eq!(key, attr.key, "a constant attribute under another key");
                out.extend_from_slice(attr.encoded)
            }
        });
        if let Some(link) = &span.link {
            // Link { trace_id = 1; span_id = 2 }
            key(out, 13, LEN);
            varint(out, (field_len(1, 16) + field_len(2, 8)) as u64);
            bytes(out, 1, &link.trace_id.0);
            bytes(out, 2, &link.span_id.0);
        }
        if span.is_error() {
            // Status { code = 3 }; an empty message is left out, as prost does.
            let status = [(3 << 3) as u8, STATUS_CODE_ERROR as u8];
            message(out, 15, &status);
        }
        if span.trace_flags != 0 {
            key(out, 16, FIXED32);
            out.extend_from_slice(&u32::from(span.trace_flags).to_le_bytes());
        }
    }
}

/// A `KeyValue` with a string `AnyValue`, as field `field` of `out`.
fn str_attr(out: &mut Vec<u8>, field: u32, name: &str, value: &str) {
    // AnyValue { string_value = 1 }
    key_value_head(out, field, name, field_len(1, value.len()));
    string(out, 1, value);
}

fn int_attr(out: &mut Vec<u8>, field: u32, name: &str, value: i64) {
    // AnyValue { int_value = 3 }: a one-byte key and the varint.
    key_value_head(out, field, name, 1 + varint_len(value as u64));
    key(out, 3, VARINT);
    varint(out, value as u64);
}

/// Writes a `KeyValue { key = 1; value = 2 }` up to the `AnyValue` body of `value_len`
/// bytes, which the caller appends. The lengths are known in advance, so attributes go
/// straight into the span instead of through buffers copied behind their lengths: those
/// small copies were the largest part of encoding.
fn key_value_head(out: &mut Vec<u8>, field: u32, name: &str, value_len: usize) {
    key(out, field, LEN);
    varint(
        out,
        (field_len(1, name.len()) + field_len(2, value_len)) as u64,
    );
    string(out, 1, name);
    key(out, 2, LEN);
    varint(out, value_len as u64);
}

/// A span attribute's value, borrowed from the span.
pub enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    /// A string whose key and value are both constants, encoded at compile time.
    Const(&'static ConstAttr),
}

/// Calls `f` with every attribute of `span` under the stable HTTP semantic conventions,
/// in a fixed order; unset optional fields are left out. Client spans carry `url.full`,
/// which the conventions require on them, besides the path and query it is made of.
/// `network.protocol.name` is left out: the conventions ask for it only when it is not
/// `http`, and a constant on every span cost 7 % of the bytes each span is encoded in.
pub fn for_each_attribute(span: &HttpSpan, mut f: impl FnMut(&'static str, Attr<'_>)) {
    let method = span.method;
    f(
        "http.request.method",
        known_or_str(method, const_attr::method(method)),
    );
    if let Some(url) = span.url_full() {
        f("url.full", Attr::Str(&url));
    }
    f("url.path", Attr::Str(&span.path));
    let scheme = span.scheme;
    f(
        "url.scheme",
        known_or_str(scheme, const_attr::scheme(scheme)),
    );
    let version = span.protocol_version;
    f(
        "network.protocol.version",
        known_or_str(version, const_attr::protocol_version(version)),
    );
    let optional_strs = [
        (
            "http.request.method_original",
            span.method_original.as_deref(),
        ),
        ("url.query", span.query.as_deref()),
        ("http.route", span.route.as_deref()),
        ("server.address", span.server_address.as_deref()),
        ("client.address", span.client_address.as_deref()),
        ("network.peer.address", span.peer_address.as_deref()),
        ("network.local.address", span.local_address.as_deref()),
        ("user_agent.original", span.user_agent.as_deref()),
        ("error.type", span.error_type.as_deref()),
    ];
    for (key, value) in optional_strs {
        if let Some(value) = value {
            f(key, Attr::Str(value));
        }
    }
    let optional_ints = [
        ("http.response.status_code", span.status_code.map(i64::from)),
        ("server.port", span.server_port.map(i64::from)),
        ("client.port", span.client_port.map(i64::from)),
        ("network.peer.port", span.peer_port.map(i64::from)),
        ("network.local.port", span.local_port.map(i64::from)),
        (
            "http.request.body.size",
            span.request_body_size.map(saturating_i64),
        ),
        (
            "http.response.body.size",
            span.response_body_size.map(saturating_i64),
        ),
    ];
    for (key, value) in optional_ints {
        if let Some(value) = value {
            f(key, Attr::Int(value));
        }
    }
}

/// The constant attribute when the value is one, else the value as a string.
fn known_or_str<'a>(value: &'a str, known: Option<&'static ConstAttr>) -> Attr<'a> {
    known.map_or(Attr::Str(value), Attr::Const)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

/// Bytes a length-delimited field `field` of `len` bytes takes, key and length included.
fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    bytes(out, field, body);
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
