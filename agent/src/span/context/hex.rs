//! Hex decoding shared by the propagation formats. W3C demands lowercase; B3 and Jaeger
//! senders are less uniform, so their parsers tolerate uppercase.

use std::fmt::Write as _;

/// Which hex digits a format accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Case {
    Lower,
    Any,
}

fn nibble(c: u8, case: Case) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if case == Case::Any => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * N` hex digits.
pub(super) fn decode_exact<const N: usize>(s: &[u8], case: Case) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    decode_padded(s, case)
}

/// Decodes 1 to `2 * N` hex digits into the low end of an `N`-byte big-endian array, as
/// formats with shortened ids (64-bit B3 trace ids, Jaeger's unpadded ids) require.
pub(super) fn decode_padded<const N: usize>(s: &[u8], case: Case) -> Option<[u8; N]> {
    if s.is_empty() || s.len() > 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    // Walk from the least significant digit so an odd count pads the high nibble with zero.
    for (i, &c) in s.iter().rev().enumerate() {
        let v = nibble(c, case)?;
        let byte = N - 1 - i / 2;
        out[byte] |= if i % 2 == 0 { v } else { v << 4 };
    }
    Some(out)
}

pub(super) fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_requires_full_length() {
        assert_eq!(decode_exact::<2>(b"0a1B", Case::Any), Some([0x0a, 0x1b]));
        assert_eq!(decode_exact::<2>(b"0a1B", Case::Lower), None);
        assert_eq!(decode_exact::<2>(b"0a1", Case::Any), None);
        assert_eq!(decode_exact::<2>(b"0a1bc", Case::Any), None);
        assert_eq!(decode_exact::<2>(b"0g1b", Case::Any), None);
    }

    #[test]
    fn padded_fills_low_bytes() {
        assert_eq!(
            decode_padded::<4>(b"abc", Case::Lower),
            Some([0, 0, 0x0a, 0xbc])
        );
        assert_eq!(decode_padded::<2>(b"1", Case::Lower), Some([0, 1]));
        assert_eq!(decode_padded::<2>(b"", Case::Lower), None);
        assert_eq!(decode_padded::<2>(b"12345", Case::Lower), None);
    }

    #[test]
    fn encode_is_lowercase_and_padded() {
        assert_eq!(encode(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
