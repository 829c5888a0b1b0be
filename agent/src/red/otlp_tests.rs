use std::{collections::HashMap, sync::Arc};

use opentelemetry_proto::tonic::{common::v1::any_value::Value, metrics::v1::Metric};

use super::*;
use crate::{
    export::testutil::{http_span, resource},
    red::store::{Limits, Store},
    span::{AttrValue, HttpSpan, SpanKind},
};

const MS: u64 = 1_000_000;
const NOW: u64 = 1_800_000_000_000_000_000;

fn span(kind: SpanKind, route: &str, status: Option<u16>, ms: u64) -> HttpSpan {
    let mut span = http_span(kind, status);
    span.name = format!("GET {route}").into();
    span.route = (kind == SpanKind::Server).then(|| route.into());
    span.end_unix_ns = span.start_unix_ns + ms * MS;
    span
}

fn attrs(point: &HistogramDataPoint) -> HashMap<String, Value> {
    point
        .attributes
        .iter()
        .map(|kv| {
            let value = kv.value.clone().and_then(|v| v.value).unwrap();
            (kv.key.clone(), value)
        })
        .collect()
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

fn histogram(metric: &Metric) -> &ProtoHistogram {
    match &metric.data {
        Some(Data::Histogram(h)) => h,
        other => panic!("not a histogram: {other:?}"),
    }
}

#[test]
fn one_resource_metrics_per_resource_with_both_instruments() {
    let mut store = Store::new(Limits::default());
    let shop = resource("shop");
    let billing = resource("billing");
    store.observe(&shop, &span(SpanKind::Server, "/users/{id}", Some(200), 3));
    store.observe(&shop, &span(SpanKind::Server, "/users/{id}", Some(200), 80));
    let mut client = span(SpanKind::Client, "/stock/{id}", Some(503), 20);
    client.error_type = Some("503".into());
    client.server_address = Some("inventory".into());
    client.server_port = Some(8080);
    store.observe(&shop, &client);
    store.observe(&billing, &span(SpanKind::Server, "/pay", None, 1));

    let mut series = store.snapshot();
    series.sort_by(|a, b| a.0.resource.service_name.cmp(&b.0.resource.service_name));
    let request = to_request(&series, NOW);
    assert_eq!(point_count(&request), 3);
    assert_eq!(request.resource_metrics.len(), 2);

    let billing_rm = &request.resource_metrics[0];
    let resource_attrs = &billing_rm.resource.as_ref().unwrap().attributes;
    assert_eq!(resource_attrs[0].key, "service.name");
    assert_eq!(billing_rm.scope_metrics.len(), 1);
    let scope = billing_rm.scope_metrics[0].scope.as_ref().unwrap();
    assert_eq!(scope.name, "loupe");
    assert_eq!(
        billing_rm.scope_metrics[0].metrics.len(),
        1,
        "no empty client metric"
    );
    let pay = &histogram(&billing_rm.scope_metrics[0].metrics[0]).data_points[0];
    assert_eq!(
        attrs(pay),
        HashMap::from([
            ("http.request.method".to_owned(), string("GET")),
            ("url.scheme".to_owned(), string("http")),
            ("http.route".to_owned(), string("/pay")),
        ]),
        "no status code without a response"
    );

    let shop_rm = &request.resource_metrics[1];
    let metrics = &shop_rm.scope_metrics[0].metrics;
    assert_eq!(metrics.len(), 2);
    let server = &metrics[0];
    assert_eq!(server.name, "http.server.request.duration");
    assert_eq!(server.unit, "s");
    let h = histogram(server);
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let point = &h.data_points[0];
    assert_eq!(point.count, 2);
    assert_eq!(point.sum, Some(0.083));
    assert_eq!(point.min, Some(0.003));
    assert_eq!(point.max, Some(0.08));
    assert_eq!(
        point.explicit_bounds,
        vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ]
    );
    assert_eq!(
        point.bucket_counts,
        vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "per bucket, not cumulative"
    );
    assert_eq!(point.time_unix_nano, NOW);
    assert_eq!(point.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(
        attrs(point)["http.response.status_code"],
        Value::IntValue(200)
    );

    let client = &metrics[1];
    assert_eq!(client.name, "http.client.request.duration");
    let point = &histogram(client).data_points[0];
    assert_eq!(
        attrs(point),
        HashMap::from([
            ("http.request.method".to_owned(), string("GET")),
            ("url.scheme".to_owned(), string("http")),
            ("url.template".to_owned(), string("/stock/{id}")),
            ("http.response.status_code".to_owned(), Value::IntValue(503)),
            ("error.type".to_owned(), string("503")),
            ("server.address".to_owned(), string("inventory")),
            ("server.port".to_owned(), Value::IntValue(8080)),
        ])
    );
}

#[test]
fn processes_of_one_service_stay_apart_equal_resources_merge() {
    let mut store = Store::new(Limits::default());
    let a = resource("shop");
    let mut other = (*resource("shop")).clone();
    other.attributes[1].1 = AttrValue::Int(7);
    let b = Arc::new(other);
    store.observe(&a, &span(SpanKind::Server, "/x", Some(200), 1));
    store.observe(&b, &span(SpanKind::Server, "/x", Some(200), 1));
    store.observe(&a, &span(SpanKind::Server, "/y", Some(200), 1));
    let mut series = store.snapshot();
    // A resource built again for the same process (same content, another Arc).
    let (key, hist) = series[0].clone();
    let rebuilt = crate::red::key::SeriesKey {
        resource: Arc::new((*key.resource).clone()),
        route: Some("/z".into()),
        ..key.view().to_owned_key()
    };
    series.push((Arc::new(rebuilt), hist));
    let request = to_request(&series, NOW);
    assert_eq!(request.resource_metrics.len(), 2);
    assert_eq!(point_count(&request), 4);
}

#[test]
fn overflow_points_carry_only_the_overflow_attribute() {
    let mut store = Store::new(Limits {
        max_series: 0,
        ..Limits::default()
    });
    store.observe(
        &resource("shop"),
        &span(SpanKind::Server, "/x", Some(200), 1),
    );
    let request = to_request(&store.snapshot(), NOW);
    let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
    let point = &histogram(metric).data_points[0];
    assert_eq!(
        attrs(point),
        HashMap::from([("otel.metric.overflow".to_owned(), Value::BoolValue(true))])
    );
}

#[test]
fn start_time_never_after_the_point_time() {
    let mut store = Store::new(Limits::default());
    store.observe(
        &resource("shop"),
        &span(SpanKind::Server, "/x", Some(200), 1),
    );
    let early = 1_000;
    let request = to_request(&store.snapshot(), early);
    let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
    let point = &histogram(metric).data_points[0];
    assert_eq!(point.start_time_unix_nano, early);
    assert_eq!(point.time_unix_nano, early);
}

#[test]
fn empty_snapshot_empty_request() {
    let request = to_request(&[], NOW);
    assert!(request.resource_metrics.is_empty());
    assert_eq!(point_count(&request), 0);
}
