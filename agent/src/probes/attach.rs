//! Which program goes on which tracepoint.

use aya::{Ebpf, programs::TracePoint};

use super::ProbeError;
use crate::cli::ReadProbes;

/// (program, tracepoint category, tracepoint name). A program may appear several times:
/// the data exit program serves every data syscall.
type Attachment = (&'static str, &'static str, &'static str);

/// Everything but the reads.
pub const ATTACHMENTS: &[Attachment] = &[
    ("loupe_accept_exit", "syscalls", "sys_exit_accept"),
    ("loupe_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("loupe_connect_enter", "syscalls", "sys_enter_connect"),
    ("loupe_connect_exit", "syscalls", "sys_exit_connect"),
    ("loupe_close_enter", "syscalls", "sys_enter_close"),
    ("loupe_write_enter", "syscalls", "sys_enter_write"),
    ("loupe_sendto_enter", "syscalls", "sys_enter_sendto"),
    ("loupe_writev_enter", "syscalls", "sys_enter_writev"),
    ("loupe_sendmsg_enter", "syscalls", "sys_enter_sendmsg"),
    ("loupe_sendfile_enter", "syscalls", "sys_enter_sendfile64"),
    ("loupe_data_exit", "syscalls", "sys_exit_write"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendto"),
    ("loupe_data_exit", "syscalls", "sys_exit_writev"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendmsg"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendfile64"),
    ("loupe_process_exec", "sched", "sched_process_exec"),
    ("loupe_process_fork", "sched", "sched_process_fork"),
    ("loupe_thread_exit", "sched", "sched_process_exit"),
];

/// Reads hooked at their return only (`--read-probes exit`).
pub const READS_AT_EXIT: &[Attachment] = &[
    ("loupe_read_exit", "syscalls", "sys_exit_read"),
    ("loupe_read_exit", "syscalls", "sys_exit_recvfrom"),
    ("loupe_readv_exit", "syscalls", "sys_exit_readv"),
    ("loupe_recvmsg_exit", "syscalls", "sys_exit_recvmsg"),
];

/// Reads hooked at entry and return (`--read-probes entry`).
pub const READS_AT_ENTRY_AND_EXIT: &[Attachment] = &[
    ("loupe_read_enter", "syscalls", "sys_enter_read"),
    ("loupe_recvfrom_enter", "syscalls", "sys_enter_recvfrom"),
    ("loupe_readv_enter", "syscalls", "sys_enter_readv"),
    ("loupe_recvmsg_enter", "syscalls", "sys_enter_recvmsg"),
    ("loupe_data_exit", "syscalls", "sys_exit_read"),
    ("loupe_data_exit", "syscalls", "sys_exit_recvfrom"),
    ("loupe_data_exit", "syscalls", "sys_exit_readv"),
    ("loupe_data_exit", "syscalls", "sys_exit_recvmsg"),
];

/// Which read programs ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadHooks {
    Exit,
    EntryAndExit,
}

/// Loads and attaches every program, the read programs as `mode` says. `regs_known` is
/// whether the running kernel's BTF confirmed a register layout the read exit programs
/// know.
pub fn attach_all(
    ebpf: &mut Ebpf,
    mode: ReadProbes,
    regs_known: bool,
) -> Result<ReadHooks, ProbeError> {
    // Load each program before any attach: a verifier failure then names the program and
    // nothing is half-attached.
    load(ebpf, ATTACHMENTS)?;
    let hooks = match mode {
        ReadProbes::Entry => ReadHooks::EntryAndExit,
        ReadProbes::Exit if !regs_known => return Err(ProbeError::ReadExitUnsupported),
        ReadProbes::Exit => {
            load(ebpf, READS_AT_EXIT)?;
            ReadHooks::Exit
        }
        ReadProbes::Auto if !regs_known => {
            log::info!(
                "reads hooked at entry and exit: this kernel's BTF shows no pt_regs layout \
                 loupe knows"
            );
            ReadHooks::EntryAndExit
        }
        ReadProbes::Auto => match load(ebpf, READS_AT_EXIT) {
            Ok(()) => ReadHooks::Exit,
            Err(err) => {
                log::info!(
                    "reads hooked at entry and exit: the kernel refused the read exit \
                     programs (bpf_task_pt_regs needs Linux 5.15): {}",
                    first_cause(&err)
                );
                log::debug!("read exit programs refused: {err:?}");
                ReadHooks::EntryAndExit
            }
        },
    };
    let reads = match hooks {
        ReadHooks::Exit => READS_AT_EXIT,
        ReadHooks::EntryAndExit => {
            load(ebpf, READS_AT_ENTRY_AND_EXIT)?;
            READS_AT_ENTRY_AND_EXIT
        }
    };
    for &(program, category, tracepoint_name) in ATTACHMENTS.iter().chain(reads) {
        tracepoint(ebpf, program)?
            .attach(category, tracepoint_name)
            .map_err(|source| ProbeError::Attach {
                program,
                category,
                tracepoint: tracepoint_name,
                source: Box::new(source),
            })?;
    }
    Ok(hooks)
}

/// The innermost error's first line: a verifier log can run to thousands of lines.
fn first_cause(err: &dyn std::error::Error) -> String {
    let mut inner = err;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Loads each program of `attachments` that is not loaded yet.
fn load(ebpf: &mut Ebpf, attachments: &[Attachment]) -> Result<(), ProbeError> {
    for &(program, _, _) in attachments {
        let prog = tracepoint(ebpf, program)?;
        if prog.fd().is_ok() {
            continue;
        }
        prog.load().map_err(|source| ProbeError::Verify {
            program,
            source: Box::new(source),
        })?;
    }
    Ok(())
}

fn tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut TracePoint, ProbeError> {
    ebpf.program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(ProbeError::MissingProgram { program })
}
