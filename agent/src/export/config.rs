//! Export settings read from the OpenTelemetry SDK environment variables.
//!
//! loupe differs from the SDK defaults in one way: with neither `OTEL_TRACES_EXPORTER` nor an
//! endpoint set, spans go to the console, so that a first run shows something without a
//! collector. Setting an endpoint alone selects OTLP.

mod headers;
#[cfg(test)]
mod tests;
mod tls;

use std::{fmt, sync::Arc, time::Duration};

use hyper::http::{HeaderName, HeaderValue, Uri};

pub use headers::HeaderProblem;
pub use tls::{ClientIdentity, PemFile, TlsConfig, crypto_provider};

const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
const BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";
const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// The signal-specific OTLP variables of one signal, which win over the generic ones, and
/// the path its data goes to under a generic endpoint.
#[derive(Clone, Copy, Debug)]
pub struct SignalVars {
    pub endpoint: &'static str,
    pub protocol: &'static str,
    pub headers: &'static str,
    pub timeout: &'static str,
    pub compression: &'static str,
    /// PEM files for TLS: a CA to trust, a client certificate and its key.
    pub certificate: &'static str,
    pub client_certificate: &'static str,
    pub client_key: &'static str,
    /// Appended to `OTEL_EXPORTER_OTLP_ENDPOINT` for http/protobuf, e.g. `v1/traces`.
    pub http_path: &'static str,
}

pub const TRACES: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    certificate: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    http_path: "v1/traces",
};

pub const METRICS: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    certificate: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    http_path: "v1/metrics",
};

/// The largest queue loupe accepts: beyond this a stalled collector would cost more memory
/// than a tracing agent should hold.
pub const MAX_QUEUE_SIZE_LIMIT: usize = 1 << 20;

/// Everything the export stage needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    pub exporter: ExporterConfig,
    pub batch: BatchConfig,
}

/// Which exporter runs, with the settings only it uses.
#[derive(Clone, Debug, PartialEq)]
pub enum ExporterConfig {
    Otlp(OtlpConfig),
    Console,
    /// Spans are accepted and discarded.
    None,
}

/// For the startup log.
impl fmt::Display for ExporterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExporterConfig::Otlp(otlp) => otlp.fmt(f),
            ExporterConfig::Console => f.write_str("console"),
            ExporterConfig::None => f.write_str("none"),
        }
    }
}

/// For the startup log. Header values and key material are left out: they are credentials.
impl fmt::Display for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "otlp {} to {}",
            self.protocol,
            without_userinfo(&self.endpoint)
        )?;
        if self.compression == Compression::Gzip {
            f.write_str(" (gzip)")?;
        }
        if !self.headers.is_empty() {
            write!(f, " with {} header(s)", self.headers.len())?;
        }
        if self.is_tls() {
            f.write_str(match (&self.tls.ca, &self.tls.client) {
                (None, None) => " over TLS",
                (Some(_), None) => " over TLS (with an extra CA)",
                (None, Some(_)) => " over TLS (with a client certificate)",
                (Some(_), Some(_)) => " over TLS (with an extra CA and a client certificate)",
            })?;
        } else if self.tls.has_files() {
            // `unused_tls_files` explains, in a warning of its own.
            f.write_str(" in plain text")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// For gRPC only the scheme and authority matter; for HTTP this is the full URL posted to.
    pub endpoint: Uri,
    pub protocol: Protocol,
    /// Validated header names (lower case) and values, sent with every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Time allowed for one export request.
    pub timeout: Duration,
    pub compression: Compression,
    /// Used when the endpoint is `https://`; behind an `Arc` so that the enums holding an
    /// `OtlpConfig` stay small.
    pub tls: Arc<TlsConfig>,
}

impl OtlpConfig {
    /// Whether exports go over TLS: the endpoint's scheme is `https`.
    pub fn is_tls(&self) -> bool {
        self.endpoint
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    }

    /// Why TLS files set alongside a plain `http://` endpoint go unused: most likely an
    /// endpoint written `http://` by mistake. `None` when nothing was set in vain.
    pub fn unused_tls_files(&self) -> Option<String> {
        (!self.is_tls() && self.tls.has_files()).then(|| {
            format!(
                "the TLS files are not used: the endpoint {} is not https://",
                without_userinfo(&self.endpoint)
            )
        })
    }
}

/// `uri` with any `user:password@` of its authority replaced by `***@`, for logs.
fn without_userinfo(uri: &Uri) -> String {
    let text = uri.to_string();
    match uri.authority().map(|a| a.as_str()) {
        Some(authority) if authority.contains('@') => {
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            text.replacen(authority, &format!("***@{host}"), 1)
        }
        _ => text,
    }
}

/// The batch span processor settings (`OTEL_BSP_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    pub schedule_delay: Duration,
    /// Time allowed for one batch, retries included.
    pub export_timeout: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30_000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }
}

/// Why an endpoint URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointProblem {
    NotAUrl,
    NoScheme,
    UnknownScheme,
    NoHost,
}

impl fmt::Display for EndpointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointProblem::NotAUrl => "not a valid URL",
            EndpointProblem::NoScheme => "missing scheme, write it as http://host:port",
            EndpointProblem::UnknownScheme => "scheme must be http or https",
            EndpointProblem::NoHost => "missing host",
        })
    }
}

/// A setting that cannot be used. Each message is one line naming the variable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportConfigError {
    #[error("{var}={value:?}: unknown traces exporter (expected otlp, console, logging or none)")]
    UnknownExporter { var: &'static str, value: String },
    #[error("{var}={value:?}: loupe runs one traces exporter at a time; pick one of them")]
    MultipleExporters { var: &'static str, value: String },
    #[error("{var}={value:?}: unknown OTLP protocol (expected grpc or http/protobuf)")]
    UnknownProtocol { var: &'static str, value: String },
    #[error("{var}={value:?}: the http/json protocol is not supported; use grpc or http/protobuf")]
    JsonNotSupported { var: &'static str, value: String },
    #[error("{var}={value:?}: invalid endpoint: {problem}")]
    InvalidEndpoint {
        var: &'static str,
        value: String,
        problem: EndpointProblem,
    },
    #[error("{var}={path:?}: the file {problem}")]
    TlsFile {
        var: &'static str,
        path: String,
        problem: String,
    },
    #[error(
        "{given} is set but neither {missing} nor {missing_for_signal} is: a client \
         certificate needs its key, and the key its certificate"
    )]
    TlsClientHalf {
        given: &'static str,
        missing: &'static str,
        missing_for_signal: &'static str,
    },
    // The value is left out on purpose: headers usually carry credentials.
    #[error("{var}: header entry {index} {problem} (value not shown: it may hold a credential)")]
    InvalidHeader {
        var: &'static str,
        index: usize,
        problem: HeaderProblem,
    },
    #[error("{var}={value:?}: expected a positive whole number of milliseconds")]
    InvalidDuration { var: &'static str, value: String },
    #[error("{var}={value:?}: unknown compression (expected gzip or none)")]
    UnknownCompression { var: &'static str, value: String },
    #[error("{var}={value:?}: expected a whole number from 1 to {max}")]
    InvalidSize {
        var: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is larger than OTEL_BSP_MAX_QUEUE_SIZE={queue}"
    )]
    BatchLargerThanQueue { batch: usize, queue: usize },
}

/// Reads variables through `get`, treating empty values as unset as the SDK spec asks.
pub struct Env<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(get: F) -> Self {
        Self { get }
    }

    /// The variable's trimmed value with its name, `None` when unset or empty.
    pub fn var(&self, name: &'static str) -> Option<(&'static str, String)> {
        let value = (self.get)(name)?;
        let trimmed = value.trim();
        (!trimmed.is_empty()).then(|| (name, trimmed.to_owned()))
    }

    /// The signal-specific variable wins over the generic one.
    fn either(
        &self,
        specific: &'static str,
        generic: &'static str,
    ) -> Option<(&'static str, String)> {
        self.var(specific).or_else(|| self.var(generic))
    }
}

impl ExportConfig {
    /// Reads the configuration; `get` is usually `|k| std::env::var(k).ok()`.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ExportConfig, ExportConfigError> {
        let env = Env { get };
        let batch = parse_batch(&env)?;
        let endpoint_set = endpoint_set(&env, &TRACES);
        let exporter = match env.var(TRACES_EXPORTER) {
            Some((var, value)) => parse_exporter_kind(var, &value)?,
            None if endpoint_set => ExporterKind::Otlp,
            None => ExporterKind::Console,
        };
        // OTLP settings are validated even when another exporter is chosen: a typo in a
        // deployment manifest should fail loudly now, not when someone switches to OTLP.
        let otlp = parse_otlp(&env, &TRACES)?;
        let exporter = match exporter {
            ExporterKind::Otlp => ExporterConfig::Otlp(otlp),
            ExporterKind::Console => ExporterConfig::Console,
            ExporterKind::None => ExporterConfig::None,
        };
        Ok(ExportConfig { exporter, batch })
    }
}

enum ExporterKind {
    Otlp,
    Console,
    None,
}

fn parse_exporter_kind(var: &'static str, value: &str) -> Result<ExporterKind, ExportConfigError> {
    let mut names: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    names.dedup();
    let [name] = names.as_slice() else {
        return Err(ExportConfigError::MultipleExporters {
            var,
            value: value.to_owned(),
        });
    };
    match name.as_str() {
        "otlp" => Ok(ExporterKind::Otlp),
        "console" | "logging" => Ok(ExporterKind::Console),
        "none" => Ok(ExporterKind::None),
        _ => Err(ExportConfigError::UnknownExporter {
            var,
            value: value.to_owned(),
        }),
    }
}

/// Whether a collector address was given for the signal, generic or specific.
pub fn endpoint_set<F: Fn(&str) -> Option<String>>(env: &Env<F>, signal: &SignalVars) -> bool {
    env.var(ENDPOINT).is_some() || env.var(signal.endpoint).is_some()
}

/// The OTLP settings of one signal.
pub fn parse_otlp<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    signal: &SignalVars,
) -> Result<OtlpConfig, ExportConfigError> {
    let protocol = match env.either(signal.protocol, PROTOCOL) {
        Some((var, value)) => parse_protocol(var, &value)?,
        None => Protocol::HttpProtobuf,
    };
    let endpoint = match (env.var(signal.endpoint), env.var(ENDPOINT)) {
        (Some((var, value)), _) => parse_endpoint(var, &value)?,
        (None, Some((var, value))) => match protocol {
            Protocol::Grpc => parse_endpoint(var, &value)?,
            Protocol::HttpProtobuf => {
                parse_endpoint_with(var, &value, &append_path(&value, signal.http_path))?
            }
        },
        (None, None) => match protocol {
            Protocol::Grpc => Uri::from_static("http://localhost:4317"),
            Protocol::HttpProtobuf => {
                let default = format!("http://localhost:4318/{}", signal.http_path);
                parse_endpoint(signal.endpoint, &default)?
            }
        },
    };
    let headers = match env.either(signal.headers, HEADERS) {
        Some((var, value)) => headers::parse(var, &value)?,
        None => Vec::new(),
    };
    let timeout = match env.either(signal.timeout, TIMEOUT) {
        Some((var, value)) => parse_millis(var, &value)?,
        None => Duration::from_millis(10_000),
    };
    // gzip unless told otherwise, as the Collector's own OTLP exporters: an uncompressed
    // export request (about 225 KB for 512 spans) raised the p99 of nginx beside the agent
    // 1.9 to 9.5 times at 20,000 requests/s with the collector on loopback, gzip 1.06 and
    // 1.31 times (README, Performance).
    let compression = match env.either(signal.compression, COMPRESSION) {
        Some((var, value)) => parse_compression(var, &value)?,
        None => Compression::Gzip,
    };
    let tls = Arc::new(tls::parse(env, signal)?);
    Ok(OtlpConfig {
        endpoint,
        protocol,
        headers,
        timeout,
        compression,
        tls,
    })
}

fn parse_protocol(var: &'static str, value: &str) -> Result<Protocol, ExportConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(ExportConfigError::JsonNotSupported {
            var,
            value: value.to_owned(),
        }),
        _ => Err(ExportConfigError::UnknownProtocol {
            var,
            value: value.to_owned(),
        }),
    }
}

/// The generic endpoint is a base URL; the signal's path goes after whatever path it has.
fn append_path(base: &str, path: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

fn parse_endpoint(var: &'static str, value: &str) -> Result<Uri, ExportConfigError> {
    parse_endpoint_with(var, value, value)
}

/// Parses `url` but reports errors against `value`, what the user actually wrote.
fn parse_endpoint_with(
    var: &'static str,
    value: &str,
    url: &str,
) -> Result<Uri, ExportConfigError> {
    let invalid = |problem| ExportConfigError::InvalidEndpoint {
        var,
        value: value.to_owned(),
        problem,
    };
    let uri: Uri = url.parse().map_err(|_| invalid(EndpointProblem::NotAUrl))?;
    match uri.scheme_str() {
        None => return Err(invalid(EndpointProblem::NoScheme)),
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(_) => return Err(invalid(EndpointProblem::UnknownScheme)),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(uri),
        _ => Err(invalid(EndpointProblem::NoHost)),
    }
}

pub fn parse_millis(var: &'static str, value: &str) -> Result<Duration, ExportConfigError> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(ExportConfigError::InvalidDuration {
            var,
            value: value.to_owned(),
        }),
    }
}

fn parse_compression(var: &'static str, value: &str) -> Result<Compression, ExportConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(ExportConfigError::UnknownCompression {
            var,
            value: value.to_owned(),
        }),
    }
}

fn parse_size(var: &'static str, value: &str) -> Result<usize, ExportConfigError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_QUEUE_SIZE_LIMIT).contains(&n) => Ok(n),
        _ => Err(ExportConfigError::InvalidSize {
            var,
            value: value.to_owned(),
            max: MAX_QUEUE_SIZE_LIMIT,
        }),
    }
}

fn parse_batch<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<BatchConfig, ExportConfigError> {
    let defaults = BatchConfig::default();
    let duration = |name, default| match env.var(name) {
        Some((var, value)) => parse_millis(var, &value),
        None => Ok(default),
    };
    let size = |name, default| match env.var(name) {
        Some((var, value)) => parse_size(var, &value),
        None => Ok(default),
    };
    let schedule_delay = duration(BSP_SCHEDULE_DELAY, defaults.schedule_delay)?;
    let export_timeout = duration(BSP_EXPORT_TIMEOUT, defaults.export_timeout)?;
    let max_queue_size = size(BSP_MAX_QUEUE_SIZE, defaults.max_queue_size)?;
    let max_export_batch_size = match env.var(BSP_MAX_EXPORT_BATCH_SIZE) {
        Some((var, value)) => {
            let batch = parse_size(var, &value)?;
            if batch > max_queue_size {
                return Err(ExportConfigError::BatchLargerThanQueue {
                    batch,
                    queue: max_queue_size,
                });
            }
            batch
        }
        // Only a small queue was asked for: the default batch shrinks to fit it.
        None => defaults.max_export_batch_size.min(max_queue_size),
    };
    Ok(BatchConfig {
        schedule_delay,
        export_timeout,
        max_queue_size,
        max_export_batch_size,
    })
}
