//! Counting the spans of an encoded `ExportTraceServiceRequest` without decoding it.
//!
//! A receiver that keeps nothing (the bench's sink) only needs the count. Decoding every
//! span into owned strings cost the sink about two thirds of the CPU the agent spends
//! producing them, on the same two cores as the service the bench measures; walking the
//! wire format allocates nothing.

/// Why a body is not an `ExportTraceServiceRequest`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a varint runs past the end or past ten bytes")]
    Varint,
    #[error("a field is longer than what is left of its message")]
    Length,
    #[error("wire type {0} is not one this message can hold")]
    WireType(u64),
    #[error("field number 0")]
    FieldZero,
}

/// The spans in `body`: the `spans` (2) of every `scope_spans` (2) of every
/// `resource_spans` (1). Only the framing is checked, down to each span's fields: a cut
/// body or a broken length is refused, but strings are not checked for UTF-8 nor nested
/// messages (attributes, events) walked, as a full decode would.
pub fn span_count(body: &[u8]) -> Result<usize, WireError> {
    let mut spans = 0;
    for_each_field(body, |field, value| {
        if field == 1 {
            for_each_field(message(value)?, |field, value| {
                if field == 2 {
                    for_each_field(message(value)?, |field, value| {
                        if field == 2 {
                            // The span's fields are framed right; none is read.
                            for_each_field(message(value)?, |_, _| Ok(()))?;
                            spans += 1;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(spans)
}

/// A field that must hold a message: anything but length-delimited is an error, as it is
/// for prost.
fn message(value: Value<'_>) -> Result<&[u8], WireError> {
    match value {
        Value::Bytes(bytes) => Ok(bytes),
        Value::Scalar(wire_type) => Err(WireError::WireType(wire_type)),
    }
}

enum Value<'a> {
    /// A varint or fixed-width value, by wire type.
    Scalar(u64),
    Bytes(&'a [u8]),
}

fn for_each_field<'a>(
    mut message: &'a [u8],
    mut visit: impl FnMut(u64, Value<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let field = key >> 3;
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        let value = match key & 7 {
            0 => {
                varint(&mut message)?;
                Value::Scalar(0)
            }
            1 => {
                message = message.get(8..).ok_or(WireError::Length)?;
                Value::Scalar(1)
            }
            2 => {
                let len = usize::try_from(varint(&mut message)?).map_err(|_| WireError::Length)?;
                if len > message.len() {
                    return Err(WireError::Length);
                }
                let (bytes, rest) = message.split_at(len);
                message = rest;
                Value::Bytes(bytes)
            }
            5 => {
                message = message.get(4..).ok_or(WireError::Length)?;
                Value::Scalar(5)
            }
            // Groups (3, 4) are long deprecated and no OTLP message has them.
            other => return Err(WireError::WireType(other)),
        };
        visit(field, value)?;
    }
    Ok(())
}

fn varint(input: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for (i, byte) in input.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(WireError::Varint)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
    };
    use prost::Message as _;

    use super::*;

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            name: name.to_owned(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_100_000,
            attributes: vec![KeyValue {
                key: "http.response.status_code".to_owned(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(200)),
                }),
                ..Default::default()
            }],
            status: Some(Status {
                message: String::new(),
                code: 1,
            }),
            flags: 0x301,
            ..Default::default()
        }
    }

    fn request(shape: &[&[usize]]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".to_owned(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "loupe".to_owned(),
                                ..Default::default()
                            }),
                            spans: (0..n).map(|i| span(&format!("GET /{i}"))).collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".to_owned(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn counts_as_a_full_decode_does() {
        for shape in [
            &[][..],
            &[&[][..]][..],
            &[&[0][..]][..],
            &[&[1][..]][..],
            &[&[3, 0, 2][..], &[][..], &[5][..]][..],
            &[&[512][..]][..],
        ] {
            let request = request(shape);
            let expected: usize = shape.iter().flat_map(|s| s.iter()).sum();
            let body = request.encode_to_vec();
            assert_eq!(span_count(&body), Ok(expected), "shape {shape:?}");
            let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            assert_eq!(super::super::flatten::span_count(&decoded), expected);
        }
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut body = request(&[&[2]]).encode_to_vec();
        // Field 9 as varint, fixed64, bytes and fixed32.
        body.extend([9 << 3, 0x96, 0x01]);
        body.extend([(9 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        body.extend([(9 << 3) | 2, 3, b'a', b'b', b'c']);
        body.extend([(9 << 3) | 5, 1, 2, 3, 4]);
        assert_eq!(span_count(&body), Ok(2));
    }

    #[test]
    fn malformed_bodies_are_errors_not_counts() {
        let body = request(&[&[2, 1]]).encode_to_vec();
        // Cut anywhere inside, the framing no longer holds: the outer length runs past
        // the end, or a field's value is cut.
        for cut in 1..body.len() {
            assert!(span_count(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(span_count(&[0x80; 11]), Err(WireError::Varint));
        assert_eq!(span_count(&[0x0a, 5, 1]), Err(WireError::Length));
        assert_eq!(span_count(&[0x0b]), Err(WireError::WireType(3)));
        // resource_spans as a varint.
        assert_eq!(span_count(&[0x08, 0x01]), Err(WireError::WireType(0)));
        assert_eq!(span_count(&[0x00, 0x00]), Err(WireError::FieldZero));
        assert_eq!(span_count(&[0x09, 1, 2]), Err(WireError::Length));
        assert_eq!(span_count(&[0x0d, 1]), Err(WireError::Length));
        // A length that does not fit in memory, not a panic.
        let mut huge = vec![0x0a];
        huge.extend([0xff; 9]);
        huge.push(0x01);
        assert_eq!(span_count(&huge), Err(WireError::Length));
        // Malformed inside a span: the count does not stop at the outer framing.
        let mut span_bytes = vec![0x0b];
        let mut scope = vec![0x12, span_bytes.len() as u8];
        scope.append(&mut span_bytes);
        let mut resource = vec![0x12, scope.len() as u8];
        resource.append(&mut scope);
        let mut body = vec![0x0a, resource.len() as u8];
        body.append(&mut resource);
        assert_eq!(span_count(&body), Err(WireError::WireType(3)));
    }
}
