//! B3 propagation, single header (`b3`) and multi header (`x-b3-*`).

use super::hex::{Case, decode_exact};
use crate::span::{SpanId, TraceId};

const SAMPLED: u8 = 0x01;
const NOT_SAMPLED: u8 = 0x00;

/// 64-bit trace ids are left-padded to 128 bits, as W3C-based backends expect.
fn trace_id(s: &str) -> Option<TraceId> {
    let b = s.as_bytes();
    let id = match b.len() {
        32 => TraceId(decode_exact::<16>(b, Case::Any)?),
        16 => {
            let low = decode_exact::<8>(b, Case::Any)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            TraceId(id)
        }
        _ => return None,
    };
    id.is_valid().then_some(id)
}

fn span_id(s: &str) -> Option<SpanId> {
    let id = SpanId(decode_exact::<8>(s.as_bytes(), Case::Any)?);
    id.is_valid().then_some(id)
}

/// The sampling field of the single header. Debug implies sampled.
fn single_sampling(s: &str) -> Option<u8> {
    match s {
        "1" | "d" => Some(SAMPLED),
        "0" => Some(NOT_SAMPLED),
        _ => None,
    }
}

/// Parses a `b3` single header: `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]`.
///
/// A lone sampling decision (`0`, `1`, `d`) carries no ids and yields `None`. An absent
/// sampling field means the decision was deferred; loupe records such spans, so it reads
/// as sampled.
pub fn parse_b3_single(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let value = value.trim_matches([' ', '\t']);
    let mut fields = value.split('-');
    let trace = trace_id(fields.next()?)?;
    let span = span_id(fields.next()?)?;
    let flags = match fields.next() {
        Some(s) => single_sampling(s)?,
        None => SAMPLED,
    };
    if let Some(parent) = fields.next() {
        // Unused, but a malformed one means the whole header is malformed.
        decode_exact::<8>(parent.as_bytes(), Case::Any)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some((trace, span, flags))
}

/// Parses the multi-header form from its already-looked-up values. `x-b3-flags: 1` is debug,
/// which implies sampled; `x-b3-sampled` accepts `1`/`0` and the legacy `true`/`false`.
pub(super) fn parse_b3_multi(
    trace: &str,
    span: &str,
    sampled: Option<&str>,
    debug_flags: Option<&str>,
) -> Option<(TraceId, SpanId, u8)> {
    let ows = [' ', '\t'];
    let trace = trace_id(trace.trim_matches(ows))?;
    let span = span_id(span.trim_matches(ows))?;
    let debug = debug_flags.map(|f| f.trim_matches(ows)) == Some("1");
    let flags = match sampled.map(|s| s.trim_matches(ows)) {
        _ if debug => SAMPLED,
        None => SAMPLED,
        Some("1" | "true") => SAMPLED,
        Some("0" | "false") => NOT_SAMPLED,
        Some(_) => return None,
    };
    Some((trace, span, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T32: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const T16: &str = "a3ce929d0e0e4736";
    const S: &str = "e457b5a2e4d86bd1";
    const P: &str = "05e3ac9a4f6e3b90";

    fn t32() -> TraceId {
        TraceId([
            0x80, 0xf1, 0x98, 0xee, 0x56, 0x34, 0x3b, 0xa8, 0x64, 0xfe, 0x8b, 0x2a, 0x57, 0xd3,
            0xef, 0xf7,
        ])
    }
    fn t16() -> TraceId {
        TraceId([
            0, 0, 0, 0, 0, 0, 0, 0, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
        ])
    }
    fn s() -> SpanId {
        SpanId([0xe4, 0x57, 0xb5, 0xa2, 0xe4, 0xd8, 0x6b, 0xd1])
    }

    #[test]
    fn single_full() {
        let v = format!("{T32}-{S}-1-{P}");
        assert_eq!(parse_b3_single(&v), Some((t32(), s(), SAMPLED)));
    }

    #[test]
    fn single_64_bit_trace_id_is_left_padded() {
        let v = format!("{T16}-{S}-1");
        assert_eq!(parse_b3_single(&v), Some((t16(), s(), SAMPLED)));
    }

    #[test]
    fn single_each_sampling_value() {
        for (sampling, want) in [("1", SAMPLED), ("0", NOT_SAMPLED), ("d", SAMPLED)] {
            let v = format!("{T32}-{S}-{sampling}");
            assert_eq!(parse_b3_single(&v).map(|c| c.2), Some(want), "{sampling}");
        }
    }

    #[test]
    fn single_absent_sampling_reads_as_sampled() {
        let v = format!("{T32}-{S}");
        assert_eq!(parse_b3_single(&v), Some((t32(), s(), SAMPLED)));
    }

    #[test]
    fn single_lone_sampling_carries_no_ids() {
        for v in ["0", "1", "d"] {
            assert_eq!(parse_b3_single(v), None);
        }
    }

    #[test]
    fn single_malformed() {
        let cases = [
            String::new(),
            T32.to_string(),
            format!("{T32}-"),
            format!("{T32}-{S}-"),
            format!("{T32}-{S}-x"),
            format!("{T32}-{S}-true"),
            format!("{T32}-{S}-1-"),
            format!("{T32}-{S}-1-abc"),
            format!("{T32}-{S}-1-{P}-extra"),
            format!("{}-{S}", &T32[..31]),
            format!("{}-{S}", &T32[..24]),
            format!("{T32}-{}", &S[..15]),
            format!("{T32}0-{S}"),
            format!("{}-{S}", "0".repeat(32)),
            format!("{}-{S}", "0".repeat(16)),
            format!("{T32}-{}", "0".repeat(16)),
            format!("{T32}-{}", "g".repeat(16)),
            format!("{T32}:{S}"),
        ];
        for v in &cases {
            assert_eq!(parse_b3_single(v), None, "{v:?}");
        }
    }

    #[test]
    fn single_uppercase_is_tolerated_and_whitespace_trimmed() {
        let v = format!(" {}-{}-1 ", T32.to_uppercase(), S.to_uppercase());
        assert_eq!(parse_b3_single(&v), Some((t32(), s(), SAMPLED)));
    }

    #[test]
    fn multi_each_sampling_value() {
        let cases = [
            (Some("1"), SAMPLED),
            (Some("0"), NOT_SAMPLED),
            (Some("true"), SAMPLED),
            (Some("false"), NOT_SAMPLED),
            (None, SAMPLED),
        ];
        for (sampled, want) in cases {
            assert_eq!(
                parse_b3_multi(T32, S, sampled, None),
                Some((t32(), s(), want)),
                "{sampled:?}"
            );
        }
        assert_eq!(parse_b3_multi(T32, S, Some("yes"), None), None);
    }

    #[test]
    fn multi_debug_implies_sampled() {
        assert_eq!(
            parse_b3_multi(T32, S, None, Some("1")).map(|c| c.2),
            Some(SAMPLED)
        );
        assert_eq!(
            parse_b3_multi(T32, S, Some("0"), Some("1")).map(|c| c.2),
            Some(SAMPLED)
        );
        assert_eq!(
            parse_b3_multi(T32, S, Some("0"), Some("0")).map(|c| c.2),
            Some(NOT_SAMPLED)
        );
    }

    #[test]
    fn multi_64_bit_trace_id() {
        assert_eq!(
            parse_b3_multi(T16, S, Some("1"), None),
            Some((t16(), s(), SAMPLED))
        );
    }

    #[test]
    fn multi_invalid_ids() {
        assert_eq!(parse_b3_multi("", S, None, None), None);
        assert_eq!(parse_b3_multi(T32, "", None, None), None);
        assert_eq!(parse_b3_multi(&T32[..20], S, None, None), None);
        assert_eq!(parse_b3_multi(T32, &"0".repeat(16), None, None), None);
    }
}
