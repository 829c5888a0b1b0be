//! loupe: an eBPF agent that traces the HTTP requests of unmodified processes and exports
//! them as OpenTelemetry spans.

mod admin;
mod app;
mod cli;
mod events;
mod export;
mod kernel;
mod pipeline;
mod probes;
mod process;
mod protocol;
mod red;
mod sampling;
mod span;
mod telemetry;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loupe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
