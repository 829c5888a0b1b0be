//! `FinishedSpan` batches as the generated OTLP messages, with stable HTTP semantic
//! conventions. Export writes the same bytes directly (`encode`); these messages are the
//! readable reference it is tested against, and the metrics exporter builds on `kv` and
//! `to_proto_resource`.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource as ProtoResource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status, span, span::SpanKind as ProtoKind, status,
    },
};

use super::encode::{Attr, SCOPE_NAME, SCOPE_VERSION, by_resource, for_each_attribute};
use crate::span::{AttrValue, FinishedSpan, HttpSpan, Resource, SpanKind};

/// Groups spans by resource, one `ResourceSpans` per distinct resource in first-seen order.
pub fn to_request(batch: &[FinishedSpan]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: by_resource(batch)
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(to_proto_resource(resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE_NAME.to_owned(),
                        version: SCOPE_VERSION.to_owned(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_proto_span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

pub fn to_proto_resource(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: resource
            .attributes
            .iter()
            .map(|(key, value)| match value {
                AttrValue::Str(s) => kv(key, Value::StringValue(s.clone())),
                AttrValue::Int(i) => kv(key, Value::IntValue(*i)),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn to_proto_span(span: &HttpSpan) -> Span {
    let kind = match span.kind {
        SpanKind::Server => ProtoKind::Server,
        SpanKind::Client => ProtoKind::Client,
    };
    let status = span.is_error().then(|| Status {
        message: String::new(),
        code: status::StatusCode::Error as i32,
    });
    Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: span.trace_state.clone().unwrap_or_default(),
        parent_span_id: span
            .parent_span_id
            .map(|p| p.0.to_vec())
            .unwrap_or_default(),
        flags: u32::from(span.trace_flags),
        name: span.name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns.max(span.start_unix_ns),
        attributes: attributes(span),
        links: span
            .link
            .iter()
            .map(|link| span::Link {
                trace_id: link.trace_id.0.to_vec(),
                span_id: link.span_id.0.to_vec(),
                ..Default::default()
            })
            .collect(),
        status,
        ..Default::default()
    }
}

fn attributes(span: &HttpSpan) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(24);
    for_each_attribute(span, |key, value| {
        attrs.push(kv(
            key,
            match value {
                Attr::Str(s) => Value::StringValue(s.to_owned()),
                Attr::Int(i) => Value::IntValue(i),
                Attr::Const(attr) => Value::StringValue(attr.value.to_owned()),
            },
        ))
    });
    attrs
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
