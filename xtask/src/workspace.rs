//! Where the workspace and its build output are, so commands work from any directory and
//! with any `CARGO_TARGET_DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd::Cmd;

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        // `cargo run` sets the manifest dir at run time; the compile-time one is the fallback
        // for a binary started by hand.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir
            .parent()
            .context("the xtask crate has no parent directory")?
            .to_path_buf();
        let target_dir = Cmd::new("cargo")
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(&root)
            .probe()
            .and_then(|json| target_dir_from_metadata(&json))
            .unwrap_or_else(|| fallback_target_dir(&root));
        Ok(Self { root, target_dir })
    }

    /// A cargo command that runs in the workspace root.
    pub fn cargo(&self) -> Cmd {
        Cmd::new("cargo").current_dir(&self.root)
    }

    pub fn release_bin(&self, name: &str) -> PathBuf {
        self.target_dir.join("release").join(name)
    }
}

fn target_dir_from_metadata(json: &str) -> Option<PathBuf> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get("target_directory")?.as_str().map(PathBuf::from)
}

fn fallback_target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_comes_from_cargo_metadata() {
        let json = r#"{"packages":[],"target_directory":"/work/target-shared","version":1}"#;
        assert_eq!(
            target_dir_from_metadata(json),
            Some(PathBuf::from("/work/target-shared"))
        );
        assert_eq!(target_dir_from_metadata("{}"), None);
        assert_eq!(target_dir_from_metadata("not json"), None);
    }

    #[test]
    fn the_workspace_root_holds_the_xtask_crate() {
        let ws = Workspace::locate().ok();
        assert!(ws.is_some_and(|ws| ws.root.join("xtask").join("Cargo.toml").is_file()));
    }
}
