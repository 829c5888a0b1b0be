//! An array map's values mapped into the agent's memory (`BPF_F_MMAPABLE`), as words that
//! the agent and the kernel programs both change, so only through atomics.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::AtomicU64,
};

use aya::maps::{Map, MapData};

use super::ProbeError;

pub struct SharedWords {
    words: NonNull<AtomicU64>,
    len: usize,
    /// Keeps the map, and so the mapping's backing, alive (`None` in unit tests).
    _map: Option<MapData>,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for SharedWords {}

impl SharedWords {
    /// Maps the first `len` words of the array map `name`.
    pub fn new(map: Map, name: &'static str, len: usize) -> Result<Self, ProbeError> {
        let err = |detail: String| ProbeError::Map { map: name, detail };
        let Map::Array(data) = map else {
            return Err(err("not an array map".into()));
        };
        let words = map_shared(data.fd().as_fd().as_raw_fd(), libc::MAP_SHARED, len)
            .map_err(|e| err(format!("mapping it into memory failed: {e}")))?;
        Ok(Self {
            words,
            len,
            _map: Some(data),
        })
    }

    /// `len` zeroed words of anonymous shared memory, standing in for a map where no
    /// kernel programs run (unit tests, the replay).
    pub fn anonymous(len: usize) -> std::io::Result<Self> {
        Ok(Self {
            words: map_shared(-1, libc::MAP_SHARED | libc::MAP_ANONYMOUS, len)?,
            len,
            _map: None,
        })
    }

    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` u64s, mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.len) }
    }
}

/// Maps `len` words from `fd` (-1 with MAP_ANONYMOUS), read and write.
fn map_shared(fd: i32, flags: i32, len: usize) -> std::io::Result<NonNull<AtomicU64>> {
    // SAFETY: a fresh mapping; it stays valid until unmapped in Drop.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len * 8,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mapped at address 0"))
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.len * 8) };
    }
}
