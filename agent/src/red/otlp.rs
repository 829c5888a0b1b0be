//! Series to an OTLP `ExportMetricsServiceRequest`: one `ResourceMetrics` per traced
//! process's resource, scope `loupe`, one cumulative histogram per instrument.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{InstrumentationScope, KeyValue, any_value::Value},
    metrics::v1::{
        AggregationTemporality, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
        ResourceMetrics, ScopeMetrics, metric::Data,
    },
};

use super::{
    Series,
    histogram::{BOUNDS_SECONDS, Histogram},
    key::{Instrument, SeriesKey},
};
use crate::{
    export::otlp::convert::{kv, to_proto_resource},
    span::Resource,
};

const SCOPE_NAME: &str = "loupe";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

const SERVER: (&str, &str) = (
    "http.server.request.duration",
    "Duration of HTTP server requests.",
);
const CLIENT: (&str, &str) = (
    "http.client.request.duration",
    "Duration of HTTP client requests.",
);

/// The request for one export of every series, as of `now_unix_ns`.
pub fn to_request(series: &[Series], now_unix_ns: u64) -> ExportMetricsServiceRequest {
    // Per resource: its server and its client data points.
    type Points = [Vec<HistogramDataPoint>; 2];
    let mut groups: Vec<(&Arc<Resource>, Points)> = Vec::new();
    for (key, histogram) in series {
        let point = data_point(key, histogram, now_unix_ns);
        let index = key.instrument.index();
        match groups
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, &key.resource) || **r == key.resource)
        {
            Some((_, points)) => points[index].push(point),
            None => {
                let mut points: Points = [Vec::new(), Vec::new()];
                points[index].push(point);
                groups.push((&key.resource, points));
            }
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: groups
            .into_iter()
            .map(|(resource, [server, client])| {
                let metrics = [(SERVER, server), (CLIENT, client)]
                    .into_iter()
                    .filter(|(_, points)| !points.is_empty())
                    .map(|((name, description), data_points)| Metric {
                        name: name.to_owned(),
                        description: description.to_owned(),
                        unit: "s".to_owned(),
                        data: Some(Data::Histogram(ProtoHistogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    })
                    .collect();
                ResourceMetrics {
                    resource: Some(to_proto_resource(resource)),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: SCOPE_NAME.to_owned(),
                            version: SCOPE_VERSION.to_owned(),
                            ..Default::default()
                        }),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// How many data points a request carries.
pub fn point_count(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Histogram(h)) => h.data_points.len() as u64,
            _ => 0,
        })
        .sum()
}

fn data_point(key: &SeriesKey, histogram: &Histogram, now_unix_ns: u64) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: attributes(key),
        start_time_unix_nano: histogram.start_unix_ns.min(now_unix_ns),
        time_unix_nano: now_unix_ns,
        count: histogram.count,
        sum: Some(histogram.sum_seconds()),
        bucket_counts: histogram.buckets.to_vec(),
        explicit_bounds: BOUNDS_SECONDS.to_vec(),
        min: (histogram.count > 0).then(|| histogram.min_ns as f64 / 1e9),
        max: (histogram.count > 0).then(|| histogram.max_ns as f64 / 1e9),
        ..Default::default()
    }
}

fn attributes(key: &SeriesKey) -> Vec<KeyValue> {
    let string = |k: &str, v: &str| kv(k, Value::StringValue(v.to_owned()));
    if key.overflow {
        return vec![kv("otel.metric.overflow", Value::BoolValue(true))];
    }
    let mut attrs = vec![
        string("http.request.method", &key.method),
        string("url.scheme", &key.scheme),
    ];
    if let Some(route) = &key.route {
        attrs.push(string(
            match key.instrument {
                Instrument::Server => "http.route",
                Instrument::Client => "url.template",
            },
            route,
        ));
    }
    if let Some(status) = key.status_code {
        attrs.push(kv(
            "http.response.status_code",
            Value::IntValue(status.into()),
        ));
    }
    if let Some(error) = &key.error_type {
        attrs.push(string("error.type", error));
    }
    if let Some(address) = &key.server_address {
        attrs.push(string("server.address", address));
    }
    if let Some(port) = key.server_port {
        attrs.push(kv("server.port", Value::IntValue(port.into())));
    }
    attrs
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
mod tests;
