//! W3C Trace Context: `traceparent` and `tracestate`.

use super::hex::{Case, decode_exact};
use crate::span::{SpanId, TraceId};

/// Longest `tracestate` loupe passes on. The spec lets vendors drop a longer one, and keeping
/// it bounded keeps every span bounded.
pub const TRACESTATE_MAX_LEN: usize = 512;

/// Length of a version-00 `traceparent`: `vv-<32>-<16>-ff`.
const TRACEPARENT_LEN: usize = 55;

/// Optional whitespace around a header value, as HTTP defines it.
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// Parses a `traceparent` value into trace id, parent span id and trace flags.
///
/// Follows the Trace Context rules: lowercase hex only, version `ff` invalid, version `00`
/// exactly 55 characters, a later version may append fields after a `-` that are ignored,
/// and all-zero ids are invalid.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, u8)> {
    let b = trim_ows(value).as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return None;
    }
    let [version] = decode_exact::<1>(&b[0..2], Case::Lower)?;
    if version == 0xff {
        return None;
    }
    if version == 0 && b.len() != TRACEPARENT_LEN {
        return None;
    }
    // A future version keeps the first four fields' layout; anything after must start a new
    // field, or the flags field itself was longer than two digits.
    if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(decode_exact::<16>(&b[3..35], Case::Lower)?);
    let span_id = SpanId(decode_exact::<8>(&b[36..52], Case::Lower)?);
    let [flags] = decode_exact::<1>(&b[53..55], Case::Lower)?;
    if !trace_id.is_valid() || !span_id.is_valid() {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// The combined `tracestate` of a request: several headers join with `,` as HTTP list
/// headers do. Empty or longer than [`TRACESTATE_MAX_LEN`] yields `None`.
pub(super) fn tracestate<'a>(values: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
    let parts = values.map(trim_ows).filter(|v| !v.is_empty());
    // Measure before allocating so a huge header never gets copied.
    let (count, bytes) = parts.clone().fold((0usize, 0usize), |(n, len), v| {
        (n + 1, len.saturating_add(v.len()))
    });
    if count == 0 || bytes.saturating_add(count - 1) > TRACESTATE_MAX_LEN {
        return None;
    }
    let mut out = String::with_capacity(bytes + count - 1);
    for (i, v) in parts.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(v);
    }
    Some(out)
}

/// `00-{trace-id}-{parent-id}-{flags}`.
pub fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> String {
    format!("00-{trace_id}-{span_id}-{flags:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    #[test]
    fn valid_version_00() {
        assert_eq!(
            parse_traceparent(TP),
            Some((TraceId(TRACE), SpanId(SPAN), 0x01))
        );
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(parse_traceparent(&unsampled).map(|t| t.2), Some(0x00));
    }

    #[test]
    fn unknown_flag_bits_are_kept() {
        let tp = TP.replace("-01", "-03");
        assert_eq!(parse_traceparent(&tp).map(|t| t.2), Some(0x03));
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert!(parse_traceparent(&format!("  {TP}\t")).is_some());
        assert!(parse_traceparent(&format!("\t{TP}")).is_some());
    }

    #[test]
    fn inner_whitespace_is_invalid() {
        assert!(parse_traceparent(&TP.replacen('-', " -", 1)).is_none());
    }

    #[test]
    fn uppercase_is_invalid_in_every_field() {
        assert!(parse_traceparent(&TP.replace("4bf9", "4BF9")).is_none());
        assert!(parse_traceparent(&TP.replace("00f067aa", "00F067AA")).is_none());
        let upper_flags = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A";
        assert!(parse_traceparent(upper_flags).is_none());
        let upper_version = TP.replacen("00", "0A", 1);
        assert!(parse_traceparent(&upper_version).is_none());
    }

    #[test]
    fn version_ff_is_invalid() {
        assert!(parse_traceparent(&TP.replacen("00", "ff", 1)).is_none());
    }

    #[test]
    fn non_hex_version_is_invalid() {
        assert!(parse_traceparent(&TP.replacen("00", "0g", 1)).is_none());
    }

    #[test]
    fn zero_ids_are_invalid() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert!(parse_traceparent(zero_trace).is_none());
        assert!(parse_traceparent(zero_span).is_none());
    }

    #[test]
    fn wrong_lengths_are_invalid() {
        assert!(parse_traceparent("").is_none());
        assert!(parse_traceparent(&TP[..54]).is_none());
        // Trace id one digit short, flags one digit long: same total length.
        let shifted = "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-011";
        assert!(parse_traceparent(shifted).is_none());
        let long_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b71-1";
        assert!(parse_traceparent(long_span).is_none());
        assert!(parse_traceparent(&format!("{TP}0")).is_none());
    }

    #[test]
    fn wrong_separators_are_invalid() {
        assert!(parse_traceparent(&TP.replace('-', "_")).is_none());
        let b = TP.as_bytes();
        for i in [2usize, 35, 52] {
            let mut v = b.to_vec();
            v[i] = b'x';
            let s = String::from_utf8(v).unwrap_or_default();
            assert!(parse_traceparent(&s).is_none(), "separator {i}");
        }
    }

    #[test]
    fn version_00_rejects_extra_fields() {
        assert!(parse_traceparent(&format!("{TP}-extra")).is_none());
        assert!(parse_traceparent(&format!("{TP}-")).is_none());
    }

    #[test]
    fn later_version_accepts_extra_fields() {
        let v01 = TP.replacen("00", "01", 1);
        assert!(parse_traceparent(&v01).is_some());
        assert_eq!(
            parse_traceparent(&format!("{v01}-what-the-future-holds")),
            Some((TraceId(TRACE), SpanId(SPAN), 0x01))
        );
        let v_cc = TP.replacen("00", "cc", 1);
        assert!(parse_traceparent(&format!("{v_cc}-x")).is_some());
    }

    #[test]
    fn later_version_requires_dash_after_flags() {
        let v01 = TP.replacen("00", "01", 1);
        assert!(parse_traceparent(&format!("{v01}x")).is_none());
        assert!(parse_traceparent(&format!("{v01}1-x")).is_none());
    }

    #[test]
    fn non_ascii_does_not_panic() {
        let mut s = String::from("00-");
        s.push_str(&"é".repeat(30));
        assert!(parse_traceparent(&s).is_none());
        assert!(parse_traceparent(&TP.replacen('4', "é", 1)).is_none());
    }

    #[test]
    fn format_round_trips() {
        let s = format_traceparent(&TraceId(TRACE), &SpanId(SPAN), 0x01);
        assert_eq!(s, TP);
        let s = format_traceparent(&TraceId(TRACE), &SpanId(SPAN), 0x00);
        assert!(s.ends_with("-00"));
        assert_eq!(
            parse_traceparent(&s),
            Some((TraceId(TRACE), SpanId(SPAN), 0x00))
        );
    }

    #[test]
    fn tracestate_joins_and_trims() {
        let values = ["rojo=00f067aa0ba902b7 ", " congo=t61rcWkgMzE"];
        assert_eq!(
            tracestate(values.iter().copied()).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
    }

    #[test]
    fn tracestate_empty_is_none() {
        assert_eq!(tracestate([" ", ""].iter().copied()), None);
        assert_eq!(tracestate(std::iter::empty()), None);
    }

    #[test]
    fn tracestate_length_cap() {
        let at_cap = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 2));
        assert_eq!(
            tracestate(std::iter::once(at_cap.as_str())).map(|s| s.len()),
            Some(TRACESTATE_MAX_LEN)
        );
        let over = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 1));
        assert_eq!(tracestate(std::iter::once(over.as_str())), None);
        // Two halves that only exceed the cap once the joining comma is counted.
        let half = "a".repeat(TRACESTATE_MAX_LEN / 2);
        assert_eq!(
            tracestate([half.as_str(), half.as_str()].iter().copied()),
            None
        );
    }
}
