//! The traced workload: one nginx worker on loopback answering `200 ok` with keep-alive,
//! configured entirely inside the benchmark's scratch directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::http;
use super::process::{Guard, free_port, log_tail, loopback, poll_until};

/// Temp-path directives by the module that owns them; each is written only when nginx was
/// built with that module, since an unknown directive fails the whole config.
const TEMP_PATHS: &[(&str, &str)] = &[
    ("proxy", "proxy_temp_path"),
    ("fastcgi", "fastcgi_temp_path"),
    ("uwsgi", "uwsgi_temp_path"),
    ("scgi", "scgi_temp_path"),
];

/// The config for a server on `port` whose every file lives under `dir`. `build_info` is
/// what `nginx -V` printed.
pub fn config(dir: &Path, port: u16, build_info: &str) -> String {
    let d = dir.display();
    let mut temp_paths = format!("    client_body_temp_path {d}/client_body;\n");
    for (module, directive) in TEMP_PATHS {
        if !build_info.contains(&format!("--without-http_{module}_module")) {
            temp_paths.push_str(&format!("    {directive} {d}/{module};\n"));
        }
    }
    format!(
        "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    default_type text/plain;
{temp_paths}    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            return 200 \"ok\\n\";
        }}
    }}
}}
"
    )
}

pub struct Nginx {
    guard: Guard,
    port: u16,
    error_log: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        let build_info = Command::new("nginx")
            .arg("-V")
            .stdin(Stdio::null())
            .output()
            .context("could not run nginx (run `cargo xtask setup` to install nginx-light)")?;
        // nginx prints its build flags on stderr.
        let build_info = String::from_utf8_lossy(&build_info.stderr).into_owned();
        let port = free_port().context("no free loopback port")?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, port, &build_info))
            .with_context(|| format!("could not write {}", conf.display()))?;
        let error_log = dir.join("error.log");
        let out = std::fs::File::create(dir.join("nginx.out"))?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let guard = Guard::spawn("nginx", cmd, libc::SIGTERM, Duration::from_secs(5))
            .context("could not start nginx")?;
        let mut nginx = Self {
            guard,
            port,
            error_log,
        };
        let addr = nginx.addr();
        let up = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            http::get(addr, "/", Duration::from_secs(1))
                .ok()
                .filter(|r| r.status == 200)
        });
        if up.is_none() {
            let state = match nginx.guard.exited() {
                Some(status) => format!("nginx exited ({status})"),
                None => "nginx did not answer on its port within 10 s".to_owned(),
            };
            bail!(
                "{state}\n{}\n{}",
                log_tail(&nginx.error_log, 20),
                log_tail(&dir.join("nginx.out"), 20)
            );
        }
        Ok(nginx)
    }

    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The master's pid; its workers are its children.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Fails when nginx has died since it started.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.exited() {
            bail!("nginx exited ({status})\n{}", log_tail(&self.error_log, 20));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_the_scratch_dir() {
        let conf = config(
            Path::new("/tmp/b"),
            8123,
            "configure arguments: --with-debug",
        );
        assert!(conf.contains("listen 127.0.0.1:8123;"));
        assert!(conf.contains("daemon off;"));
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("access_log off;"));
        assert!(conf.contains("return 200 \"ok\\n\";"));
        assert!(conf.contains("pid /tmp/b/nginx.pid;"));
        assert!(conf.contains("uwsgi_temp_path /tmp/b/uwsgi;"));
        assert!(conf.contains("client_body_temp_path /tmp/b/client_body;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn config_leaves_out_modules_nginx_lacks() {
        let conf = config(
            Path::new("/tmp/b"),
            1,
            "--without-http_uwsgi_module --without-http_scgi_module",
        );
        assert!(!conf.contains("uwsgi_temp_path"));
        assert!(!conf.contains("scgi_temp_path"));
        assert!(conf.contains("proxy_temp_path"));
    }
}
