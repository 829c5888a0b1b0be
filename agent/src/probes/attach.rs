//! Which program goes on which tracepoint.

use aya::{
    Ebpf,
    programs::{TracePoint, trace_point::TracePointLink},
};

use super::ProbeError;
use crate::cli::DataProbes;

/// (program, tracepoint category, tracepoint name). A program may appear several times:
/// the data exit program serves every data syscall.
type Attachment = (&'static str, &'static str, &'static str);

/// Everything but the data syscalls.
pub const ATTACHMENTS: &[Attachment] = &[
    ("loupe_accept_exit", "syscalls", "sys_exit_accept"),
    ("loupe_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("loupe_connect_enter", "syscalls", "sys_enter_connect"),
    ("loupe_connect_exit", "syscalls", "sys_exit_connect"),
    ("loupe_close_enter", "syscalls", "sys_enter_close"),
    ("loupe_dup_enter", "syscalls", "sys_enter_dup3"),
    ("loupe_dup_exit", "syscalls", "sys_exit_dup3"),
    ("loupe_process_exec", "sched", "sched_process_exec"),
    ("loupe_process_fork", "sched", "sched_process_fork"),
    ("loupe_thread_exit", "sched", "sched_process_exit"),
];

/// Attached where the kernel has the tracepoint: syscalls some architectures lack
/// (`dup2`), or kernels before 5.9 (`close_range`).
pub const WHERE_PRESENT: &[Attachment] = &[
    ("loupe_dup_enter", "syscalls", "sys_enter_dup2"),
    ("loupe_dup_exit", "syscalls", "sys_exit_dup2"),
    (
        "loupe_close_range_enter",
        "syscalls",
        "sys_enter_close_range",
    ),
];

/// Reads hooked at their return only (`--data-probes exit`).
pub const READS_AT_EXIT: &[Attachment] = &[
    ("loupe_read_exit", "syscalls", "sys_exit_read"),
    ("loupe_read_exit", "syscalls", "sys_exit_recvfrom"),
    ("loupe_readv_exit", "syscalls", "sys_exit_readv"),
    ("loupe_recvmsg_exit", "syscalls", "sys_exit_recvmsg"),
];

/// Reads hooked at entry and return (`--data-probes entry`).
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

/// Writes captured at their return, a client's start read from its socket
/// (`--data-probes exit`).
pub const WRITES_AT_EXIT: &[Attachment] = &[
    ("loupe_write_exit", "syscalls", "sys_exit_write"),
    ("loupe_write_exit", "syscalls", "sys_exit_sendto"),
    ("loupe_writev_exit", "syscalls", "sys_exit_writev"),
    ("loupe_sendmsg_exit", "syscalls", "sys_exit_sendmsg"),
    ("loupe_sendfile_exit", "syscalls", "sys_exit_sendfile64"),
];

/// Writes hooked at entry, arguments saved per thread, and return (`--data-probes entry`).
pub const WRITES_AT_ENTRY_AND_EXIT: &[Attachment] = &[
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
];

/// How one family of data syscalls ended up hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hooks {
    Exit,
    EntryAndExit,
}

impl Hooks {
    pub fn describe(self) -> &'static str {
        match self {
            Hooks::Exit => "at their return",
            Hooks::EntryAndExit => "at entry and return",
        }
    }
}

/// How reads and writes ended up hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHooks {
    pub reads: Hooks,
    pub writes: Hooks,
}

/// What the running kernel's BTF confirmed for the exit-only programs.
#[derive(Debug, Clone, Copy)]
pub struct ExitSupport {
    /// A `pt_regs` layout the exit programs know (reads and writes).
    pub regs: bool,
    /// `tcp_sock`'s clock of its last send, behind its `sock` (writes).
    pub send_clock: bool,
}

/// Loads and attaches every program, the data syscall programs as `mode` says; returns
/// the attachments, which stay until [`detach_all`] or their drop.
pub fn attach_all(
    ebpf: &mut Ebpf,
    mode: DataProbes,
    support: ExitSupport,
) -> Result<(DataHooks, Vec<TracePointLink>), ProbeError> {
    // Load each program before any attach: a verifier failure then names the program and
    // nothing is half-attached.
    load(ebpf, ATTACHMENTS)?;
    load(ebpf, WHERE_PRESENT)?;
    let reads = choose(ebpf, mode, Family::Reads, support.regs)?;
    let writes = choose(
        ebpf,
        mode,
        Family::Writes,
        support.regs && support.send_clock,
    )?;
    let mut all: Vec<Attachment> = ATTACHMENTS.to_vec();
    all.extend(
        WHERE_PRESENT
            .iter()
            .filter(|(_, category, name)| super::tracefs::has_tracepoint(category, name)),
    );
    for (family, hooks) in [(Family::Reads, reads), (Family::Writes, writes)] {
        let list = family.attachments(hooks);
        load(ebpf, list)?;
        all.extend_from_slice(list);
    }
    let mut links = Vec::with_capacity(all.len());
    for (program, category, tracepoint_name) in all {
        let attach_error = |source| ProbeError::Attach {
            program,
            category,
            tracepoint: tracepoint_name,
            source: Box::new(source),
        };
        let tracepoint = tracepoint(ebpf, program)?;
        let id = tracepoint
            .attach(category, tracepoint_name)
            .map_err(attach_error)?;
        links.push(tracepoint.take_link(id).map_err(attach_error)?);
    }
    Ok((DataHooks { reads, writes }, links))
}

/// Detaches every link at once. Each detach waits for the kernel's RCU grace periods,
/// some of which detaches running side by side share (the kernel serialises the rest):
/// the agent's exit after SIGTERM went from 4.0 s to 2.7-3.0 s.
pub fn detach_all(links: Vec<TracePointLink>) {
    std::thread::scope(|scope| {
        for link in links {
            let spawned = std::thread::Builder::new()
                .name("loupe-detach".into())
                .spawn_scoped(scope, move || drop(link));
            // The closure, and the link in it, was dropped unrun: detached on the spot.
            if let Err(err) = spawned {
                log::debug!("detaching without a thread of its own: {err}");
            }
        }
    });
}

#[derive(Debug, Clone, Copy)]
enum Family {
    Reads,
    Writes,
}

impl Family {
    fn attachments(self, hooks: Hooks) -> &'static [Attachment] {
        match (self, hooks) {
            (Family::Reads, Hooks::Exit) => READS_AT_EXIT,
            (Family::Reads, Hooks::EntryAndExit) => READS_AT_ENTRY_AND_EXIT,
            (Family::Writes, Hooks::Exit) => WRITES_AT_EXIT,
            (Family::Writes, Hooks::EntryAndExit) => WRITES_AT_ENTRY_AND_EXIT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Reads => "reads",
            Family::Writes => "writes",
        }
    }
}

/// The hooks `mode` asks for, falling back from exit to entry under `auto` when the BTF
/// did not confirm what the exit programs read (`known`) or the kernel refuses them.
fn choose(
    ebpf: &mut Ebpf,
    mode: DataProbes,
    family: Family,
    known: bool,
) -> Result<Hooks, ProbeError> {
    let name = family.name();
    Ok(match mode {
        DataProbes::Entry => Hooks::EntryAndExit,
        DataProbes::Exit if !known => return Err(ProbeError::ExitUnsupported { family: name }),
        DataProbes::Exit => Hooks::Exit,
        DataProbes::Auto if !known => {
            log::info!(
                "{name} hooked at entry and exit: this kernel's BTF does not show the layout \
                 the exit programs read"
            );
            Hooks::EntryAndExit
        }
        DataProbes::Auto => match load(ebpf, family.attachments(Hooks::Exit)) {
            Ok(()) => Hooks::Exit,
            Err(err) => {
                log::info!(
                    "{name} hooked at entry and exit: the kernel refused the exit programs \
                     (bpf_task_pt_regs needs Linux 5.15): {}",
                    first_cause(&err)
                );
                log::debug!("{name} exit programs refused: {err:?}");
                Hooks::EntryAndExit
            }
        },
    })
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
