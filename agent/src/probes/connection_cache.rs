//! The kernel's connection cache (see [`CachedConnection`]), mapped into the agent so it
//! can empty the slots of processes that died: their fds were closed by the exit, not by
//! close calls the kernel programs see. Pruned with the connection table, by the same
//! rule (see `process::stale_connections`).
//!
//! The kernel programs write slots without locks and check each slot they read against
//! its `check` word, so the agent empties a slot by clearing only that word, atomically.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::Map;
use loupe_common::{CONNECTION_CACHE_SLOTS, CachedConnection, ConnKey};

use super::{ProbeError, shared_words::SharedWords};

const WORDS_PER_SLOT: usize = size_of::<CachedConnection>() / 8;
const WORDS: usize = CONNECTION_CACHE_SLOTS as usize * WORDS_PER_SLOT;
/// Word of a slot holding the key: `tgid`, then `fd`, in memory order.
const KEY_WORD: usize = std::mem::offset_of!(CachedConnection, key) / 8;
/// Word of a slot holding the state's `conn_id`.
const CONN_ID_WORD: usize = (std::mem::offset_of!(CachedConnection, state)
    + std::mem::offset_of!(loupe_common::ConnState, conn_id))
    / 8;
/// Word of a slot holding `check`.
const CHECK_WORD: usize = std::mem::offset_of!(CachedConnection, check) / 8;

/// `key` as the slot's key word holds it: `tgid`, then `fd`, in memory order.
fn key_word(key: &ConnKey) -> u64 {
    let mut bytes = [0; 8];
    bytes[..4].copy_from_slice(&key.tgid.to_ne_bytes());
    bytes[4..].copy_from_slice(&key.fd.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

pub struct ConnectionCache {
    words: SharedWords,
}

impl ConnectionCache {
    pub fn new(map: Map) -> Result<Self, ProbeError> {
        Ok(Self {
            words: SharedWords::new(map, "CONNECTION_CACHE", WORDS)?,
        })
    }

    fn slots(&self) -> impl Iterator<Item = &[AtomicU64]> {
        self.words.words().chunks_exact(WORDS_PER_SLOT)
    }

    /// Empties `key`'s slot when it holds `key`, so the probes read the connection's
    /// state from the table again.
    pub fn forget(&self, key: &ConnKey) {
        let Some(slot) = self.slots().nth(CachedConnection::slot(key) as usize) else {
            return;
        };
        if slot[KEY_WORD].load(Ordering::Relaxed) == key_word(key) {
            slot[CHECK_WORD].store(0, Ordering::Relaxed);
        }
    }

    /// Empties every filled slot that `is_stale(tgid, conn_id)` says belongs to no live
    /// connection; returns how many.
    pub fn forget_stale(&self, mut is_stale: impl FnMut(u32, u64) -> bool) -> usize {
        let mut emptied = 0;
        for slot in self.slots() {
            if slot[CHECK_WORD].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let key = slot[KEY_WORD].load(Ordering::Relaxed).to_ne_bytes();
            let tgid = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
            if is_stale(tgid, slot[CONN_ID_WORD].load(Ordering::Relaxed)) {
                slot[CHECK_WORD].store(0, Ordering::Relaxed);
                emptied += 1;
            }
        }
        emptied
    }
}

#[cfg(test)]
mod tests {
    use loupe_common::ConnState;

    use super::*;

    fn anonymous() -> ConnectionCache {
        ConnectionCache {
            words: SharedWords::anonymous(WORDS).unwrap(),
        }
    }

    /// Writes a slot as the kernel programs do.
    fn fill(cache: &ConnectionCache, tgid: u32, fd: u32) -> usize {
        fill_with_id(cache, tgid, fd, 77)
    }

    fn fill_with_id(cache: &ConnectionCache, tgid: u32, fd: u32, conn_id: u64) -> usize {
        let key = ConnKey { tgid, fd };
        let state = ConnState {
            conn_id,
            role: 1,
            ignored: 0,
            _pad: [0; 6],
            sock: 0xffff_8880_1234_5000,
        };
        let index = CachedConnection::slot(&key) as usize;
        let slot = cache.slots().nth(index).expect("slot");
        // SAFETY: ConnKey is two u32s, read as the one u64 the kernel would store.
        let word: u64 = unsafe { std::mem::transmute(key) };
        assert_eq!(word, key_word(&key));
        slot[KEY_WORD].store(word, Ordering::Relaxed);
        slot[CONN_ID_WORD].store(state.conn_id, Ordering::Relaxed);
        let flags = [state.role, state.ignored, 0, 0, 0, 0, 0, 0];
        slot[2].store(u64::from_ne_bytes(flags), Ordering::Relaxed);
        slot[3].store(state.sock, Ordering::Relaxed);
        slot[CHECK_WORD].store(CachedConnection::check_of(&key, &state), Ordering::Relaxed);
        index
    }

    fn filled(cache: &ConnectionCache) -> Vec<usize> {
        let mut at = Vec::new();
        for (i, slot) in cache.slots().enumerate() {
            if slot[CHECK_WORD].load(Ordering::Relaxed) != 0 {
                at.push(i);
            }
        }
        at
    }

    #[test]
    fn empties_only_the_slots_of_dead_processes() {
        let cache = anonymous();
        assert_eq!(
            cache.forget_stale(|_, _| true),
            0,
            "an empty cache has nothing to forget"
        );
        let live = fill(&cache, 4242, 7);
        let dead_a = fill(&cache, 99_000, 5);
        let dead_b = fill(&cache, 99_000, 6);
        let mut asked = Vec::new();
        let emptied = cache.forget_stale(|tgid, _| {
            asked.push(tgid);
            tgid == 99_000
        });
        assert_eq!(emptied, 2);
        assert_eq!(filled(&cache), vec![live]);
        assert!(!filled(&cache).contains(&dead_a) && !filled(&cache).contains(&dead_b));
        asked.sort_unstable();
        asked.dedup();
        assert_eq!(asked, vec![4242, 99_000]);
        // A second pass finds only the live slot and leaves it.
        assert_eq!(cache.forget_stale(|tgid, _| tgid == 99_000), 0);
        assert_eq!(filled(&cache), vec![live]);
    }

    #[test]
    fn forgetting_a_key_empties_its_slot_only_while_the_slot_holds_it() {
        let cache = anonymous();
        let at = fill(&cache, 4242, 7);
        // Another connection mapping to the same slot is not the one asked for.
        let same_slot = (0..u32::MAX)
            .map(|fd| ConnKey { tgid: 4242, fd })
            .find(|k| k.fd != 7 && CachedConnection::slot(k) as usize == at)
            .unwrap();
        cache.forget(&same_slot);
        assert_eq!(filled(&cache), vec![at]);
        cache.forget(&ConnKey { tgid: 4242, fd: 7 });
        assert!(filled(&cache).is_empty());
    }

    #[test]
    fn the_rule_sees_each_slots_connection_id() {
        let cache = anonymous();
        let older = fill_with_id(&cache, 4242, 5, 1_000);
        let newer = fill_with_id(&cache, 4242, 6, 3_000);
        // The process now at 4242 started at 2,000: the older slot is its predecessor's.
        assert_eq!(cache.forget_stale(|_, conn_id| conn_id < 2_000), 1);
        assert_eq!(filled(&cache), vec![newer]);
        assert!(!filled(&cache).contains(&older));
    }
}
