//! `cargo xtask test`: everything CI checks, in the order that fails cheapest first, stopping
//! at the first failing step.

use std::ffi::OsString;
use std::time::Instant;

use anyhow::Result;

use crate::cmd::{Cmd, is_root};
use crate::workspace::Workspace;
use crate::{fuzz, setup, test_kernel};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Run only the unit tests (no release build, no fuzzing, no integration tests, no root
    /// needed).
    #[arg(long)]
    pub unit_only: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("step '{step}' failed")]
    StepFailed {
        step: &'static str,
        source: anyhow::Error,
    },
    #[error(
        "step '{step}' needs root: the integration tests load eBPF programs; \
         run as root, or pass --unit-only"
    )]
    NeedsRoot { step: &'static str },
}

/// The kernel crate builds only for the BPF target (through the agent's build script), so
/// workspace-wide host commands leave it out.
const KERNEL_CRATE: &str = "loupe-ebpf";
const INTEGRATION_CRATE: &str = "loupe-integration-tests";
const FUZZ_MANIFEST: &str = "fuzz/Cargo.toml";

#[derive(Debug)]
struct Step {
    name: &'static str,
    cargo_args: Vec<&'static str>,
    env: Vec<(&'static str, OsString)>,
    needs_root: bool,
    /// Instead of a cargo command: every fuzz target for this many seconds.
    fuzz_seconds: Option<u64>,
}

fn step(name: &'static str, cargo_args: &[&'static str]) -> Step {
    Step {
        name,
        cargo_args: cargo_args.to_vec(),
        env: Vec::new(),
        needs_root: false,
        fuzz_seconds: None,
    }
}

/// `fuzz_seconds` per target, 0 for no fuzzing; `test_kernel` is the older kernel the
/// integration tests boot loupe on.
fn plan(
    args: &TestArgs,
    loupe_bin: OsString,
    test_kernel: OsString,
    fuzz_seconds: u64,
) -> Vec<Step> {
    let mut steps = Vec::new();
    if !args.no_lint {
        steps.push(step("fmt", &["fmt", "--all", "--", "--check"]));
        // The fuzz crate is a workspace of its own, which `--all` does not reach.
        steps.push(step(
            "fmt fuzz",
            &["fmt", "--manifest-path", FUZZ_MANIFEST, "--", "--check"],
        ));
        steps.push(step(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--exclude",
                KERNEL_CRATE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ));
    }
    if !args.unit_only {
        steps.push(step("build", &["build", "--release", "-p", "loupe"]));
    }
    steps.push(step(
        "unit tests",
        &[
            "test",
            "--workspace",
            "--exclude",
            KERNEL_CRATE,
            "--exclude",
            INTEGRATION_CRATE,
        ],
    ));
    // The kernel programs' parsing logic, compiled for the host.
    steps.push(step("kernel unit tests", &["test", "-p", KERNEL_CRATE]));
    if !args.unit_only && fuzz_seconds > 0 {
        let mut fuzzing = step("fuzz", &[]);
        fuzzing.fuzz_seconds = Some(fuzz_seconds);
        steps.push(fuzzing);
    }
    if !args.unit_only {
        let mut integration = step(
            "integration tests",
            &[
                "test",
                "-p",
                INTEGRATION_CRATE,
                "--release",
                "--",
                "--test-threads=1",
            ],
        );
        integration.env.push(("LOUPE_BIN", loupe_bin));
        integration.env.push(("LOUPE_TEST_KERNEL", test_kernel));
        integration.needs_root = true;
        steps.push(integration);
    }
    steps
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::run(&mut std::io::stdout())?;
    let fuzz_seconds = fuzz::seconds_from_env(std::env::var(fuzz::SECONDS_ENV).ok().as_deref())?;
    let ws = Workspace::locate()?;
    let test_kernel = if args.unit_only {
        test_kernel::path(&ws.target_dir)
    } else {
        test_kernel::ensure(&ws.target_dir)?
    };
    let steps = plan(
        args,
        ws.release_bin("loupe").into_os_string(),
        test_kernel.into_os_string(),
        fuzz_seconds,
    );
    let total = steps.len();
    let started = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        let mut cmd: Cmd = ws.cargo().args(&step.cargo_args);
        for (key, value) in &step.env {
            cmd = cmd.env(key, value);
        }
        let shown = match step.fuzz_seconds {
            Some(seconds) => format!(
                "{} target(s), {seconds} s each ({}=N to change, 0 to skip)",
                fuzz::TARGETS.len(),
                fuzz::SECONDS_ENV
            ),
            None => cmd.shown().to_owned(),
        };
        println!("==> [{}/{total}] {}: {shown}", i + 1, step.name);
        if step.needs_root && !is_root() {
            eprintln!("xtask test: stopped at step '{}'", step.name);
            return Err(TestError::NeedsRoot { step: step.name }.into());
        }
        let step_started = Instant::now();
        let result = match step.fuzz_seconds {
            Some(seconds) => setup::fuzzing(&mut std::io::stdout()).and_then(|()| {
                fuzz::run_targets(&ws, fuzz::TARGETS, seconds, fuzz::Output::Logged)
            }),
            None => cmd.run().map_err(anyhow::Error::from),
        };
        if let Err(source) = result {
            eprintln!(
                "xtask test: FAILED at step '{}' ({}/{total}) after {:.0} s",
                step.name,
                i + 1,
                started.elapsed().as_secs_f64()
            );
            return Err(TestError::StepFailed {
                step: step.name,
                source,
            }
            .into());
        }
        println!(
            "==> {} ok in {:.1} s",
            step.name,
            step_started.elapsed().as_secs_f64()
        );
    }
    let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
    println!(
        "xtask test: ok, {total} step(s) succeeded ({}) in {:.0} s",
        names.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(args: &TestArgs) -> Vec<&'static str> {
        plan(
            args,
            OsString::from("/t/release/loupe"),
            OsString::from("/t/vmlinuz"),
            30,
        )
        .iter()
        .map(|s| s.name)
        .collect()
    }

    #[test]
    fn full_plan_lints_builds_then_tests() {
        let args = TestArgs {
            unit_only: false,
            no_lint: false,
        };
        assert_eq!(
            names(&args),
            [
                "fmt",
                "fmt fuzz",
                "clippy",
                "build",
                "unit tests",
                "kernel unit tests",
                "fuzz",
                "integration tests"
            ]
        );
        let steps = plan(
            &args,
            OsString::from("/t/release/loupe"),
            OsString::from("/t/vmlinuz"),
            30,
        );
        assert_eq!(steps[6].fuzz_seconds, Some(30));
        assert!(
            steps
                .iter()
                .filter(|s| s.name != "fuzz")
                .all(|s| s.fuzz_seconds.is_none())
        );
        let integration = &steps[7];
        assert!(integration.needs_root);
        assert_eq!(
            integration.env,
            [
                ("LOUPE_BIN", OsString::from("/t/release/loupe")),
                ("LOUPE_TEST_KERNEL", OsString::from("/t/vmlinuz"))
            ]
        );
        assert!(
            integration
                .cargo_args
                .ends_with(&["--", "--test-threads=1"])
        );
        // Host-side commands never try to compile the BPF-only crate.
        assert!(steps[2].cargo_args.contains(&KERNEL_CRATE));
        assert!(steps[4].cargo_args.contains(&KERNEL_CRATE));
        assert!(steps[4].cargo_args.contains(&INTEGRATION_CRATE));
        assert!(steps[1].cargo_args.contains(&FUZZ_MANIFEST));
    }

    #[test]
    fn flags_drop_steps() {
        let unit_only = TestArgs {
            unit_only: true,
            no_lint: false,
        };
        assert_eq!(
            names(&unit_only),
            [
                "fmt",
                "fmt fuzz",
                "clippy",
                "unit tests",
                "kernel unit tests"
            ]
        );
        let bare = TestArgs {
            unit_only: true,
            no_lint: true,
        };
        assert_eq!(names(&bare), ["unit tests", "kernel unit tests"]);
        let no_lint = TestArgs {
            unit_only: false,
            no_lint: true,
        };
        assert_eq!(
            names(&no_lint),
            [
                "build",
                "unit tests",
                "kernel unit tests",
                "fuzz",
                "integration tests"
            ]
        );
        let no_fuzz: Vec<&str> = plan(
            &no_lint,
            OsString::from("/t/release/loupe"),
            OsString::from("/t/vmlinuz"),
            0,
        )
        .iter()
        .map(|s| s.name)
        .collect();
        assert_eq!(
            no_fuzz,
            [
                "build",
                "unit tests",
                "kernel unit tests",
                "integration tests"
            ]
        );
    }
}
