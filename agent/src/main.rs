//! loupe: an eBPF agent that traces the HTTP requests of unmodified processes and exports
//! them as OpenTelemetry spans.

use loupe::{
    app,
    cli::{Cli, Command, ConfigCommand},
    config,
};

use std::{io::Write as _, process::ExitCode};

use clap::{CommandFactory as _, FromArgMatches as _};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let given = config::given_on_command_line(&matches);
    let env = |name: &str| std::env::var(name).ok();
    let result = match cli.command {
        Some(Command::Config(ConfigCommand::Check { file })) => {
            config::load(Some(&file), cli.run, given, env)
                .map_err(anyhow::Error::from)
                .and_then(|config| {
                    for warning in config.warnings() {
                        eprintln!("loupe: warning: {warning}");
                    }
                    Ok(config.effective_yaml(&file)?)
                })
                // Not print!: a closed pipe (`| head`) is an error to report, not a panic.
                .and_then(|yaml| Ok(std::io::stdout().write_all(yaml.as_bytes())?))
        }
        None => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .format_target(false)
                .init();
            if let Some(path) = &cli.config {
                log::info!("configuration file {}", path.display());
            }
            config::load(cli.config.as_deref(), cli.run, given, env)
                .map_err(anyhow::Error::from)
                .and_then(app::run)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loupe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
