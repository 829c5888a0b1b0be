//! loupe: an eBPF agent that traces the HTTP requests of unmodified processes and exports
//! them as OpenTelemetry spans.

use loupe::{app, cli};

use std::process::ExitCode;

use clap::Parser as _;

// The pipeline allocates and frees small strings per request on one thread and hands them
// to the exporter's threads; glibc's allocator spent a third of the agent's CPU on that
// pattern and kept per-thread arenas resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
