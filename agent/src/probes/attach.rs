//! Which program goes on which tracepoint.

use aya::{Ebpf, programs::TracePoint};

use super::ProbeError;

/// (program, tracepoint category, tracepoint name). A program may appear several times:
/// the data exit program serves every data syscall.
pub const ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("loupe_accept_exit", "syscalls", "sys_exit_accept"),
    ("loupe_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("loupe_connect_enter", "syscalls", "sys_enter_connect"),
    ("loupe_connect_exit", "syscalls", "sys_exit_connect"),
    ("loupe_close_enter", "syscalls", "sys_enter_close"),
    ("loupe_read_enter", "syscalls", "sys_enter_read"),
    ("loupe_recvfrom_enter", "syscalls", "sys_enter_recvfrom"),
    ("loupe_write_enter", "syscalls", "sys_enter_write"),
    ("loupe_sendto_enter", "syscalls", "sys_enter_sendto"),
    ("loupe_readv_enter", "syscalls", "sys_enter_readv"),
    ("loupe_writev_enter", "syscalls", "sys_enter_writev"),
    ("loupe_recvmsg_enter", "syscalls", "sys_enter_recvmsg"),
    ("loupe_sendmsg_enter", "syscalls", "sys_enter_sendmsg"),
    ("loupe_sendfile_enter", "syscalls", "sys_enter_sendfile64"),
    ("loupe_data_exit", "syscalls", "sys_exit_read"),
    ("loupe_data_exit", "syscalls", "sys_exit_recvfrom"),
    ("loupe_data_exit", "syscalls", "sys_exit_write"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendto"),
    ("loupe_data_exit", "syscalls", "sys_exit_readv"),
    ("loupe_data_exit", "syscalls", "sys_exit_writev"),
    ("loupe_data_exit", "syscalls", "sys_exit_recvmsg"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendmsg"),
    ("loupe_data_exit", "syscalls", "sys_exit_sendfile64"),
    ("loupe_process_exec", "sched", "sched_process_exec"),
    ("loupe_process_fork", "sched", "sched_process_fork"),
];

pub fn attach_all(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    // Load each program once before any attach: a verifier failure then names the program
    // and nothing is half-attached.
    let mut loaded: Vec<&str> = Vec::new();
    for &(program, _, _) in ATTACHMENTS {
        if loaded.contains(&program) {
            continue;
        }
        tracepoint(ebpf, program)?
            .load()
            .map_err(|source| ProbeError::Verify {
                program,
                source: Box::new(source),
            })?;
        loaded.push(program);
    }
    for &(program, category, tracepoint_name) in ATTACHMENTS {
        tracepoint(ebpf, program)?
            .attach(category, tracepoint_name)
            .map_err(|source| ProbeError::Attach {
                program,
                category,
                tracepoint: tracepoint_name,
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
