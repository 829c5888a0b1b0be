//! `cargo xtask demo`: loupe tracing two unmodified services, end to end, in one command.
//!
//! It starts the walkthrough's Node `frontend-api` and Python `data-processor`, the agent
//! with its console exporter, sends a few requests, and lets the agent print the trace
//! trees it built. Everything it started is stopped on every way out.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::agent::{Agent, Launch};
use crate::bench::http;
use crate::bench::process::{self, TempDir, free_port, interrupted};
use crate::bench::services::{Service, example, port_arg};
use crate::cmd::{is_root, which};
use crate::workspace::Workspace;
use crate::{build, setup};

/// The console exporter prints a trace once it has been quiet this long.
const TRACE_QUIET: Duration = Duration::from_millis(2500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A caller's W3C trace context: the demo's last request continues this trace.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Skip setup and building; use the agent already in the target directory.
    #[arg(long)]
    pub no_build: bool,
    /// Keep the scratch directory (the services' and the agent's logs).
    #[arg(long)]
    pub keep_temp: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    process::catch_interrupts();
    let scratch = TempDir::create("demo", args.keep_temp).context("no scratch directory")?;
    demo(args, scratch.path())
}

fn demo(args: &DemoArgs, dir: &Path) -> Result<()> {
    let ws = Workspace::locate()?;
    if !args.no_build {
        setup::run(&mut std::io::stderr())?;
        build::agent(&ws, true)?;
    }
    if !is_root() {
        bail!("the agent loads eBPF programs: run the demo as root");
    }
    for tool in ["node", "python3"] {
        if which(tool).is_none() {
            bail!("{tool} not found on PATH: run `cargo xtask setup`");
        }
    }
    let bin = ws.release_bin("loupe");
    if !bin.is_file() {
        bail!("{} does not exist: run without --no-build", bin.display());
    }

    let back_port = free_port()?;
    let _back = Service::start(
        "data-processor",
        "python3",
        &[
            example(&ws.root, "walkthrough/data-processor.py").into_os_string(),
            port_arg(back_port),
        ],
        back_port,
        dir,
    )?;
    let front_port = free_port()?;
    let front = Service::start(
        "frontend-api",
        "node",
        &[
            example(&ws.root, "walkthrough/frontend-api.js").into_os_string(),
            port_arg(front_port),
            port_arg(back_port),
        ],
        front_port,
        dir,
    )?;

    let agent_args: Vec<String> = vec![
        "--exe".into(),
        "node".into(),
        "--exe".into(),
        "python3*".into(),
        "--port".into(),
        front_port.to_string(),
        "--port".into(),
        back_port.to_string(),
    ];
    say(&header(front_port, back_port, &agent_args));
    let agent = Agent::launch(&Launch {
        bin: &bin,
        args: agent_args,
        // No endpoint: the agent prints traces to its stdout, which is ours.
        env: vec![("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned())],
        log: dir.join("loupe.log"),
        pass_stdout: true,
    })?;
    say(&format!(
        "loupe is ready (admin on http://{}); sending requests to frontend-api:\n",
        agent.admin()
    ));

    for (path, traceparent) in requests() {
        if interrupted() {
            bail!("interrupted");
        }
        let headers: Vec<(&str, &str)> = traceparent
            .as_deref()
            .map(|tp| vec![("traceparent", tp)])
            .unwrap_or_default();
        let answer = match http::get_with(front.addr(), path, &headers, REQUEST_TIMEOUT) {
            Ok(response) => response.status.to_string(),
            Err(err) => format!("failed: {err}"),
        };
        let note = traceparent.map_or_else(String::new, |tp| format!("  (traceparent: {tp})"));
        say(&format!("  GET {path} -> {answer}{note}\n"));
    }
    say("\nThe traces loupe printed:\n\n");
    process::sleep_unless_interrupted(TRACE_QUIET);
    if interrupted() {
        bail!("interrupted");
    }
    let log_tail = agent.log_tail();
    match agent.stop() {
        Some(status) if status.success() => {}
        Some(status) => bail!("loupe exited with {status}\n{log_tail}"),
        None => bail!("loupe did not stop within 10 s of SIGTERM\n{log_tail}"),
    }
    say(FOOTER);
    Ok(())
}

/// The demo's requests: two ordinary ones, one that fails in data-processor, and one whose
/// caller is already part of a trace.
fn requests() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("/api/items/1", None),
        ("/api/items/2", None),
        ("/api/items/fail", None),
        (
            "/api/items/42",
            Some(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        ),
    ]
}

fn header(front_port: u16, back_port: u16, agent_args: &[String]) -> String {
    format!(
        "
loupe demo
==========

Two ordinary services with no tracing code:
  frontend-api    node examples/walkthrough/frontend-api.js {front_port} {back_port}
  data-processor  python3 examples/walkthrough/data-processor.py {back_port}
frontend-api answers GET /api/items/<id> by calling data-processor's /process/<id>.

loupe watches both from the kernel, with no collector configured, so it prints each
trace to the terminal as a tree once the trace is complete:
  loupe {}

",
        crate::cmd::quote_all(agent_args)
    )
}

const FOOTER: &str = "
Each trace is one request: frontend-api's SERVER span, under it the CLIENT span of its
call, and under that data-processor's SERVER span, linked across the two processes by
loupe alone. /api/items/fail fails in data-processor (500) and the error shows on every
hop; the request that came with a traceparent continues its caller's trace
(4bf92f35...) instead of starting a new one.

Next: `cargo xtask run -- --exe 'python3*'` to trace your own services, with
OTEL_EXPORTER_OTLP_ENDPOINT set to send the spans to a collector.
";

/// Prints to stdout now, so it lands before what the agent writes next.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_the_ports_and_the_agent_command() {
        let text = header(3001, 8001, &["--exe".to_owned(), "python3*".to_owned()]);
        assert!(text.contains("frontend-api.js 3001 8001"));
        assert!(text.contains("data-processor.py 8001"));
        assert!(text.contains("loupe --exe 'python3*'"));
    }

    #[test]
    fn one_request_carries_a_valid_traceparent() {
        let with: Vec<String> = requests().into_iter().filter_map(|(_, tp)| tp).collect();
        assert_eq!(with.len(), 1);
        let parts: Vec<&str> = with[0].split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(FOOTER.contains(&CALLER_TRACE[..8]));
        assert!(requests().iter().any(|(p, _)| p.ends_with("/fail")));
    }
}
