mod http;
mod load;
mod process;
mod procfs;
mod prom;
mod stats;
mod wrk;
use anyhow::Result;
#[derive(clap::Args)]
pub struct BenchArgs {}
pub fn run(_args: &BenchArgs) -> Result<()> { Ok(()) }
