//! `cargo xtask bench --completeness`: the share of requests whose spans form exactly the
//! expected trace across three unmodified services.
//!
//! The chain is Node (`examples/walkthrough/frontend-api.js`) -> Python
//! (`examples/chain/catalog.py`, thread per connection) -> nginx. One agent traces all
//! three and exports over OTLP gRPC to a receiver inside this process, which keeps every
//! span. Each concurrency level sends its requests on keep-alive connections, waits for
//! the spans to stop arriving, then checks every request's tree (see `tree`).

pub mod report;
pub mod tree;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use loupe_integration_tests::otlp_receiver::{OtlpReceiver, ReceivedSpan};

use super::agent::{Agent, Launch, otlp_env_fast_flush};
use super::load::KeepAlive;
use super::nginx::Nginx;
use super::process::{free_port, interrupted};
use super::services::{Service, example, port_arg};
use crate::cmd::which;

use report::{LevelResult, Metric};
use tree::{Hop, Kind, Linking, Span};

pub const FRONTEND: &str = "frontend-api";
pub const MIDDLE: &str = "catalog";
/// The store frontend's key-value store, which makes no spans.
const STORE: &str = "store";
/// nginx has no `OTEL_SERVICE_NAME` of its own here: the agent names it after its
/// executable.
pub const BACKEND: &str = "nginx";

/// The spans every request makes, in order, each the parent of the next.
pub const CHAIN: [Hop; 5] = [
    Hop {
        service: FRONTEND,
        kind: Kind::Server,
        path_prefix: "/api/items/",
        parent: 0,
        linking: Linking::Connection,
    },
    Hop {
        service: FRONTEND,
        kind: Kind::Client,
        path_prefix: "/process/",
        parent: 0,
        linking: Linking::EventLoop,
    },
    Hop {
        service: MIDDLE,
        kind: Kind::Server,
        path_prefix: "/process/",
        parent: 1,
        linking: Linking::Connection,
    },
    Hop {
        service: MIDDLE,
        kind: Kind::Client,
        path_prefix: "/stock/",
        parent: 2,
        linking: Linking::Thread,
    },
    Hop {
        service: BACKEND,
        kind: Kind::Server,
        path_prefix: "/stock/",
        parent: 3,
        linking: Linking::Connection,
    },
];

/// The spans of a request to the awaiting frontend: the chain, with the frontend's check
/// of the request at nginx before it, under the same frontend request.
pub const AWAITING_TREE: [Hop; 7] = [
    CHAIN[0],
    Hop {
        service: FRONTEND,
        kind: Kind::Client,
        path_prefix: "/check/",
        parent: 0,
        linking: Linking::EventLoop,
    },
    Hop {
        service: BACKEND,
        kind: Kind::Server,
        path_prefix: "/check/",
        parent: 1,
        linking: Linking::Connection,
    },
    CHAIN[1],
    Hop {
        parent: 3,
        ..CHAIN[2]
    },
    Hop {
        parent: 4,
        ..CHAIN[3]
    },
    Hop {
        parent: 5,
        ..CHAIN[4]
    },
];

/// Spans still arriving this long after the last one are waited for: the agent may hold
/// a span for a few seconds while it waits for the peer that links it.
const QUIET: Duration = Duration::from_secs(6);
const SPAN_WAIT_LIMIT: Duration = Duration::from_secs(90);

/// Which Node program is the chain's first service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Frontend {
    /// `examples/walkthrough/frontend-api.js`: each handler calls upstream at once.
    Immediate,
    /// `examples/chain/frontend-deferred.js`: each handler waits on a short timer first,
    /// so other requests arrive before it calls upstream.
    Deferred,
    /// `examples/chain/frontend-awaits.js`: each handler awaits a check of its request at
    /// nginx first, so other requests arrive before it calls upstream.
    Awaits,
    /// `examples/chain/frontend-store.js`: each handler awaits a lookup in a key-value
    /// store over a binary protocol loupe does not parse (`examples/chain/store.py`)
    /// first, so other requests arrive before it calls upstream, and only the store's
    /// answer tells which handler woke.
    Store,
}

impl Frontend {
    pub fn name(self) -> &'static str {
        match self {
            Frontend::Immediate => "immediate",
            Frontend::Deferred => "deferred",
            Frontend::Awaits => "awaits",
            Frontend::Store => "store",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Frontend::Immediate => "walkthrough/frontend-api.js",
            Frontend::Deferred => "chain/frontend-deferred.js",
            Frontend::Awaits => "chain/frontend-awaits.js",
            Frontend::Store => "chain/frontend-store.js",
        }
    }

    /// The spans each request makes.
    pub fn tree(self) -> &'static [Hop] {
        match self {
            Frontend::Immediate | Frontend::Deferred | Frontend::Store => &CHAIN,
            Frontend::Awaits => &AWAITING_TREE,
        }
    }
}

pub struct Settings {
    pub requests: usize,
    pub levels: Vec<u32>,
    pub frontends: Vec<Frontend>,
    /// The agent runs with `--inject-traceparent`.
    pub inject_traceparent: bool,
}

/// Runs the chain with each frontend at each level with `agent_bin`, and returns what
/// each level measured.
pub fn run(
    root: &Path,
    agent_bin: &Path,
    scratch: &Path,
    settings: &Settings,
) -> Result<Vec<LevelResult>> {
    for tool in ["nginx", "node", "python3"] {
        if which(tool).is_none() {
            bail!("{tool} not found on PATH: run `cargo xtask setup`");
        }
    }
    let mut results = Vec::new();
    for &frontend in &settings.frontends {
        let dir = scratch.join(format!("chain-{}", frontend.name()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        results.extend(run_chain(root, agent_bin, &dir, settings, frontend)?);
    }
    Ok(results)
}

/// Starts the three services, the receiver and the agent in `dir`, and measures each level.
fn run_chain(
    root: &Path,
    agent_bin: &Path,
    dir: &Path,
    settings: &Settings,
    frontend: Frontend,
) -> Result<Vec<LevelResult>> {
    let mut nginx = Nginx::start(dir)?;
    let middle_port = free_port()?;
    let mut middle = Service::start(
        MIDDLE,
        "python3",
        &[
            example(root, "chain/catalog.py").into_os_string(),
            port_arg(middle_port),
            port_arg(nginx.addr().port()),
        ],
        middle_port,
        dir,
    )?;
    // The store frontend's lookups; the awaiting frontend checks requests at nginx, and
    // the others take no third port.
    let mut store = match frontend {
        Frontend::Store => {
            let port = free_port()?;
            let store = Service::start(
                STORE,
                "python3",
                &[
                    example(root, "chain/store.py").into_os_string(),
                    port_arg(port),
                ],
                port,
                dir,
            )?;
            Some(store)
        }
        _ => None,
    };
    let third_port = store
        .as_ref()
        .map_or(nginx.addr().port(), |store| store.addr().port());
    let front_port = free_port()?;
    let mut front = Service::start(
        FRONTEND,
        "node",
        &[
            example(root, frontend.script()).into_os_string(),
            port_arg(front_port),
            port_arg(middle_port),
            port_arg(third_port),
        ],
        front_port,
        dir,
    )?;
    eprintln!(
        "bench: chain {FRONTEND} (node {}, :{front_port}) -> {MIDDLE} (python3, \
         :{middle_port}) -> {BACKEND} (:{})",
        frontend.script(),
        nginx.addr().port()
    );

    let receiver = OtlpReceiver::start().context("could not start the OTLP receiver")?;
    let mut args: Vec<String> = ["--exe", "node", "--exe", "python3*", "--exe", "nginx"]
        .map(str::to_owned)
        .to_vec();
    let store_port = store.as_ref().map(|store| store.addr().port());
    for port in [front_port, middle_port, nginx.addr().port()]
        .into_iter()
        .chain(store_port)
    {
        args.extend(["--port".to_owned(), port.to_string()]);
    }
    if settings.inject_traceparent {
        args.push("--inject-traceparent".to_owned());
    }
    let mut agent = Agent::launch(&Launch {
        bin: agent_bin,
        args,
        env: otlp_env_fast_flush(&receiver.grpc_endpoint()),
        log: dir.join("agent.log"),
        pass_stdout: false,
    })?;

    let mut results = Vec::new();
    for &level in &settings.levels {
        eprintln!(
            "bench: completeness ({} frontend): {} requests at concurrency {level}",
            frontend.name(),
            settings.requests
        );
        let before = read_metrics(&agent);
        let spans_before = receiver.span_count();
        let sent = drive(front.addr(), level, settings.requests);
        if interrupted() {
            bail!("interrupted");
        }
        let tree = frontend.tree();
        let expected = spans_before + (tree.len() * sent.items.len()) as u64;
        let arrived = wait_for_spans(&receiver, expected);
        agent.check_alive()?;
        front.check_alive()?;
        middle.check_alive()?;
        nginx.check_alive()?;
        if let Some(store) = store.as_mut() {
            store.check_alive()?;
        }
        if arrived == 0 {
            bail!(
                "the OTLP receiver got no span at all from the agent (exporting to {})\n{}",
                receiver.grpc_endpoint(),
                agent.log_tail()
            );
        }
        let after = read_metrics(&agent);
        let spans: Vec<Span> = receiver.spans().iter().filter_map(to_span).collect();
        let outcome = tree::check(tree, &spans, &sent.items);
        let metrics = report::METRICS
            .iter()
            .map(|name| Metric {
                name,
                delta: delta(&before, &after, name),
            })
            .collect();
        let result = LevelResult {
            frontend: frontend.name(),
            tree,
            concurrency: level,
            failed_requests: sent.failed,
            outcome,
            metrics,
        };
        eprintln!("bench:   {}", report::one_line(&result));
        results.push(result);
    }
    match agent.stop() {
        Some(status) if !status.success() => {
            eprintln!("bench: warning: the agent did not exit cleanly on SIGTERM ({status})");
        }
        None => eprintln!("bench: warning: the agent had to be killed"),
        Some(_) => {}
    }
    Ok(results)
}

fn read_metrics(agent: &Agent) -> Option<super::prom::Metrics> {
    let metrics = agent.metrics();
    if metrics.is_none() {
        eprintln!("bench: warning: the agent's /metrics could not be read");
    }
    metrics
}

fn delta(
    before: &Option<super::prom::Metrics>,
    after: &Option<super::prom::Metrics>,
    name: &str,
) -> Option<f64> {
    // A counter the agent has not touched yet may be absent: it is zero.
    let value = |m: &Option<super::prom::Metrics>| m.as_ref().map(|m| m.get(name).unwrap_or(0.0));
    Some(value(after)? - value(before)?)
}

/// What one level sent: the item id of every request, and how many did not get a 2xx.
struct Sent {
    items: Vec<String>,
    failed: usize,
}

/// `requests` requests over `level` keep-alive connections.
fn drive(addr: SocketAddr, level: u32, requests: usize) -> Sent {
    let per_lane = lanes(level, requests);
    let failed: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = per_lane
            .iter()
            .map(|items| scope.spawn(move || send_all(addr, items)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    Sent {
        items: per_lane.into_iter().flatten().collect(),
        failed,
    }
}

/// The item ids each connection sends, `c<level>-<connection>-<index>`: unique across
/// levels and connections, so every span can be traced back to its request.
fn lanes(level: u32, requests: usize) -> Vec<Vec<String>> {
    let lanes = usize::try_from(level.max(1)).unwrap_or(1);
    (0..lanes)
        .map(|lane| {
            (lane..requests)
                .step_by(lanes)
                .map(|i| format!("c{level}-{lane}-{i}"))
                .collect()
        })
        .collect()
}

/// Sends one lane's requests in order; returns how many failed.
fn send_all(addr: SocketAddr, items: &[String]) -> usize {
    let mut client = KeepAlive::new(addr);
    let mut failed = 0;
    for item in items {
        if interrupted() {
            break;
        }
        let request = format!(
            "GET {}{item} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: loupe-bench\r\n\r\n",
            CHAIN[0].path_prefix
        );
        match client.send(request.as_bytes()) {
            Ok(status) if (200..300).contains(&status) => {}
            _ => failed += 1,
        }
    }
    failed
}

/// Waits until `expected` spans have arrived, or none has arrived for `QUIET`; returns how
/// many have arrived in all.
fn wait_for_spans(receiver: &OtlpReceiver, expected: u64) -> u64 {
    let started = Instant::now();
    let mut last = receiver.span_count();
    let mut last_change = started;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = receiver.span_count();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        if now >= expected {
            // A moment more, so that a duplicate would be seen too.
            std::thread::sleep(Duration::from_millis(500));
            return receiver.span_count();
        }
        if last_change.elapsed() >= QUIET || started.elapsed() >= SPAN_WAIT_LIMIT || interrupted() {
            return now;
        }
    }
}

fn to_span(span: &ReceivedSpan) -> Option<Span> {
    let kind = match span.kind.as_str() {
        "server" => Kind::Server,
        "client" => Kind::Client,
        _ => return None,
    };
    Some(Span {
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        parent: span.parent_span_id.clone(),
        kind,
        service: span.service_name()?.to_owned(),
        path: span.attr("url.path")?.to_owned(),
        start_ns: span.start_ns,
        end_ns: span.end_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_share_the_requests_and_every_item_is_unique() {
        let sizes = |level, requests| {
            lanes(level, requests)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(10, 500), vec![50; 10]);
        assert_eq!(sizes(3, 10), vec![4, 3, 3]);
        assert_eq!(sizes(0, 2), vec![2]);
        let mut all: Vec<String> = lanes(1, 7)
            .into_iter()
            .chain(lanes(10, 100))
            .flatten()
            .collect();
        assert_eq!(all.len(), 107);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 107);
        assert_eq!(
            lanes(10, 20)[3],
            vec!["c10-3-3".to_owned(), "c10-3-13".to_owned()]
        );
    }

    #[test]
    fn the_chain_hands_the_item_down_and_alternates_kinds_within_a_service() {
        for pair in CHAIN.windows(2) {
            if pair[0].service == pair[1].service {
                assert_eq!((pair[0].kind, pair[1].kind), (Kind::Server, Kind::Client));
            } else {
                assert_eq!((pair[0].kind, pair[1].kind), (Kind::Client, Kind::Server));
                assert_eq!(pair[0].path_prefix, pair[1].path_prefix);
            }
        }
    }

    #[test]
    fn received_spans_without_a_path_or_service_are_skipped() {
        let mut received = ReceivedSpan {
            transport: loupe_integration_tests::otlp_receiver::Transport::Grpc,
            resource: [("service.name".to_owned(), FRONTEND.to_owned())].into(),
            scope_name: String::new(),
            scope_version: String::new(),
            name: "GET /api/items/{id}".to_owned(),
            kind: "server".to_owned(),
            trace_id: "t".to_owned(),
            span_id: "s".to_owned(),
            parent_span_id: None,
            trace_state: String::new(),
            flags: 0,
            attributes: [("url.path".to_owned(), "/api/items/c1-0-0".to_owned())].into(),
            status_code: "unset".to_owned(),
            status_message: String::new(),
            start_ns: 0,
            end_ns: 0,
            links: Vec::new(),
        };
        let span = to_span(&received);
        assert_eq!(
            span.map(|s| (s.kind, s.path)),
            Some((Kind::Server, "/api/items/c1-0-0".to_owned()))
        );
        received.kind = "internal".to_owned();
        assert_eq!(to_span(&received), None);
        received.kind = "client".to_owned();
        received.attributes.clear();
        assert_eq!(to_span(&received), None);
    }
}
