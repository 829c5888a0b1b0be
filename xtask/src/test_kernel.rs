//! The older kernel the integration tests boot loupe on (`tests/tests/older_kernels.rs`):
//! Debian 12's cloud kernel, Linux 6.1, taken out of its package into the target directory.
//! Only `cargo xtask test` fetches it; building and running the agent never need it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::Cmd;

/// The package whose current kernel is fetched: Debian 12 keeps it on Linux 6.1.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Where the kernel goes under the target directory; the test looks there too.
pub fn path(target_dir: &Path) -> PathBuf {
    target_dir.join("test-kernel").join("vmlinuz")
}

/// Fetches the kernel unless it is there already; prints one line either way.
pub fn ensure(target_dir: &Path) -> Result<PathBuf> {
    let kernel = path(target_dir);
    if kernel.exists() {
        println!("[ok] test kernel: {}", kernel.display());
        return Ok(kernel);
    }
    let dir = kernel.parent().context("the kernel path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let package = current_package()?;
    println!(
        "[install] test kernel: apt-get download {package}, vmlinuz into {}",
        dir.display()
    );
    Cmd::new("apt-get")
        .args(["download", &package])
        .current_dir(dir)
        .run()?;
    let deb = find_file(dir, &package, ".deb")
        .with_context(|| format!("apt-get download left no {package} package"))?;
    let unpacked = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .run()?;
    let image = find_file(&unpacked.join("boot"), "vmlinuz-", "")
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    // Under another name until whole: only a whole kernel counts as there next time.
    let partial = kernel.with_extension("partial");
    std::fs::copy(&image, &partial)
        .with_context(|| format!("copying {} to {}", image.display(), partial.display()))?;
    std::fs::rename(&partial, &kernel)?;
    std::fs::remove_dir_all(&unpacked)?;
    std::fs::remove_file(&deb)?;
    Ok(kernel)
}

/// The first file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
}

/// The versioned kernel package the metapackage depends on now.
fn current_package() -> Result<String> {
    let depends = || Cmd::new("apt-cache").args(["depends", METAPACKAGE]).probe();
    let depends = match depends() {
        Some(depends) => depends,
        None => {
            // A fresh machine may have no package lists yet.
            Cmd::new("apt-get").arg("update").run()?;
            depends().with_context(|| format!("apt-cache depends {METAPACKAGE} failed"))?
        }
    };
    match package_from_depends(&depends) {
        Some(package) => Ok(package),
        None => bail!("{METAPACKAGE} depends on no linux-image package:\n{depends}"),
    }
}

fn package_from_depends(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends: ")?;
        name.starts_with("linux-image-").then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_package_is_read_from_apt_cache() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            package_from_depends(depends).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(package_from_depends("linux-image-cloud-amd64\n"), None);
        assert_eq!(
            package_from_depends("x\n  Depends: linux-base\n  Recommends: y\n"),
            None
        );
    }
}
