//! Reads the agent's `/metrics` (Prometheus text exposition format): only sample names and
//! values matter here, summed over label sets.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PromError {
    #[error("line {line}: unterminated label set")]
    UnterminatedLabels { line: usize },
    #[error("line {line}: no value")]
    NoValue { line: usize },
    #[error("line {line}: value {value:?} is not a number")]
    BadValue { line: usize, value: String },
}

/// Every sample's value, summed by metric name.
#[derive(Debug, Default, PartialEq)]
pub struct Metrics {
    sums: BTreeMap<String, f64>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.sums.get(name).copied()
    }
}

pub fn parse(text: &str) -> Result<Metrics, PromError> {
    let mut metrics = Metrics::default();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = split_sample(line, index + 1)?;
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or(PromError::NoValue { line: index + 1 })?;
        let value = parse_value(value_text).ok_or_else(|| PromError::BadValue {
            line: index + 1,
            value: value_text.to_owned(),
        })?;
        *metrics.sums.entry(name.to_owned()).or_insert(0.0) += value;
    }
    Ok(metrics)
}

/// Splits `name{labels} rest` or `name rest` into the name and what follows the labels.
fn split_sample(line: &str, line_no: usize) -> Result<(&str, &str), PromError> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or(PromError::NoValue { line: line_no })?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    if !rest.starts_with('{') {
        return Ok((name, rest));
    }
    // Label values are quoted and may contain '}' and escaped quotes.
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == '}' && !in_quotes {
            return Ok((name, &rest[i + 1..]));
        }
    }
    Err(PromError::UnterminatedLabels { line: line_no })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP loupe_spans_exported_total Spans accepted by the OTLP receiver.
# TYPE loupe_spans_exported_total counter
loupe_spans_exported_total 12345
# TYPE loupe_ringbuf_drops_total counter
loupe_ringbuf_drops_total{cpu=\"0\"} 3
loupe_ringbuf_drops_total{cpu=\"1\"} 4 1700000000000
loupe_spans_created_total{service=\"a}b\",note=\"say \\\"hi\\\"\"} 2e3
http_server_request_duration_seconds_bucket{le=\"+Inf\"} 9
";

    #[test]
    fn samples_sum_over_labels() {
        let m = parse(SAMPLE);
        let Ok(m) = m else {
            panic!("parse failed: {m:?}");
        };
        assert_eq!(m.get("loupe_spans_exported_total"), Some(12345.0));
        assert_eq!(m.get("loupe_ringbuf_drops_total"), Some(7.0));
        assert_eq!(m.get("loupe_spans_created_total"), Some(2000.0));
        assert_eq!(
            m.get("http_server_request_duration_seconds_bucket"),
            Some(9.0)
        );
        assert_eq!(m.get("loupe_missing"), None);
    }

    #[test]
    fn special_values() {
        let m = parse("a +Inf\nb NaN\nc -1.5\n");
        assert!(m.as_ref().is_ok_and(|m| m.get("a") == Some(f64::INFINITY)));
        assert!(
            m.as_ref()
                .is_ok_and(|m| m.get("b").is_some_and(f64::is_nan))
        );
        assert!(m.is_ok_and(|m| m.get("c") == Some(-1.5)));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(
            parse("ok 1\nbroken{a=\"1\" 2\n"),
            Err(PromError::UnterminatedLabels { line: 2 })
        );
        assert_eq!(parse("lonely\n"), Err(PromError::NoValue { line: 1 }));
        assert_eq!(parse("x{a=\"1\"}\n"), Err(PromError::NoValue { line: 1 }));
        assert_eq!(
            parse("x one\n"),
            Err(PromError::BadValue {
                line: 1,
                value: "one".to_owned()
            })
        );
        assert_eq!(parse(""), Ok(Metrics::default()));
    }
}
