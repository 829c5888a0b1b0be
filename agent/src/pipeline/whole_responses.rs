//! Processes whose responses the kernel copies whole (`WHOLE_RESPONSE_TGIDS`): a body
//! buffer the probe left uncopied held more than that body (a chunked body, or the next
//! pipelined response), and the agent lost that much once.

use crate::{probes::TgidSet, telemetry::metrics::Metrics};

pub struct WholeResponses {
    set: TgidSet,
    /// The processes marked, so that their bits are cleared when they exit and a later
    /// process with the same tgid gets the saving back.
    marked: Vec<u32>,
}

impl WholeResponses {
    pub fn new(set: TgidSet) -> Self {
        Self {
            set,
            marked: Vec::new(),
        }
    }

    /// Has the kernel copy `tgid`'s responses whole from now on; counted and logged once
    /// per process.
    pub fn copy_whole(&mut self, tgid: u32, metrics: &Metrics) {
        if self.set.contains(tgid) || !self.set.insert(tgid) {
            return;
        }
        self.marked.push(tgid);
        metrics.response_body_skips_stopped.inc();
        log::warn!(
            "process {tgid}: a response's body buffer that loupe left uncopied held more \
             than that body (a chunked body, or the next pipelined response); its responses \
             are copied whole from now on"
        );
    }

    /// Clears the bits of marked processes that `alive` says have exited.
    pub fn forget_dead(&mut self, alive: impl Fn(u32) -> bool) {
        let set = &self.set;
        self.marked.retain(|&tgid| {
            let live = alive(tgid);
            if !live {
                set.remove(tgid);
            }
            live
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_once_per_process_and_cleared_when_it_exits() {
        let metrics = Metrics::default();
        let mut whole = WholeResponses::new(TgidSet::anonymous().unwrap());
        whole.copy_whole(4242, &metrics);
        whole.copy_whole(4242, &metrics);
        whole.copy_whole(77, &metrics);
        assert_eq!(metrics.response_body_skips_stopped.get(), 2);
        assert_eq!(whole.set.tgids(), vec![77, 4242]);
        whole.forget_dead(|tgid| tgid != 4242);
        assert_eq!(whole.set.tgids(), vec![77]);
        assert_eq!(whole.marked, vec![77]);
        // A later process with the reused tgid is marked afresh when it needs to be.
        whole.copy_whole(4242, &metrics);
        assert_eq!(metrics.response_body_skips_stopped.get(), 3);
    }
}
