//! Span attributes whose key and value are both constants (`http.request.method=GET`,
//! `url.scheme=http`, `network.protocol.version=1.1`), encoded as a span's `KeyValue`
//! field once, at compile time. Every span carries three of them; copying them instead of
//! writing each from its parts saved about 140 instructions a span when there were four
//! (with `network.protocol.name`), the lookups included.

use crate::protocol::http1::CONVENTION_METHODS;

/// An attribute known at compile time, with its encoding as field 9 of a `Span`.
pub struct ConstAttr {
    pub key: &'static str,
    pub value: &'static str,
    pub encoded: &'static [u8],
}

/// The bytes of `KeyValue { key, value: AnyValue { string_value } }` as span field 9.
/// Every length here fits one varint byte, which the build checks.
const fn encoded_len(key: &str, value: &str) -> usize {
    let any_value = 2 + value.len();
    let key_value = 2 + key.len() + 2 + any_value;
    2 + key_value
}

const fn encode<const N: usize>(key: &str, value: &str) -> [u8; N] {
    let any_value = 2 + value.len();
    let key_value = 2 + key.len() + 2 + any_value;
    assert!(
        key_value < 0x80,
        "a constant attribute needs one-byte lengths"
    );
    assert!(
        N == encoded_len(key, value),
        "the array must fit the encoding"
    );
    let mut out = [0u8; N];
    // Span.attributes = 9, length-delimited.
    out[0] = (9 << 3) | 2;
    out[1] = key_value as u8;
    // KeyValue.key = 1.
    out[2] = (1 << 3) | 2;
    out[3] = key.len() as u8;
    let mut at = 4;
    let mut i = 0;
    while i < key.len() {
        out[at] = key.as_bytes()[i];
        at += 1;
        i += 1;
    }
    // KeyValue.value = 2, AnyValue.string_value = 1.
    out[at] = (2 << 3) | 2;
    out[at + 1] = any_value as u8;
    out[at + 2] = (1 << 3) | 2;
    out[at + 3] = value.len() as u8;
    at += 4;
    let mut i = 0;
    while i < value.len() {
        out[at] = value.as_bytes()[i];
        at += 1;
        i += 1;
    }
    out
}

macro_rules! const_attr {
    ($key:expr, $value:expr) => {{
        const BYTES: [u8; encoded_len($key, $value)] = encode($key, $value);
        ConstAttr {
            key: $key,
            value: $value,
            encoded: &BYTES,
        }
    }};
}

const METHOD: &str = "http.request.method";

/// The conventions' methods, in [`CONVENTION_METHODS`]' order, then `_OTHER`.
static METHODS: [ConstAttr; 11] = [
    const_attr!(METHOD, CONVENTION_METHODS[0]),
    const_attr!(METHOD, CONVENTION_METHODS[1]),
    const_attr!(METHOD, CONVENTION_METHODS[2]),
    const_attr!(METHOD, CONVENTION_METHODS[3]),
    const_attr!(METHOD, CONVENTION_METHODS[4]),
    const_attr!(METHOD, CONVENTION_METHODS[5]),
    const_attr!(METHOD, CONVENTION_METHODS[6]),
    const_attr!(METHOD, CONVENTION_METHODS[7]),
    const_attr!(METHOD, CONVENTION_METHODS[8]),
    const_attr!(METHOD, CONVENTION_METHODS[9]),
    const_attr!(METHOD, "_OTHER"),
];
const _: () = assert!(CONVENTION_METHODS.len() == 10);

static SCHEMES: [ConstAttr; 2] = [
    const_attr!("url.scheme", "http"),
    const_attr!("url.scheme", "https"),
];

static VERSIONS: [ConstAttr; 2] = [
    const_attr!("network.protocol.version", "1.1"),
    const_attr!("network.protocol.version", "1.0"),
];

fn find(table: &'static [ConstAttr], value: &str) -> Option<&'static ConstAttr> {
    table.iter().find(|attr| attr.value == value)
}

pub fn method(value: &str) -> Option<&'static ConstAttr> {
    find(&METHODS, value)
}

pub fn scheme(value: &str) -> Option<&'static ConstAttr> {
    find(&SCHEMES, value)
}

pub fn protocol_version(value: &str) -> Option<&'static ConstAttr> {
    find(&VERSIONS, value)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, KeyValue, any_value::Value},
        trace::v1::Span,
    };
    use prost::Message as _;

    use super::*;

    #[test]
    fn each_constant_is_the_span_field_prost_writes() {
        let all = METHODS.iter().chain(&SCHEMES).chain(&VERSIONS);
        for attr in all {
            let span = Span {
                attributes: vec![KeyValue {
                    key: attr.key.to_owned(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(attr.value.to_owned())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(
                attr.encoded,
                span.encode_to_vec(),
                "{}={}",
                attr.key,
                attr.value
            );
        }
        assert_eq!(method("PATCH").map(|a| a.value), Some("PATCH"));
        assert_eq!(method("_OTHER").map(|a| a.value), Some("_OTHER"));
        assert!(method("PURGE").is_none());
        assert_eq!(scheme("https").map(|a| a.value), Some("https"));
        assert_eq!(protocol_version("1.0").map(|a| a.value), Some("1.0"));
    }
}
