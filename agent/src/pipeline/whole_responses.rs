//! Processes whose responses the kernel copies whole (`WHOLE_RESPONSE_TGIDS`): a body
//! buffer the probe left uncopied held more than that body (a chunked body, or the next
//! pipelined response), and the agent lost that much once.

use super::process_marks::MarkedProcesses;
use crate::{probes::TgidSet, telemetry::metrics::Metrics};

pub struct WholeResponses {
    marks: MarkedProcesses,
}

impl WholeResponses {
    pub fn new(set: TgidSet) -> Self {
        Self {
            marks: MarkedProcesses::new(set),
        }
    }

    /// Has the kernel copy `tgid`'s responses whole from now on; counted and logged once
    /// per process.
    pub fn copy_whole(&mut self, tgid: u32, metrics: &Metrics) {
        if !self.marks.mark(tgid) {
            return;
        }
        metrics.response_body_skips_stopped.inc();
        log::warn!(
            "process {tgid}: a response's body buffer that loupe left uncopied held more \
             than that body (a chunked body, or the next pipelined response); its responses \
             are copied whole from now on"
        );
    }

    /// Clears `tgid`'s bit (see [`MarkedProcesses::forget`]).
    pub fn forget(&mut self, tgid: u32) {
        self.marks.forget(tgid);
    }

    /// Clears the bits of marked processes that `alive` says have exited.
    pub fn forget_dead(&mut self, alive: impl Fn(u32) -> bool) {
        self.marks.forget_dead(alive);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_once_per_process() {
        let metrics = Metrics::default();
        let mut whole = WholeResponses::new(TgidSet::anonymous().unwrap());
        whole.copy_whole(4242, &metrics);
        whole.copy_whole(4242, &metrics);
        whole.copy_whole(77, &metrics);
        assert_eq!(metrics.response_body_skips_stopped.get(), 2);
        assert_eq!(whole.marks.tgids(), vec![77, 4242]);
    }
}
