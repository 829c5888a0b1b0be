//! Sets of processes shared with the kernel: one bit per tgid in an array map the agent
//! maps into its own memory. `TRACED_TGIDS` holds the traced processes,
//! `WHOLE_RESPONSE_TGIDS` those whose responses are copied whole, `EVENT_LOOP_TGIDS`
//! those whose uncaptured calls are still reported ([`ProcessMarks`]).
//!
//! The kernel programs set bits of the traced set too (children of traced processes,
//! programs exec'd under a selected name) with atomic adds, so the agent changes bits only
//! with atomic operations on the shared words; a map update syscall would rewrite a whole
//! word and could undo a bit the kernel just set.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::Map;
use loupe_common::TGID_WORDS;

use super::{ProbeError, shared_words::SharedWords};

pub struct TgidSet {
    words: SharedWords,
}

/// The sets the pipeline marks processes in for the data probes.
pub struct ProcessMarks {
    /// Processes whose responses the probes copy whole.
    pub whole_responses: TgidSet,
    /// Processes that serve several requests on one thread, whose calls on connections
    /// the probes stopped capturing are still reported, without bytes.
    pub event_loops: TgidSet,
}

impl ProcessMarks {
    /// Sets in anonymous memory (see [`TgidSet::anonymous`]).
    pub fn anonymous() -> std::io::Result<Self> {
        Ok(Self {
            whole_responses: TgidSet::anonymous()?,
            event_loops: TgidSet::anonymous()?,
        })
    }
}

impl TgidSet {
    /// Maps the bitmap `name`.
    pub fn new(map: Map, name: &'static str) -> Result<Self, ProbeError> {
        Ok(Self {
            words: SharedWords::new(map, name, TGID_WORDS as usize)?,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        self.words.words()
    }

    /// Adds `tgid`; false when it is beyond the bitmap (larger than PID_MAX_LIMIT).
    pub fn insert(&self, tgid: u32) -> bool {
        let Some(word) = self.words().get((tgid / 64) as usize) else {
            return false;
        };
        word.fetch_or(1 << (tgid % 64), Ordering::Relaxed);
        true
    }

    /// A set in anonymous memory, standing in for a map where no kernel programs run
    /// (unit tests, the replay).
    pub fn anonymous() -> std::io::Result<Self> {
        Ok(Self {
            words: SharedWords::anonymous(TGID_WORDS as usize)?,
        })
    }

    pub fn contains(&self, tgid: u32) -> bool {
        self.words()
            .get((tgid / 64) as usize)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (tgid % 64)) != 0)
    }

    pub fn remove(&self, tgid: u32) {
        if let Some(word) = self.words().get((tgid / 64) as usize) {
            word.fetch_and(!(1 << (tgid % 64)), Ordering::Relaxed);
        }
    }

    /// Every tgid in the set, in order.
    pub fn tgids(&self) -> Vec<u32> {
        let mut found = Vec::new();
        for (i, word) in self.words().iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                found.push(i as u32 * 64 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_set_and_cleared_per_tgid() {
        let set = TgidSet::anonymous().unwrap();
        assert!(set.tgids().is_empty());
        for tgid in [0, 1, 63, 64, 1000, 4_194_303] {
            assert!(set.insert(tgid), "{tgid}");
        }
        assert!(set.insert(1000), "setting twice is harmless");
        assert_eq!(set.tgids(), vec![0, 1, 63, 64, 1000, 4_194_303]);
        set.remove(64);
        set.remove(5);
        assert_eq!(set.tgids(), vec![0, 1, 63, 1000, 4_194_303]);
        assert!(set.contains(63) && set.contains(4_194_303));
        assert!(!set.contains(64) && !set.contains(62) && !set.contains(u32::MAX));
        // Past PID_MAX_LIMIT: refused, nothing else touched.
        assert!(!set.insert(4_194_304));
        set.remove(u32::MAX);
        assert_eq!(set.tgids().len(), 5);
    }

    #[test]
    fn kernel_style_adds_and_agent_bits_share_words() {
        let set = TgidSet::anonymous().unwrap();
        set.insert(130);
        // What the kernel programs do for a child: add the bit when it is clear.
        let word = &set.words()[2];
        let bit = 1u64 << (131 % 64);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_add(bit, Ordering::Relaxed);
        }
        assert_eq!(set.tgids(), vec![130, 131]);
    }
}
