//! The services the overhead is measured on: nginx, and an unmodified Python stdlib HTTP
//! server. Both answer small responses over keep-alive connections on loopback.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::nginx::Nginx;
use super::process::free_port;
use super::services::{Service, example, port_arg};
use crate::cmd::which;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceKind {
    /// One nginx worker answering `ok\n` (`cargo xtask setup` installs nginx-light).
    Nginx,
    /// `examples/bench/json-api.py`: ThreadingHTTPServer answering a small JSON body.
    Python,
}

impl ServiceKind {
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Nginx => "nginx",
            ServiceKind::Python => "python",
        }
    }

    /// How the report names the workload.
    pub fn describe(self) -> &'static str {
        match self {
            ServiceKind::Nginx => "nginx (1 worker, keep-alive, 3-byte body)",
            ServiceKind::Python => {
                "Python http.server (ThreadingHTTPServer, keep-alive, ~30-byte JSON body)"
            }
        }
    }

    /// The fixed rate when `--rate` names none, unless the warm-up shows the host cannot
    /// carry twice it ([`fitted_rate`]). nginx: the 10,000 req/s, far below its
    /// closed-loop capacity. The Python server carried 12k-22k req/s closed-loop on a shared
    /// two-core machine on a good day; 6,000 is about half of the low end.
    pub fn default_rate(self) -> u64 {
        match self {
            ServiceKind::Nginx => 10_000,
            ServiceKind::Python => 6_000,
        }
    }

    /// The `--exe` pattern that selects the service's processes.
    pub fn exe(self) -> &'static str {
        match self {
            ServiceKind::Nginx => "nginx",
            // The interpreter's executable is usually python3.X.
            ServiceKind::Python => "python3*",
        }
    }

    fn program(self) -> &'static str {
        match self {
            ServiceKind::Nginx => "nginx",
            ServiceKind::Python => "python3",
        }
    }

    /// Fails with advice when the service's program is not installed.
    pub fn check_installed(self) -> Result<()> {
        let program = self.program();
        if which(program).is_none() {
            bail!("{program} not found on PATH: run `cargo xtask setup`");
        }
        Ok(())
    }
}

/// A fixed rate for one service, or (without a name) for every service: `10000` or
/// `python=2500`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub service: Option<ServiceKind>,
    pub rate: u64,
}

pub fn parse_rate(text: &str) -> Result<RateSpec, String> {
    let (service, number) = match text.split_once('=') {
        Some((name, number)) => {
            let service = <ServiceKind as clap::ValueEnum>::from_str(name.trim(), true)
                .map_err(|_| format!("{name:?} is not a service (nginx or python)"))?;
            (Some(service), number)
        }
        None => (None, text),
    };
    let rate = number
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&r| r >= 1)
        .ok_or_else(|| format!("{number:?} is not a rate in requests per second"))?;
    Ok(RateSpec { service, rate })
}

/// The rate for `service`: the last spec naming it, else the last naming no service, else
/// its default.
pub fn rate_for(specs: &[RateSpec], service: ServiceKind) -> u64 {
    explicit_rate(specs, service).unwrap_or_else(|| service.default_rate())
}

/// The rate `--rate` names for `service`, if any.
pub fn explicit_rate(specs: &[RateSpec], service: ServiceKind) -> Option<u64> {
    let named = specs.iter().rev().find(|s| s.service == Some(service));
    let general = specs.iter().rev().find(|s| s.service.is_none());
    named.or(general).map(|s| s.rate)
}

/// The default rate, lowered to half of what the service carried closed-loop in the
/// warm-up (in steps of 500 from 1,000 req/s up, never below `floor`). Latency measured
/// near saturation is queueing, not overhead: the Python server's p50 reached a second at
/// 6,000 req/s on a day it carried 6,500 closed-loop.
pub fn fitted_rate(default: u64, closed_loop_rps: f64, floor: u64) -> u64 {
    let half = (closed_loop_rps / 2.0).max(0.0) as u64;
    let rounded = if half >= 500 { half / 500 * 500 } else { half };
    default.min(rounded).max(floor)
}

/// A running service under load.
pub enum Target {
    Nginx(Nginx),
    Python(Service),
}

impl Target {
    /// Starts `kind` with its files in `dir`; `root` is the workspace, where the Python
    /// program lives.
    pub fn start(kind: ServiceKind, root: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        Ok(match kind {
            ServiceKind::Nginx => Target::Nginx(Nginx::start(dir)?),
            ServiceKind::Python => {
                let port = free_port().context("no free loopback port")?;
                let script = example(root, "bench/json-api.py");
                let args = [script.into_os_string(), port_arg(port)];
                Target::Python(Service::start("json-api", "python3", &args, port, dir)?)
            }
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Nginx(nginx) => nginx.addr(),
            Target::Python(service) => service.addr(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr())
    }

    /// The CPU time the service's processes have used so far (nginx's master and
    /// workers), or `None` once it is gone.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        let pid = match self {
            Target::Nginx(nginx) => nginx.pid(),
            Target::Python(service) => service.pid(),
        };
        super::procfs::family_cpu_time(pid)
    }

    /// Fails when the service has died since it started.
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Target::Nginx(nginx) => nginx.check_alive(),
            Target::Python(service) => service.check_alive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_for_all_or_one_service() {
        assert_eq!(
            parse_rate("20000"),
            Ok(RateSpec {
                service: None,
                rate: 20_000
            })
        );
        assert_eq!(
            parse_rate("Python=2500"),
            Ok(RateSpec {
                service: Some(ServiceKind::Python),
                rate: 2_500
            })
        );
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("ruby=10").is_err());
        assert!(parse_rate("nginx=").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn a_named_rate_wins_over_a_general_one_and_defaults_fill_in() {
        let specs = [
            RateSpec {
                service: Some(ServiceKind::Python),
                rate: 1_500,
            },
            RateSpec {
                service: None,
                rate: 20_000,
            },
        ];
        assert_eq!(rate_for(&specs, ServiceKind::Python), 1_500);
        assert_eq!(rate_for(&specs, ServiceKind::Nginx), 20_000);
        assert_eq!(rate_for(&specs[..1], ServiceKind::Nginx), 10_000);
        assert_eq!(rate_for(&[], ServiceKind::Python), 6_000);
        assert_eq!(explicit_rate(&[], ServiceKind::Python), None);
        assert_eq!(explicit_rate(&specs, ServiceKind::Python), Some(1_500));
    }

    #[test]
    fn the_default_rate_stays_below_half_the_closed_loop_capacity() {
        // nginx carrying 80k closed-loop keeps its 10k.
        assert_eq!(fitted_rate(10_000, 80_000.0, 32), 10_000);
        // Python carrying 6,500 gets 3,000 instead of 6,000.
        assert_eq!(fitted_rate(6_000, 6_500.0, 32), 3_000);
        // Below 1,000 req/s the half is kept as it is, not rounded down to nothing.
        assert_eq!(fitted_rate(6_000, 999.0, 32), 499);
        // A service that barely answers still gets the floor (one request per connection).
        assert_eq!(fitted_rate(6_000, 10.0, 32), 32);
    }
}
