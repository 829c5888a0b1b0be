//! End to end: request-duration histograms of a traced Python server, on the agent's
//! `/metrics` and pushed over OTLP. Run as root (`cargo xtask test`), one test at a time.

mod support;

use std::{collections::HashMap, time::Duration};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::any_value::Value,
    metrics::v1::{AggregationTemporality, metric::Data},
};
use support::{Agent, curl, free_port, require_root, servers, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const SERVER: &str = "http_server_request_duration_seconds";

/// The labels every series of the test service carries before its own.
fn labels(route: &str, status: u16, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("error_type=\"{e}\","))
        .unwrap_or_default();
    format!(
        "service_name=\"py-red\",http_request_method=\"GET\",http_route=\"{route}\",\
         http_response_status_code=\"{status}\",{error}url_scheme=\"http\""
    )
}

fn count(metrics: &HashMap<String, f64>, labels: &str) -> f64 {
    metrics
        .get(&format!("{SERVER}_count{{{labels}}}"))
        .copied()
        .unwrap_or(0.0)
}

fn bucket(metrics: &HashMap<String, f64>, labels: &str, le: &str) -> f64 {
    metrics
        .get(&format!("{SERVER}_bucket{{{labels},le=\"{le}\"}}"))
        .copied()
        .unwrap_or_else(|| panic!("no bucket le={le} for {labels}"))
}

fn drive(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let statuses = curl(&[
        &format!("{base}/ok"),
        &format!("{base}/missing"),
        &format!("{base}/fail"),
        &format!("{base}/users/12345"),
        &format!("{base}/users/67890"),
        &format!("{base}/slow"),
    ]);
    assert_eq!(statuses, vec![200, 404, 500, 200, 200, 200]);
}

#[test]
fn histograms_on_the_admin_endpoint_for_every_request() {
    require_root();
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-red")]);
    let pid = server.pid().to_string();
    // No span leaves the agent: the metrics do not depend on what happens to spans.
    let agent = Agent::start(&["--pid", &pid], &[("OTEL_TRACES_EXPORTER", "none")]);
    drive(port);

    let users = labels("/users/{id}", 200, None);
    wait_until("six requests in the histograms", WAIT, || {
        count(&agent.metrics(), &users) >= 2.0
            && count(&agent.metrics(), &labels("/slow", 200, None)) >= 1.0
    });
    let metrics = agent.metrics();
    assert_eq!(count(&metrics, &users), 2.0, "ids fold into one route");
    assert_eq!(count(&metrics, &labels("/ok", 200, None)), 1.0);
    assert_eq!(
        count(&metrics, &labels("/missing", 404, None)),
        1.0,
        "4xx is no error on a server"
    );
    let fail = labels("/fail", 500, Some("500"));
    assert_eq!(count(&metrics, &fail), 1.0, "{metrics:#?}");

    // Buckets are cumulative and end at the count.
    assert_eq!(bucket(&metrics, &users, "+Inf"), 2.0);
    assert_eq!(bucket(&metrics, &users, "10"), 2.0);
    // The 300 ms request lies above 0.25 s and within 0.5 s.
    let slow = labels("/slow", 200, None);
    assert_eq!(bucket(&metrics, &slow, "0.25"), 0.0);
    assert_eq!(bucket(&metrics, &slow, "0.5"), 1.0);
    let sum = metrics[&format!("{SERVER}_sum{{{slow}}}")];
    assert!(
        (servers::SLOW_MS as f64 / 1000.0..0.5).contains(&sum),
        "slow sum {sum}"
    );

    let series = metrics
        .keys()
        .filter(|k| k.starts_with(&format!("{SERVER}_count{{")))
        .count();
    assert_eq!(series, 5, "{metrics:#?}");
    assert_eq!(metrics.get("loupe_red_series"), Some(&5.0));
    assert_eq!(metrics.get("loupe_red_routes_folded_total"), Some(&0.0));
    assert_eq!(metrics.get("loupe_red_series_overflow_total"), Some(&0.0));
    assert_eq!(agent.metric("loupe_spans_exported_total"), 0.0);
}

#[test]
fn routes_beyond_the_limit_fold_into_other() {
    require_root();
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-red")]);
    let pid = server.pid().to_string();
    let agent = Agent::start(
        &["--pid", &pid, "--max-routes-per-service", "2"],
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/a", "/b", "/c", "/d", "/a"] {
        assert_eq!(curl(&[&format!("{base}{path}")]), vec![200]);
    }
    let other = labels("{other}", 200, None);
    let a = labels("/a", 200, None);
    wait_until("all five requests", WAIT, || {
        let metrics = agent.metrics();
        count(&metrics, &other) >= 2.0 && count(&metrics, &a) >= 2.0
    });
    let metrics = agent.metrics();
    assert_eq!(count(&metrics, &a), 2.0, "a known route is still admitted");
    assert_eq!(count(&metrics, &labels("/b", 200, None)), 1.0);
    assert_eq!(count(&metrics, &other), 2.0);
    assert_eq!(metrics.get("loupe_red_routes_folded_total"), Some(&2.0));
}

/// Server data points of one service in the latest export, as (route, status) -> count.
fn exported_counts(requests: &[ExportMetricsServiceRequest]) -> HashMap<(String, i64), u64> {
    let Some(latest) = requests.last() else {
        return HashMap::new();
    };
    let mut counts = HashMap::new();
    for rm in &latest.resource_metrics {
        let service = rm
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        if service != Some(Value::StringValue("py-red".into())) {
            continue;
        }
        for metric in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            if metric.name != "http.server.request.duration" {
                continue;
            }
            let Some(Data::Histogram(h)) = &metric.data else {
                continue;
            };
            assert_eq!(
                h.aggregation_temporality,
                AggregationTemporality::Cumulative as i32
            );
            assert_eq!(metric.unit, "s");
            for point in &h.data_points {
                let attr = |key: &str| {
                    point
                        .attributes
                        .iter()
                        .find(|kv| kv.key == key)
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                };
                let Some(Value::StringValue(route)) = attr("http.route") else {
                    continue;
                };
                let Some(Value::IntValue(status)) = attr("http.response.status_code") else {
                    continue;
                };
                assert_eq!(point.explicit_bounds.len(), 14);
                assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
                counts.insert((route, status), point.count);
            }
        }
    }
    counts
}

#[test]
fn histograms_pushed_over_otlp() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-red")]);
    let pid = server.pid().to_string();
    let endpoint = receiver.http_endpoint();
    let agent = Agent::start(
        &["--pid", &pid],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    );
    drive(port);
    let requests = receiver.wait_for_metrics(WAIT, |r| {
        exported_counts(r).get(&("/slow".to_owned(), 200)) == Some(&1)
    });
    let counts = exported_counts(&requests);
    assert_eq!(counts.get(&("/users/{id}".to_owned(), 200)), Some(&2));
    assert_eq!(counts.get(&("/missing".to_owned(), 404)), Some(&1));
    assert_eq!(counts.get(&("/fail".to_owned(), 500)), Some(&1));
    assert_eq!(counts.get(&("/ok".to_owned(), 200)), Some(&1));
    // Spans went out too, on the same endpoint.
    assert!(receiver.wait_for_spans(6, WAIT).len() >= 6);

    // The receiver holds the points before loupe has read its answer and counted them.
    wait_until("the exported points counted", WAIT, || {
        agent.metric("loupe_metric_points_exported_total") >= 5.0
    });
    assert_eq!(agent.metric("loupe_metric_export_failures_total"), 0.0);
}

#[test]
fn histograms_flushed_at_shutdown() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "py-red")]);
    let pid = server.pid().to_string();
    let endpoint = receiver.http_endpoint();
    // The default interval (60 s) does not come round during the test.
    let mut agent = Agent::start(
        &["--pid", &pid],
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                &format!("{endpoint}/v1/metrics"),
            ),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    );
    drive(port);
    wait_until("the requests in /metrics", WAIT, || {
        count(&agent.metrics(), &labels("/slow", 200, None)) >= 1.0
    });
    assert!(receiver.metric_requests().is_empty());
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    let requests = receiver.metric_requests();
    assert_eq!(requests.len(), 1, "one flush at shutdown");
    let counts = exported_counts(&requests);
    assert_eq!(counts.get(&("/users/{id}".to_owned(), 200)), Some(&2));
    assert_eq!(counts.get(&("/slow".to_owned(), 200)), Some(&1));
    assert!(receiver.spans().is_empty());
}
