//! Telling whether a process already runs an OpenTelemetry SDK.
//!
//! Such a process exports its own spans; loupe's spans for it would be duplicates. It is
//! recognised by what it is told and by what it does:
//! - its environment configures an SDK exporter (`OTEL_TRACES_EXPORTER` other than
//!   `none`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or loads
//!   an auto-instrumentation agent (`NODE_OPTIONS` requiring `@opentelemetry`,
//!   `JAVA_TOOL_OPTIONS` with the OpenTelemetry Java agent, `PYTHONPATH` with
//!   `opentelemetry` auto-instrumentation);
//! - or it is seen exporting: an HTTP request to `/v1/traces`, or a connection to the
//!   OTLP ports 4317 or 4318.
//!
//! `OTEL_SERVICE_NAME` alone is not a sign: it is how uninstrumented services are named.

/// OTLP's well-known ports (gRPC, HTTP).
pub const OTLP_PORTS: [u16; 2] = [4317, 4318];

pub fn configured_by_environment(environ: &[(String, String)]) -> bool {
    environ.iter().any(|(name, value)| match name.as_str() {
        "OTEL_TRACES_EXPORTER" => {
            let v = value.trim();
            !v.is_empty() && !v.eq_ignore_ascii_case("none")
        }
        "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => {
            !value.trim().is_empty()
        }
        "NODE_OPTIONS" => value.contains("@opentelemetry"),
        "JAVA_TOOL_OPTIONS" => value.contains("opentelemetry-javaagent"),
        "PYTHONPATH" => value.contains("opentelemetry"),
        _ => false,
    })
}

/// True for a request that only an OTLP/HTTP exporter sends.
pub fn is_otlp_export(method: &str, target: &str) -> bool {
    method == "POST"
        && target
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/v1/traces"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sdk_environments() {
        assert!(configured_by_environment(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(configured_by_environment(&env(&[(
            "OTEL_TRACES_EXPORTER",
            "otlp"
        )])));
        assert!(configured_by_environment(&env(&[(
            "NODE_OPTIONS",
            "--require @opentelemetry/auto-instrumentations-node/register"
        )])));
        assert!(configured_by_environment(&env(&[(
            "JAVA_TOOL_OPTIONS",
            "-javaagent:/otel/opentelemetry-javaagent.jar"
        )])));
    }

    #[test]
    fn plain_environments() {
        assert!(!configured_by_environment(&env(&[(
            "OTEL_SERVICE_NAME",
            "shop"
        )])));
        assert!(!configured_by_environment(&env(&[(
            "OTEL_TRACES_EXPORTER",
            "none"
        )])));
        assert!(!configured_by_environment(&env(&[(
            "NODE_OPTIONS",
            "--max-old-space-size=512"
        )])));
        assert!(!configured_by_environment(&[]));
    }

    #[test]
    fn otlp_export_requests() {
        assert!(is_otlp_export("POST", "/v1/traces"));
        assert!(is_otlp_export("POST", "/otlp/v1/traces?x=1"));
        assert!(!is_otlp_export("GET", "/v1/traces"));
        assert!(!is_otlp_export("POST", "/v1/tracesx"));
    }
}
