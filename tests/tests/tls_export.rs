//! Export to `https://` collectors: the real agent sends its spans over TLS, over gRPC and
//! over HTTP, to a receiver whose certificate a CA file vouches for; it refuses a collector
//! it cannot verify or whose certificate names another host (counting the failures); and
//! it presents a client certificate to a collector that demands one.

mod support;

use std::time::Duration;

use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceiverOptions, ReceiverTls};
use support::{
    Agent, Guard, curl, free_port, require_root, servers,
    tls::{TlsFiles, tls_files},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

/// A TLS receiver and an untraced Python server to trace.
struct Setup {
    tls: TlsFiles,
    receiver: OtlpReceiver,
    port: u16,
    server: Guard,
}

impl Setup {
    fn new(client_auth: bool) -> Self {
        Self::presenting(client_auth, |tls| tls.server.clone())
    }

    /// A receiver presenting what `server` picks of the fresh certificates.
    fn presenting(client_auth: bool, server: impl FnOnce(&TlsFiles) -> ReceiverTls) -> Self {
        require_root();
        let tls = tls_files(client_auth);
        let receiver = OtlpReceiver::start_with(ReceiverOptions {
            tls: Some(server(&tls)),
            ..ReceiverOptions::default()
        })
        .expect("start the TLS receiver");
        let port = free_port();
        let server = servers::python(port, &[]);
        Self {
            tls,
            receiver,
            port,
            server,
        }
    }

    /// Each protocol with the receiver's `https://` endpoint for it.
    fn endpoints(&self) -> [(&'static str, String); 2] {
        [
            ("grpc", self.receiver.grpc_endpoint()),
            ("http/protobuf", self.receiver.http_endpoint()),
        ]
    }

    /// Runs an agent on the server exporting to `endpoint` over `protocol`, with `env`
    /// besides, and sends the server one request.
    fn traced_request(&self, protocol: &str, endpoint: &str, env: &[(&str, &str)]) -> Agent {
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
        ];
        vars.extend_from_slice(env);
        let agent = Agent::start(&["--pid", &self.server.pid().to_string()], &vars);
        assert_eq!(
            curl(&[&format!("http://127.0.0.1:{}/ok", self.port)]),
            vec![200]
        );
        agent
    }
}

/// Waits until `agent` has counted a failed export, then stops it.
fn exports_fail(mut agent: Agent, protocol: &str) {
    wait_until(&format!("failed exports over {protocol}"), WAIT, || {
        agent.metric("loupe_export_failures_total") >= 1.0
    });
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
}

/// Over each protocol, an agent trusting `ca` traces a request and fails every export;
/// the receiver gets no span (`what` says why that matters).
fn every_export_fails(setup: &Setup, ca: &str, what: &str) {
    for (protocol, endpoint) in setup.endpoints() {
        let agent = setup.traced_request(
            protocol,
            &endpoint,
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)],
        );
        exports_fail(agent, protocol);
    }
    assert_eq!(setup.receiver.span_count(), 0, "{what}");
}

/// Waits until the receiver has more than `before` spans, then stops `agent`; returns its
/// log.
fn spans_arrive(mut agent: Agent, receiver: &OtlpReceiver, before: u64, what: &str) -> String {
    wait_until(what, WAIT, || receiver.span_count() > before);
    assert_eq!(
        agent.metrics().get("loupe_export_failures_total"),
        Some(&0.0)
    );
    let (status, _) = agent.terminate();
    assert!(status.success(), "{}", agent.stderr());
    agent.stderr()
}

#[test]
fn spans_reach_an_https_collector_over_grpc_and_http() {
    let setup = Setup::new(false);
    for (protocol, endpoint) in setup.endpoints() {
        assert!(endpoint.starts_with("https://"), "{endpoint}");
        let before = setup.receiver.span_count();
        let agent = setup.traced_request(
            protocol,
            &endpoint,
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &setup.tls.ca)],
        );
        let log = spans_arrive(
            agent,
            &setup.receiver,
            before,
            &format!("the span over {protocol} and TLS"),
        );
        assert!(
            log.contains("over TLS (with an extra CA)"),
            "the startup log says how it exports: {log}"
        );
    }
    let spans = setup.receiver.spans();
    assert!(spans.iter().all(|s| s.attr("url.path") == Some("/ok")));
}

#[test]
fn a_collector_loupe_cannot_verify_gets_nothing() {
    let setup = Setup::new(false);
    // Trusting only an unrelated CA, as when the collector's certificate is self-signed
    // and nobody told loupe: every export fails the handshake, and is counted.
    every_export_fails(
        &setup,
        &setup.tls.other_ca,
        "nothing crossed an unverified TLS",
    );
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    // Signed by the CA loupe trusts, but for another name than the endpoint's.
    let setup = Setup::presenting(false, |tls| tls.misnamed_server.clone());
    every_export_fails(&setup, &setup.tls.ca, "a misnamed collector got spans");
}

#[test]
fn a_client_certificate_is_presented_to_a_collector_that_demands_one() {
    let setup = Setup::new(true);
    let tls = &setup.tls;
    for (protocol, endpoint) in setup.endpoints() {
        let before = setup.receiver.span_count();
        // Without one, the collector refuses the connection.
        let ca = [("OTEL_EXPORTER_OTLP_CERTIFICATE", tls.ca.as_str())];
        exports_fail(setup.traced_request(protocol, &endpoint, &ca), protocol);
        assert_eq!(
            setup.receiver.span_count(),
            before,
            "{protocol}: accepted without a certificate"
        );
        // With one, it accepts.
        let identity = [
            ca[0],
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &tls.client_cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &tls.client_key),
        ];
        let agent = setup.traced_request(protocol, &endpoint, &identity);
        spans_arrive(
            agent,
            &setup.receiver,
            before,
            &format!("the span over {protocol} and mutual TLS"),
        );
    }
}
