//! Text taken from the wire and kept past its buffer (header values, request targets): the
//! short ones inline, so the hosts, user agents and paths of most requests cost no
//! allocation of their own.

use std::{borrow::Cow, fmt, ops::Deref};

/// Bytes held inline: with the length and the variant's tag, the value is as large as a
/// `String`.
const INLINE: usize = 22;

/// Text up to [`INLINE`] bytes long held in place, longer text in a boxed `str`.
#[derive(Clone)]
pub struct InlineText(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is valid UTF-8: only ever copied from a `&str` that short.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl InlineText {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                // SAFETY: the only constructor of an inline value, `From<&str>`, copies
                // a whole `&str` of at most INLINE bytes and sets `len` to its length;
                // `Repr` is private and nothing hands out its bytes mutably, so the first
                // `len` bytes stay that string's UTF-8.
                unsafe { std::str::from_utf8_unchecked(&bytes[..usize::from(*len)]) }
            }
            Repr::Heap(text) => text,
        }
    }

    /// Whether the text is held inline rather than in an allocation of its own.
    #[cfg(test)]
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&str> for InlineText {
    fn from(text: &str) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            // The length fits: INLINE is below 256.
            InlineText(Repr::Inline {
                len: text.len() as u8,
                bytes,
            })
        } else {
            InlineText(Repr::Heap(text.into()))
        }
    }
}

impl From<String> for InlineText {
    fn from(text: String) -> Self {
        if text.len() <= INLINE {
            text.as_str().into()
        } else {
            InlineText(Repr::Heap(text.into_boxed_str()))
        }
    }
}

impl From<Cow<'_, str>> for InlineText {
    fn from(text: Cow<'_, str>) -> Self {
        match text {
            Cow::Borrowed(text) => text.into(),
            Cow::Owned(text) => text.into(),
        }
    }
}

impl Default for InlineText {
    fn default() -> Self {
        "".into()
    }
}

impl Deref for InlineText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for InlineText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for InlineText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for InlineText {}

impl PartialEq<str> for InlineText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for InlineText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for InlineText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for InlineText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_as_large_as_a_string() {
        assert_eq!(size_of::<InlineText>(), size_of::<String>());
    }

    #[test]
    fn keeps_every_length_and_character_it_is_given() {
        let texts = [
            String::new(),
            "a".to_owned(),
            "127.0.0.1:8080".to_owned(),
            "x".repeat(INLINE),
            "x".repeat(INLINE + 1),
            // Multi-byte characters on both sides of the inline limit.
            "é".repeat(INLINE / 2),
            "é".repeat(INLINE / 2 + 1),
            "python-requests/2.32.3 (bench) ✓".to_owned(),
            "y".repeat(4096),
        ];
        for text in texts {
            let borrowed = InlineText::from(text.as_str());
            let owned = InlineText::from(text.clone());
            assert_eq!(borrowed.as_str(), text);
            assert_eq!(owned, borrowed);
            assert_eq!(owned.len(), text.len());
            assert_eq!(format!("{owned}"), text);
            assert_eq!(format!("{owned:?}"), format!("{text:?}"));
        }
    }

    #[test]
    fn short_values_are_inline_and_long_ones_on_the_heap() {
        for len in [0, 1, INLINE, INLINE + 1, 100] {
            let text = "x".repeat(len);
            let inline = len <= INLINE;
            assert_eq!(InlineText::from(text.as_str()).is_inline(), inline, "{len}");
            assert_eq!(InlineText::from(text.clone()).is_inline(), inline, "{len}");
            assert_eq!(
                InlineText::from(Cow::Owned(text)).is_inline(),
                inline,
                "{len}"
            );
        }
    }

    #[test]
    fn compares_by_text_whatever_its_storage() {
        let inline = InlineText::from("abc");
        assert_eq!(inline, "abc");
        assert_ne!(inline, InlineText::from("abd"));
        assert_eq!(InlineText::default(), "");
    }
}
