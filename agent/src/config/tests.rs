use std::{collections::BTreeSet, path::Path, time::Duration};

use clap::{Args as _, CommandFactory as _, FromArgMatches as _, Parser as _};

use super::{file::FileConfig, *};
use crate::{
    cli::Cli,
    export::config::{Compression, ExporterConfig, Protocol},
    pipeline::SdkSpans,
    red::MetricsExporter,
    span::SpanAttributes,
};

/// Sets every key, none to its default.
const FULL: &str = r#"
select:
  pids: [1]
  exes: ["python3*", nginx]
  ports: [8080, 443]
routes: ["/orders/{id}"]
admin_addr: 0.0.0.0:9000
capture_bytes: 2048
ring_buffer_mib: 32
sdk_spans: export
span_attributes: all
inject_traceparent: true
sampling:
  sampler: parentbased_traceidratio
  sampler_arg: 0.25
  tail:
    ratio: 0.1
    keep_errors: false
    keep_slower_than_ms: 250
    wait_ms: 2000
    max_traces: 500
metrics:
  exporter: otlp
  export_interval_ms: 15000
  export_timeout_ms: 5000
  max_routes_per_service: 20
  max_series: 300
export:
  exporter: none
  endpoint: http://collector:4317
  protocol: grpc
  headers: {authorization: "Bearer s3cret, x=y", x-tenant: a}
  timeout_ms: 3000
  compression: gzip
  traces:
    endpoint: http://tempo:4318/v1/traces
    protocol: http/protobuf
    headers: {x-scope: traces}
    timeout_ms: 4000
    compression: none
  metrics:
    endpoint: http://mimir:4317
    timeout_ms: 6000
  batch:
    max_queue_size: 100
    schedule_delay_ms: 1000
    max_export_batch_size: 50
    export_timeout_ms: 9000
resource:
  attributes: {deployment.environment.name: prod, k8s.cluster.name: eu-1}
"#;

const PATH: &str = "loupe.yaml";

/// Resolves `yaml` as `loupe --config loupe.yaml ARGS` would with only `env` set.
fn load(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    let file = FileConfig::parse(yaml).map_err(|error| ConfigError::Parse {
        path: PATH.into(),
        error,
    })?;
    let argv = std::iter::once("loupe").chain(args.iter().copied());
    let matches = Cli::command().try_get_matches_from(argv).unwrap();
    let cli = Cli::from_arg_matches(&matches).unwrap();
    let env = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    resolve(
        &file,
        Some(Path::new(PATH)),
        cli.run,
        given_on_command_line(&matches),
        env,
    )
}

fn error(yaml: &str, env: &[(&str, &str)]) -> String {
    match load(yaml, &[], env) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(err) => err.to_string(),
    }
}

fn otlp(exporter: &ExporterConfig) -> &OtlpConfig {
    match exporter {
        ExporterConfig::Otlp(otlp) => otlp,
        other => panic!("not otlp: {other:?}"),
    }
}

#[test]
fn a_full_file_sets_everything() {
    let config = load(FULL, &[], &[]).unwrap();
    let run = &config.run;
    assert_eq!(run.pids, vec![1]);
    assert_eq!(run.exes, vec!["python3*", "nginx"]);
    assert_eq!(run.ports, vec![8080, 443]);
    assert_eq!(run.routes, vec!["/orders/{id}"]);
    assert_eq!(run.admin_addr.to_string(), "0.0.0.0:9000");
    assert_eq!(run.capture_bytes, 2048);
    assert_eq!(run.ring_buffer_mib, 32);
    assert_eq!(run.sdk_spans, SdkSpans::Export);
    assert_eq!(run.span_attributes, SpanAttributes::All);
    assert!(run.inject_traceparent);
    let tail = run.tail_policy().unwrap();
    assert_eq!(tail.ratio, 0.1);
    assert!(!tail.keep_errors);
    assert_eq!(tail.latency_threshold, Some(Duration::from_millis(250)));
    assert_eq!(tail.wait, Duration::from_millis(2000));
    assert_eq!(tail.max_traces, 500);
    assert_eq!(run.max_routes_per_service, 20);
    assert_eq!(run.max_metric_series, 300);

    assert_eq!(
        config.head_sampler,
        HeadSampler::ParentBased(Box::new(HeadSampler::TraceIdRatio(0.25)))
    );
    assert_eq!(config.export.exporter, ExporterConfig::None);
    let batch = &config.export.batch;
    assert_eq!(batch.max_queue_size, 100);
    assert_eq!(batch.max_export_batch_size, 50);
    assert_eq!(batch.schedule_delay, Duration::from_millis(1000));
    assert_eq!(batch.export_timeout, Duration::from_millis(9000));
    // The traces block wins over the generic settings, field by field.
    let traces = &config.traces_otlp;
    assert_eq!(traces.endpoint, "http://tempo:4318/v1/traces");
    assert_eq!(traces.protocol, Protocol::HttpProtobuf);
    assert_eq!(traces.timeout, Duration::from_millis(4000));
    assert_eq!(traces.compression, Compression::None);
    assert_eq!(traces.headers.len(), 1);
    assert_eq!(traces.headers[0].1, "traces");
    // The metrics block sets only some; the rest comes from the generic settings.
    let MetricsExporter::Otlp(metrics) = &config.metrics_export.exporter else {
        panic!("metrics exporter is otlp in the file");
    };
    assert_eq!(metrics.endpoint, "http://mimir:4317");
    assert_eq!(metrics.protocol, Protocol::Grpc);
    assert_eq!(metrics.timeout, Duration::from_millis(6000));
    assert_eq!(metrics.compression, Compression::Gzip);
    let header = |name: &str| {
        metrics
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
    };
    // Commas, equals signs and spaces survive the trip through the OTEL variable form.
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer s3cret, x=y")
    );
    assert_eq!(header("x-tenant").as_deref(), Some("a"));
    assert_eq!(config.metrics_export.interval, Duration::from_millis(15000));
    assert_eq!(config.metrics_export.timeout, Duration::from_millis(5000));
    assert_eq!(
        config.resource_attributes,
        vec![
            ("deployment.environment.name".into(), "prod".into()),
            ("k8s.cluster.name".into(), "eu-1".into()),
        ]
    );
}

#[test]
fn no_file_means_todays_defaults() {
    let config = load("", &[], &[]).unwrap();
    assert_eq!(config.export.exporter, ExporterConfig::Console);
    assert_eq!(config.metrics_export.exporter, MetricsExporter::None);
    assert_eq!(config.run.capture_bytes, 1024);
    assert!(config.run.tail_policy().is_none());
    assert!(config.resource_attributes.is_empty());
}

#[test]
fn every_flag_can_be_set_in_the_file() {
    let asked = std::cell::RefCell::new(BTreeSet::new());
    let mut run = Cli::try_parse_from(["loupe"]).unwrap().run;
    layer::apply_file(&mut run, &FileConfig::default(), |id| {
        asked.borrow_mut().insert(id.to_owned());
        false
    });
    let flags: BTreeSet<String> = RunArgs::augment_args(clap::Command::new("loupe"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    assert!(!flags.is_empty());
    assert_eq!(asked.into_inner(), flags);
}

#[test]
fn unknown_keys_are_named_with_their_path_and_line() {
    let top = error("routes: []\nadmin_adr: 127.0.0.1:1\n", &[]);
    assert!(
        top.starts_with("loupe.yaml: unknown field `admin_adr`"),
        "{top}"
    );
    assert!(top.contains("at line 2"), "{top}");
    let nested = error(
        "export:\n  batch:\n    max_queue_size: 10\n    queue: 5\n",
        &[],
    );
    assert!(
        nested.starts_with("loupe.yaml: export.batch: unknown field `queue`"),
        "{nested}"
    );
    assert!(nested.contains("at line 4"), "{nested}");
    // Even on the first line, where the YAML library leaves the position out.
    assert!(error("bogus: 1\n", &[]).contains("at line 1 column 1"));
}

#[test]
fn bad_values_are_named_with_their_path_and_line() {
    let cases = [
        (
            "routes: []\ncapture_bytes: 5\n",
            "capture_bytes: invalid value",
            2,
        ),
        ("ring_buffer_mib: 3\n", "ring_buffer_mib: invalid value", 1),
        ("select:\n  pids: [x]\n", "select.pids[0]: invalid type", 2),
        (
            "sampling:\n  tail: {ratio: 1.5}\n",
            "sampling.tail.ratio",
            2,
        ),
        (
            "export:\n  protocol: http/json\n",
            "export.protocol: unknown variant",
            2,
        ),
        (
            "export:\n  timeout_ms: 0\n",
            "export.timeout_ms: invalid value",
            2,
        ),
        (
            "metrics: {max_series: -1}\n",
            "metrics.max_series: invalid",
            1,
        ),
        ("admin_addr: nowhere\n", "admin_addr", 1),
        ("sdk_spans: maybe\n", "sdk_spans: unknown variant", 1),
        (
            "span_attributes: every\n",
            "span_attributes: unknown variant",
            1,
        ),
    ];
    for (yaml, expected, line) in cases {
        let message = error(yaml, &[]);
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(&format!("at line {line} ")), "{message}");
    }
}

#[test]
fn values_refused_by_the_agents_checks_name_their_source() {
    let from_file = error("export:\n  traces: {endpoint: \"collector:4318\"}\n", &[]);
    assert_eq!(
        from_file,
        "loupe.yaml: export.traces.endpoint=\"collector:4318\": invalid endpoint: missing scheme, write it as http://host:port"
    );
    let batch = error(
        "export: {batch: {max_queue_size: 10, max_export_batch_size: 20}}",
        &[],
    );
    assert!(
        batch.contains(
            "export.batch.max_export_batch_size=20 is larger than export.batch.max_queue_size=10"
        ),
        "{batch}"
    );
    // The same setting from the environment keeps the variable's name.
    let from_env = error(
        "",
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")],
    );
    assert!(
        from_env.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="),
        "{from_env}"
    );
    let route = error("routes: [orders]\n", &[]);
    assert_eq!(
        route,
        "loupe.yaml: routes: route pattern `orders` must start with '/'"
    );
    let exe = error("select: {exes: [\"[a\"]}\n", &[]);
    assert!(exe.starts_with("loupe.yaml: select.exes: \"[a\""), "{exe}");
}

#[test]
fn the_environment_wins_over_the_file() {
    let yaml = "export: {endpoint: http://file:4317, protocol: grpc}\n\
                sampling: {sampler: traceidratio, sampler_arg: 0.25}\n";
    let file_only = load(yaml, &[], &[]).unwrap();
    assert_eq!(
        otlp(&file_only.export.exporter).endpoint,
        "http://file:4317/"
    );
    assert_eq!(otlp(&file_only.export.exporter).protocol, Protocol::Grpc);
    assert_eq!(file_only.head_sampler, HeadSampler::TraceIdRatio(0.25));

    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        // Empty counts as unset: it does not hide the file's value.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
    ];
    let layered = load(yaml, &[], &env).unwrap();
    let otlp = otlp(&layered.export.exporter);
    assert_eq!(otlp.protocol, Protocol::HttpProtobuf);
    assert_eq!(otlp.endpoint, "http://file:4317/v1/traces");
    assert_eq!(layered.head_sampler, HeadSampler::TraceIdRatio(0.5));
}

#[test]
fn resource_attributes_merge_key_by_key() {
    let yaml = "resource: {attributes: {env: prod, team: shop}}\n";
    let env = [("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=n1,team=pay")];
    let config = load(yaml, &[], &env).unwrap();
    assert_eq!(
        config.resource_attributes,
        vec![
            ("env".into(), "prod".into()),
            ("team".into(), "pay".into()),
            ("k8s.node.name".into(), "n1".into()),
        ]
    );
}

#[test]
fn flags_given_win_and_defaults_lose() {
    let yaml = "capture_bytes: 2048\nselect: {exes: [a, b]}\nsampling: {tail: {ratio: 0.5}}\n";
    let file_only = load(yaml, &[], &[]).unwrap().run;
    assert_eq!(file_only.capture_bytes, 2048);
    assert_eq!(file_only.exes, vec!["a", "b"]);
    assert_eq!(file_only.tail_sample_ratio, Some(0.5));

    let flags = load(
        yaml,
        &[
            "--capture-bytes",
            "512",
            "--exe",
            "c",
            "--tail-sample-ratio",
            "0.2",
        ],
        &[],
    )
    .unwrap()
    .run;
    assert_eq!(flags.capture_bytes, 512);
    // A repeatable flag replaces the file's list rather than adding to it.
    assert_eq!(flags.exes, vec!["c"]);
    assert_eq!(flags.tail_sample_ratio, Some(0.2));

    // A flag given with its default value still wins: it was asked for.
    let default_given = load(yaml, &["--capture-bytes", "1024"], &[]).unwrap().run;
    assert_eq!(default_given.capture_bytes, 1024);
}

#[test]
fn check_prints_every_effective_value_with_headers_redacted() {
    let config = load(
        FULL,
        &["--port", "80"],
        &[("OTEL_TRACES_SAMPLER_ARG", "0.75")],
    )
    .unwrap();
    let yaml = config.effective_yaml(Path::new(PATH)).unwrap();
    assert!(yaml.starts_with("# Effective configuration: loupe.yaml"));
    for line in [
        "capture_bytes: 2048",
        "  - 80",
        "sampler: parentbased_traceidratio",
        "sampler_arg: 0.75",
        "    endpoint: http://tempo:4318/v1/traces",
        "    endpoint: http://mimir:4317/",
        "      authorization: <redacted>",
        "    max_export_batch_size: 50",
        "    k8s.cluster.name: eu-1",
    ] {
        assert!(yaml.lines().any(|l| l.ends_with(line)), "{line}:\n{yaml}");
    }
    assert!(
        !yaml.contains("s3cret") && !yaml.contains("x-scope: traces"),
        "{yaml}"
    );

    // The output is itself a file that configures the same agent.
    let defaults = load("", &[], &[]).unwrap();
    let printed = defaults.effective_yaml(Path::new(PATH)).unwrap();
    let again = load(&printed, &[], &[]).unwrap();
    assert_eq!(again.effective(), defaults.effective());
    assert_eq!(again.export, defaults.export);
}

#[test]
fn a_missing_file_is_one_clear_line() {
    let err = super::load(
        Some(Path::new("/nonexistent/loupe.yaml")),
        Cli::try_parse_from(["loupe"]).unwrap().run,
        |_| false,
        |_| None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("cannot read the configuration file /nonexistent/loupe.yaml: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

const EXAMPLE: &str = include_str!("../../../deploy/loupe.yaml");

/// The example's settings are commented out as `#key: value`, indented in steps of two
/// spaces after the `#`; its prose is `# text`.
fn uncomment_settings(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) => {
                let indent = rest.len() - rest.trim_start_matches(' ').len();
                let key = rest.trim_start().split(':').next().unwrap_or("");
                let is_key =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if indent % 2 == 0 && is_key && rest.contains(':') {
                    rest.to_owned()
                } else {
                    line.to_owned()
                }
            }
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_file_is_valid_and_its_defaults_are_true() {
    let as_shipped = load(EXAMPLE, &[], &[]).unwrap();
    let defaults = load("", &[], &[]).unwrap();
    assert_eq!(as_shipped.effective(), defaults.effective());

    let uncommented = uncomment_settings(EXAMPLE);
    let file = FileConfig::parse(&uncommented).unwrap();
    assert!(
        file.export
            .as_ref()
            .and_then(|e| e.batch.as_ref())
            .is_some()
    );
    let with_settings = load(&uncommented, &[], &[]).unwrap();
    assert_eq!(with_settings.effective(), defaults.effective());
}

#[test]
fn the_example_file_documents_every_key() {
    let keys: BTreeSet<&str> = FULL
        .lines()
        .filter_map(|line| line.trim_start().split_once(':'))
        .map(|(key, _)| key)
        .filter(|key| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    assert!(keys.len() > 30, "{keys:?}");
    for key in keys {
        assert!(
            EXAMPLE.contains(&format!("{key}:")),
            "{key} is not in deploy/loupe.yaml"
        );
    }
}

#[test]
fn the_readme_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Configuration file").unwrap()..];
    let block = section.split("```yaml\n").nth(1).unwrap();
    let yaml = &block[..block.find("```").unwrap()];
    let config = load(yaml, &[], &[]).unwrap();
    assert_eq!(config.run.exes, vec!["python3*", "nginx"]);
    assert_eq!(config.export.batch.max_queue_size, 4096);
}

#[test]
fn the_old_read_probes_name_still_works() {
    use crate::cli::DataProbes;
    let from_file = load("read_probes: entry\n", &[], &[]).unwrap();
    assert_eq!(from_file.run.data_probes, DataProbes::Entry);
    let from_flag = load("", &["--read-probes", "exit"], &[]).unwrap();
    assert_eq!(from_flag.run.data_probes, DataProbes::Exit);
    let new_flag = load("", &["--data-probes", "entry"], &[]).unwrap();
    assert_eq!(new_flag.run.data_probes, DataProbes::Entry);
}

#[test]
fn tls_files_come_from_the_file_under_their_keys() {
    let missing = error(
        "export:\n  endpoint: https://c:4318\n  certificate: /nonexistent/ca.pem\n",
        &[],
    );
    assert!(
        missing.starts_with(
            "loupe.yaml: export.certificate=\"/nonexistent/ca.pem\": the file cannot be read"
        ),
        "{missing}"
    );
    let half = error(
        "export:\n  endpoint: https://c:4318\n  traces: {client_key: /nonexistent/key.pem}\n",
        &[],
    );
    assert!(half.contains("export.traces.client_key"), "{half}");
    assert!(half.contains("client certificate"), "{half}");

    let dir = std::env::temp_dir().join(format!("loupe-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, crate::export::testutil::CERT_PEM).unwrap();
    let yaml = format!(
        "export:\n  endpoint: https://c:4318\n  certificate: {}\n",
        ca.display()
    );
    let config = load(&yaml, &[], &[]).unwrap();
    let shown = config.effective_yaml(Path::new(PATH)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let traces = otlp(&config.export.exporter);
    assert_eq!(traces.tls.ca.as_ref().map(|f| f.path.as_str()), ca.to_str());
    assert!(
        shown.contains(&format!("certificate: {}", ca.display())),
        "the effective configuration names the file: {shown}"
    );
    assert!(!shown.contains("BEGIN CERTIFICATE"), "{shown}");
}

#[test]
fn tls_files_beside_a_plain_endpoint_are_warned_about() {
    let dir = std::env::temp_dir().join(format!("loupe-config-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, crate::export::testutil::CERT_PEM).unwrap();
    let with_endpoint = |endpoint: &str| {
        let yaml = format!(
            "export:\n  endpoint: {endpoint}\n  certificate: {}\n",
            ca.display()
        );
        load(&yaml, &[], &[]).unwrap().warnings()
    };
    let plain = with_endpoint("http://user:secret@c:4318");
    let tls = with_endpoint("https://c:4318");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        plain,
        [
            "span export: the TLS files are not used: the endpoint http://***@c:4318/v1/traces is not https://",
            "metrics export: the TLS files are not used: the endpoint http://***@c:4318/v1/metrics is not https://",
        ],
    );
    assert!(tls.is_empty(), "{tls:?}");
    assert!(load("", &[], &[]).unwrap().warnings().is_empty());
}
