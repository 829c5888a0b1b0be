//! `cargo xtask run -- ARGS`: builds the release agent and becomes it, so signals, stdio
//! and the exit code are the agent's own.

use std::os::unix::process::CommandExt as _;

use anyhow::{Context, Result};

use crate::workspace::Workspace;
use crate::{build, setup};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Arguments for the agent (it needs root to load its kernel programs).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    setup::run(&mut std::io::stderr())?;
    let ws = Workspace::locate()?;
    build::agent(&ws, true)?;
    let bin = ws.release_bin("loupe");
    eprintln!(
        "==> {} {}",
        bin.display(),
        crate::cmd::quote_all(&args.args)
    );
    // exec only returns when the agent could not be started.
    let err = std::process::Command::new(&bin).args(&args.args).exec();
    Err(err).with_context(|| format!("could not start {}", bin.display()))
}
