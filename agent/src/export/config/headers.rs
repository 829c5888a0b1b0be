//! `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, percent-encoded as in
//! W3C baggage.

use std::fmt;

use hyper::http::{HeaderName, HeaderValue};

use super::ExportConfigError;

/// Why a header entry was refused. Never carries the value: it may be a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    MissingEquals,
    EmptyName,
    BadPercentEncoding,
    InvalidName,
    InvalidValue,
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderProblem::MissingEquals => "is not of the form key=value",
            HeaderProblem::EmptyName => "has an empty name",
            HeaderProblem::BadPercentEncoding => "has a bad percent-encoding",
            HeaderProblem::InvalidName => "has a name that is not a valid HTTP header name",
            HeaderProblem::InvalidValue => "has a value that is not a valid HTTP header value",
        })
    }
}

/// Parses the list; `index` in errors counts entries from 1.
pub(super) fn parse(
    var: &'static str,
    value: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ExportConfigError> {
    let mut headers = Vec::new();
    for (i, entry) in value.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let problem = |problem| ExportConfigError::InvalidHeader {
            var,
            index: i + 1,
            problem,
        };
        let (name, val) = entry
            .split_once('=')
            .ok_or_else(|| problem(HeaderProblem::MissingEquals))?;
        let name = percent_decode(name.trim())
            .ok_or_else(|| problem(HeaderProblem::BadPercentEncoding))?;
        let val =
            percent_decode(val.trim()).ok_or_else(|| problem(HeaderProblem::BadPercentEncoding))?;
        if name.is_empty() {
            return Err(problem(HeaderProblem::EmptyName));
        }
        let name =
            HeaderName::from_bytes(&name).map_err(|_| problem(HeaderProblem::InvalidName))?;
        let val =
            HeaderValue::from_bytes(&val).map_err(|_| problem(HeaderProblem::InvalidValue))?;
        headers.push((name, val));
    }
    Ok(headers)
}

/// Decodes `%XX` escapes. A `%` not followed by two hex digits is an error rather than being
/// kept, so that a mangled secret is reported instead of sent.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex_digit(*bytes.get(i + 1)?)?;
            let lo = hex_digit(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> Vec<(String, String)> {
        parse("V", value)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    fn problem(value: &str) -> (usize, HeaderProblem) {
        match parse("V", value) {
            Err(ExportConfigError::InvalidHeader { index, problem, .. }) => (index, problem),
            other => panic!("expected a header error, got {other:?}"),
        }
    }

    #[test]
    fn parses_pairs_trims_and_lowercases_names() {
        assert_eq!(
            ok(" Api-Key = secret , x-tenant=acme"),
            vec![
                ("api-key".to_owned(), "secret".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned())
            ]
        );
    }

    #[test]
    fn percent_decodes_values_and_keeps_equals_in_values() {
        assert_eq!(
            ok("authorization=Basic%20dXNlcjpwYXNz,token=a=b"),
            vec![
                ("authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned()),
                ("token".to_owned(), "a=b".to_owned())
            ]
        );
    }

    #[test]
    fn skips_empty_entries() {
        assert_eq!(ok(",a=1,,"), vec![("a".to_owned(), "1".to_owned())]);
        assert!(ok("").is_empty());
    }

    #[test]
    fn empty_value_is_allowed() {
        assert_eq!(ok("a="), vec![("a".to_owned(), String::new())]);
    }

    #[test]
    fn rejects_malformed_entries_by_index() {
        assert_eq!(problem("a=1,novalue"), (2, HeaderProblem::MissingEquals));
        assert_eq!(problem("=1"), (1, HeaderProblem::EmptyName));
        assert_eq!(problem("a=%4"), (1, HeaderProblem::BadPercentEncoding));
        assert_eq!(problem("a=%zz"), (1, HeaderProblem::BadPercentEncoding));
        assert_eq!(problem("bad name=1"), (1, HeaderProblem::InvalidName));
        assert_eq!(problem("a=line%0Abreak"), (1, HeaderProblem::InvalidValue));
    }

    #[test]
    fn error_message_hides_the_value() {
        let err = parse("OTEL_EXPORTER_OTLP_HEADERS", "authorization=%zzsecret").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
