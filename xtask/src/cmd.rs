//! Running external programs: one place that echoes what runs, so a CI log shows every
//! command with its arguments, and that turns a failure into an error naming the command.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{cmd}` could not be started: {source}")]
    Spawn { cmd: String, source: io::Error },
    #[error("`{cmd}` failed ({status})")]
    Failed { cmd: String, status: ExitStatus },
}

/// A command and its printable form.
pub struct Cmd {
    inner: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        Self {
            inner: Command::new(program),
            shown: quote(&program.to_string_lossy()),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&quote(&arg.to_string_lossy()));
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets a variable and shows it in front of the command, as a shell would take it.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.shown = format!("{key}={} {}", quote(&value.to_string_lossy()), self.shown);
        self.inner.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.inner.current_dir(dir);
        self
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs with the terminal's stdio; a non-zero exit is an error.
    pub fn run(mut self) -> Result<(), CmdError> {
        let status = self.inner.status().map_err(|source| CmdError::Spawn {
            cmd: self.shown.clone(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(CmdError::Failed {
                cmd: self.shown,
                status,
            })
        }
    }

    /// Runs with stdout and stderr written to `log` (created or truncated); a non-zero exit
    /// is an error.
    pub fn run_logged(mut self, log: &Path) -> Result<(), CmdError> {
        let spawn_error = |source| CmdError::Spawn {
            cmd: self.shown.clone(),
            source,
        };
        let file = std::fs::File::create(log).map_err(spawn_error)?;
        let stderr = file.try_clone().map_err(spawn_error)?;
        self.inner.stdout(file).stderr(stderr);
        self.run()
    }

    /// Runs quietly and returns stdout when the program exists and succeeds: for probes
    /// whose failure only means "not there".
    pub fn probe(mut self) -> Option<String> {
        let out = self
            .inner
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if out.status.success() {
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            None
        }
    }
}

/// Quotes a word for display the way a POSIX shell would need it.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%^".contains(c));
    if plain {
        return word.to_owned();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Joins words for display.
pub fn quote_all<S: AsRef<str>>(words: &[S]) -> String {
    let mut out = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{}", quote(w.as_ref()));
    }
    out
}

/// Whether this process runs as root, which installing Debian packages needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `name` found on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_and_wraps_the_rest() {
        assert_eq!(quote("--features"), "--features");
        assert_eq!(quote("^0.13"), "^0.13");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(
            quote_all(&["cargo", "test", "--", "x y"]),
            "cargo test -- 'x y'"
        );
    }

    #[test]
    fn shown_form_includes_env_and_args() {
        let cmd = Cmd::new("cargo")
            .args(["install", "bpf-linker"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        assert_eq!(
            cmd.shown(),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker"
        );
    }

    #[test]
    fn a_failing_command_names_itself() {
        let err = Cmd::new("false").run().err();
        assert!(matches!(err, Some(CmdError::Failed { ref cmd, .. }) if cmd == "false"));
        let err = Cmd::new("/nonexistent/loupe-xtask-test").run().err();
        assert!(matches!(err, Some(CmdError::Spawn { .. })));
        assert_eq!(Cmd::new("true").probe().as_deref(), Some(""));
        assert_eq!(Cmd::new("false").probe(), None);
    }
}
