//! The histograms in the Prometheus text format (0.0.4), served on `/metrics` after the
//! agent's own counters.
//!
//! OpenTelemetry names map the usual way: dots become underscores and the unit becomes a
//! suffix (`http.server.request.duration` in `s` is `http_server_request_duration_seconds`),
//! attributes become labels (`http.route` is `http_route`) and the resource's
//! `service.name` becomes `service_name`. Processes of one service are summed into one
//! series, since nothing else in the labels tells them apart.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use super::{
    histogram::{BOUNDS_SECONDS, Histogram},
    key::{Instrument, SeriesKey},
};

const INSTRUMENTS: [(Instrument, &str, &str); 2] = [
    (
        Instrument::Server,
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests, measured by loupe.",
    ),
    (
        Instrument::Client,
        "http_client_request_duration_seconds",
        "Duration of HTTP client requests, measured by loupe.",
    ),
];

type Labels = Vec<(&'static str, String)>;

/// The labels of a series, in a fixed order, absent attributes left out.
fn labels(key: &SeriesKey) -> Labels {
    let mut labels: Labels = vec![("service_name", key.resource.service_name.clone())];
    if key.overflow {
        labels.push(("otel_metric_overflow", "true".to_owned()));
        return labels;
    }
    labels.push(("http_request_method", key.method.clone()));
    if let Some(route) = &key.route {
        let name = match key.instrument {
            Instrument::Server => "http_route",
            Instrument::Client => "url_template",
        };
        labels.push((name, route.clone()));
    }
    if let Some(status) = key.status_code {
        labels.push(("http_response_status_code", status.to_string()));
    }
    if let Some(error) = &key.error_type {
        labels.push(("error_type", error.clone()));
    }
    if let Some(address) = &key.server_address {
        labels.push(("server_address", address.clone()));
    }
    if let Some(port) = key.server_port {
        labels.push(("server_port", port.to_string()));
    }
    labels.push(("url_scheme", key.scheme.clone()));
    labels
}

/// Renders both histograms, series sorted by their labels.
pub fn render(series: &[(Arc<SeriesKey>, Histogram)]) -> String {
    let mut merged: BTreeMap<(Instrument, Labels), Histogram> = BTreeMap::new();
    for (key, histogram) in series {
        merged
            .entry((key.instrument, labels(key)))
            .and_modify(|h| h.merge(histogram))
            .or_insert_with(|| histogram.clone());
    }
    let mut out = String::new();
    for (instrument, name, help) in INSTRUMENTS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for ((_, labels), histogram) in merged.iter().filter(|((i, _), _)| *i == instrument) {
            write_series(&mut out, name, labels, histogram);
        }
    }
    out
}

fn write_series(out: &mut String, name: &str, labels: &Labels, histogram: &Histogram) {
    let mut base = String::new();
    for (label, value) in labels {
        let _ = write!(base, "{label}=\"");
        escape_into(&mut base, value);
        base.push_str("\",");
    }
    let mut cumulative = 0u64;
    for (bound, count) in BOUNDS_SECONDS.iter().zip(histogram.buckets) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{base}le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{base}le=\"+Inf\"}} {}",
        histogram.count
    );
    let plain = base.trim_end_matches(',');
    let _ = writeln!(out, "{name}_sum{{{plain}}} {}", histogram.sum_seconds());
    let _ = writeln!(out, "{name}_count{{{plain}}} {}", histogram.count);
}

/// Label values escape backslash, double quote and line feed; nothing else.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[path = "prometheus_tests.rs"]
mod tests;
