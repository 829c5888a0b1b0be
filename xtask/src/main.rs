//! loupe's developer commands, run as `cargo xtask <command>` from anywhere in the
//! workspace. CI runs `cargo xtask test`.

mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod run;
mod setup;
mod test;
mod test_kernel;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "loupe's developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need; already present items are left alone.
    Setup,
    /// Set up, then build the agent with its kernel programs.
    Build(build::BuildArgs),
    /// Set up, build the release agent, then run it with the given arguments (needs root).
    Run(run::RunArgs),
    /// Set up, build, and watch loupe trace two example services (Node and Python) into
    /// connected traces printed on the terminal (needs root).
    Demo(demo::DemoArgs),
    /// Set up, then lint, build and run the unit tests, the fuzz targets and the integration
    /// tests, as CI does.
    Test(test::TestArgs),
    /// Run the fuzz targets in fuzz/ (all, or one) for a bounded time each; installs
    /// cargo-fuzz when missing. Needs no root.
    Fuzz(fuzz::FuzzArgs),
    /// Measure the agent's overhead on nginx or a Python service (alternating rounds
    /// without and with it), with --soak whether its memory stays flat under steady load,
    /// with --completeness how many requests form exact traces across three services, or
    /// with --instructions how many instructions the agent's own code takes per request.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Setup => setup::run(&mut std::io::stdout()),
        Command::Build(args) => build::run(args),
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Test(args) => test::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
