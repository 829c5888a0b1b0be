//! `cargo xtask build`: the agent, with its kernel programs, which the agent's build script
//! compiles with nightly and bpf-linker (hence setup first).

use anyhow::Result;

use crate::setup;
use crate::workspace::Workspace;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &BuildArgs) -> Result<()> {
    setup::run(&mut std::io::stdout())?;
    let ws = Workspace::locate()?;
    agent(&ws, args.release)
}

/// `cargo build [--release] -p loupe`.
pub fn agent(ws: &Workspace, release: bool) -> Result<()> {
    let mut cmd = ws.cargo().arg("build");
    if release {
        cmd = cmd.arg("--release");
    }
    let cmd = cmd.args(["-p", "loupe"]);
    eprintln!("==> {}", cmd.shown());
    cmd.run()?;
    Ok(())
}
