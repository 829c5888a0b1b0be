//! Data records: their header, and the small records written straight into the ring.

use aya_ebpf::helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_user};
use loupe_common::{
    DataEventHeader, EventKind, PendingCall, SMALL_CAPTURE, SmallDataEvent, counter,
};

use crate::{
    emit::RingLevel,
    maps::{EVENTS, count},
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
    let Some(mut slot) = EVENTS.reserve::<SmallDataEvent>(0) else {
        count(counter::RINGBUF_DROPS);
        return;
    };
    let record = slot.as_mut_ptr();
    // black_box: LLVM can prove the clamp redundant and drop it, and the verifier cannot.
    let want = core::hint::black_box(want as usize) & (SMALL_CAPTURE * 2 - 1);
    let want = if want > SMALL_CAPTURE {
        SMALL_CAPTURE
    } else {
        want
    };
    let mut captured = 0;
    if want > 0 {
        // SAFETY: the slot's data holds SMALL_CAPTURE bytes and `want` is at most that; the
        // helper checks the user address itself.
        let rc = unsafe {
            bpf_probe_read_user(
                (*record).data.as_mut_ptr().cast(),
                want as u32,
                call.ptr as *const _,
            )
        };
        if rc == 0 {
            captured = want;
        } else {
            count(counter::READ_FAILURES);
        }
    }
    // SAFETY: the helper has no preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the slot is this program's until it is submitted.
    unsafe { (*record).header = header(pid_tgid, call, dir, 0, moved, captured, end_ns) };
    slot.submit(RingLevel::now().wakeup_flag_reserved(size_of::<SmallDataEvent>()));
}
