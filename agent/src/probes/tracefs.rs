//! Tracepoints are attached through tracefs, which a fresh host may not have mounted.

use std::{ffi::CString, io, path::Path};

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn ensure_mounted() -> io::Result<()> {
    if Path::new(TRACEFS).join("events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    let source = CString::new("nodev")?;
    let target = CString::new(TRACEFS)?;
    let fstype = CString::new("tracefs")?;
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Whether the running kernel has tracepoint `category/event` (syscall tracepoints exist
/// only for the syscalls of the architecture: arm64 has `dup3` but no `dup2`).
pub fn has_tracepoint(category: &str, event: &str) -> bool {
    [TRACEFS, "/sys/kernel/debug/tracing"].iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(event)
            .exists()
    })
}

/// Offset of `field` in the records of tracepoint `category/event`, from its format file.
pub fn field_offset(category: &str, event: &str, field: &str) -> Option<u32> {
    [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            let path = Path::new(root)
                .join("events")
                .join(category)
                .join(event)
                .join("format");
            offset_in_format(&std::fs::read_to_string(path).ok()?, field)
        })
}

/// Parses lines like `field:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;`.
fn offset_in_format(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        if declaration.rsplit(' ').next()? != field {
            return None;
        }
        parts.find_map(|p| p.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::offset_in_format;

    #[test]
    fn finds_field_offsets_in_both_fork_record_layouts() {
        // Linux 6.10 and later: comms as dynamic strings.
        let dynamic = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(offset_in_format(dynamic, "child_pid"), Some(20));
        assert_eq!(offset_in_format(dynamic, "parent_pid"), Some(12));
        // Earlier kernels: fixed 16-byte comms.
        let fixed = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(offset_in_format(fixed, "child_pid"), Some(44));
        assert_eq!(offset_in_format(fixed, "child_comm[16]"), Some(28));
        assert_eq!(offset_in_format(fixed, "missing"), None);
    }
}
