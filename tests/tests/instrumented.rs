//! A neighbour that runs the OpenTelemetry SDK itself: loupe leaves its spans to the SDK
//! by default (no duplicates), yet uses its trace context so the services loupe traces
//! around it join the same trace.

mod support;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};
use support::{Agent, Guard, curl, free_port, require_root, servers, wait_for_port, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const CALLER: &str = "051581bf3cb55c13";

fn sdk_service(port: u16, downstream: u16, otlp_http: &str) -> Guard {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps/sdk_service.py");
    let guard = Guard(
        Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(downstream.to_string())
            .env("OTEL_SERVICE_NAME", "sdk-service")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the SDK service (pip package opentelemetry-sdk, see cargo xtask setup)"),
    );
    wait_for_port(port);
    guard
}

fn by_loupe(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.scope_name == "loupe").collect()
}

fn run(sdk_spans: &str) -> (Vec<ReceivedSpan>, Agent) {
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (front, back) = (free_port(), free_port());
    let _downstream = servers::python(back, &[("OTEL_SERVICE_NAME", "plain-downstream")]);
    let _sdk = sdk_service(front, back, &receiver.http_endpoint());
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &[
            "--exe",
            "python3*",
            "--port",
            &front.to_string(),
            "--port",
            &back.to_string(),
            "--sdk-spans",
            sdk_spans,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let traceparent = format!("traceparent: 00-{TRACE}-{CALLER}-01");
    assert_eq!(
        curl(&["-H", &traceparent, &format!("http://127.0.0.1:{front}/sdk")]),
        vec![200]
    );
    // The SDK's two spans, and loupe's downstream span at least.
    wait_until("spans from the SDK and from loupe", WAIT, || {
        let spans = receiver.spans();
        spans
            .iter()
            .filter(|s| s.scope_name == "sdk-service")
            .count()
            >= 2
            && !by_loupe(&spans).is_empty()
    });
    wait_until(
        "loupe to account for the SDK process's requests",
        WAIT,
        || {
            agent.metric("loupe_spans_created_total")
                + agent.metric("loupe_spans_skipped_sdk_total")
                >= 3.0
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    (receiver.spans(), agent)
}

#[test]
fn sdk_neighbour_is_not_duplicated_but_linked() {
    require_root();
    let (spans, agent) = run("skip");
    let sdk_client = spans
        .iter()
        .find(|s| s.scope_name == "sdk-service" && s.kind == "client")
        .expect("the SDK's client span");
    assert_eq!(sdk_client.trace_id, TRACE);
    let loupe = by_loupe(&spans);
    assert!(
        loupe
            .iter()
            .all(|s| s.service_name() != Some("sdk-service")),
        "no duplicates of the SDK's spans: {loupe:#?}"
    );
    let downstream = loupe
        .iter()
        .find(|s| s.service_name() == Some("plain-downstream") && s.kind == "server")
        .expect("loupe's span for the uninstrumented downstream");
    assert_eq!(downstream.trace_id, TRACE, "joins the SDK's trace");
    assert_eq!(
        downstream.parent_span_id.as_deref(),
        Some(sdk_client.span_id.as_str()),
        "child of the SDK's client span"
    );
    assert!(agent.metric("loupe_spans_skipped_sdk_total") >= 2.0);
}

#[test]
fn sdk_neighbour_spans_can_be_exported_too() {
    require_root();
    let (spans, _agent) = run("export");
    let loupe_sdk: Vec<_> = by_loupe(&spans)
        .into_iter()
        .filter(|s| s.service_name() == Some("sdk-service"))
        .collect();
    let server = loupe_sdk
        .iter()
        .find(|s| s.kind == "server")
        .expect("loupe's server span for the SDK process");
    assert_eq!(server.trace_id, TRACE);
    assert_eq!(server.parent_span_id.as_deref(), Some(CALLER));
}
