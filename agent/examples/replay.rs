//! Replays a traced server's steady traffic through the agent's pipeline and OTLP
//! encoder, with no kernel (see `loupe::pipeline::replay`). `cargo xtask bench
//! --instructions` runs it under callgrind; on its own it tells how long the agent's work
//! for that many requests takes on this machine.

use std::{process::ExitCode, time::Instant};

use clap::Parser;
use loupe::pipeline::replay::{Replay, Service};

#[derive(Parser)]
struct Args {
    /// The service whose traffic is replayed.
    #[arg(long, value_enum, default_value = "nginx")]
    service: Service,
    /// Requests to replay.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut replay = match Replay::new(args.service) {
        Ok(replay) => replay,
        Err(e) => {
            eprintln!("replay: cannot set up the pipeline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let outcome = replay.run(args.requests);
    let elapsed = started.elapsed();
    println!(
        "{{\"requests\": {}, \"spans\": {}, \"encoded_bytes\": {}, \"gzipped_bytes\": {}, \"seconds\": {:.6}}}",
        args.requests,
        outcome.spans,
        outcome.encoded_bytes,
        outcome.gzipped_bytes,
        elapsed.as_secs_f64()
    );
    if outcome.spans != args.requests {
        eprintln!(
            "replay: {} requests gave {} spans",
            args.requests, outcome.spans
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
