//! The effective configuration, as `loupe config check` prints it: the file's own schema
//! with every value filled in, so that the output can itself serve as a file.

use std::{collections::BTreeMap, path::Path, time::Duration};

use super::{
    AgentConfig,
    file::{
        Batch, Bounded, Compression, Export, FileConfig, Metrics, MetricsExporter, Otlp, Protocol,
        Ratio, Resource, Sampler, Sampling, Select, Tail, TracesExporter,
    },
};
use crate::{
    export::config::{self as export, ExporterConfig, OtlpConfig},
    red,
    sampling::HeadSampler,
};

/// Shown instead of header values: they usually carry credentials.
pub const REDACTED: &str = "<redacted>";

impl AgentConfig {
    /// Every setting after layering, defaults included, in the file's schema.
    pub fn effective(&self) -> FileConfig {
        let run = &self.run;
        let (sampler, sampler_arg) = sampler(&self.head_sampler);
        let batch = &self.export.batch;
        FileConfig {
            select: Some(Select {
                pids: Some(run.pids.clone()),
                exes: Some(run.exes.clone()),
                ports: Some(run.ports.clone()),
            }),
            routes: Some(run.routes.clone()),
            admin_addr: Some(run.admin_addr),
            capture_bytes: Some(Bounded::new(run.capture_bytes.into())),
            ring_buffer_mib: Some(Bounded::new(run.ring_buffer_mib.into())),
            cpu_priority: Some(run.cpu_priority),
            data_probes: Some(run.data_probes),
            sdk_spans: Some(run.sdk_spans),
            span_attributes: Some(run.span_attributes),
            inject_traceparent: Some(run.inject_traceparent),
            sampling: Some(Sampling {
                sampler: Some(sampler),
                sampler_arg,
                tail: Some(Tail {
                    ratio: run.tail_sample_ratio.map(Ratio),
                    keep_errors: Some(run.tail_keep_errors),
                    keep_slower_than_ms: run.tail_keep_slower_than,
                    wait_ms: Some(run.tail_wait),
                    max_traces: Some(run.tail_max_traces),
                }),
            }),
            metrics: Some(Metrics {
                exporter: Some(match self.metrics_export.exporter {
                    red::MetricsExporter::Otlp(_) => MetricsExporter::Otlp,
                    red::MetricsExporter::None => MetricsExporter::None,
                }),
                export_interval_ms: Some(millis(self.metrics_export.interval)),
                export_timeout_ms: Some(millis(self.metrics_export.timeout)),
                max_routes_per_service: Some(run.max_routes_per_service),
                max_series: Some(Bounded::new(run.max_metric_series.into())),
            }),
            export: Some(Export {
                exporter: Some(match self.export.exporter {
                    ExporterConfig::Otlp(_) => TracesExporter::Otlp,
                    ExporterConfig::Console => TracesExporter::Console,
                    ExporterConfig::None => TracesExporter::None,
                }),
                traces: Some(otlp(&self.traces_otlp)),
                metrics: Some(otlp(&self.metrics_otlp)),
                batch: Some(Batch {
                    max_queue_size: Some(Bounded::new(batch.max_queue_size as u64)),
                    schedule_delay_ms: Some(millis(batch.schedule_delay)),
                    max_export_batch_size: Some(Bounded::new(batch.max_export_batch_size as u64)),
                    export_timeout_ms: Some(millis(batch.export_timeout)),
                }),
                ..Export::default()
            }),
            resource: Some(Resource {
                attributes: Some(self.resource_attributes.iter().cloned().collect()),
            }),
        }
    }

    /// The effective configuration as YAML, headed by a comment naming its sources.
    pub fn effective_yaml(&self, path: &Path) -> Result<String, serde_norway::Error> {
        let body = serde_norway::to_string(&self.effective())?;
        Ok(format!(
            "# Effective configuration: {} < OTEL_* environment < command line.\n\
             # Header values are redacted.\n{body}",
            path.display()
        ))
    }
}

fn millis(duration: Duration) -> Bounded<1, { u64::MAX }> {
    Bounded::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn otlp(config: &OtlpConfig) -> Otlp {
    let headers: BTreeMap<String, String> = config
        .headers
        .iter()
        .map(|(name, _)| (name.as_str().to_owned(), REDACTED.to_owned()))
        .collect();
    Otlp {
        endpoint: Some(config.endpoint.to_string()),
        protocol: Some(match config.protocol {
            export::Protocol::Grpc => Protocol::Grpc,
            export::Protocol::HttpProtobuf => Protocol::HttpProtobuf,
        }),
        headers: Some(headers),
        timeout_ms: Some(millis(config.timeout)),
        compression: Some(match config.compression {
            export::Compression::Gzip => Compression::Gzip,
            export::Compression::None => Compression::None,
        }),
        certificate: config.tls.ca.as_ref().map(|f| f.path.clone()),
        client_certificate: config.tls.client.as_ref().map(|c| c.cert.path.clone()),
        client_key: config.tls.client.as_ref().map(|c| c.key.path.clone()),
    }
}

fn sampler(head: &HeadSampler) -> (Sampler, Option<Ratio>) {
    match head {
        HeadSampler::AlwaysOn => (Sampler::AlwaysOn, None),
        HeadSampler::AlwaysOff => (Sampler::AlwaysOff, None),
        HeadSampler::TraceIdRatio(r) => (Sampler::TraceIdRatio, Some(Ratio(*r))),
        HeadSampler::ParentBased(inner) => match inner.as_ref() {
            HeadSampler::AlwaysOff => (Sampler::ParentBasedAlwaysOff, None),
            HeadSampler::TraceIdRatio(r) => (Sampler::ParentBasedTraceIdRatio, Some(Ratio(*r))),
            // The parser never nests parent-based samplers; always_on is what remains.
            HeadSampler::AlwaysOn | HeadSampler::ParentBased(_) => {
                (Sampler::ParentBasedAlwaysOn, None)
            }
        },
    }
}
