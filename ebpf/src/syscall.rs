//! Reading syscall tracepoint arguments.
//!
//! The layout of `syscalls:sys_enter_*` records is fixed by the kernel's syscall
//! tracepoint ABI: an 8-byte common header, the syscall number padded to 8 bytes, then
//! each argument in an 8-byte slot. `sys_exit_*` records hold the return value at 16.

use aya_ebpf::programs::TracePointContext;

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
