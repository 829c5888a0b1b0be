//! `cargo xtask bench --instructions`: the agent's own work per request, counted in
//! instructions rather than seconds. The agent's example `replay` feeds a traced server's
//! steady traffic through the pipeline, the OTLP encoder and gzip with no kernel (see
//! `loupe::pipeline::replay`); callgrind counts what it executes. Two runs of different
//! lengths are subtracted, so start-up drops out and what is left is the cost of the
//! extra requests. Instruction counts repeat exactly for the same binary, whatever else
//! the host is doing, where the agent's CPU seconds on these shared machines do not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use super::target::ServiceKind;
use crate::cmd::which;
use crate::workspace::Workspace;

/// Requests in the shorter and the longer run: multiples of the replay's reads of 128
/// requests and export batches of 512 spans, so both runs end on the same step.
const SHORT_RUN: u64 = 5_120;
const LONG_RUN: u64 = 15_360;

/// Builds the replay unless `build` is false, and returns its path.
pub fn prepare(ws: &Workspace, build: bool) -> Result<PathBuf> {
    if build {
        ws.cargo()
            .args(["build", "--release", "-p", "loupe", "--example", "replay"])
            .run()
            .context("building the replay failed")?;
    }
    let replay = ws
        .target_dir
        .join("release")
        .join("examples")
        .join("replay");
    ensure!(
        replay.exists(),
        "{} not found: build it with `cargo build --release -p loupe --example replay`, \
         or leave out --no-build",
        replay.display()
    );
    if which("valgrind").is_none() {
        bail!("valgrind not found on PATH: run `cargo xtask setup`");
    }
    Ok(replay)
}

/// One service's figure: instructions per request, and encoded bytes per span before and
/// after gzip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub per_request: f64,
    pub bytes_per_span: f64,
    pub gzipped_per_span: f64,
}

pub fn measure(replay: &Path, service: ServiceKind, scratch: &Path) -> Result<Count> {
    let short = run(replay, service, SHORT_RUN, scratch)?;
    let long = run(replay, service, LONG_RUN, scratch)?;
    per_request(short, long, LONG_RUN - SHORT_RUN)
}

/// What one callgrind run of the replay reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    instructions: u64,
    encoded_bytes: u64,
    gzipped_bytes: u64,
}

fn per_request(short: Run, long: Run, extra_requests: u64) -> Result<Count> {
    ensure!(
        long.instructions > short.instructions,
        "the longer replay counted no more instructions ({} against {})",
        long.instructions,
        short.instructions
    );
    let extra = extra_requests as f64;
    Ok(Count {
        per_request: (long.instructions - short.instructions) as f64 / extra,
        bytes_per_span: long.encoded_bytes.saturating_sub(short.encoded_bytes) as f64 / extra,
        gzipped_per_span: long.gzipped_bytes.saturating_sub(short.gzipped_bytes) as f64 / extra,
    })
}

fn run(replay: &Path, service: ServiceKind, requests: u64, scratch: &Path) -> Result<Run> {
    let out_file = scratch.join(format!("callgrind.{}.{requests}", service.name()));
    eprintln!(
        "bench: counting the instructions of {requests} replayed {} requests",
        service.name()
    );
    // The replay's spans carry its own process's resource, read from /proc as the agent
    // reads a traced one's: the caller's OTEL_* settings must not change what it counts.
    let output = Command::new("valgrind")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(replay)
        .args(["--service", service.name(), "--requests"])
        .arg(requests.to_string())
        .output()
        .context("could not start valgrind")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "the replay under callgrind failed ({}):\n{stderr}",
        output.status
    );
    let instructions = collected(&stderr)
        .with_context(|| format!("callgrind printed no instruction count:\n{stderr}"))?;
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("the replay printed no report: {stdout}"))?;
    let spans = report["spans"].as_u64().unwrap_or(0);
    ensure!(
        spans == requests,
        "the replay made {spans} spans of {requests} requests"
    );
    let encoded_bytes = report["encoded_bytes"]
        .as_u64()
        .with_context(|| format!("the replay reported no encoded bytes: {stdout}"))?;
    let gzipped_bytes = report["gzipped_bytes"]
        .as_u64()
        .with_context(|| format!("the replay reported no gzipped bytes: {stdout}"))?;
    Ok(Run {
        instructions,
        encoded_bytes,
        gzipped_bytes,
    })
}

/// The total from callgrind's closing `==PID== Collected : N` line.
fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let (_, rest) = line.split_once("Collected :")?;
        rest.trim().parse().ok()
    })
}

pub fn report(counts: &[(ServiceKind, Count)]) -> (String, serde_json::Value) {
    let mut text = String::from(
        "Agent instructions per request (replayed traffic through the pipeline and the \
         OTLP encoder and gzip, counted by callgrind; the network send is not included)\n\n\
         | service | instructions per request | encoded bytes per span | gzipped |\n\
         | --- | --- | --- | --- |\n",
    );
    let mut value = serde_json::Map::new();
    for (service, count) in counts {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} |\n",
            service.name(),
            count.per_request,
            count.bytes_per_span,
            count.gzipped_per_span
        ));
        value.insert(
            service.name().to_owned(),
            json!({
                "instructions_per_request": count.per_request.round(),
                "encoded_bytes_per_span": count.bytes_per_span.round(),
                "gzipped_bytes_per_span": (count.gzipped_per_span * 10.0).round() / 10.0,
            }),
        );
    }
    (text, serde_json::Value::Object(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrinds_total() {
        let stderr = "==41== Callgrind, a call-graph generating cache profiler\n\
                      ==41== Events    : Ir\n==41== Collected : 196828016\n==41==\n\
                      ==41== I   refs:      196,828,016\n";
        assert_eq!(collected(stderr), Some(196_828_016));
        assert_eq!(collected("==41== I   refs: 12\n"), None);
    }

    #[test]
    fn subtracts_the_shorter_run() {
        let short = Run {
            instructions: 100_000_000,
            encoded_bytes: 2_000_000,
            gzipped_bytes: 200_000,
        };
        let long = Run {
            instructions: 300_000_000,
            encoded_bytes: 6_400_000,
            gzipped_bytes: 655_000,
        };
        let count = per_request(short, long, 10_000).unwrap();
        assert_eq!(count.per_request, 20_000.0);
        assert_eq!(count.bytes_per_span, 440.0);
        assert_eq!(count.gzipped_per_span, 45.5);
        assert!(per_request(long, short, 10_000).is_err());
    }
}
