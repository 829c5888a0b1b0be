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
