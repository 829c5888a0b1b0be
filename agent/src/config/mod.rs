//! The agent's configuration: one YAML file, layered under the OpenTelemetry environment
//! variables and the command line.
//!
//! Precedence, lowest first: the file (`--config FILE`), `OTEL_*` environment variables,
//! flags given on the command line. Everything is checked here, before the agent loads
//! anything into the kernel, and `loupe config check` runs the same checks without
//! privileges.

pub mod file;
pub mod layer;
mod show;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use clap::{ArgMatches, parser::ValueSource};

use crate::{
    cli::RunArgs,
    export::config::{
        Env, ExportConfig, ExportConfigError, ExporterConfig, METRICS, OtlpConfig, TRACES,
        parse_otlp,
    },
    process::selector::{Selection, SelectionError},
    red::{MetricsConfigError, MetricsExportConfig, MetricsExporter},
    sampling::{HeadSampler, SamplerConfigError},
    span::route::{RouteMatcher, RoutePatternError},
};

use file::FileConfig;
use layer::Layers;

/// Everything the agent needs from its configuration, checked.
pub struct AgentConfig {
    pub run: RunArgs,
    pub export: ExportConfig,
    pub metrics_export: MetricsExportConfig,
    pub head_sampler: HeadSampler,
    /// Added to every traced process's resource (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    pub routes: RouteMatcher,
    pub selection: Selection,
    /// Each signal's OTLP settings, also when another exporter is chosen, so that
    /// `config check` can show them.
    traces_otlp: OtlpConfig,
    metrics_otlp: OtlpConfig,
}

impl AgentConfig {
    /// Settings that are valid but most likely not what was meant, one line each:
    /// `config check` prints them, and the agent logs them at startup.
    pub fn warnings(&self) -> Vec<String> {
        let spans = match &self.export.exporter {
            ExporterConfig::Otlp(otlp) => Some(otlp),
            ExporterConfig::Console | ExporterConfig::None => None,
        };
        let metrics = match &self.metrics_export.exporter {
            MetricsExporter::Otlp(otlp) => Some(otlp),
            MetricsExporter::None => None,
        };
        [("span export", spans), ("metrics export", metrics)]
            .into_iter()
            .filter_map(|(what, otlp)| Some(format!("{what}: {}", otlp?.unused_tls_files()?)))
            .collect()
    }
}

/// Why the configuration cannot be used. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the configuration file {} is larger than {} bytes",
        path.display(),
        file::MAX_FILE_BYTES
    )]
    TooLarge { path: PathBuf },
    /// Unknown keys, wrong types and out-of-range values, with the key's path and line.
    #[error("{}: {}", path.display(), with_location(error))]
    Parse {
        path: PathBuf,
        error: serde_norway::Error,
    },
    /// A setting the agent's own checks refused; `message` names the file key when the
    /// value came from the file, the variable or flag otherwise.
    #[error("{message}")]
    Invalid {
        error: SettingError,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error(transparent)]
    Export(#[from] ExportConfigError),
    #[error(transparent)]
    Metrics(#[from] MetricsConfigError),
    #[error(transparent)]
    Sampler(#[from] SamplerConfigError),
    #[error(transparent)]
    Route(#[from] RoutePatternError),
    #[error(transparent)]
    Selection(#[from] SelectionError),
}

/// The YAML library leaves the position out when it is the very start of the file.
fn with_location(error: &serde_norway::Error) -> String {
    let text = error.to_string();
    match error.location() {
        Some(at) if !text.contains(" at line ") => {
            format!("{text} at line {} column {}", at.line(), at.column())
        }
        _ => text,
    }
}

/// Whether the flag with clap id `id` was given on the command line, rather than left at
/// its default: only then does it win over the file.
pub fn given_on_command_line(matches: &ArgMatches) -> impl Fn(&str) -> bool + '_ {
    |id| matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// Reads the file at `path` (if any), layers it under `env` and the command line, and
/// checks the result. `run` holds the parsed flags, defaults included; `given(id)` tells
/// whether the flag with that clap id was given on the command line.
pub fn load(
    path: Option<&Path>,
    run: RunArgs,
    given: impl Fn(&str) -> bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let file = match path {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    resolve(&file, path, run, given, env)
}

/// [`load`] for a file already read; `path` only names it in messages.
pub fn resolve(
    file: &FileConfig,
    path: Option<&Path>,
    mut run: RunArgs,
    given: impl Fn(&str) -> bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    layer::apply_file(&mut run, file, &given);
    let vars = layer::file_vars(file);
    let layers = Layers::new(env, &vars);
    let otel_error = |error: SettingError| {
        let text = error.to_string();
        let message = match (path, layers.name_file_keys(&text)) {
            (Some(path), Some(named)) => format!("{}: {named}", path.display()),
            _ => text,
        };
        ConfigError::Invalid { error, message }
    };
    let lookup = |name: &str| layers.get(name);

    let export = ExportConfig::from_env(lookup).map_err(|e| otel_error(e.into()))?;
    let head_sampler = HeadSampler::from_env(lookup).map_err(|e| otel_error(e.into()))?;
    let metrics_export = MetricsExportConfig::from_env(lookup).map_err(|e| otel_error(e.into()))?;
    let otel = Env::new(lookup);
    let traces_otlp = parse_otlp(&otel, &TRACES).map_err(|e| otel_error(e.into()))?;
    let metrics_otlp = parse_otlp(&otel, &METRICS).map_err(|e| otel_error(e.into()))?;
    let resource_attributes = layers.resource_attributes(file);

    // A flag's own wording fits when the value came from the command line; a value from
    // the file is named by its key.
    let file_key = |id: &str, flag: &str, key: &str, error: SettingError| {
        let text = error.to_string();
        let message = match path {
            Some(path) if !given(id) => format!(
                "{}: {key}: {}",
                path.display(),
                text.replace(&format!("{flag} "), "")
            ),
            _ => text,
        };
        ConfigError::Invalid { error, message }
    };
    let routes = RouteMatcher::new(&run.routes)
        .map_err(|e| file_key("routes", "--route", "routes", e.into()))?;
    let selection = Selection::new(&run.pids, &run.exes).map_err(|e| match e {
        SelectionError::BadPattern { .. } => file_key("exes", "--exe", "select.exes", e.into()),
        SelectionError::UnknownPid(_) => file_key("pids", "--pid", "select.pids", e.into()),
    })?;

    Ok(AgentConfig {
        run,
        export,
        metrics_export,
        head_sampler,
        resource_attributes,
        routes,
        selection,
        traces_otlp,
        metrics_otlp,
    })
}
