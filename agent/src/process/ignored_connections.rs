//! Connections the probes stop capturing because the agent found no HTTP/1.x on them
//! (TLS, a database's protocol, a WebSocket after its upgrade): their bytes would cross
//! the ring buffer only to be counted and dropped.

use aya::maps::MapError;
use loupe_common::{ConnKey, ConnState};

use crate::probes::{ConnectionCache, ConnectionMap};

/// `BPF_EXIST`: update only an entry that is there, never add one back after a close.
const UPDATE_EXISTING: u64 = 2;

/// Marks the connection `conn_id` at `key` ignored in the kernel's table and empties its
/// cache slot, so the probes read the mark on their next call and capture no more. False
/// when the table no longer holds that connection (closed, its fd reused) or holds it
/// ignored already.
pub fn ignore(
    connections: &mut ConnectionMap,
    cache: &ConnectionCache,
    key: ConnKey,
    conn_id: u64,
) -> bool {
    let state = match connections.get(&key, 0) {
        Ok(state) if state.conn_id == conn_id && state.ignored == 0 => state,
        Ok(_) | Err(MapError::KeyNotFound) => return false,
        Err(err) => {
            log::debug!("reading connection {key:?}: {err}");
            return false;
        }
    };
    let ignored = ConnState {
        ignored: 1,
        ..state
    };
    if let Err(err) = connections.insert(key, ignored, UPDATE_EXISTING) {
        log::debug!("marking connection {key:?} ignored: {err}");
        return false;
    }
    // After the table: a probe that cached the old state in between sees the table
    // disagree and empties the slot itself (`cache_if_standing`).
    cache.forget(&key);
    true
}
