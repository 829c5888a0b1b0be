//! `--inject-traceparent`: the `sock_ops` program on the cgroup v2 root that puts client
//! sockets of traced processes into a socket map, and the `sk_msg` program on that map
//! that adds `traceparent` to their outgoing HTTP/1.x requests.
//!
//! Both are loaded only when injection is on. Detaching is implicit: the links close
//! with the loaded object, and sockets leave the map (and the `sk_msg` path) when it goes.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{ProgramArray, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps, TracePoint},
};
use loupe_common::context_program;

pub const SOCK_OPS_PROGRAM: &str = "loupe_sock_ops";
pub const SK_MSG_PROGRAM: &str = "loupe_inject";
/// Tail-called by the data exit program: learns threads' contexts from requests read.
pub const CONTEXT_PROGRAM: &str = "loupe_data_context";
/// Tail-called by the context program for a read that finishes a request's method whose
/// first letter the previous read took by itself (Go's net/http reads one byte ahead).
pub const CONTINUED_CONTEXT_PROGRAM: &str = "loupe_data_context_continued";
pub const SOCKET_MAP: &str = "INJECT_SOCKETS";
pub const CONTEXT_PROGRAM_MAP: &str = "DATA_CONTEXT";

/// Why injection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("reading /proc/self/mounts to find cgroup v2")]
    Mounts(#[source] io::Error),
    #[error(
        "--inject-traceparent needs cgroup v2 (cgroup2) mounted, and none is: mount it (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or run without --inject-traceparent"
    )]
    NoCgroup2,
    #[error("opening the cgroup v2 root {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel program {program} is missing from the object (build mismatch)")]
    MissingProgram { program: &'static str },
    #[error("kernel map {map} is missing from the object (build mismatch)")]
    MissingMap { map: &'static str },
    #[error("kernel map {map} has the wrong type or could not be written")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("duplicating a kernel object's descriptor")]
    Fd(#[source] io::Error),
    #[error(
        "this kernel does not let sock_ops programs ask which process is connecting \
         (bpf_get_current_pid_tgid, offered to every program type since Linux 6.10): run \
         without --inject-traceparent"
    )]
    NoCurrentTaskInSockOps,
    #[error("the kernel rejected program {program}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to {target}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// Whether a load error's verifier output says the kernel offers this program type no
/// `bpf_get_current_pid_tgid` (helper 14), as sock_ops programs lack it before Linux 6.10.
fn refuses_current_task(load_error: &str) -> bool {
    load_error.contains("unknown func bpf_get_current_pid_tgid#")
}

/// Where injection is attached, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectAttachment {
    pub cgroup: PathBuf,
}

/// Loads and attaches both programs. The `sk_msg` program goes on the map first, so a
/// socket the `sock_ops` program adds is covered from its first write.
pub fn attach(ebpf: &mut Ebpf) -> Result<InjectAttachment, InjectError> {
    let cgroup = cgroup2_root()?;
    if in_private_cgroup_namespace() {
        // The mount then shows this namespace's subtree, not the host's root.
        log::warn!(
            "loupe runs in its own cgroup namespace: --inject-traceparent covers only processes under {} (run with the host's cgroup namespace to cover all)",
            cgroup.display()
        );
    }
    let cgroup_dir = File::open(&cgroup).map_err(|source| InjectError::OpenCgroup {
        path: cgroup.clone(),
        source,
    })?;

    for (slot, name) in [
        (context_program::READ, CONTEXT_PROGRAM),
        (context_program::CONTINUED, CONTINUED_CONTEXT_PROGRAM),
    ] {
        load_context_program(ebpf, slot, name)?;
    }

    let map_fd = {
        let map = ebpf
            .map(SOCKET_MAP)
            .ok_or(InjectError::MissingMap { map: SOCKET_MAP })?;
        let sockets: SockHash<_, u64> =
            SockHash::try_from(map).map_err(|source| InjectError::Map {
                map: SOCKET_MAP,
                source,
            })?;
        sockets.fd().try_clone().map_err(InjectError::Fd)?
    };
    let sk_msg: &mut SkMsg = program(ebpf, SK_MSG_PROGRAM)?;
    sk_msg.load().map_err(|source| InjectError::Verify {
        program: SK_MSG_PROGRAM,
        source: Box::new(source),
    })?;
    log_verified(SK_MSG_PROGRAM, sk_msg.info());
    sk_msg
        .attach(&map_fd)
        .map_err(|source| InjectError::Attach {
            program: SK_MSG_PROGRAM,
            target: format!("socket map {SOCKET_MAP}"),
            source: Box::new(source),
        })?;

    let sock_ops: &mut SockOps = program(ebpf, SOCK_OPS_PROGRAM)?;
    sock_ops.load().map_err(|source| {
        if refuses_current_task(&source.to_string()) {
            InjectError::NoCurrentTaskInSockOps
        } else {
            InjectError::Verify {
                program: SOCK_OPS_PROGRAM,
                source: Box::new(source),
            }
        }
    })?;
    log_verified(SOCK_OPS_PROGRAM, sock_ops.info());
    // The attachment is a bpf_link (kernel 5.7+), which always runs beside other
    // sock_ops programs on the cgroup (a CNI's, say) and takes no mode flags: the kernel
    // rejects AllowMultiple there with EINVAL.
    sock_ops
        .attach(&cgroup_dir, CgroupAttachMode::Single)
        .map_err(|source| InjectError::Attach {
            program: SOCK_OPS_PROGRAM,
            target: format!("cgroup {}", cgroup.display()),
            source: Box::new(source),
        })?;
    Ok(InjectAttachment { cgroup })
}

/// Loads the tracepoint program `name` and puts it in `slot` of the context program array.
fn load_context_program(ebpf: &mut Ebpf, slot: u32, name: &'static str) -> Result<(), InjectError> {
    let context: &mut TracePoint = program(ebpf, name)?;
    context.load().map_err(|source| InjectError::Verify {
        program: name,
        source: Box::new(source),
    })?;
    log_verified(name, context.info());
    let context_fd = context
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|source| InjectError::Verify {
            program: name,
            source: Box::new(source),
        })?;
    let map = ebpf
        .map_mut(CONTEXT_PROGRAM_MAP)
        .ok_or(InjectError::MissingMap {
            map: CONTEXT_PROGRAM_MAP,
        })?;
    let mut programs: ProgramArray<_> =
        ProgramArray::try_from(map).map_err(|source| InjectError::Map {
            map: CONTEXT_PROGRAM_MAP,
            source,
        })?;
    programs
        .set(slot, &context_fd, 0)
        .map_err(|source| InjectError::Map {
            map: CONTEXT_PROGRAM_MAP,
            source,
        })
}

/// How much verifier work a program took: the budget is one million instructions, so
/// this is the number to watch when the scans change.
fn log_verified(
    program: &str,
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) {
    if let Some(count) = info.ok().and_then(|i| i.verified_instruction_count()) {
        log::debug!("{program}: verifier processed {count} instructions");
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, InjectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(InjectError::MissingProgram { program: name })
}

/// True when this process's cgroup namespace is not init's (a container without
/// `cgroupns=host`). Unknown counts as no: nothing to warn about.
fn in_private_cgroup_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/cgroup"),
        std::fs::read_link("/proc/1/ns/cgroup"),
    ) {
        (Ok(own), Ok(init)) => own != init,
        _ => false,
    }
}

/// The cgroup v2 mount point: the root every process's cgroup descends from.
fn cgroup2_root() -> Result<PathBuf, InjectError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(InjectError::Mounts)?;
    cgroup2_mount(&mounts)
        .filter(|path| Path::new(path).is_dir())
        .ok_or(InjectError::NoCgroup2)
}

/// The first cgroup2 mount point in a mounts table (`/proc/self/mounts` format).
fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// Mount tables escape space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal
                .iter()
                .fold(0u32, |acc, &b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_the_current_task_in_sock_ops_gets_its_own_error() {
        // What Linux 6.1 answers to the sock_ops program's load.
        let refused = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                       Verifier output: 0: R1=ctx(off=0,imm=0) R10=fp0\nunknown func \
                       bpf_get_current_pid_tgid#14\nverification time 664 usec";
        assert!(refuses_current_task(refused));
        assert!(!refuses_current_task(
            "Verifier output: unknown func bpf_msg_pop_data#91"
        ));
        assert!(!refuses_current_task("Permission denied (os error 13)"));
        let message = InjectError::NoCurrentTaskInSockOps.to_string();
        assert!(
            message.contains("run without --inject-traceparent"),
            "{message}"
        );
    }

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let mounts = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_a_unified_layout() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_mounted() {
        let mounts = "\
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
none /cgroup2-lookalike tmpfs rw 0 0
";
        assert_eq!(cgroup2_mount(mounts), None);
        assert_eq!(cgroup2_mount(""), None);
        assert_eq!(cgroup2_mount("garbage\n\n  \n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        let mounts = "cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(unescape_mount_path("a\\134b"), "a\\b");
        // Not an escape: kept as is.
        assert_eq!(unescape_mount_path("a\\9zz\\"), "a\\9zz\\");
        assert_eq!(unescape_mount_path("\\777"), "\\777");
    }
}
