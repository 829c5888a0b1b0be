//! Command-line interface.

use std::net::SocketAddr;

use clap::Parser;

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

Trace context (--inject-traceparent, off by default):
  Traced processes' outgoing plain-HTTP/1.x requests without a traceparent get one, naming
  the client span; a thread serving a request passes that request's trace on. Requests
  left alone are counted: loupe_traceparent_{injected,skipped_present,skipped_unsafe}_total.
  Needs cgroup v2 mounted (found in /proc/self/mounts).

Service names come from each traced process's own OTEL_SERVICE_NAME, else from
service.name in its OTEL_RESOURCE_ATTRIBUTES, else from its executable name.

Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (and CAP_SYS_ADMIN to mount tracefs
when it is not mounted). Logs go to stderr; set RUST_LOG=debug for more.";

#[derive(Debug, Parser)]
#[command(name = "loupe", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Trace this process (repeatable).
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
          value_parser = clap::value_parser!(u32).range(64..=loupe_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,

    /// Add a W3C `traceparent` header to outgoing plain-HTTP/1.x requests of traced
    /// processes that carry none, so the receiving service (its loupe, or an
    /// OpenTelemetry SDK) continues the trace. This REWRITES the requests on the wire: the
    /// header goes right after the request line and carries the client span's ids; an
    /// existing `tracestate` is kept, a request that already has `traceparent` is left
    /// alone, and one loupe cannot check safely (head split across writes or longer than
    /// 4 KiB, chunked or pipelined bodies) is sent untouched and counted on /metrics.
    /// Only connections traced processes open after loupe started are covered; TLS is
    /// never touched. Needs cgroup v2 mounted (sock_ops and sk_msg programs attach there).
    #[arg(long)]
    pub inject_traceparent: bool,

    /// Size of the kernel ring buffer in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,
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

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["loupe"]).unwrap();
        assert!(cli.pids.is_empty() && cli.exes.is_empty());
        assert_eq!(cli.admin_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(cli.capture_bytes, 1024);
        assert_eq!(cli.ring_buffer_mib, 16);
        assert!(
            !cli.inject_traceparent,
            "injection rewrites traffic: opt-in only"
        );
    }

    #[test]
    fn inject_traceparent_is_a_switch() {
        let cli = Cli::try_parse_from(["loupe", "--inject-traceparent", "--exe", "curl"]).unwrap();
        assert!(cli.inject_traceparent);
        assert!(Cli::try_parse_from(["loupe", "--inject-traceparent=yes"]).is_err());
    }

    #[test]
    fn repeatable_selectors() {
        let cli = Cli::try_parse_from([
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
        assert!(Cli::try_parse_from(["loupe", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["loupe", "--admin-addr", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["loupe", "--capture-bytes", "999999"]).is_err());
        assert!(Cli::try_parse_from(["loupe", "--ring-buffer-mib", "3"]).is_err());
    }
}
