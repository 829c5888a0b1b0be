//! Head sampling from OTEL_TRACES_SAMPLER and loupe's tail sampling, end to end.

mod support;

use std::time::Duration;

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, curl, free_port, require_root, servers, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn traced_python(
    receiver: &OtlpReceiver,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> (u16, support::Guard, Agent) {
    let port = free_port();
    let server = servers::python(port, &[("OTEL_SERVICE_NAME", "sampled")]);
    let endpoint = receiver.grpc_endpoint();
    let (pid, port_text) = (server.pid().to_string(), port.to_string());
    let mut args = vec!["--pid", pid.as_str(), "--port", port_text.as_str()];
    args.extend_from_slice(extra_args);
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint));
    env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    let agent = Agent::start(&args, &env);
    (port, server, agent)
}

#[test]
fn parent_based_sampling_follows_the_caller() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (port, _server, agent) = traced_python(
        &receiver,
        &[],
        &[("OTEL_TRACES_SAMPLER", "parentbased_always_off")],
    );
    let url = format!("http://127.0.0.1:{port}/ok");
    let sampled = "traceparent: 00-11111111111111111111111111111111-2222222222222222-01";
    let unsampled = "traceparent: 00-33333333333333333333333333333333-4444444444444444-00";
    assert_eq!(curl(&["-H", sampled, &url]), vec![200]);
    assert_eq!(curl(&["-H", unsampled, &url]), vec![200]);
    assert_eq!(curl(&[&url]), vec![200]);
    wait_until("three spans decided", WAIT, || {
        agent.metric("loupe_spans_created_total") >= 3.0
    });
    let spans = receiver.wait_for_spans(1, WAIT);
    std::thread::sleep(Duration::from_millis(600));
    let spans = if spans.len() == 1 {
        receiver.spans()
    } else {
        spans
    };
    assert_eq!(
        spans.len(),
        1,
        "only the caller-sampled request: {spans:#?}"
    );
    assert_eq!(spans[0].trace_id, "11111111111111111111111111111111");
    assert_eq!(agent.metric("loupe_spans_sampled_out_total"), 2.0);
}

#[test]
fn always_off_exports_nothing_but_counts() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (port, _server, agent) =
        traced_python(&receiver, &[], &[("OTEL_TRACES_SAMPLER", "always_off")]);
    let url = format!("http://127.0.0.1:{port}/ok");
    assert_eq!(curl(&[&url, &url]), vec![200, 200]);
    wait_until("spans sampled out", WAIT, || {
        agent.metric("loupe_spans_sampled_out_total") >= 2.0
    });
    std::thread::sleep(Duration::from_millis(600));
    assert!(receiver.spans().is_empty());
}

#[test]
fn tail_sampling_keeps_errors_and_slow_traces() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let (port, _server, agent) = traced_python(
        &receiver,
        &[
            "--tail-sample-ratio",
            "0",
            "--tail-keep-slower-than",
            "200",
            "--tail-wait",
            "300",
        ],
        &[],
    );
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        curl(&[
            &format!("{base}/ok"),
            &format!("{base}/fail"),
            &format!("{base}/slow")
        ]),
        vec![200, 500, 200]
    );
    let spans = receiver.wait_for_spans(2, WAIT);
    wait_until("the ordinary trace to be dropped", WAIT, || {
        agent.metric("loupe_spans_tail_dropped_total") >= 1.0
    });
    let mut names: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["GET /fail", "GET /slow"]);
}
