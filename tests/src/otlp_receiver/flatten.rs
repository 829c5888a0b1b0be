//! OTLP requests as flat span records that are easy to assert on.

use std::{collections::BTreeMap, fmt::Write as _};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{span::SpanKind, status::StatusCode},
};

use super::{ReceivedRequest, Transport};

/// One span with its resource and scope, values in string form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub transport: Transport,
    pub resource: BTreeMap<String, String>,
    pub scope_name: String,
    pub scope_version: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// Lower-case hex.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    pub flags: u32,
    /// Attribute values in string form: ints and bools as written in Rust.
    pub attributes: BTreeMap<String, String>,
    /// `unset`, `ok` or `error`.
    pub status_code: String,
    pub status_message: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The spans it links to: (trace id, span id) in lower-case hex.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn service_name(&self) -> Option<&str> {
        self.resource.get("service.name").map(String::as_str)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

pub fn spans(requests: &[ReceivedRequest]) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for received in requests {
        for rs in &received.request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let (scope_name, scope_version) = ss
                    .scope
                    .as_ref()
                    .map(|s| (s.name.clone(), s.version.clone()))
                    .unwrap_or_default();
                for span in &ss.spans {
                    let status = span.status.as_ref();
                    out.push(ReceivedSpan {
                        transport: received.transport,
                        resource: resource.clone(),
                        scope_name: scope_name.clone(),
                        scope_version: scope_version.clone(),
                        name: span.name.clone(),
                        kind: kind_name(span.kind()).to_owned(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty())
                            .then(|| hex(&span.parent_span_id)),
                        trace_state: span.trace_state.clone(),
                        flags: span.flags,
                        attributes: attributes(&span.attributes),
                        status_code: status_name(status.map_or(StatusCode::Unset, |s| s.code()))
                            .to_owned(),
                        status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        links: span
                            .links
                            .iter()
                            .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

fn status_name(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Unset => "unset",
        StatusCode::Ok => "ok",
        StatusCode::Error => "error",
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), value_string(kv.value.as_ref())))
        .collect()
}

fn value_string(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex(b),
        Some(Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(|v| value_string(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, value_string(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(Value::StringValueStrindex(i)) => format!("strindex:{i}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
