//! Reading syscall tracepoint arguments.
//!
//! The layout of `syscalls:sys_enter_*` records is fixed by the kernel's syscall
//! tracepoint ABI: an 8-byte common header, the syscall number padded to 8 bytes, then
//! each argument in an 8-byte slot. `sys_exit_*` records hold the return value at 16.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::TracePointContext,
};
use loupe_common::regs_layout;

use crate::maps::config;

const FIRST_ARG: usize = 16;

/// Argument `INDEX` of a `sys_enter_*` record; a constant, as the plain load needs.
#[inline(always)]
pub fn arg<const INDEX: usize>(ctx: &TracePointContext) -> u64 {
    record_field(ctx, FIRST_ARG + INDEX * 8)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // The return value is the first field after the syscall number.
    record_field(ctx, FIRST_ARG) as i64
}

/// The 8-byte field at `offset` of the tracepoint record, by a plain load. The verifier
/// lets tracepoint programs read their record at constant aligned offsets (checked against
/// the record's size at attach); `read_at` would call `bpf_probe_read_kernel`, which on
/// this kind of VM was half of what a program run costs a process loupe does not trace.
#[inline(always)]
fn record_field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: `offset` is a constant inside the record, whose layout is the kernel ABI above.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset).cast::<u64>()) }
}

/// The current thread's `task_struct`, as a BTF-typed pointer: for the programs that only
/// run where `bpf_get_current_task_btf` exists (Linux 5.11), the read and write exits.
/// One helper call gives them the thread's ids and its saved registers, which took two.
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: the helper has no preconditions; the task is alive while it runs this.
        Self(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    /// The `T` at `offset` of the task, by a plain load.
    #[inline(always)]
    fn field<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: the agent checked the offset against the running kernel's BTF, and the
        // verifier checks it again.
        unsafe { core::ptr::read_volatile(self.0.add(offset).cast::<T>()) }
    }

    /// `tgid << 32 | pid`, as `bpf_get_current_pid_tgid` gives it.
    #[inline(always)]
    pub fn pid_tgid(&self) -> u64 {
        // A constant to the verifier (read-only data), so the loads below are checked
        // against `task_struct` and run as plain loads.
        let offset = config().offsets.task_pid as usize;
        if offset == 0 {
            return bpf_get_current_pid_tgid();
        }
        // The agent checked that `tgid` follows `pid`; the verifier allows no load that
        // spans two fields, so two loads.
        let pid: u32 = self.field(offset);
        let tgid: u32 = self.field(offset + 4);
        ((tgid as u64) << 32) | pid as u64
    }

    /// The first three arguments of the current syscall, read at its exit from the
    /// registers saved at entry (the kernel does not change them, bar the return value
    /// register). `layout` is the BTF-checked [`regs_layout`]; `None` when it is unknown.
    ///
    /// Needs `bpf_task_pt_regs` in tracepoint programs (Linux 5.15); where the verifier
    /// refuses it, the agent falls back to entry programs for reads.
    #[inline(always)]
    pub fn args_at_exit(&self, layout: u32) -> Option<[u64; 3]> {
        // SAFETY: the task is the current one, alive while it runs this.
        let regs = unsafe { bpf_task_pt_regs(self.0 as *mut _) } as *const u8;
        // Plain loads, not bpf_probe_read_kernel: the helper returns a BTF-typed pointer, so
        // the verifier checks each constant offset against `struct pt_regs` and lets the
        // load through as a direct read. Both layouts' branches are verified on every
        // kernel, so a plain load must fit in both structs (x86_64's is 168 bytes); arm64's
        // orig_x0 beyond that is read with the helper.
        let at = |offset: u32| {
            // SAFETY: `offset` is one of the layout's fixed register offsets, inside pt_regs.
            unsafe { core::ptr::read_volatile(regs.add(offset as usize).cast::<u64>()) }
        };
        if layout == regs_layout::X86_64 {
            Some([
                at(regs_layout::X86_64_DI),
                at(regs_layout::X86_64_SI),
                at(regs_layout::X86_64_DX),
            ])
        } else if layout == regs_layout::ARM64 {
            Some([
                read_kernel::<u64>(regs as u64 + regs_layout::ARM64_ORIG_X0 as u64)?,
                at(regs_layout::ARM64_REGS + 8),
                at(regs_layout::ARM64_REGS + 16),
            ])
        } else {
            None
        }
    }
}

#[inline(always)]
fn read_kernel<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses and reports them as errors.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}
