//! One trace as an indented tree of text lines.

use std::{borrow::Cow, collections::HashMap, fmt::Write as _};

use crate::span::{FinishedSpan, HttpSpan, SpanId, SpanKind, TraceId};

/// Deeper spans are still printed, but no further to the right.
const MAX_INDENT_DEPTH: usize = 32;

/// Renders a trace: a `trace <id>` header, then one line per span with children under their
/// parent. Spans whose parent is not among `spans` are listed at the top level, so every span
/// given is printed exactly once, even with repeated ids or parent cycles.
pub fn render_trace(trace_id: &TraceId, spans: &[FinishedSpan]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trace {}", hex(&trace_id.0));

    let mut by_id: HashMap<SpanId, usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        by_id.entry(s.span.span_id).or_insert(i);
    }
    let parent = |i: usize| {
        spans[i]
            .span
            .parent_span_id
            .and_then(|p| by_id.get(&p).copied())
            .filter(|&p| p != i)
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for i in 0..spans.len() {
        match parent(i) {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].span.start_unix_ns, i));
    by_start(&mut roots);
    for list in children.values_mut() {
        by_start(list);
    }

    let mut visited = vec![false; spans.len()];
    // Spans caught in a parent cycle are reachable from no root: each becomes a root in turn.
    let start_points = roots.into_iter().chain(0..spans.len());
    for root in start_points {
        let mut stack = vec![(root, 0usize)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                continue;
            }
            write_line(&mut out, &spans[i], depth);
            if let Some(kids) = children.get(&i) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
    }
    out
}

fn write_line(out: &mut String, finished: &FinishedSpan, depth: usize) {
    let span = &finished.span;
    let indent = 2 * (1 + depth.min(MAX_INDENT_DEPTH));
    let kind = match span.kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
    };
    let _ = write!(
        out,
        "{:indent$}{}  {}  {}  [{}]  {}",
        "",
        clean(&finished.resource.service_name),
        kind,
        clean(&span.name),
        status(span),
        duration(span),
    );
    if let Some(link) = &span.link {
        let _ = write!(
            out,
            "  (for span {} of trace {})",
            hex(&link.span_id.0),
            hex(&link.trace_id.0)
        );
    }
    out.push('\n');
}

fn status(span: &HttpSpan) -> String {
    let verdict = if span.is_error() { "ERROR" } else { "OK" };
    match (span.status_code, &span.error_type) {
        (Some(code), _) => format!("{verdict} {code}"),
        (None, Some(error)) => format!("{verdict} {}", clean(error)),
        (None, None) => verdict.to_owned(),
    }
}

fn duration(span: &HttpSpan) -> String {
    let ns = span.end_unix_ns.saturating_sub(span.start_unix_ns);
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// Captured names come from the network: control characters would garble the terminal.
fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests;
