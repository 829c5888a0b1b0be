//! Export over gRPC to a collector built on grpcio (gRPC's C core), which shares no code
//! with loupe or tonic: loupe frames and gzips its requests itself, so a second,
//! independent gRPC implementation must read them, and loupe must read its answers (with
//! partial success) in turn. Compressed answers are covered by the agent's unit tests:
//! grpcio sent these uncompressed even when asked to compress them.

mod support;

use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use support::{
    Agent, Guard, curl, free_port, require_root, scratch_dir, servers, wait_for_port, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

/// The exports the collector wrote down, one JSON object per request.
fn exports(file: &PathBuf) -> Vec<serde_json::Value> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line per export"))
        .collect()
}

#[test]
fn grpcio_collector_reads_loupes_gzipped_exports_and_loupe_reads_its_answers() {
    require_root();
    let (collector_port, port) = (free_port(), free_port());
    let out = scratch_dir("grpc-collector").join("exports.jsonl");
    let _ = fs::remove_file(&out);
    // Refuses one span of every export, through partial success.
    let _collector = Guard(
        Command::new("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("apps/otlp_grpc_collector.py"))
            .arg(collector_port.to_string())
            .arg(&out)
            .arg("1")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the grpcio collector (pip package grpcio)"),
    );
    wait_for_port(collector_port);
    let _server = servers::python(port, &[]);
    let endpoint = format!("http://127.0.0.1:{collector_port}");
    let agent = Agent::start(
        &["--exe", "python3*", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team-a"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ],
    );
    let urls: Vec<String> = (0..6)
        .map(|i| format!("http://127.0.0.1:{port}/items/{i}"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert_eq!(curl(&urls), vec![200; 6]);

    wait_until("the collector has all six spans", WAIT, || {
        exports(&out)
            .iter()
            .map(|e| e["spans"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            == 6
    });
    let exports = exports(&out);
    let mut paths: Vec<&str> = exports
        .iter()
        .flat_map(|e| e["spans"].as_array().unwrap())
        .map(|span| span["attributes"]["url.path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/items/0", "/items/1", "/items/2", "/items/3", "/items/4", "/items/5"
        ]
    );
    for export in &exports {
        assert_eq!(export["metadata"]["x-tenant"], "team-a", "{export}");
    }
    // The collector refused one span per export: loupe read that from its answer.
    wait_until("the refused spans are counted", WAIT, || {
        agent.metric("loupe_spans_dropped_total") == exports.len() as f64
    });
    assert_eq!(
        agent.metric("loupe_spans_exported_total") + agent.metric("loupe_spans_dropped_total"),
        6.0
    );
    assert_eq!(agent.metric("loupe_export_failures_total"), 0.0);
}
