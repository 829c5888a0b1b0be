//! Connections the probes stop capturing because the agent found no HTTP/1.x on them
//! (TLS, a database's protocol, a WebSocket after its upgrade): their bytes would cross
//! the ring buffer only to be counted and dropped.
//!
//! The agent cannot mark the kernel's entry itself without a race: between its read of
//! the entry and its write, the fd may close and a new connection take its place, which
//! the write would hide. So it leaves a request with the connection's id, and the probes
//! apply it when they next look the connection up in their table, comparing the id on
//! the entry they hold.

use aya::maps::MapError;
use loupe_common::ConnKey;

use crate::probes::KernelConnections;

/// Asks the probes to stop capturing the connection `conn_id` at `key`, and empties its
/// cache slot so that their next call on it reads the table, where they apply the
/// request. False when the request could not be left (the request table is full).
pub fn ask(connections: &mut KernelConnections, key: ConnKey, conn_id: u64) -> bool {
    if let Err(err) = connections.ignore_requests.insert(key, conn_id, 0) {
        log::debug!("asking to ignore connection {key:?}: {err}");
        return false;
    }
    connections.cache.forget(&key);
    true
}

/// Drops the requests the probes will never apply: their connection is gone, is another
/// one now, or was marked already. A request for a connection that stays quiet waits.
pub fn forget_unanswered(connections: &mut KernelConnections) {
    let requests: Vec<_> = connections
        .ignore_requests
        .iter()
        .filter_map(Result::ok)
        .collect();
    for (key, conn_id) in requests {
        let unanswerable = match connections.table.get(&key, 0) {
            Ok(state) => state.conn_id != conn_id || state.ignored != 0,
            Err(MapError::KeyNotFound) => true,
            Err(_) => false,
        };
        if unanswerable {
            let _ = connections.ignore_requests.remove(&key);
        }
    }
}
