//! Reading syscall tracepoint arguments.
//!
//! The layout of `syscalls:sys_enter_*` records is fixed by the kernel's syscall
//! tracepoint ABI: an 8-byte common header, the syscall number padded to 8 bytes, then
//! each argument in an 8-byte slot. `sys_exit_*` records hold the return value at 16.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::TracePointContext,
};
use loupe_common::regs_layout;

const FIRST_ARG: usize = 16;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: reads inside the tracepoint record, whose layout is the kernel ABI above.
    unsafe { ctx.read_at::<u64>(FIRST_ARG + index * 8) }.unwrap_or(0)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: as above; the return value is the first field after the syscall number.
    unsafe { ctx.read_at::<i64>(FIRST_ARG) }.unwrap_or(-1)
}

/// The first three arguments of the current syscall, read at its exit from the registers
/// saved at entry (the kernel does not change them, bar the return value register).
/// `layout` is the BTF-checked [`regs_layout`]; `None` when it is unknown.
///
/// Needs `bpf_task_pt_regs` in tracepoint programs (Linux 5.15); where the verifier
/// refuses it, the agent falls back to entry programs for reads.
#[inline(always)]
pub fn args_at_exit(layout: u32) -> Option<[u64; 3]> {
    // SAFETY: both helpers take the current task, which is alive while it runs this.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if layout == regs_layout::X86_64 {
        // dx, si, di are adjacent: one read.
        let [dx, si, di] = read_kernel::<[u64; 3]>(regs + regs_layout::X86_64_DX as u64)?;
        Some([di, si, dx])
    } else if layout == regs_layout::ARM64 {
        let [_, x1, x2] = read_kernel::<[u64; 3]>(regs + regs_layout::ARM64_REGS as u64)?;
        let x0 = read_kernel::<u64>(regs + regs_layout::ARM64_ORIG_X0 as u64)?;
        Some([x0, x1, x2])
    } else {
        None
    }
}

#[inline(always)]
fn read_kernel<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses and reports them as errors.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}
