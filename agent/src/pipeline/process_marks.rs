//! Sets of processes the pipeline marks for the kernel's data probes, each a bitmap the
//! probes read (see `probes::TgidSet`), and the marks' bookkeeping: what was marked, so
//! that the bits of exited processes are cleared and a later process with the same tgid
//! starts unmarked.

use crate::probes::TgidSet;

pub struct MarkedProcesses {
    set: TgidSet,
    marked: Vec<u32>,
}

impl MarkedProcesses {
    pub fn new(set: TgidSet) -> Self {
        Self {
            set,
            marked: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn contains(&self, tgid: u32) -> bool {
        self.set.contains(tgid)
    }

    /// Marks `tgid`; true when it was not marked before.
    pub fn mark(&mut self, tgid: u32) -> bool {
        if self.set.contains(tgid) || !self.set.insert(tgid) {
            return false;
        }
        self.marked.push(tgid);
        true
    }

    /// Clears `tgid`'s bit when it was marked: it exited, another process took its pid
    /// over, or it runs another program.
    pub fn forget(&mut self, tgid: u32) {
        if let Some(at) = self.marked.iter().position(|&t| t == tgid) {
            self.marked.swap_remove(at);
            self.set.remove(tgid);
        }
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

    #[cfg(test)]
    pub fn tgids(&self) -> Vec<u32> {
        self.set.tgids()
    }

    #[cfg(test)]
    pub fn marked(&self) -> &[u32] {
        &self.marked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_once_per_process_and_cleared_when_it_exits() {
        let mut marks = MarkedProcesses::new(TgidSet::anonymous().unwrap());
        assert!(marks.mark(4242));
        assert!(!marks.mark(4242), "marked once");
        assert!(marks.mark(77));
        assert_eq!(marks.tgids(), vec![77, 4242]);
        marks.forget_dead(|tgid| tgid != 4242);
        assert_eq!(marks.tgids(), vec![77]);
        assert_eq!(marks.marked(), &[77]);
        assert!(!marks.contains(4242));
        // A later process with the reused tgid is marked afresh when it needs to be.
        assert!(marks.mark(4242));
        // Beyond the bitmap: not marked, and not remembered.
        assert!(!marks.mark(u32::MAX));
        assert_eq!(marks.marked(), &[77, 4242]);
        // One process forgotten (an exec, a pid taken over); an unmarked one is no matter.
        marks.forget(77);
        marks.forget(5);
        assert_eq!(marks.tgids(), vec![4242]);
        assert_eq!(marks.marked(), &[4242]);
    }
}
