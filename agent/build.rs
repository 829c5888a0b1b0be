//! Builds the kernel programs (the `loupe-ebpf` crate) for the BPF target with nightly
//! and bpf-linker, and leaves the object where `include_bytes_aligned!` finds it.
//! `cargo xtask setup` installs what this needs.
//!
//! With `AYA_BUILD_SKIP=1` (unit tests of userspace code, fuzzing) an empty object is left
//! instead; such a binary refuses to start tracing with a clear error.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v != "0" && !v.is_empty()) {
        let out_dir = std::env::var("OUT_DIR")?;
        let object = std::path::Path::new(&out_dir).join("loupe");
        if !object.exists() {
            std::fs::write(&object, [])?;
        }
        println!("cargo:warning=AYA_BUILD_SKIP set: built without kernel programs");
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "loupe-ebpf",
            root_dir: "../ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
