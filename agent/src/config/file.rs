//! The YAML configuration file: its schema, read strictly.
//!
//! Every field is optional: what the file leaves out comes from the environment or the
//! defaults. Unknown keys are refused, and values are checked while they are read so that
//! the YAML library reports the key's path and line. The same types print the effective
//! configuration, so `loupe config check` output is itself a valid file.

use std::{collections::BTreeMap, fmt, io::Read as _, net::SocketAddr, path::Path};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::ConfigError;
use crate::{
    cli::{CpuPriority, DataProbes, MAX_METRIC_SERIES_LIMIT, MIN_CAPTURE_BYTES},
    export::config::MAX_QUEUE_SIZE_LIMIT,
    pipeline::SdkSpans,
    span::SpanAttributes,
};

/// Far beyond any real configuration; keeps a wrong path (a log, a device) from being
/// read whole.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

const MAX_CAPTURE: u64 = loupe_common::MAX_CAPTURE as u64;

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of loupe settings")]
pub struct FileConfig {
    pub select: Option<Select>,
    pub routes: Option<Vec<String>>,
    pub admin_addr: Option<SocketAddr>,
    pub capture_bytes: Option<Bounded<MIN_CAPTURE_BYTES_U64, MAX_CAPTURE>>,
    pub ring_buffer_mib: Option<Bounded<1, 1024, true>>,
    pub cpu_priority: Option<CpuPriority>,
    #[serde(alias = "read_probes")]
    pub data_probes: Option<DataProbes>,
    pub sdk_spans: Option<SdkSpans>,
    pub span_attributes: Option<SpanAttributes>,
    pub inject_traceparent: Option<bool>,
    pub sampling: Option<Sampling>,
    pub metrics: Option<Metrics>,
    pub export: Option<Export>,
    pub resource: Option<Resource>,
}

const MIN_CAPTURE_BYTES_U64: u64 = MIN_CAPTURE_BYTES as u64;

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    pub pids: Option<Vec<u32>>,
    pub exes: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub sampler: Option<Sampler>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<Ratio>,
    pub tail: Option<Tail>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tail {
    /// Tail sampling is on when a ratio is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    pub keep_errors: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_slower_than_ms: Option<u64>,
    pub wait_ms: Option<u64>,
    pub max_traces: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub exporter: Option<MetricsExporter>,
    pub export_interval_ms: Option<Millis>,
    pub export_timeout_ms: Option<Millis>,
    pub max_routes_per_service: Option<usize>,
    pub max_series: Option<Bounded<1, { MAX_METRIC_SERIES_LIMIT as u64 }>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub exporter: Option<TracesExporter>,
    /// The generic OTLP settings; `traces` and `metrics` override them per signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// TLS files (PEM paths) for https:// endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    pub traces: Option<Otlp>,
    pub metrics: Option<Otlp>,
    pub batch: Option<Batch>,
}

/// The OTLP settings of one signal.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_ms: Option<Millis>,
    pub compression: Option<Compression>,
    /// TLS files (PEM paths) for https:// endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub max_queue_size: Option<QueueSize>,
    pub schedule_delay_ms: Option<Millis>,
    pub max_export_batch_size: Option<QueueSize>,
    pub export_timeout_ms: Option<Millis>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub attributes: Option<BTreeMap<String, String>>,
}

pub type Millis = Bounded<1, { u64::MAX }>;
pub type QueueSize = Bounded<1, { MAX_QUEUE_SIZE_LIMIT as u64 }>;

/// Spelled as the OpenTelemetry variables spell them, so that a value can move between the
/// file and the environment unchanged.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
    };
}

choice!(TracesExporter { Otlp = "otlp", Console = "console", None = "none" });
choice!(MetricsExporter { Otlp = "otlp", Prometheus = "prometheus", None = "none" });
choice!(Protocol { Grpc = "grpc", HttpProtobuf = "http/protobuf" });
choice!(Compression { Gzip = "gzip", None = "none" });
choice!(Sampler {
    AlwaysOn = "always_on",
    AlwaysOff = "always_off",
    TraceIdRatio = "traceidratio",
    ParentBasedAlwaysOn = "parentbased_always_on",
    ParentBasedAlwaysOff = "parentbased_always_off",
    ParentBasedTraceIdRatio = "parentbased_traceidratio",
});

/// A whole number from `MIN` to `MAX` (a power of two when `POW2`), checked while it is
/// read so that the error carries the value's line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64, const POW2: bool = false>(u64);

impl<const MIN: u64, const MAX: u64, const POW2: bool> Bounded<MIN, MAX, POW2> {
    /// Values that break the rule are clamped into it: only effective values, which the
    /// command line or the file already checked, are built this way.
    pub fn new(value: u64) -> Self {
        Self(value.clamp(MIN, MAX))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64, const POW2: bool> Serialize for Bounded<MIN, MAX, POW2> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de, const MIN: u64, const MAX: u64, const POW2: bool> Deserialize<'de>
    for Bounded<MIN, MAX, POW2>
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<const MIN: u64, const MAX: u64, const POW2: bool>;

        impl<const MIN: u64, const MAX: u64, const POW2: bool> de::Visitor<'_> for Visitor<MIN, MAX, POW2> {
            type Value = Bounded<MIN, MAX, POW2>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if POW2 {
                    write!(f, "a power of two from {MIN} to {MAX}")
                } else if MAX == u64::MAX {
                    write!(f, "a whole number of at least {MIN}")
                } else {
                    write!(f, "a whole number from {MIN} to {MAX}")
                }
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                if !(MIN..=MAX).contains(&value) || (POW2 && !value.is_power_of_two()) {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(value), &self));
                }
                Ok(Bounded(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
                }
            }
        }

        deserializer.deserialize_u64(Visitor::<MIN, MAX, POW2>)
    }
}

/// A probability from 0 to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(pub f64);

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Ratio;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ratio between 0 and 1")
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Ratio, E> {
                if (0.0..=1.0).contains(&value) {
                    Ok(Ratio(value))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(value), &self))
                }
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Ratio, E> {
                match value {
                    0 | 1 => Ok(Ratio(value as f64)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(value), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Ratio, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
                }
            }
        }

        deserializer.deserialize_f64(Visitor)
    }
}

impl FileConfig {
    /// Parses the text of a configuration file; an empty file (or one of only comments)
    /// configures nothing.
    pub fn parse(text: &str) -> Result<FileConfig, serde_norway::Error> {
        Ok(serde_norway::from_str::<Option<FileConfig>>(text)?.unwrap_or_default())
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let read_error = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        FileConfig::parse(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error,
        })
    }
}
