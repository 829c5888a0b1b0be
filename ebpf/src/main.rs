//! loupe's kernel programs.
//!
//! Syscall tracepoints are the baseline hook: they exist on every kernel loupe supports,
//! including kernels built without kprobes. Each data syscall is seen once, at its exit,
//! where the kernel lets the program read the registers saved at entry (Linux 5.15), else
//! twice, at entry (arguments saved per thread) and at exit; only TCP sockets of selected
//! processes ever produce an event.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(
    target_arch = "bpf",
    allow(internal_features),
    feature(core_intrinsics)
)]

mod connection;
mod context;
mod data;
mod emit;
mod filter;
mod head;
mod inject;
mod maps;
mod pending;
mod process;
mod record;
mod response_head;
mod socket;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; it exists only to link.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
