//! The example services that the demo and the completeness benchmark trace: unmodified
//! Node and Python programs from `examples/`, each on a free loopback port, each named by
//! its own `OTEL_SERVICE_NAME` as a deployed service would be.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::{Guard, interrupted, log_tail, loopback, poll_until};

/// Interpreters start in well under a second; a cold disk cache can make it several.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Where the example programs are, under the workspace root.
pub fn example(root: &Path, relative: &str) -> PathBuf {
    root.join("examples").join(relative)
}

/// A running example service.
pub struct Service {
    name: &'static str,
    guard: Guard,
    port: u16,
    log: PathBuf,
}

impl Service {
    /// Runs `program args...` with `OTEL_SERVICE_NAME=name`, output to `<dir>/<name>.log`,
    /// and waits until it accepts connections on `port`.
    pub fn start(
        name: &'static str,
        program: &str,
        args: &[OsString],
        port: u16,
        dir: &Path,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("OTEL_SERVICE_NAME", name)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let guard = Guard::spawn(name, cmd, libc::SIGTERM, Duration::from_secs(3))
            .with_context(|| format!("could not start {name} ({program})"))?;
        let mut service = Self {
            name,
            guard,
            port,
            log,
        };
        let addr = service.addr();
        let up = poll_until(START_LIMIT, Duration::from_millis(50), || {
            if service.guard.exited().is_some() {
                return Some(false);
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .ok()
                .map(|_| true)
        });
        if up != Some(true) {
            let state = match service.guard.exited() {
                Some(status) => format!("{name} exited ({status})"),
                None if interrupted() => "interrupted".to_owned(),
                None => format!(
                    "{name} did not accept connections on {addr} within {} s",
                    START_LIMIT.as_secs()
                ),
            };
            bail!("{state}\n{}", log_tail(&service.log, 20));
        }
        Ok(service)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Fails when the service has died since it started.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.exited() {
            bail!(
                "{} exited ({status})\n{}",
                self.name,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }
}

/// A port as a program argument.
pub fn port_arg(port: u16) -> OsString {
    OsString::from(port.to_string())
}
