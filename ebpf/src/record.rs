//! Data records: their header, and the small records written straight into the ring.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_probe_read_user, generated},
    maps::ring_buf::RingBufEntry,
};
use loupe_common::{
    DataEventHeader, EventKind, PendingCall, SMALL_CAPTURE, SmallDataEvent, counter, data_flags,
    direction,
};

use crate::{
    emit::{reserve, submit},
    maps::count,
    response_head::heads_a_body,
};

/// The header of the record of `call`, which moved `moved` bytes and ended at `end_ns`,
/// carrying `captured` of them.
#[inline(always)]
pub fn header(
    pid_tgid: u64,
    call: &PendingCall,
    dir: u8,
    flags: u8,
    moved: i64,
    captured: usize,
    end_ns: u64,
) -> DataEventHeader {
    DataEventHeader {
        kind: EventKind::Data as u8,
        direction: dir,
        flags,
        _pad: 0,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: call.fd,
        conn_id: call.conn_id,
        start_ns: if call.start_ns == 0 {
            end_ns
        } else {
            call.start_ns
        },
        end_ns,
        total_len: moved as u64,
        captured_len: captured as u32,
        _pad2: 0,
    }
}

/// Writes the record of a plain read or write (one buffer at `call.ptr`) whose capture,
/// `want` bytes, fits a [`SmallDataEvent`]: the bytes go from the process straight into a
/// reserved ring-buffer slot, without the per-CPU scratch event and the copy out of it.
/// A full ring refuses the slot before anything is copied, and the record is counted as
/// dropped.
#[inline(always)]
pub fn write_small(pid_tgid: u64, call: &PendingCall, dir: u8, moved: i64, want: u64) {
    let Some(mut slot) = reserve::<SmallDataEvent>() else {
        return;
    };
    let mut captured = 0;
    if want > 0 {
        match copy_from_user(&mut slot, want, call.ptr) {
            Some(copied) => captured = copied,
            None => count(counter::READ_FAILURES),
        }
    }
    submit_small(slot, |end_ns| {
        header(pid_tgid, call, dir, 0, moved, captured, end_ns)
    });
}

/// Writes the record of a call on a connection the agent stopped capturing
/// ([`data_flags::UNCAPTURED`]): its header alone.
#[inline(always)]
pub fn write_uncaptured(pid_tgid: u64, call: &PendingCall, dir: u8, moved: i64) {
    let Some(mut slot) = reserve::<DataEventHeader>() else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let end_ns = unsafe { generated::bpf_ktime_get_ns() };
    let flags = data_flags::UNCAPTURED;
    // SAFETY: the slot is this program's until it is submitted.
    unsafe { *slot.as_mut_ptr() = header(pid_tgid, call, dir, flags, moved, 0, end_ns) };
    submit(slot);
}

/// Writes the record of a server's response sent as exactly two buffers, a whole head of
/// at most [`SMALL_CAPTURE`] bytes and then its body (nginx's `writev`), in place: the
/// head goes into a reserved slot and the body is counted, not copied (see `copy_iov` for
/// why that is safe and what happens when the second buffer held more). `want` is the
/// capture limit for the call. False, with nothing written, when the call is not that:
/// the caller then assembles the record in the scratch event as for any other call.
#[inline(always)]
pub fn write_head_only(
    pid_tgid: u64,
    call: &PendingCall,
    moved: i64,
    want: u64,
    iov: u64,
    iovcnt: u64,
) -> bool {
    if iovcnt != 2 {
        return false;
    }
    // SAFETY: the helper checks the user address itself.
    let Ok([[head_ptr, head_len], _]) =
        (unsafe { bpf_probe_read_user(iov as *const [[u64; 2]; 2]) })
    else {
        return false;
    };
    if head_len == 0 || head_len > want || head_len > SMALL_CAPTURE as u64 {
        return false;
    }
    let Some(mut slot) = reserve::<SmallDataEvent>() else {
        return true;
    };
    let copied = copy_from_user(&mut slot, head_len, head_ptr);
    // SAFETY: the slot is this program's until it is submitted or discarded.
    let Some(len) = copied.filter(|&len| heads_a_body(unsafe { &(*slot.as_mut_ptr()).data }, len))
    else {
        slot.discard(BPF_RB_NO_WAKEUP as u64);
        return false;
    };
    count(counter::RESPONSE_BODIES_SKIPPED);
    let flags = data_flags::BODY_SKIPPED;
    submit_small(slot, |end_ns| {
        header(pid_tgid, call, direction::EGRESS, flags, moved, len, end_ns)
    });
    true
}

/// Copies `len` bytes, at most [`SMALL_CAPTURE`], from the process at `from` into the
/// slot's data: how many, or `None` when the process's memory could not be read.
#[inline(always)]
fn copy_from_user(slot: &mut RingBufEntry<SmallDataEvent>, len: u64, from: u64) -> Option<usize> {
    let len = bounded_small(len);
    let record = slot.as_mut_ptr();
    // SAFETY: the slot's data holds SMALL_CAPTURE bytes and `len` is at most that; the
    // helper checks the user address itself.
    let rc = unsafe {
        generated::bpf_probe_read_user(
            (*record).data.as_mut_ptr().cast(),
            len as u32,
            from as *const _,
        )
    };
    (rc == 0).then_some(len)
}

/// Ends the record now: writes the slot's header, which `header_at` makes from the end
/// time, and hands the record to the agent.
#[inline(always)]
fn submit_small(
    mut slot: RingBufEntry<SmallDataEvent>,
    header_at: impl FnOnce(u64) -> DataEventHeader,
) {
    // SAFETY: the helper has no preconditions.
    let end_ns = unsafe { generated::bpf_ktime_get_ns() };
    // SAFETY: the slot is this program's until it is submitted.
    unsafe { (*slot.as_mut_ptr()).header = header_at(end_ns) };
    submit(slot);
}

/// Clamps a length to [`SMALL_CAPTURE`] in a form the verifier tracks.
#[inline(always)]
fn bounded_small(len: u64) -> usize {
    // The cut comes first, so the mask cannot shrink a longer length; black_box: LLVM can
    // prove the mask and the clamp redundant after it and drop them, and the verifier
    // cannot.
    let len =
        core::hint::black_box(len.min(SMALL_CAPTURE as u64) as usize) & (SMALL_CAPTURE * 2 - 1);
    if len > SMALL_CAPTURE {
        SMALL_CAPTURE
    } else {
        len
    }
}
