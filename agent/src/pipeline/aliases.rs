//! Fds that reach a socket its process already uses under another fd. An inetd-style
//! server (busybox httpd, a service started by inetd or by systemd with `Accept=yes`)
//! reads its request on stdin and answers on stdout: one socket under fds 0 and 1, which
//! the probes announce as two connections. The first is the connection; the others are
//! its aliases, whose records go to it.

use hashbrown::{HashMap, HashSet};

use loupe_common::ConnKey;

/// An fd whose records belong to the connection at `primary`; `conn_id` is the id the
/// probes gave the fd itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    pub primary: ConnKey,
    pub conn_id: u64,
}

#[derive(Default)]
pub struct Aliases {
    of: HashMap<ConnKey, Alias>,
    by_primary: HashMap<ConnKey, Vec<(ConnKey, u64)>>,
    /// Connections whose own fd closed while an alias still holds their socket.
    orphaned: HashSet<ConnKey>,
}

impl Aliases {
    pub fn get(&self, key: &ConnKey) -> Option<Alias> {
        // Asked for every data record; almost every host has no alias at all.
        if self.of.is_empty() {
            return None;
        }
        self.of.get(key).copied()
    }

    /// Makes `key` an alias of `primary`, replacing what `key` was an alias of before.
    pub fn add(&mut self, key: ConnKey, primary: ConnKey, conn_id: u64) {
        self.remove(&key);
        self.of.insert(key, Alias { primary, conn_id });
        self.by_primary
            .entry(primary)
            .or_default()
            .push((key, conn_id));
    }

    /// Forgets `key` as an alias.
    pub fn remove(&mut self, key: &ConnKey) -> Option<Alias> {
        let alias = self.of.remove(key)?;
        if let Some(list) = self.by_primary.get_mut(&alias.primary) {
            list.retain(|(k, _)| k != key);
            if list.is_empty() {
                self.by_primary.remove(&alias.primary);
            }
        }
        Some(alias)
    }

    /// The aliases of `primary`, with their own connection ids.
    pub fn of_primary(&self, primary: &ConnKey) -> &[(ConnKey, u64)] {
        self.by_primary.get(primary).map_or(&[], Vec::as_slice)
    }

    /// Forgets every alias of `primary`: its socket is not theirs any more.
    pub fn drop_primary(&mut self, primary: &ConnKey) {
        self.orphaned.remove(primary);
        for (key, _) in self.by_primary.remove(primary).unwrap_or_default() {
            self.of.remove(&key);
        }
    }

    /// Notes that `primary`'s own fd closed; true when an alias still holds its socket,
    /// which then keeps the connection until the last alias closes.
    pub fn orphan(&mut self, primary: ConnKey) -> bool {
        if self.by_primary.contains_key(&primary) {
            self.orphaned.insert(primary);
            true
        } else {
            false
        }
    }

    /// Whether `primary` lost its own fd and, now, its last alias: time to end it.
    pub fn take_if_abandoned(&mut self, primary: &ConnKey) -> bool {
        if self.orphaned.contains(primary) && !self.by_primary.contains_key(primary) {
            self.orphaned.remove(primary);
            true
        } else {
            false
        }
    }

    /// Forgets the aliases of processes that ended.
    pub fn forget_processes(&mut self, tgids: &[u32]) {
        if self.of.is_empty() && self.orphaned.is_empty() {
            return;
        }
        self.of.retain(|key, _| !tgids.contains(&key.tgid));
        self.by_primary.retain(|key, _| !tgids.contains(&key.tgid));
        self.orphaned.retain(|key| !tgids.contains(&key.tgid));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, fd: u32) -> ConnKey {
        ConnKey { tgid, fd }
    }

    #[test]
    fn aliases_come_and_go_with_their_primary() {
        let mut aliases = Aliases::default();
        aliases.add(key(1, 1), key(1, 0), 11);
        aliases.add(key(1, 2), key(1, 0), 12);
        assert_eq!(aliases.of_primary(&key(1, 0)).len(), 2);
        assert_eq!(
            aliases.get(&key(1, 1)),
            Some(Alias {
                primary: key(1, 0),
                conn_id: 11
            })
        );
        // Re-pointing an alias leaves no trace under its old primary.
        aliases.add(key(1, 2), key(1, 5), 13);
        assert_eq!(aliases.of_primary(&key(1, 0)), &[(key(1, 1), 11)]);
        // The primary's fd closes first: the alias keeps the connection until its own close.
        assert!(aliases.orphan(key(1, 0)));
        assert!(!aliases.take_if_abandoned(&key(1, 0)));
        aliases.remove(&key(1, 1));
        assert!(aliases.take_if_abandoned(&key(1, 0)));
        assert!(!aliases.take_if_abandoned(&key(1, 0)));
        // A connection without aliases is not kept.
        assert!(!aliases.orphan(key(1, 0)));
        aliases.drop_primary(&key(1, 5));
        assert_eq!(aliases.len(), 0);
        aliases.add(key(2, 1), key(2, 0), 21);
        aliases.add(key(3, 1), key(3, 0), 31);
        aliases.forget_processes(&[2]);
        assert_eq!(aliases.get(&key(2, 1)), None);
        assert!(aliases.get(&key(3, 1)).is_some());
        assert!(aliases.of_primary(&key(2, 0)).is_empty());
    }
}
