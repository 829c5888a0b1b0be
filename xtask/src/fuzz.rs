//! `cargo xtask fuzz`, and the fuzzing step of `cargo xtask test`: each cargo-fuzz target in
//! `fuzz/` runs for a bounded time, starting from its committed seeds.
//!
//! Builds go to `<target dir>/fuzz` (sanitizer flags would otherwise rebuild the main target
//! dir's dependencies each time), and so do the corpora the runs grow, so the committed seeds
//! under `fuzz/corpus` stay as they are. Crash inputs land in `fuzz/artifacts/<target>/`,
//! where cargo-fuzz looks for them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::cmd::Cmd;
use crate::setup;
use crate::workspace::Workspace;

/// The `[[bin]]` targets of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["http1_session", "http1_head", "trace_context", "route"];
/// Seconds per target in `cargo xtask test`.
pub const DEFAULT_SECONDS: u64 = 30;
/// Overrides [`DEFAULT_SECONDS`] in `cargo xtask test`; 0 skips fuzzing.
pub const SECONDS_ENV: &str = "LOUPE_FUZZ_SECONDS";
/// An input that runs this long is a hang (a parser loop), not a slow machine.
const TIMEOUT_SECONDS: u64 = 10;
const RSS_LIMIT_MB: u64 = 2048;
/// Lines of a failed run's log shown in the terminal.
const EXCERPT_LINES: usize = 40;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// The target to run; all of them one after the other when left out.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
    /// Seconds per target; 0 runs until interrupted.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    pub seconds: u64,
}

/// How a run shows libFuzzer's output.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// On the terminal, as it comes.
    Live,
    /// In a log file; the summary line, or the log's tail on failure, is printed.
    Logged,
}

#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    #[error("fuzz target '{target}' failed; crash input(s): {}", shown(.inputs))]
    Failed {
        target: String,
        inputs: Vec<PathBuf>,
    },
}

fn shown(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none written (see the output above)".to_owned();
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The seconds per target `cargo xtask test` runs, from [`SECONDS_ENV`].
pub fn seconds_from_env(value: Option<&str>) -> Result<u64> {
    match value.map(str::trim) {
        None | Some("") => Ok(DEFAULT_SECONDS),
        Some(v) => v.parse().with_context(|| {
            format!("{SECONDS_ENV} must be a whole number of seconds (0 skips fuzzing), got {v:?}")
        }),
    }
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    setup::fuzzing(&mut std::io::stdout())?;
    let ws = Workspace::locate()?;
    let targets: Vec<&str> = match &args.target {
        Some(target) => vec![target.as_str()],
        None => TARGETS.to_vec(),
    };
    run_targets(&ws, &targets, args.seconds, Output::Live)
}

/// Builds the targets, then runs each for `seconds` (0: no limit).
pub fn run_targets(ws: &Workspace, targets: &[&str], seconds: u64, output: Output) -> Result<()> {
    let build = fuzz_cargo(ws, "build").args(targets_to_build(targets));
    println!("--> {}", build.shown());
    build.run()?;
    for target in targets {
        run_target(ws, target, seconds, output)?;
    }
    Ok(())
}

/// `cargo fuzz build` takes one target or, without one, all of them.
fn targets_to_build<'a>(targets: &[&'a str]) -> Vec<&'a str> {
    match targets {
        [one] => vec![*one],
        _ => Vec::new(),
    }
}

/// `cargo +nightly fuzz <command>` in the workspace, building into its own directory.
fn fuzz_cargo(ws: &Workspace, command: &str) -> Cmd {
    ws.cargo()
        .args(["+nightly", "fuzz", command, "--target-dir"])
        .arg(ws.target_dir.join("fuzz"))
        .env("AYA_BUILD_SKIP", "1")
}

fn libfuzzer_args(seconds: u64) -> Vec<String> {
    vec![
        format!("-max_total_time={seconds}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-timeout={TIMEOUT_SECONDS}"),
    ]
}

fn run_target(ws: &Workspace, target: &str, seconds: u64, output: Output) -> Result<()> {
    let work = ws.target_dir.join("fuzz");
    // Grown corpus first: libFuzzer adds new inputs to the first directory only.
    let corpus = work.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let cmd = fuzz_cargo(ws, "run")
        .arg(target)
        .arg(&corpus)
        .arg(ws.root.join("fuzz").join("corpus").join(target))
        .arg("--")
        .args(libfuzzer_args(seconds));
    println!("--> {}", cmd.shown());
    let started = SystemTime::now();
    let result = match output {
        Output::Live => cmd.run(),
        Output::Logged => {
            let logs = work.join("logs");
            std::fs::create_dir_all(&logs)
                .with_context(|| format!("creating {}", logs.display()))?;
            let log = logs.join(format!("{target}.log"));
            let result = cmd.run_logged(&log);
            report_log(&log, result.is_ok());
            result
        }
    };
    if let Err(err) = result {
        eprintln!("xtask fuzz: {err}");
        let inputs = new_artifacts(
            &ws.root.join("fuzz").join("artifacts").join(target),
            started,
        );
        for input in &inputs {
            let again = fuzz_cargo(ws, "run").arg(target).arg(input);
            eprintln!(
                "xtask fuzz: crash input {}\n  reproduce: {}",
                input.display(),
                again.shown()
            );
        }
        return Err(FuzzError::Failed {
            target: target.to_owned(),
            inputs,
        }
        .into());
    }
    Ok(())
}

/// Prints libFuzzer's closing summary, or what went wrong when the run failed.
fn report_log(log: &Path, ok: bool) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if ok {
        match summary_line(&text) {
            Some(line) => println!("    {line}"),
            None => println!("    (no libFuzzer summary in {})", log.display()),
        }
        return;
    }
    eprintln!("---- from {} ----", log.display());
    for line in failure_excerpt(&text) {
        eprintln!("{line}");
    }
    // The input itself, for a CI run whose artifacts directory is gone afterwards.
    for line in text.lines().filter(|l| l.starts_with("Base64: ")) {
        eprintln!("crash input as {line}");
    }
    eprintln!("---- (full output in {}) ----", log.display());
}

/// The start of the crash report (the panic message or sanitizer error and the first
/// frames), or the end of the log when there is none (a build or start-up failure).
fn failure_excerpt(log: &str) -> Vec<&str> {
    const MARKERS: &[&str] = &["panicked at", "ERROR: libFuzzer", "ERROR: AddressSanitizer"];
    let lines: Vec<&str> = log.lines().collect();
    let range = match lines
        .iter()
        .position(|line| MARKERS.iter().any(|m| line.contains(m)))
    {
        Some(start) => start..lines.len().min(start + EXCERPT_LINES),
        None => lines.len().saturating_sub(EXCERPT_LINES)..lines.len(),
    };
    lines[range].to_vec()
}

/// libFuzzer's last status line: `#runs DONE cov: … exec/s: … rss: …`.
fn summary_line(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find(|line| {
            let mut words = line.split_whitespace();
            words.nth(1) == Some("DONE") && words.next() == Some("cov:")
        })
        .map(str::trim)
}

/// Files libFuzzer wrote into `dir` (crash-, timeout-, oom-, leak-…) since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The `[[bin]]` names of the fuzz project's manifest.
#[cfg(test)]
fn declared_targets(cargo_toml: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_owned());
        }
    }
    names
}

/// `(name, version)` of every package in a `Cargo.lock`.
#[cfg(test)]
fn locked_versions(lock: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        let quoted = |key: &str| {
            line.strip_prefix(key)
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        if line == "[[package]]" {
            name = None;
        } else if let Some(n) = quoted("name = ") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (quoted("version = "), name.take()) {
            out.push((n, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_parse_and_reject() {
        assert_eq!(seconds_from_env(None).ok(), Some(DEFAULT_SECONDS));
        assert_eq!(seconds_from_env(Some("")).ok(), Some(DEFAULT_SECONDS));
        assert_eq!(seconds_from_env(Some(" 5 ")).ok(), Some(5));
        assert_eq!(seconds_from_env(Some("0")).ok(), Some(0));
        assert!(seconds_from_env(Some("30s")).is_err());
        assert!(seconds_from_env(Some("-1")).is_err());
    }

    #[test]
    fn libfuzzer_is_bounded_in_time_and_memory() {
        assert_eq!(
            libfuzzer_args(30),
            ["-max_total_time=30", "-rss_limit_mb=2048", "-timeout=10"]
        );
    }

    #[test]
    fn one_target_builds_alone_several_build_together() {
        assert_eq!(targets_to_build(&["route"]), ["route"]);
        assert!(targets_to_build(TARGETS).is_empty());
    }

    #[test]
    fn summary_is_the_last_done_line() {
        let log = "#2 INITED cov: 5 ft: 5\n#900\tDONE   cov: 862 ft: 1710 exec/s: 30\n\
                   Done 900 runs in 31 second(s)\n";
        assert_eq!(
            summary_line(log),
            Some("#900\tDONE   cov: 862 ft: 1710 exec/s: 30")
        );
        assert_eq!(
            summary_line("==1== ERROR: libFuzzer: deadly signal\n"),
            None
        );
    }

    #[test]
    fn failure_excerpt_starts_at_the_panic() {
        let mut log = String::from("INFO: Seed: 1\n#2 INITED cov: 5\n");
        log.push_str("thread '<unnamed>' panicked at fuzz_targets/route.rs:9:5:\nboom\n");
        log.push_str(&"frame\n".repeat(100));
        let excerpt = failure_excerpt(&log);
        assert_eq!(excerpt.len(), EXCERPT_LINES);
        assert!(excerpt[0].contains("panicked at"));
        assert_eq!(excerpt[1], "boom");
        // No crash report (a build error): the end of the log.
        let build = "a\nb\nerror: could not compile\n";
        assert_eq!(
            failure_excerpt(build),
            ["a", "b", "error: could not compile"]
        );
    }

    #[test]
    fn only_artifacts_written_since_the_start_are_reported() {
        let dir = std::env::temp_dir().join(format!("loupe-xtask-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let old = dir.join("crash-old");
        std::fs::write(&old, b"x").unwrap_or_else(|e| panic!("{e}"));
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(new_artifacts(&dir, later).is_empty());
        let earlier = SystemTime::UNIX_EPOCH;
        assert_eq!(new_artifacts(&dir, earlier), [old]);
        assert!(new_artifacts(&dir.join("missing"), earlier).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn targets_match_the_fuzz_project() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("fuzz");
        let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
        assert_eq!(declared_targets(&toml), TARGETS);
        for target in TARGETS {
            let source = root.join("fuzz_targets").join(format!("{target}.rs"));
            assert!(source.is_file(), "{}", source.display());
            let seeds = std::fs::read_dir(root.join("corpus").join(target))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "no seeds for {target}");
        }
    }

    #[test]
    fn fuzz_lock_pins_the_versions_the_agent_ships_with() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let main = locked_versions(&read(&root.join("Cargo.lock")));
        let fuzz = locked_versions(&read(&root.join("fuzz").join("Cargo.lock")));
        assert!(main.len() > 50 && fuzz.len() > 50, "lock files not read");
        let drifted: Vec<_> = fuzz
            .iter()
            .filter(|(name, _)| main.iter().any(|(n, _)| n == name))
            .filter(|entry| !main.contains(entry))
            .collect();
        assert!(
            drifted.is_empty(),
            "fuzz/Cargo.lock differs from Cargo.lock in {drifted:?}; resync with \
             `cp Cargo.lock fuzz/Cargo.lock && cargo metadata --manifest-path fuzz/Cargo.toml \
             --format-version 1 >/dev/null`"
        );
    }

    #[test]
    fn locked_versions_pairs_names_with_versions() {
        let lock = "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n\
                    source = \"x\"\n\n[[package]]\nname = \"b\"\nversion = \"0.2.1\"\n";
        let pairs = locked_versions(lock);
        assert_eq!(
            pairs,
            [
                ("a".to_owned(), "1.0.0".to_owned()),
                ("b".to_owned(), "0.2.1".to_owned())
            ]
        );
    }

    #[test]
    fn declared_targets_reads_only_bin_names() {
        let toml = "[package]\nname = \"loupe-fuzz\"\n[[bin]]\nname = \"a\"\npath = \"x\"\n\
                    [dependencies]\nname = \"no\"\n[[bin]]\nname=\"b\"\n";
        assert_eq!(declared_targets(toml), ["a", "b"]);
    }
}
