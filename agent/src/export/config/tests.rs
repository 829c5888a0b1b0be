use std::{collections::HashMap, time::Duration};

use super::*;
use crate::export::testutil::{CERT_PEM, KEY_PEM, OTHER_KEY_PEM};

const TRACES_ENDPOINT: &str = TRACES.endpoint;
const TRACES_PROTOCOL: &str = TRACES.protocol;
const TRACES_HEADERS: &str = TRACES.headers;
const TRACES_TIMEOUT: &str = TRACES.timeout;
const TRACES_COMPRESSION: &str = TRACES.compression;

fn parse(vars: &[(&str, &str)]) -> Result<ExportConfig, ExportConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ExportConfig::from_env(|k| map.get(k).cloned())
}

fn otlp(vars: &[(&str, &str)]) -> OtlpConfig {
    match parse(vars) {
        Ok(ExportConfig {
            exporter: ExporterConfig::Otlp(otlp),
            ..
        }) => otlp,
        other => panic!("expected an OTLP config, got {other:?}"),
    }
}

fn err(vars: &[(&str, &str)]) -> ExportConfigError {
    match parse(vars) {
        Err(e) => e,
        Ok(c) => panic!("expected an error, got {c:?}"),
    }
}

#[test]
fn nothing_set_means_console_with_default_batching() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.exporter, ExporterConfig::Console);
    assert_eq!(
        config.batch,
        BatchConfig {
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30_000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    );
}

#[test]
fn empty_values_count_as_unset() {
    let config = parse(&[(TRACES_EXPORTER, ""), (ENDPOINT, "  ")]).unwrap();
    assert_eq!(config.exporter, ExporterConfig::Console);
}

#[test]
fn an_endpoint_alone_selects_otlp() {
    let c = otlp(&[(ENDPOINT, "http://collector:4318")]);
    assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
    let c = otlp(&[(TRACES_ENDPOINT, "http://collector:4318/custom")]);
    assert_eq!(c.endpoint, "http://collector:4318/custom");
}

#[test]
fn explicit_exporter_wins_over_endpoint() {
    let config = parse(&[(TRACES_EXPORTER, "console"), (ENDPOINT, "http://c:4318")]).unwrap();
    assert_eq!(config.exporter, ExporterConfig::Console);
    let config = parse(&[(TRACES_EXPORTER, "none"), (ENDPOINT, "http://c:4318")]).unwrap();
    assert_eq!(config.exporter, ExporterConfig::None);
}

#[test]
fn exporter_names_are_case_insensitive_and_logging_is_console() {
    for value in ["logging", "Console", " CONSOLE "] {
        assert_eq!(
            parse(&[(TRACES_EXPORTER, value)]).unwrap().exporter,
            ExporterConfig::Console,
            "{value}"
        );
    }
    assert!(matches!(
        parse(&[(TRACES_EXPORTER, "OTLP")]).unwrap().exporter,
        ExporterConfig::Otlp(_)
    ));
    // A repeated name or a trailing comma is still one exporter.
    assert!(matches!(
        parse(&[(TRACES_EXPORTER, "otlp,otlp,")]).unwrap().exporter,
        ExporterConfig::Otlp(_)
    ));
}

#[test]
fn several_exporters_or_unknown_ones_are_errors() {
    assert_eq!(
        err(&[(TRACES_EXPORTER, "otlp,console")]),
        ExportConfigError::MultipleExporters {
            var: TRACES_EXPORTER,
            value: "otlp,console".to_owned()
        }
    );
    assert_eq!(
        err(&[(TRACES_EXPORTER, "zipkin")]),
        ExportConfigError::UnknownExporter {
            var: TRACES_EXPORTER,
            value: "zipkin".to_owned()
        }
    );
    assert!(matches!(
        err(&[(TRACES_EXPORTER, ",")]),
        ExportConfigError::MultipleExporters { .. }
    ));
}

#[test]
fn otlp_defaults_are_http_protobuf_on_localhost() {
    let c = otlp(&[(TRACES_EXPORTER, "otlp")]);
    assert_eq!(c.protocol, Protocol::HttpProtobuf);
    assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
    assert_eq!(c.timeout, Duration::from_millis(10_000));
    assert_eq!(c.compression, Compression::Gzip);
    assert!(c.headers.is_empty());
}

#[test]
fn grpc_default_endpoint_and_generic_endpoint_unchanged() {
    let c = otlp(&[(TRACES_EXPORTER, "otlp"), (PROTOCOL, "grpc")]);
    assert_eq!(c.protocol, Protocol::Grpc);
    assert_eq!(c.endpoint, "http://localhost:4317/");
    let c = otlp(&[(ENDPOINT, "http://collector:4317"), (PROTOCOL, "grpc")]);
    assert_eq!(c.endpoint, "http://collector:4317/");
}

#[test]
fn generic_http_endpoint_keeps_its_path_prefix() {
    let c = otlp(&[(ENDPOINT, "http://gw:80/otel/")]);
    assert_eq!(c.endpoint, "http://gw:80/otel/v1/traces");
    let c = otlp(&[(ENDPOINT, "http://gw:80/otel")]);
    assert_eq!(c.endpoint, "http://gw:80/otel/v1/traces");
}

#[test]
fn signal_specific_variables_win() {
    let c = otlp(&[
        (ENDPOINT, "http://generic:4318"),
        (TRACES_ENDPOINT, "http://specific:4317"),
        (PROTOCOL, "http/protobuf"),
        (TRACES_PROTOCOL, "grpc"),
        (HEADERS, "a=generic"),
        (TRACES_HEADERS, "b=specific"),
        (TIMEOUT, "1000"),
        (TRACES_TIMEOUT, "2000"),
        (COMPRESSION, "gzip"),
        (TRACES_COMPRESSION, "none"),
    ]);
    assert_eq!(c.endpoint, "http://specific:4317/");
    assert_eq!(c.protocol, Protocol::Grpc);
    assert_eq!(c.headers.len(), 1);
    assert_eq!(c.headers[0].0, "b");
    assert_eq!(c.headers[0].1, "specific");
    assert_eq!(c.timeout, Duration::from_millis(2000));
    assert_eq!(c.compression, Compression::None);
}

#[test]
fn generic_variables_apply_without_specific_ones() {
    let c = otlp(&[
        (ENDPOINT, "http://c:4318"),
        (HEADERS, "api-key=k%2C1"),
        (TIMEOUT, "250"),
        (COMPRESSION, "NONE"),
    ]);
    assert_eq!(c.headers[0].1, "k,1");
    assert_eq!(c.timeout, Duration::from_millis(250));
    assert_eq!(c.compression, Compression::None);
}

#[test]
fn protocol_errors() {
    let e = err(&[(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/json")]);
    assert_eq!(
        e,
        ExportConfigError::JsonNotSupported {
            var: PROTOCOL,
            value: "http/json".to_owned()
        }
    );
    assert!(e.to_string().contains("not supported"), "{e}");
    assert_eq!(
        err(&[(ENDPOINT, "http://c:4318"), (TRACES_PROTOCOL, "thrift")]),
        ExportConfigError::UnknownProtocol {
            var: TRACES_PROTOCOL,
            value: "thrift".to_owned()
        }
    );
}

/// A file under a fresh directory, removed with it.
fn scratch_file(name: &str, contents: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let path = dir.path.join(name);
    std::fs::write(&path, contents).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

mod tempdir {
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new() -> Self {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "loupe-tls-test-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[test]
fn https_endpoints_use_tls_with_the_files_given() {
    let config = otlp(&[(ENDPOINT, "https://collector:4318")]);
    assert!(config.is_tls());
    assert_eq!(
        *config.tls,
        TlsConfig::default(),
        "the host's trust store alone"
    );
    assert!(!otlp(&[(ENDPOINT, "http://collector:4318")]).is_tls());
    assert!(otlp(&[(TRACES_ENDPOINT, "HTTPS://c:4317"), (PROTOCOL, "grpc")]).is_tls());

    let (_dir, ca) = scratch_file("ca.pem", CERT_PEM);
    let config = otlp(&[
        (ENDPOINT, "https://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
    ]);
    let file = config.tls.ca.clone().expect("the CA file");
    assert_eq!(
        (file.path.as_str(), file.pem.as_slice()),
        (ca.as_str(), CERT_PEM.as_bytes())
    );
    assert!(
        !format!("{file:?}").contains("BEGIN"),
        "debug output shows the path, not the PEM"
    );
    // The signal's own variable wins over the generic one.
    let e = err(&[
        (ENDPOINT, "https://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        (
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "/nonexistent/ca.pem",
        ),
    ]);
    assert!(
        matches!(&e, ExportConfigError::TlsFile { var: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", path, .. } if path == "/nonexistent/ca.pem"),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("cannot be read") && !text.contains('\n'),
        "{text}"
    );
}

#[test]
fn the_startup_line_hides_credentials_in_the_endpoint() {
    let config = otlp(&[(
        TRACES_ENDPOINT,
        "https://user:s3cret@collector:4318/v1/traces",
    )]);
    let shown = config.to_string();
    assert_eq!(
        shown,
        "otlp http/protobuf to https://***@collector:4318/v1/traces (gzip) over TLS"
    );
    assert!(!shown.contains("s3cret"));
}

#[test]
fn tls_files_with_a_plain_endpoint_are_pointed_out() {
    let (_dir, ca) = scratch_file("ca.pem", CERT_PEM);
    let config = otlp(&[
        (ENDPOINT, "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
    ]);
    assert!(!config.is_tls());
    assert_eq!(
        config.unused_tls_files().as_deref(),
        Some(
            "the TLS files are not used: the endpoint http://collector:4318/v1/traces is not https://"
        )
    );
    // Said once, by the startup warning, not again in the export line.
    assert_eq!(
        config.to_string(),
        "otlp http/protobuf to http://collector:4318/v1/traces (gzip) in plain text"
    );
    let tls = otlp(&[
        (ENDPOINT, "https://collector:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
    ]);
    assert_eq!(tls.unused_tls_files(), None);
}

#[test]
fn tls_files_are_checked_when_read() {
    let (_dir, not_pem) = scratch_file("ca.pem", "just some text\n");
    let e = err(&[
        (ENDPOINT, "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &not_pem),
    ]);
    assert!(e.to_string().contains("holds no PEM certificate"), "{e}");

    let (_dir2, cert) = scratch_file("client.pem", CERT_PEM);
    // A certificate where the key should be: no private key in it.
    let e = err(&[
        (ENDPOINT, "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &cert),
    ]);
    assert!(
        matches!(
            &e,
            ExportConfigError::TlsFile {
                var: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("holds no PEM private key"), "{e}");

    // Framing alone is not enough: what is inside must be a certificate.
    let (_dir3, garbage) = scratch_file(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let e = err(&[
        (ENDPOINT, "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &garbage),
    ]);
    assert!(e.to_string().contains("does not parse"), "{e}");

    // The key must belong to the certificate; the message names the key's variable and
    // both files, and shows nothing of the key.
    let (_dir4, key) = scratch_file("key.pem", KEY_PEM);
    let (_dir5, other_key) = scratch_file("other-key.pem", OTHER_KEY_PEM);
    let pair = |key: &str| {
        parse(&[
            (ENDPOINT, "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        ])
    };
    let identity = pair(&key).map(|c| match c.exporter {
        ExporterConfig::Otlp(otlp) => otlp.tls.client.clone().map(|c| c.key.path),
        _ => None,
    });
    assert_eq!(identity, Ok(Some(key.clone())), "a matching pair is taken");
    let e = pair(&other_key).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("OTEL_EXPORTER_OTLP_CLIENT_KEY=")
            && text.contains("is not a usable key for the certificate in")
            && text.contains(&cert),
        "{text}"
    );
    assert!(!text.contains("BEGIN"), "{text}");

    // Half a client identity is refused, naming the missing half.
    let e = err(&[
        (ENDPOINT, "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
    ]);
    assert_eq!(
        e,
        ExportConfigError::TlsClientHalf {
            given: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            missing: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            missing_for_signal: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        }
    );
}

#[test]
fn malformed_endpoints() {
    let problem = |value: &str| match err(&[(TRACES_ENDPOINT, value)]) {
        ExportConfigError::InvalidEndpoint {
            var,
            problem,
            value: v,
        } => {
            assert_eq!(var, TRACES_ENDPOINT);
            assert_eq!(v, value);
            problem
        }
        other => panic!("{value}: {other:?}"),
    };
    assert_eq!(problem("collector:4317"), EndpointProblem::NoScheme);
    assert_eq!(problem("/v1/traces"), EndpointProblem::NoScheme);
    assert_eq!(problem("ftp://c:21"), EndpointProblem::UnknownScheme);
    assert_eq!(problem("http://"), EndpointProblem::NotAUrl);
    assert_eq!(problem("http://a b"), EndpointProblem::NotAUrl);
}

#[test]
fn generic_endpoint_errors_show_what_the_user_wrote() {
    assert_eq!(
        err(&[(ENDPOINT, "http://a b")]),
        ExportConfigError::InvalidEndpoint {
            var: ENDPOINT,
            value: "http://a b".to_owned(),
            problem: EndpointProblem::NotAUrl
        }
    );
}

#[test]
fn timeout_and_compression_errors() {
    for bad in ["0", "-5", "1.5", "10s", "abc"] {
        assert_eq!(
            err(&[(ENDPOINT, "http://c:4318"), (TIMEOUT, bad)]),
            ExportConfigError::InvalidDuration {
                var: TIMEOUT,
                value: bad.to_owned()
            }
        );
    }
    assert_eq!(
        err(&[(ENDPOINT, "http://c:4318"), (TRACES_COMPRESSION, "zstd")]),
        ExportConfigError::UnknownCompression {
            var: TRACES_COMPRESSION,
            value: "zstd".to_owned()
        }
    );
}

#[test]
fn header_errors_name_the_variable() {
    assert_eq!(
        err(&[(ENDPOINT, "http://c:4318"), (TRACES_HEADERS, "a=1,broken")]),
        ExportConfigError::InvalidHeader {
            var: TRACES_HEADERS,
            index: 2,
            problem: HeaderProblem::MissingEquals
        }
    );
}

#[test]
fn otlp_variables_are_validated_even_for_console() {
    assert!(parse(&[(TRACES_EXPORTER, "console"), (PROTOCOL, "http/json")]).is_err());
    assert!(parse(&[(PROTOCOL, "carrier-pigeon")]).is_err());
    let config = parse(&[(TRACES_EXPORTER, "console"), (PROTOCOL, "grpc")]).unwrap();
    assert_eq!(config.exporter, ExporterConfig::Console);
}

#[test]
fn batch_variables() {
    let config = parse(&[
        (BSP_SCHEDULE_DELAY, "100"),
        (BSP_EXPORT_TIMEOUT, "2000"),
        (BSP_MAX_QUEUE_SIZE, "64"),
        (BSP_MAX_EXPORT_BATCH_SIZE, "64"),
    ])
    .unwrap();
    assert_eq!(
        config.batch,
        BatchConfig {
            schedule_delay: Duration::from_millis(100),
            export_timeout: Duration::from_millis(2000),
            max_queue_size: 64,
            max_export_batch_size: 64,
        }
    );
}

#[test]
fn a_small_queue_shrinks_the_default_batch() {
    let config = parse(&[(BSP_MAX_QUEUE_SIZE, "100")]).unwrap();
    assert_eq!(config.batch.max_export_batch_size, 100);
}

#[test]
fn batch_errors() {
    assert_eq!(
        err(&[
            (BSP_MAX_QUEUE_SIZE, "10"),
            (BSP_MAX_EXPORT_BATCH_SIZE, "20")
        ]),
        ExportConfigError::BatchLargerThanQueue {
            batch: 20,
            queue: 10
        }
    );
    assert_eq!(
        err(&[(BSP_MAX_EXPORT_BATCH_SIZE, "3000")]),
        ExportConfigError::BatchLargerThanQueue {
            batch: 3000,
            queue: 2048
        }
    );
    for bad in ["0", "-1", "many", "99999999"] {
        assert_eq!(
            err(&[(BSP_MAX_QUEUE_SIZE, bad)]),
            ExportConfigError::InvalidSize {
                var: BSP_MAX_QUEUE_SIZE,
                value: bad.to_owned(),
                max: MAX_QUEUE_SIZE_LIMIT
            }
        );
    }
    assert!(matches!(
        err(&[(BSP_SCHEDULE_DELAY, "soon")]),
        ExportConfigError::InvalidDuration {
            var: BSP_SCHEDULE_DELAY,
            ..
        }
    ));
    assert!(matches!(
        err(&[(BSP_EXPORT_TIMEOUT, "0")]),
        ExportConfigError::InvalidDuration {
            var: BSP_EXPORT_TIMEOUT,
            ..
        }
    ));
}

#[test]
fn every_error_is_one_line_naming_its_variable() {
    let cases: &[&[(&str, &str)]] = &[
        &[(TRACES_EXPORTER, "zipkin")],
        &[(TRACES_EXPORTER, "a,b")],
        &[(ENDPOINT, "x"), (PROTOCOL, "udp")],
        &[(ENDPOINT, "ftp://x")],
        &[
            (ENDPOINT, "https://x"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent"),
        ],
        &[(ENDPOINT, "http://x"), (TIMEOUT, "x")],
        &[(ENDPOINT, "http://x"), (HEADERS, "x")],
        &[(BSP_MAX_QUEUE_SIZE, "x")],
        &[(BSP_MAX_QUEUE_SIZE, "1"), (BSP_MAX_EXPORT_BATCH_SIZE, "2")],
    ];
    for vars in cases {
        let text = err(vars).to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("OTEL_"), "{text}");
    }
}

#[test]
fn display_for_the_startup_log_hides_header_values() {
    let config = parse(&[
        (ENDPOINT, "http://c:4317"),
        (PROTOCOL, "grpc"),
        (COMPRESSION, "gzip"),
        (HEADERS, "authorization=Bearer%20xyz"),
    ])
    .unwrap();
    let text = config.exporter.to_string();
    assert_eq!(text, "otlp grpc to http://c:4317/ (gzip) with 1 header(s)");
    assert_eq!(ExporterConfig::Console.to_string(), "console");
    assert_eq!(ExporterConfig::None.to_string(), "none");
}
