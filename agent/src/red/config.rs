//! Metric export settings from the OpenTelemetry SDK environment variables: the same
//! `OTEL_EXPORTER_OTLP_*` settings as traces (with `_METRICS_` variants winning), plus
//! `OTEL_METRICS_EXPORTER`, `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_METRIC_EXPORT_TIMEOUT`.
//!
//! With no endpoint and no `OTEL_METRICS_EXPORTER`, metrics are only served on `/metrics`.

use std::{fmt, time::Duration};

use crate::export::config::{
    Env, ExportConfigError, METRICS, OtlpConfig, endpoint_set, parse_millis, parse_otlp,
};

const METRICS_EXPORTER: &str = "OTEL_METRICS_EXPORTER";
const EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";

#[derive(Clone, Debug, PartialEq)]
pub struct MetricsExportConfig {
    pub exporter: MetricsExporter,
    /// Time between two exports.
    pub interval: Duration,
    /// Time allowed for one export, retries included.
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MetricsExporter {
    Otlp(OtlpConfig),
    /// No push; the histograms are still served on `/metrics`.
    None,
}

/// For the startup log. Headers are left out: they usually carry credentials.
impl fmt::Display for MetricsExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsExporter::Otlp(otlp) => otlp.fmt(f),
            MetricsExporter::None => f.write_str("none (served on /metrics)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricsConfigError {
    #[error("{var}={value:?}: unknown metrics exporter (expected otlp, prometheus or none)")]
    UnknownExporter { var: &'static str, value: String },
    #[error(
        "{var}={value:?}: loupe has no console metrics exporter; the metrics are served on \
         the admin address's /metrics (use none or prometheus)"
    )]
    ConsoleNotSupported { var: &'static str, value: String },
    #[error("{var}={value:?}: loupe runs one metrics exporter at a time; pick one of them")]
    MultipleExporters { var: &'static str, value: String },
    #[error(transparent)]
    Export(#[from] ExportConfigError),
}

impl MetricsExportConfig {
    /// Reads the configuration; `get` is usually `|k| std::env::var(k).ok()`.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<MetricsExportConfig, MetricsConfigError> {
        let env = Env::new(get);
        let otlp_wanted = match env.var(METRICS_EXPORTER) {
            Some((var, value)) => parse_exporter(var, &value)?,
            None => endpoint_set(&env, &METRICS),
        };
        // Validated even when unused, as for traces: a typo should fail now.
        let otlp = parse_otlp(&env, &METRICS)?;
        let interval = match env.var(EXPORT_INTERVAL) {
            Some((var, value)) => parse_millis(var, &value)?,
            None => Duration::from_millis(60_000),
        };
        let timeout = match env.var(EXPORT_TIMEOUT) {
            Some((var, value)) => parse_millis(var, &value)?,
            None => Duration::from_millis(30_000),
        };
        Ok(MetricsExportConfig {
            exporter: if otlp_wanted {
                MetricsExporter::Otlp(otlp)
            } else {
                MetricsExporter::None
            },
            interval,
            timeout,
        })
    }
}

/// True for `otlp`, false for the values that push nothing.
fn parse_exporter(var: &'static str, value: &str) -> Result<bool, MetricsConfigError> {
    let mut names: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    names.dedup();
    let [name] = names.as_slice() else {
        return Err(MetricsConfigError::MultipleExporters {
            var,
            value: value.to_owned(),
        });
    };
    match name.as_str() {
        "otlp" => Ok(true),
        // The Prometheus exporter is a pull exporter: that is the admin endpoint.
        "none" | "prometheus" => Ok(false),
        "console" | "logging" => Err(MetricsConfigError::ConsoleNotSupported {
            var,
            value: value.to_owned(),
        }),
        _ => Err(MetricsConfigError::UnknownExporter {
            var,
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::export::config::{Compression, Protocol};

    fn parse(vars: &[(&str, &str)]) -> Result<MetricsExportConfig, MetricsConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        MetricsExportConfig::from_env(|k| map.get(k).cloned())
    }

    fn otlp(vars: &[(&str, &str)]) -> OtlpConfig {
        match parse(vars).unwrap().exporter {
            MetricsExporter::Otlp(otlp) => otlp,
            other => panic!("expected otlp, got {other:?}"),
        }
    }

    #[test]
    fn defaults_push_nothing() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.exporter, MetricsExporter::None);
        assert_eq!(config.interval, Duration::from_secs(60));
        assert_eq!(config.timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_generic_endpoint_selects_otlp_with_the_metrics_path() {
        let c = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert_eq!(c.endpoint.to_string(), "http://collector:4318/v1/metrics");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/")]);
        assert_eq!(
            c.endpoint.to_string(),
            "http://collector:4318/base/v1/metrics"
        );
    }

    #[test]
    fn the_metrics_endpoint_is_used_as_is() {
        let c = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:9000/custom",
            ),
        ]);
        assert_eq!(c.endpoint.to_string(), "http://m:9000/custom");
    }

    #[test]
    fn a_traces_endpoint_alone_does_not_export_metrics() {
        let config = parse(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318")]).unwrap();
        assert_eq!(config.exporter, MetricsExporter::None);
    }

    #[test]
    fn metrics_variables_win_over_generic_ones() {
        let c = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
            // Trace settings do not leak into metrics.
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint.to_string(), "http://collector:4317/");
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].0.as_str(), "b");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.compression, Compression::Gzip);
    }

    #[test]
    fn exporter_values() {
        assert!(matches!(
            parse(&[("OTEL_METRICS_EXPORTER", "OTLP")])
                .unwrap()
                .exporter,
            MetricsExporter::Otlp(_)
        ));
        for value in ["none", "prometheus", " None "] {
            let config = parse(&[
                ("OTEL_METRICS_EXPORTER", value),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ])
            .unwrap();
            assert_eq!(config.exporter, MetricsExporter::None, "{value}");
        }
        assert!(matches!(
            parse(&[("OTEL_METRICS_EXPORTER", "console")]),
            Err(MetricsConfigError::ConsoleNotSupported { .. })
        ));
        assert!(matches!(
            parse(&[("OTEL_METRICS_EXPORTER", "statsd")]),
            Err(MetricsConfigError::UnknownExporter { .. })
        ));
        assert!(matches!(
            parse(&[("OTEL_METRICS_EXPORTER", "otlp,prometheus")]),
            Err(MetricsConfigError::MultipleExporters { .. })
        ));
    }

    #[test]
    fn interval_and_timeout() {
        let config = parse(&[
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "250"),
        ])
        .unwrap();
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(config.timeout, Duration::from_millis(250));
        for bad in ["0", "-1", "1s", "soon"] {
            let err = parse(&[("OTEL_METRIC_EXPORT_INTERVAL", bad)]).unwrap_err();
            assert_eq!(
                err,
                MetricsConfigError::Export(ExportConfigError::InvalidDuration {
                    var: "OTEL_METRIC_EXPORT_INTERVAL",
                    value: bad.to_owned(),
                })
            );
        }
    }

    #[test]
    fn bad_metrics_settings_fail_even_when_not_exporting() {
        let err = parse(&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318")]);
        assert!(matches!(
            err,
            Err(MetricsConfigError::Export(
                ExportConfigError::InvalidEndpoint { .. }
            ))
        ));
        let err = parse(&[
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "zstd"),
        ]);
        assert!(matches!(
            err,
            Err(MetricsConfigError::Export(
                ExportConfigError::UnknownCompression { .. }
            ))
        ));
    }
}
