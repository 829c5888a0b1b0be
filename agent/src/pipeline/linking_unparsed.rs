//! The linker's side of calls on connections loupe does not parse (see `opaque_calls`):
//! what the pipeline reports of them, and what it is told of processes and connections
//! that end.

use loupe_common::ConnKey;

use super::{Linker, NodeRef};
use crate::pipeline::opaque_calls::Answer;

impl Linker {
    /// Thread `tid` wrote (`egress`) or read on connection `key` (`conn_id`), which loupe
    /// does not parse; `hint` as for [`Self::client_start`], given for the connection's
    /// first call. For a read that answered a call the thread wrote, the answer: the
    /// thread's next calls belong to that call's request.
    pub fn on_opaque_call(
        &mut self,
        (key, conn_id): (ConnKey, u64),
        tid: u32,
        egress: bool,
        hint: Option<&NodeRef>,
    ) -> Option<Answer> {
        if egress {
            self.serving.on_opaque_write(key, conn_id, tid, hint);
            None
        } else {
            self.serving.on_opaque_read(key, conn_id, tid)
        }
    }

    /// The connection `key` ended.
    pub fn forget_connection(&mut self, key: &ConnKey) {
        self.serving.forget_opaque(key);
    }

    /// Forgets idle processes that have exited (see [`crate::pipeline::serving::Serving::forget_dead`]).
    pub fn forget_dead(&mut self, alive: impl Fn(u32) -> bool) {
        self.serving.forget_dead(alive);
    }

    /// `tgid` runs another program (see [`crate::pipeline::serving::Serving::forget_program`]).
    pub fn forget_program(&mut self, tgid: u32) {
        self.serving.forget_program(tgid);
    }

    /// Processes newly found to be event loops (see [`crate::pipeline::serving::Serving::take_event_loops`]).
    pub fn take_event_loops(&mut self) -> Option<std::vec::Drain<'_, u32>> {
        self.serving.take_event_loops()
    }
}
