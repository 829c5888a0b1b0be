mod export;
mod kernel;
mod probes;
mod protocol;
mod span;
mod telemetry;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let cfg = loupe_common::ProbeConfig {
        trace_all: 0,
        agent_tgid: std::process::id(),
        capture_bytes: 1024,
        filter_ports: 0,
        offsets: Default::default(),
    };
    let mut probes = probes::Probes::load(&cfg, &[], 16 << 20)?;
    let _maps = probes.take_maps()?;
    println!("loaded");
    Ok(())
}
