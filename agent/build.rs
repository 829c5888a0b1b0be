//! Builds the kernel programs (the `loupe-ebpf` crate) for the BPF target with nightly
//! and bpf-linker, and leaves the object where `include_bytes_aligned!` finds it.
//! `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "loupe-ebpf",
            root_dir: "../ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
