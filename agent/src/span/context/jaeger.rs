//! Jaeger propagation: `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`.

use super::hex::{Case, decode_padded};
use crate::span::{SpanId, TraceId};

/// Jaeger flag bits: 1 is sampled, 2 is debug (which forces sampling).
const JAEGER_SAMPLED: u8 = 0x01;
const JAEGER_DEBUG: u8 = 0x02;

/// Parses an `uber-trace-id` value. Ids may be shorter than full width (Jaeger clients drop
/// leading zeros) and are left-padded; the separators may arrive URL-encoded as `%3A`.
/// The deprecated parent span id must be hex but is otherwise ignored (it is often `0`).
/// Returns W3C flags: sampled when Jaeger's sampled or debug bit is set.
pub fn parse_uber_trace_id(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let value = value.trim_matches([' ', '\t']);
    let decoded;
    let value = if value.contains('%') {
        decoded = value.replace("%3A", ":").replace("%3a", ":");
        decoded.as_str()
    } else {
        value
    };
    let mut fields = value.split(':');
    let trace = TraceId(decode_padded::<16>(fields.next()?.as_bytes(), Case::Any)?);
    let span = SpanId(decode_padded::<8>(fields.next()?.as_bytes(), Case::Any)?);
    decode_padded::<8>(fields.next()?.as_bytes(), Case::Any)?;
    let [jaeger_flags] = decode_padded::<1>(fields.next()?.as_bytes(), Case::Any)?;
    if fields.next().is_some() || !trace.is_valid() || !span.is_valid() {
        return None;
    }
    let sampled = jaeger_flags & (JAEGER_SAMPLED | JAEGER_DEBUG) != 0;
    Some((trace, span, u8::from(sampled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(low: u64) -> TraceId {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        TraceId(id)
    }

    #[test]
    fn full_width() {
        let v = "80f198ee56343ba864fe8b2a57d3eff7:e457b5a2e4d86bd1:05e3ac9a4f6e3b90:1";
        let (t, s, f) = parse_uber_trace_id(v).unwrap_or_default();
        assert_eq!(t.0[0], 0x80);
        assert_eq!(t.0[15], 0xf7);
        assert_eq!(s, SpanId([0xe4, 0x57, 0xb5, 0xa2, 0xe4, 0xd8, 0x6b, 0xd1]));
        assert_eq!(f, 1);
    }

    #[test]
    fn short_ids_are_left_padded() {
        assert_eq!(
            parse_uber_trace_id("abc:1f:0:1"),
            Some((trace(0xabc), SpanId([0, 0, 0, 0, 0, 0, 0, 0x1f]), 1))
        );
        assert_eq!(
            parse_uber_trace_id("a3ce929d0e0e4736:e457b5a2e4d86bd1:0:1").map(|c| c.0),
            Some(trace(0xa3ce_929d_0e0e_4736))
        );
    }

    #[test]
    fn flag_bits() {
        for (flags, want) in [
            ("0", 0),
            ("1", 1),
            ("2", 1),
            ("3", 1),
            ("4", 0),
            ("05", 1),
            ("ff", 1),
        ] {
            let v = format!("abc:def:0:{flags}");
            assert_eq!(parse_uber_trace_id(&v).map(|c| c.2), Some(want), "{flags}");
        }
    }

    #[test]
    fn url_encoded_separators() {
        assert_eq!(
            parse_uber_trace_id("abc%3Adef%3a0%3A1"),
            Some((trace(0xabc), SpanId([0, 0, 0, 0, 0, 0, 0x0d, 0xef]), 1))
        );
    }

    #[test]
    fn uppercase_and_whitespace_tolerated() {
        assert_eq!(
            parse_uber_trace_id(" ABC:DEF:0:1\t").map(|c| c.0),
            Some(trace(0xabc))
        );
    }

    #[test]
    fn invalid() {
        let cases = [
            "",
            "abc",
            "abc:def",
            "abc:def:0",
            "abc:def:0:1:extra",
            "0:def:0:1",
            "abc:0:0:1",
            "00000000000000000000000000000000:def:0:1",
            ":def:0:1",
            "abc::0:1",
            "abc:def::1",
            "abc:def:0:",
            "abc:def:0:100",
            "xyz:def:0:1",
            "abc:def:0:g",
            "abc:def:zz:1",
            "abc-def-0-1",
            "abc%3Adef%3A0",
            "abc%3Bdef%3B0%3B1",
        ];
        for v in cases {
            assert_eq!(parse_uber_trace_id(v), None, "{v:?}");
        }
        let long_trace = format!("{}:def:0:1", "1".repeat(33));
        assert_eq!(parse_uber_trace_id(&long_trace), None);
        let long_span = format!("abc:{}:0:1", "1".repeat(17));
        assert_eq!(parse_uber_trace_id(&long_span), None);
    }
}
