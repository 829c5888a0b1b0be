//! `cargo xtask setup`: installs what building and testing loupe need, and nothing twice.
//!
//! Every item prints one line: `[ok] item: what is there` or `[install] item: how`. Only
//! Debian packages need root; the Rust toolchain parts install into the caller's rustup
//! and cargo homes.

use std::io::Write;

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, is_root, quote_all, which};

/// A Debian package, and others that serve the same purpose when already installed (so a
/// machine with the full nginx is not made to swap it for the light one).
struct Deb {
    package: &'static str,
    satisfied_by: &'static [&'static str],
}

const fn deb(package: &'static str) -> Deb {
    Deb {
        package,
        satisfied_by: &[],
    }
}

/// What the agent's build needs: bpf-linker links against LLVM 22, the version nightly's
/// rustc emits bitcode for; ring, the TLS exports' cryptography, compiles C.
const BUILD_DEBS: &[Deb] = &[
    deb("llvm-22-dev"),
    deb("libpolly-22-dev"),
    deb("libzstd-dev"),
    deb("zlib1g-dev"),
    deb("gcc"),
];

/// Real peers the integration tests and the benchmark talk to; iproute2, whose `ip netns`
/// gives tests network namespaces of their own (pods on one node); valgrind, whose
/// callgrind counts the agent's instructions (`cargo xtask bench --instructions`); and
/// QEMU, a static busybox and cpio, which boot loupe on an older kernel (`test_kernel`);
/// Go, which builds the Go service of `go_services`.
const TEST_DEBS: &[Deb] = &[
    Deb {
        package: "nginx-light",
        satisfied_by: &["nginx-core", "nginx-full", "nginx-extras"],
    },
    deb("curl"),
    deb("wrk"),
    deb("iproute2"),
    deb("valgrind"),
    deb("qemu-system-x86"),
    deb("busybox-static"),
    deb("cpio"),
    deb("golang-go"),
];

/// Python packages the test peers will need beyond the standard library.
struct PipPackage {
    /// The name `pip show` knows it by.
    name: &'static str,
    /// What `pip install` is given, with its version bound.
    requirement: &'static str,
}

/// An OpenTelemetry-SDK-instrumented Python service and a grpcio collector are among the
/// integration tests' peers.
const PIP_PACKAGES: &[PipPackage] = &[
    PipPackage {
        name: "opentelemetry-sdk",
        requirement: "opentelemetry-sdk==1.45.2",
    },
    PipPackage {
        name: "opentelemetry-exporter-otlp-proto-http",
        requirement: "opentelemetry-exporter-otlp-proto-http==1.45.2",
    },
    // gRPC's C core under an OTLP collector: a gRPC peer independent of loupe and tonic.
    PipPackage {
        name: "grpcio",
        requirement: "grpcio==1.85.4",
    },
];

const MIN_NODE_MAJOR: u32 = 18;
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION_PREFIX: &str = "bpf-linker 0.13";

/// Where the item lines go: stdout for `cargo xtask setup`, stderr when another command
/// keeps stdout for its own report.
struct Out<'a>(&'a mut dyn Write);

impl Out<'_> {
    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        // A closed output must not stop the installation.
        let _ = writeln!(self.0, "{text}");
        let _ = self.0.flush();
    }

    fn ok(&mut self, item: &str, detail: &str) {
        self.line(format_args!("[ok] {item}: {detail}"));
    }

    fn install(&mut self, item: &str, how: &str) {
        self.line(format_args!("[install] {item}: {how}"));
    }
}

pub fn run(out: &mut dyn Write) -> Result<()> {
    let mut out = Out(out);
    debian_packages(&mut out)?;
    rust_nightly(&mut out)?;
    bpf_linker(&mut out)?;
    pip_packages(&mut out)?;
    Ok(())
}

/// What running the fuzz targets needs: nightly (for the sanitizers) and cargo-fuzz. Only
/// fuzzing needs cargo-fuzz, so `run` leaves it out and other commands never wait for it.
pub fn fuzzing(out: &mut dyn Write) -> Result<()> {
    let mut out = Out(out);
    rust_nightly(&mut out)?;
    cargo_fuzz(&mut out)
}

fn cargo_fuzz(out: &mut Out<'_>) -> Result<()> {
    let probe = || Cmd::new("cargo").args(["fuzz", "--version"]).probe();
    if let Some(version) = probe() {
        out.ok("cargo-fuzz", version.trim());
        return Ok(());
    }
    let cmd = Cmd::new("cargo").args(["install", "cargo-fuzz", "--locked"]);
    out.install("cargo-fuzz", cmd.shown());
    cmd.run()?;
    if probe().is_none() {
        bail!(
            "cargo-fuzz installed but `cargo fuzz --version` fails: add the cargo bin directory \
             (usually ~/.cargo/bin) to PATH"
        );
    }
    Ok(())
}

fn debian_packages(out: &mut Out<'_>) -> Result<()> {
    if which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: `cargo xtask setup` installs through Debian's packages; \
             on another system install LLVM {LLVM_MAJOR} (dev), zstd and zlib headers, nginx, \
             curl, wrk and Node.js >= {MIN_NODE_MAJOR} by hand"
        );
    }
    let mut missing: Vec<&str> = Vec::new();
    for deb in BUILD_DEBS.iter().chain(TEST_DEBS) {
        match installed_alternative(deb) {
            Some(name) => out.ok(&format!("deb {}", deb.package), &installed_as(deb, name)),
            None => {
                out.install(&format!("deb {}", deb.package), "apt-get install");
                missing.push(deb.package);
            }
        }
    }
    match Cmd::new("node").arg("--version").probe() {
        Some(v) if node_major(&v).is_some_and(|m| m >= MIN_NODE_MAJOR) => out.ok("node", v.trim()),
        found => {
            let why = found.map_or("not found".to_owned(), |v| {
                format!("{} is too old", v.trim())
            });
            out.install("node", &format!("{why}; apt-get install nodejs"));
            missing.push("nodejs");
        }
    }
    match Cmd::new("python3").arg("--version").probe() {
        Some(v) => out.ok("python3", v.trim()),
        None => {
            out.install("python3", "apt-get install python3");
            missing.push("python3");
        }
    }
    if !PIP_PACKAGES.is_empty()
        && Cmd::new("python3")
            .args(["-m", "pip", "--version"])
            .probe()
            .is_none()
    {
        out.install("pip", "apt-get install python3-pip");
        missing.push("python3-pip");
    }
    if missing.is_empty() {
        return Ok(());
    }

    let install_args: Vec<&str> = ["install", "-y", "--no-install-recommends"]
        .into_iter()
        .chain(missing.iter().copied())
        .collect();
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {}\n\
             run `sudo -E cargo xtask setup`, or install them yourself: \
             sudo apt-get update && sudo apt-get {}",
            missing.join(" "),
            quote_all(&install_args)
        );
    }
    out.line(format_args!("[install] apt-get update"));
    Cmd::new("apt-get").arg("update").run()?;
    let apt = Cmd::new("apt-get")
        .args(&install_args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    out.line(format_args!("[install] {}", apt.shown()));
    apt.run()?;

    for deb in BUILD_DEBS.iter().chain(TEST_DEBS) {
        if installed_alternative(deb).is_none() {
            bail!(
                "apt-get reported success but {} is still not installed",
                deb.package
            );
        }
    }
    Ok(())
}

fn installed_as(deb: &Deb, name: &str) -> String {
    if name == deb.package {
        "installed".to_owned()
    } else {
        format!("{name} installed, which serves the same purpose")
    }
}

fn installed_alternative(deb: &Deb) -> Option<&'static str> {
    std::iter::once(deb.package)
        .chain(deb.satisfied_by.iter().copied())
        .find(|name| deb_installed(name))
}

fn deb_installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .probe()
        .is_some_and(|status| dpkg_status_installed(&status))
}

/// `dpkg-query -W -f='${Status}'` prints "want flag status"; only "installed" as the last
/// word means the files are there ("config-files" is what a removed package leaves).
fn dpkg_status_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

/// The major version from `node --version` ("v20.20.2").
fn node_major(version: &str) -> Option<u32> {
    version
        .trim()
        .strip_prefix('v')?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn rust_nightly(out: &mut Out<'_>) -> Result<()> {
    if which("rustup").is_none() {
        bail!(
            "rustup not found: loupe's kernel programs build with a nightly toolchain that \
             rustup manages; install rustup first"
        );
    }
    let toolchains = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .probe()
        .context("`rustup toolchain list` failed")?;
    match nightly_toolchain(&toolchains) {
        Some(name) => out.ok("rust nightly", name),
        None => {
            let cmd = Cmd::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]);
            out.install("rust nightly", cmd.shown());
            cmd.run()?;
        }
    }
    let components = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .probe()
        .unwrap_or_default();
    if has_component(&components, "rust-src") {
        out.ok("rust-src (nightly)", "installed");
    } else {
        let cmd =
            Cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        out.install("rust-src (nightly)", cmd.shown());
        cmd.run()?;
    }
    Ok(())
}

/// The nightly line of `rustup toolchain list`, without rustup's "(default)" notes.
fn nightly_toolchain(list: &str) -> Option<&str> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| *name == "nightly" || name.starts_with("nightly-"))
}

/// Components are listed by full name ("rust-src") or with a target triple after it
/// ("rust-std-x86_64-unknown-linux-gnu"), which has at least three parts.
fn has_component(list: &str, component: &str) -> bool {
    list.lines().any(|line| {
        let name = line.trim();
        name == component
            || name
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-') && rest.matches('-').count() >= 3)
    })
}

fn bpf_linker(out: &mut Out<'_>) -> Result<()> {
    let version = Cmd::new("bpf-linker").arg("--version").probe();
    let linked_llvm = which("bpf-linker")
        .and_then(|path| Cmd::new("ldd").arg(path).probe())
        .and_then(|ldd| llvm_major_from_ldd(&ldd));
    let verdict = bpf_linker_verdict(version.as_deref(), linked_llvm);
    let force = match verdict {
        LinkerVerdict::Good(detail) => {
            out.ok("bpf-linker", &detail);
            return Ok(());
        }
        LinkerVerdict::Missing => false,
        LinkerVerdict::Replace(_) => true,
    };

    let mut args = vec![
        "install",
        "bpf-linker",
        "--version",
        "^0.13",
        "--no-default-features",
        "--features",
        "llvm-22",
    ];
    if force {
        args.push("--force");
    }
    let locked = Cmd::new("cargo")
        .args(&args)
        .arg("--locked")
        .env("LLVM_PREFIX", LLVM_PREFIX);
    let why = match &verdict {
        LinkerVerdict::Replace(why) => format!("{why}; "),
        _ => String::new(),
    };
    out.install("bpf-linker", &format!("{why}{}", locked.shown()));
    if let Err(err) = locked.run() {
        // A yanked or broken pin in bpf-linker's own lock file is the usual cause.
        let unlocked = Cmd::new("cargo")
            .args(&args)
            .env("LLVM_PREFIX", LLVM_PREFIX);
        out.line(format_args!(
            "[retry] bpf-linker: {err}; now without --locked: {}",
            unlocked.shown()
        ));
        unlocked.run()?;
    }
    match Cmd::new("bpf-linker").arg("--version").probe() {
        Some(v) if v.starts_with(BPF_LINKER_VERSION_PREFIX) => Ok(()),
        Some(v) => bail!("bpf-linker installed but reports {}", v.trim()),
        None => bail!(
            "bpf-linker installed but not found on PATH: add the cargo bin directory \
             (usually ~/.cargo/bin) to PATH"
        ),
    }
}

#[derive(Debug, PartialEq)]
enum LinkerVerdict {
    Good(String),
    Missing,
    Replace(String),
}

fn bpf_linker_verdict(version: Option<&str>, linked_llvm: Option<u32>) -> LinkerVerdict {
    let Some(version) = version.map(str::trim) else {
        return LinkerVerdict::Missing;
    };
    if !version.starts_with(BPF_LINKER_VERSION_PREFIX) {
        return LinkerVerdict::Replace(format!("found {version}, need 0.13"));
    }
    match linked_llvm {
        Some(major) if major != LLVM_MAJOR => LinkerVerdict::Replace(format!(
            "{version} is linked against LLVM {major}, need {LLVM_MAJOR}"
        )),
        Some(major) => LinkerVerdict::Good(format!("{version} (LLVM {major})")),
        // Statically linked, or ldd missing: the version is all there is to check.
        None => LinkerVerdict::Good(version.to_owned()),
    }
}

/// The LLVM major version a binary is dynamically linked against, from `ldd` output
/// ("libLLVM.so.22.1 => ..." or "libLLVM-22.so => ...").
fn llvm_major_from_ldd(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn pip_packages(out: &mut Out<'_>) -> Result<()> {
    if PIP_PACKAGES.is_empty() {
        out.ok("pip packages", "none needed beyond the standard library");
        return Ok(());
    }
    for pkg in PIP_PACKAGES {
        let present = Cmd::new("python3")
            .args(["-m", "pip", "show", "--quiet", pkg.name])
            .probe()
            .is_some();
        if present {
            out.ok(&format!("pip {}", pkg.name), "installed");
        } else {
            let cmd =
                Cmd::new("python3").args(["-m", "pip", "install", "--quiet", pkg.requirement]);
            out.install(&format!("pip {}", pkg.name), cmd.shown());
            cmd.run()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_must_end_in_installed() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok half-installed"));
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn node_major_version() {
        assert_eq!(node_major("v20.20.2\n"), Some(20));
        assert_eq!(node_major("v18.20.4"), Some(18));
        assert_eq!(node_major("20.1.0"), None);
        assert_eq!(node_major("vX"), None);
        assert_eq!(node_major(""), None);
    }

    #[test]
    fn nightly_is_found_among_toolchains() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert_eq!(
            nightly_toolchain(list),
            Some("nightly-x86_64-unknown-linux-gnu")
        );
        assert_eq!(
            nightly_toolchain("stable-x86_64-unknown-linux-gnu (default)\n"),
            None
        );
        assert!(nightly_toolchain("nightly-2026-01-01-x86_64-unknown-linux-gnu\n").is_some());
        assert_eq!(nightly_toolchain(""), None);
    }

    #[test]
    fn components_match_by_name_not_prefix() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component(
            "rust-src-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-s"
        ));
        assert!(!has_component("rust-src-extra\n", "rust-src"));
        assert!(!has_component("", "rust-src"));
    }

    #[test]
    fn llvm_version_from_ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f1f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1e)\n";
        assert_eq!(llvm_major_from_ldd(ldd), Some(22));
        assert_eq!(
            llvm_major_from_ldd("\tlibLLVM-19.so => /usr/lib/x (0x1)\n"),
            Some(19)
        );
        assert_eq!(llvm_major_from_ldd("\tstatically linked\n"), None);
        assert_eq!(llvm_major_from_ldd("\tlibLLVM.so. => x\n"), None);
    }

    #[test]
    fn bpf_linker_must_be_013_on_llvm_22() {
        assert_eq!(bpf_linker_verdict(None, None), LinkerVerdict::Missing);
        assert_eq!(
            bpf_linker_verdict(Some("bpf-linker 0.13.0\n"), Some(22)),
            LinkerVerdict::Good("bpf-linker 0.13.0 (LLVM 22)".to_owned())
        );
        assert!(matches!(
            bpf_linker_verdict(Some("bpf-linker 0.13.0"), Some(21)),
            LinkerVerdict::Replace(_)
        ));
        assert!(matches!(
            bpf_linker_verdict(Some("bpf-linker 0.9.14"), Some(22)),
            LinkerVerdict::Replace(_)
        ));
        assert_eq!(
            bpf_linker_verdict(Some("bpf-linker 0.13.2"), None),
            LinkerVerdict::Good("bpf-linker 0.13.2".to_owned())
        );
    }
}
