//! Layering: file < OTEL_* environment variables < flags given on the command line.
//!
//! The file's export, sampling and metrics-export keys are turned into the OTEL_* variables
//! they stand for, and the existing parsers read them through a lookup that asks the real
//! environment first: one parser, one set of checks, whichever place a value came from.

use std::collections::BTreeMap;

use super::file::{Export, FileConfig, Otlp};
use crate::{
    cli::RunArgs,
    export::config::{METRICS, SignalVars, TRACES},
    process::resource::parse_resource_attributes,
};

/// The generic `OTEL_EXPORTER_OTLP_*` names, in the shape of the per-signal ones.
const GENERIC: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_COMPRESSION",
    certificate: "OTEL_EXPORTER_OTLP_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    http_path: "",
};

pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// One OTEL_* variable the file sets, with the key that sets it (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct FileVar {
    pub var: &'static str,
    pub key: String,
    pub value: String,
}

#[derive(Default)]
struct FileVars(Vec<FileVar>);

impl FileVars {
    fn set(&mut self, var: &'static str, key: &str, value: Option<String>) {
        if let Some(value) = value {
            self.0.push(FileVar {
                var,
                key: key.to_owned(),
                value,
            });
        }
    }

    fn otlp(&mut self, section: &str, names: &SignalVars, otlp: &Otlp) {
        let key = |name: &str| format!("{section}.{name}");
        self.set(names.endpoint, &key("endpoint"), otlp.endpoint.clone());
        self.set(
            names.protocol,
            &key("protocol"),
            otlp.protocol.map(|p| p.as_str().to_owned()),
        );
        self.set(
            names.headers,
            &key("headers"),
            otlp.headers.as_ref().map(encode_headers),
        );
        self.set(
            names.timeout,
            &key("timeout_ms"),
            otlp.timeout_ms.map(|t| t.get().to_string()),
        );
        self.set(
            names.compression,
            &key("compression"),
            otlp.compression.map(|c| c.as_str().to_owned()),
        );
        self.set(
            names.certificate,
            &key("certificate"),
            otlp.certificate.clone(),
        );
        self.set(
            names.client_certificate,
            &key("client_certificate"),
            otlp.client_certificate.clone(),
        );
        self.set(
            names.client_key,
            &key("client_key"),
            otlp.client_key.clone(),
        );
    }
}

/// The OTEL_* variables the file stands for.
pub fn file_vars(file: &FileConfig) -> Vec<FileVar> {
    let mut vars = FileVars::default();
    let number = |n: u64| n.to_string();
    if let Some(export) = &file.export {
        vars.set(
            "OTEL_TRACES_EXPORTER",
            "export.exporter",
            export.exporter.map(|e| e.as_str().to_owned()),
        );
        vars.otlp("export", &GENERIC, &generic_otlp(export));
        if let Some(traces) = &export.traces {
            vars.otlp("export.traces", &TRACES, traces);
        }
        if let Some(metrics) = &export.metrics {
            vars.otlp("export.metrics", &METRICS, metrics);
        }
        if let Some(batch) = &export.batch {
            let key = |name: &str| format!("export.batch.{name}");
            vars.set(
                "OTEL_BSP_MAX_QUEUE_SIZE",
                &key("max_queue_size"),
                batch.max_queue_size.map(|n| number(n.get())),
            );
            vars.set(
                "OTEL_BSP_SCHEDULE_DELAY",
                &key("schedule_delay_ms"),
                batch.schedule_delay_ms.map(|n| number(n.get())),
            );
            vars.set(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                &key("max_export_batch_size"),
                batch.max_export_batch_size.map(|n| number(n.get())),
            );
            vars.set(
                "OTEL_BSP_EXPORT_TIMEOUT",
                &key("export_timeout_ms"),
                batch.export_timeout_ms.map(|n| number(n.get())),
            );
        }
    }
    if let Some(sampling) = &file.sampling {
        vars.set(
            "OTEL_TRACES_SAMPLER",
            "sampling.sampler",
            sampling.sampler.map(|s| s.as_str().to_owned()),
        );
        vars.set(
            "OTEL_TRACES_SAMPLER_ARG",
            "sampling.sampler_arg",
            sampling.sampler_arg.map(|r| r.0.to_string()),
        );
    }
    if let Some(metrics) = &file.metrics {
        vars.set(
            "OTEL_METRICS_EXPORTER",
            "metrics.exporter",
            metrics.exporter.map(|e| e.as_str().to_owned()),
        );
        vars.set(
            "OTEL_METRIC_EXPORT_INTERVAL",
            "metrics.export_interval_ms",
            metrics.export_interval_ms.map(|n| number(n.get())),
        );
        vars.set(
            "OTEL_METRIC_EXPORT_TIMEOUT",
            "metrics.export_timeout_ms",
            metrics.export_timeout_ms.map(|n| number(n.get())),
        );
    }
    vars.0
}

fn generic_otlp(export: &Export) -> Otlp {
    Otlp {
        endpoint: export.endpoint.clone(),
        protocol: export.protocol,
        headers: export.headers.clone(),
        timeout_ms: export.timeout_ms,
        compression: export.compression,
        certificate: export.certificate.clone(),
        client_certificate: export.client_certificate.clone(),
        client_key: export.client_key.clone(),
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS` form: `key=value` pairs, percent-encoded so that commas,
/// equals signs and spaces in a value survive.
fn encode_headers(headers: &BTreeMap<String, String>) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    };
    headers
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The OTEL_* lookup the agent's parsers read: the environment, then the file.
pub struct Layers<'a, E> {
    env: E,
    file: &'a [FileVar],
}

impl<'a, E: Fn(&str) -> Option<String>> Layers<'a, E> {
    pub fn new(env: E, file: &'a [FileVar]) -> Self {
        Self { env, file }
    }

    /// Empty variables count as unset, as the SDK specification asks, so they do not hide
    /// the file's value.
    fn env_value(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.env_value(name).or_else(|| {
            self.file
                .iter()
                .find(|v| v.var == name)
                .map(|v| v.value.clone())
        })
    }

    /// Rewrites a parser's message so that the variables the file supplied are named by
    /// their file keys; `None` when the message names none of them.
    pub fn name_file_keys(&self, message: &str) -> Option<String> {
        let mut from_file: Vec<&FileVar> = self
            .file
            .iter()
            .filter(|v| self.env_value(v.var).is_none() && message.contains(v.var))
            .collect();
        if from_file.is_empty() {
            return None;
        }
        // OTEL_TRACES_SAMPLER is a prefix of OTEL_TRACES_SAMPLER_ARG: longest first.
        from_file.sort_by_key(|v| std::cmp::Reverse(v.var.len()));
        Some(
            from_file
                .iter()
                .fold(message.to_owned(), |text, v| text.replace(v.var, &v.key)),
        )
    }

    /// The agent's resource attributes: the file's, with the environment's
    /// `OTEL_RESOURCE_ATTRIBUTES` added and winning key by key, so that a node name set in
    /// a DaemonSet's environment joins the attributes a shared file sets.
    pub fn resource_attributes(&self, file: &FileConfig) -> Vec<(String, String)> {
        let mut attributes: Vec<(String, String)> = file
            .resource
            .as_ref()
            .and_then(|r| r.attributes.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let from_env = self
            .env_value(RESOURCE_ATTRIBUTES)
            .map(|v| parse_resource_attributes(&v))
            .unwrap_or_default();
        for (key, value) in from_env {
            match attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => attributes.push((key, value)),
            }
        }
        attributes
    }
}

/// Applies the file's values to the flags that were not given on the command line.
/// `given(id)` tells whether the flag with that clap id was given explicitly; it is asked
/// for every flag, which lets a test check that no flag is left out.
pub fn apply_file(run: &mut RunArgs, file: &FileConfig, given: impl Fn(&str) -> bool) {
    macro_rules! layer {
        ($field:ident, $value:expr) => {
            if !given(stringify!($field)) {
                if let Some(value) = $value {
                    run.$field = value;
                }
            }
        };
    }
    let select = file.select.clone().unwrap_or_default();
    let sampling = file.sampling.clone().unwrap_or_default();
    let tail = sampling.tail.unwrap_or_default();
    let metrics = file.metrics.clone().unwrap_or_default();
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);

    layer!(pids, select.pids);
    layer!(exes, select.exes);
    layer!(ports, select.ports);
    layer!(routes, file.routes.clone());
    layer!(admin_addr, file.admin_addr);
    layer!(capture_bytes, file.capture_bytes.map(|n| narrow(n.get())));
    layer!(sdk_spans, file.sdk_spans);
    layer!(span_attributes, file.span_attributes);
    layer!(tail_sample_ratio, tail.ratio.map(|r| Some(r.0)));
    layer!(tail_keep_errors, tail.keep_errors);
    layer!(tail_keep_slower_than, tail.keep_slower_than_ms.map(Some));
    layer!(tail_wait, tail.wait_ms);
    layer!(tail_max_traces, tail.max_traces);
    layer!(max_routes_per_service, metrics.max_routes_per_service);
    layer!(
        max_metric_series,
        metrics.max_series.map(|n| narrow(n.get()))
    );
    layer!(inject_traceparent, file.inject_traceparent);
    layer!(
        ring_buffer_mib,
        file.ring_buffer_mib.map(|n| narrow(n.get()))
    );
    layer!(cpu_priority, file.cpu_priority);
    layer!(data_probes, file.data_probes);
}
