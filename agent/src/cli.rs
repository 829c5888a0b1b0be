//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "loupe traces the HTTP requests of unmodified processes from kernel \
syscall tracepoints and exports them as OpenTelemetry spans.";

const AFTER_HELP: &str = "\
Selection:
  With no --pid and no --exe, every process on the host except loupe itself is traced.
  --pid and --exe add up; children a traced process forks are traced too. --port narrows
  whatever is selected to connections with that local or remote port.

Export (OpenTelemetry environment variables):
  OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   collector address
  OTEL_EXPORTER_OTLP_PROTOCOL   grpc | http/protobuf (default http/protobuf)
  OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES
  OTEL_TRACES_EXPORTER          otlp | console | none
  With no endpoint and no OTEL_TRACES_EXPORTER, finished traces are printed to the terminal.
  OTEL_METRICS_EXPORTER         otlp | none | prometheus (default otlp when an endpoint is set)
  OTEL_EXPORTER_OTLP_METRICS_*, OTEL_METRIC_EXPORT_INTERVAL (ms, 60000), _TIMEOUT (ms, 30000)
  The request-duration histograms are always served on /metrics too.

Trace context (--inject-traceparent, off by default):
  Traced processes' outgoing plain-HTTP/1.x requests without a traceparent get one, naming
  the client span; a thread serving a request passes that request's trace on. Requests
  left alone are counted: loupe_traceparent_{injected,skipped_present,skipped_unsafe}_total.
  Needs cgroup v2 mounted (found in /proc/self/mounts).

Configuration file (--config FILE, YAML; see deploy/loupe.yaml):
  Every flag above and the OTEL_* settings can be set in one file. Precedence:
  file < OTEL_* environment variables < flags given on the command line. A repeatable flag
  given on the command line replaces the file's list. `loupe config check FILE` validates a
  file against the current environment and prints the effective configuration.

Service names come from each traced process's own OTEL_SERVICE_NAME, else from
service.name in its OTEL_RESOURCE_ATTRIBUTES, else, in a Kubernetes pod, from the
workload its pod's name names, else from its executable name.

Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (and CAP_SYS_ADMIN to mount tracefs
when it is not mounted). Logs go to stderr; set RUST_LOG=debug for more.";

/// Smallest --capture-bytes: a request line and a few headers.
pub const MIN_CAPTURE_BYTES: u32 = 64;
/// Largest --max-metric-series.
pub const MAX_METRIC_SERIES_LIMIT: u32 = 1_000_000;

#[derive(Debug, Parser)]
#[command(name = "loupe", version, about = ABOUT, after_help = AFTER_HELP,
          args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Read settings from this YAML file. Flags given on the command line win over it;
    /// OTEL_* environment variables win over its export, sampling, metrics-export and
    /// resource settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    ///
    /// The file is checked together with the current OTEL_* environment, as the agent
    /// would at startup, and every setting is printed after layering, defaults included
    /// (header values redacted). Needs no privileges. Exits non-zero on an error.
    Check {
        /// The YAML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// What the agent does; each of these can also come from the configuration file.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Trace this process (repeatable): the one that has the pid when loupe starts, not a
    /// later process that reuses the pid.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace processes whose executable name matches (repeatable). A glob such as
    /// 'python3*' is allowed; a pattern with '/' is matched against the full path.
    #[arg(long = "exe", value_name = "NAME_OR_GLOB")]
    pub exes: Vec<String>,

    /// Only trace connections with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// A route pattern such as '/orders/{id}' used to name spans (repeatable). Paths that
    /// match no pattern are named by the built-in heuristic (ids become '{id}').
    #[arg(long = "route", value_name = "PATTERN")]
    pub routes: Vec<String>,

    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Payload bytes captured per read or write (request and response heads must fit).
    #[arg(long, value_name = "BYTES", default_value_t = loupe_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32)
              .range(MIN_CAPTURE_BYTES as i64..=loupe_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Spans of processes that already run an OpenTelemetry SDK (recognised by their
    /// OTEL_* exporter settings or by their exporting): 'skip' leaves them to the SDK and
    /// only uses their trace context, 'export' exports loupe's spans too.
    #[arg(long, value_name = "MODE", value_enum, default_value = "skip")]
    pub sdk_spans: crate::pipeline::SdkSpans,

    /// Which HTTP semantic-convention attributes spans carry: 'recommended' (the
    /// required, conditionally required and recommended ones) or 'all' (also the opt-in
    /// client.port, network.local.address/port and http.request/response.body.size, which
    /// make each span about 30 % larger to send and store).
    #[arg(long, value_name = "SET", value_enum, default_value = "recommended")]
    pub span_attributes: crate::span::SpanAttributes,

    /// Turn on tail sampling: a trace's spans wait until it is complete, then the trace is
    /// kept when a span failed (--tail-keep-errors) or was slow (--tail-keep-slower-than),
    /// else with this probability. Applies after head sampling (OTEL_TRACES_SAMPLER).
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub tail_sample_ratio: Option<f64>,

    /// With tail sampling, keep every trace that has a span in error.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tail_keep_errors: bool,

    /// With tail sampling, keep every trace that has a span at least this long.
    #[arg(long, value_name = "MS")]
    pub tail_keep_slower_than: Option<u64>,

    /// With tail sampling, how long a trace waits for more spans after its latest one.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub tail_wait: u64,

    /// With tail sampling, traces held at most; beyond it the oldest is decided early
    /// (counted in loupe_tail_decisions_forced_total).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub tail_max_traces: usize,

    /// Request metrics: at most this many distinct routes per service and instrument; the
    /// requests of further routes are recorded under the route '{other}'.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_routes_per_service: usize,

    /// Request metrics: at most this many series in all; further attribute sets are
    /// recorded in an overflow series per service (otel_metric_overflow="true").
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_METRIC_SERIES_LIMIT as i64))]
    pub max_metric_series: u32,

    /// Add a W3C `traceparent` header to outgoing plain-HTTP/1.x requests of traced
    /// processes that carry none, so the receiving service (its loupe, or an
    /// OpenTelemetry SDK) continues the trace. This REWRITES the requests on the wire: the
    /// header goes right after the request line and carries the client span's ids; an
    /// existing `tracestate` is kept, a request that already has `traceparent` is left
    /// alone, and one loupe cannot check safely (head split across writes or longer than
    /// 4 KiB, chunked or pipelined bodies) is sent untouched and counted on /metrics.
    /// Only connections traced processes open after loupe started are covered; TLS is
    /// never touched. Needs cgroup v2 mounted (sock_ops and sk_msg programs attach there)
    /// and Linux 6.10 or later (sock_ops programs ask which process connects).
    #[arg(long)]
    pub inject_traceparent: bool,

    /// How loupe's threads compete for the CPU with the services they trace. 'idle'
    /// (SCHED_IDLE) runs loupe only on CPU time nothing else wants, 'low' at niceness 10,
    /// 'normal' as an equal. Below 'normal', a saturated host gets its CPU back from loupe:
    /// loupe falls behind into its bounded buffers and counts what it drops instead.
    /// Start-up runs at 'normal' so that a busy host cannot keep loupe from starting.
    #[arg(long, value_name = "LEVEL", value_enum, default_value = "idle")]
    pub cpu_priority: CpuPriority,

    /// How reads and writes are hooked. 'exit' captures each call at its return and takes
    /// the arguments from the registers saved at entry (Linux 5.15 or later): one program
    /// per call, none at entry; a client's write takes its start from its socket (when its
    /// bytes went out). 'entry' saves the arguments and start in a per-thread table at
    /// entry (any kernel; two programs per call for every process on the host); 'auto'
    /// uses 'exit' where the kernel allows it, for each family on its own. 'exit' fails
    /// when either family cannot have it (writes also need `tcp_sock.tcp_clock_cache` in
    /// BTF, Linux 4.20); the older name --read-probes now sets both families too.
    #[arg(
        long,
        visible_alias = "read-probes",
        value_name = "MODE",
        value_enum,
        default_value = "auto"
    )]
    pub data_probes: DataProbes,

    /// Size of the kernel ring buffer in MiB (a power of two). Its pages count twice in
    /// the agent's RSS (mapped twice); 4 MiB holds about 50 ms of records at 150k small
    /// requests/s (a read or write record takes at least 320 bytes). Records that do not
    /// fit are counted in loupe_ringbuf_drops_total.
    #[arg(long, value_name = "MIB", default_value_t = 4, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
}

/// See [`Cli`]'s `--cpu-priority`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CpuPriority {
    Idle,
    Low,
    Normal,
}

/// See [`Cli`]'s `--data-probes`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DataProbes {
    Auto,
    Exit,
    Entry,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

impl RunArgs {
    /// The tail-sampling policy, when turned on.
    pub fn tail_policy(&self) -> Option<crate::sampling::TailPolicy> {
        let ratio = self.tail_sample_ratio?;
        Some(crate::sampling::TailPolicy {
            keep_errors: self.tail_keep_errors,
            latency_threshold: self
                .tail_keep_slower_than
                .map(std::time::Duration::from_millis),
            ratio,
            wait: std::time::Duration::from_millis(self.tail_wait),
            max_traces: self.tail_max_traces.max(1),
            // Traces are mostly a handful of spans; this bounds the odd huge one.
            max_spans: self.tail_max_traces.max(1).saturating_mul(64),
        })
    }
}

fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(1..=1024).contains(&mib) || !mib.is_power_of_two() {
        return Err("must be a power of two between 1 and 1024".into());
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<const N: usize>(args: [&str; N]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(args).map(|cli| cli.run)
    }

    #[test]
    fn defaults() {
        let cli = parse(["loupe"]).unwrap();
        assert!(cli.pids.is_empty() && cli.exes.is_empty());
        assert_eq!(cli.admin_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(cli.capture_bytes, 1024);
        assert_eq!(cli.ring_buffer_mib, 4);
        assert_eq!(cli.cpu_priority, CpuPriority::Idle);
        assert_eq!(cli.max_routes_per_service, 100);
        assert_eq!(cli.max_metric_series, 10_000);
        assert!(
            !cli.inject_traceparent,
            "injection rewrites traffic: opt-in only"
        );
    }

    #[test]
    fn inject_traceparent_is_a_switch() {
        let cli = parse(["loupe", "--inject-traceparent", "--exe", "curl"]).unwrap();
        assert!(cli.inject_traceparent);
        assert!(parse(["loupe", "--inject-traceparent=yes"]).is_err());
    }

    #[test]
    fn metric_limits() {
        let cli = parse([
            "loupe",
            "--max-routes-per-service",
            "0",
            "--max-metric-series",
            "50",
        ])
        .unwrap();
        assert_eq!(cli.max_routes_per_service, 0);
        assert_eq!(cli.max_metric_series, 50);
        assert!(parse(["loupe", "--max-metric-series", "0"]).is_err());
        assert!(parse(["loupe", "--max-routes-per-service", "-1"]).is_err());
    }

    #[test]
    fn repeatable_selectors() {
        let cli = parse([
            "loupe", "--pid", "1", "--pid", "2", "--exe", "nginx", "--port", "80", "--route",
            "/a/{id}",
        ])
        .unwrap();
        assert_eq!(cli.pids, vec![1, 2]);
        assert_eq!(cli.exes, vec!["nginx"]);
        assert_eq!(cli.ports, vec![80]);
        assert_eq!(cli.routes, vec!["/a/{id}"]);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(["loupe", "--pid", "x"]).is_err());
        assert!(parse(["loupe", "--admin-addr", "nowhere"]).is_err());
        assert!(parse(["loupe", "--capture-bytes", "999999"]).is_err());
        assert!(parse(["loupe", "--ring-buffer-mib", "3"]).is_err());
        assert!(parse(["loupe", "--tail-sample-ratio", "2"]).is_err());
    }

    #[test]
    fn tail_sampling_is_off_unless_a_ratio_is_given() {
        let cli = parse(["loupe"]).unwrap();
        assert!(cli.tail_policy().is_none());
        let cli = parse([
            "loupe",
            "--tail-sample-ratio",
            "0.1",
            "--tail-keep-slower-than",
            "250",
            "--tail-keep-errors",
            "false",
        ])
        .unwrap();
        let policy = cli.tail_policy().unwrap();
        assert_eq!(policy.ratio, 0.1);
        assert!(!policy.keep_errors);
        assert_eq!(
            policy.latency_threshold,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(policy.max_traces, 10_000);
    }
}
