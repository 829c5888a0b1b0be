//! The userspace connection table: one entry per traced TCP connection, holding what is
//! known of its endpoints and the protocol session that reassembles its bytes.

use std::{
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

// hashbrown's seeded foldhash: these tables are looked up for every record, and SipHash
// showed in profiles.
use hashbrown::HashMap;

use loupe_common::{AF_INET, AF_INET6, ConnKey, ConnTuple};

use super::{aliases::Aliases, linking::NodeRef};
use crate::protocol::{Chunk, Direction, Role, detect_http1, http1::Http1Session, may_begin_http1};

/// Chunks looked at before a connection is declared not HTTP and left alone.
const DETECT_ATTEMPTS: u8 = 4;

/// Chunks a connection carries from the one that showed it carries no more HTTP/1.x,
/// that one included, before the probes are asked to stop capturing it. Asking costs the agent two map calls and a
/// connection that closes soon saves little, so only one that lives on (a database's,
/// a WebSocket) is asked for.
const CHUNKS_BEFORE_IGNORING: u32 = 8;

pub enum ProtocolState {
    Undetected {
        attempts: u8,
        /// The beginning of a message its sender wrote in pieces (`GET ` and then the
        /// target), waiting for the rest before detection decides.
        held: Option<Box<HeldPiece>>,
    },
    Http1(Box<Http1Session>),
    /// Not a protocol loupe parses (TLS, a database protocol ...): bytes are only counted.
    Opaque,
}

pub struct HeldPiece {
    direction: Direction,
    start_ns: u64,
    bytes: Vec<u8>,
}

pub struct Connection {
    pub conn_id: u64,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Its network namespace's inode number (0: unknown).
    pub netns: u32,
    pub protocol: ProtocolState,
    pub last_activity_ns: u64,
    /// The request its process was serving when it connected (see `Linker::client_start`).
    pub parent_hint: Option<NodeRef>,
    /// Its process opened it (connect), rather than accepted it; for one found in use,
    /// its process was the first seen to write. `None` until known.
    pub dialed: Option<bool>,
    /// Chunks carried since it was known to carry no more HTTP/1.x.
    chunks_after_http: u32,
    /// The probes were asked to stop capturing it: what still comes was on its way, or
    /// (for an event loop's, see `opaque_calls`) comes without bytes.
    given_up: bool,
}

impl Connection {
    pub fn new(conn_id: u64, tuple: Option<&ConnTuple>, now_ns: u64) -> Self {
        let (local, remote) = tuple.map(endpoints).unwrap_or((None, None));
        let netns = tuple.map_or(0, |t| t.netns);
        Self {
            conn_id,
            local,
            remote,
            netns,
            protocol: ProtocolState::Undetected {
                attempts: 0,
                held: None,
            },
            last_activity_ns: now_ns,
            parent_hint: None,
            dialed: None,
            chunks_after_http: 0,
            given_up: false,
        }
    }

    /// Its two ends, when both are known.
    pub fn ends(&self) -> Option<Ends> {
        Ends::of(self.local, self.remote, self.netns)
    }

    /// Whether a request on it still awaits its response, or the rest of it.
    pub fn awaits_response(&self) -> bool {
        matches!(&self.protocol, ProtocolState::Http1(session) if session.pending_requests() > 0)
    }

    /// Counts a chunk the connection just carried; true when it has carried enough since
    /// it was known to carry no more HTTP/1.x (declared not HTTP, or tunnelled) that the
    /// probes should stop capturing it, until [`Self::give_up`].
    pub fn count_chunk_after_http(&mut self) -> bool {
        if self.given_up {
            return false;
        }
        let after_http = match &self.protocol {
            ProtocolState::Opaque => true,
            ProtocolState::Http1(session) => session.tunnelled(),
            ProtocolState::Undetected { .. } => false,
        };
        if after_http {
            self.chunks_after_http = self.chunks_after_http.saturating_add(1);
        }
        self.chunks_after_http >= CHUNKS_BEFORE_IGNORING
    }

    /// The request that opened the connection, given for its first write only: the
    /// witness for its first call on a protocol loupe does not parse (see
    /// `Linker::on_opaque_call`).
    pub fn first_call_hint(&mut self, egress: bool) -> Option<NodeRef> {
        if egress {
            self.parent_hint.take()
        } else {
            None
        }
    }

    /// The probes were asked to stop capturing the connection.
    pub fn give_up(&mut self) {
        self.given_up = true;
    }

    /// Joins a held piece to `chunk` when both go the same way: the joined chunk starts
    /// when the piece did. `joined` holds the bytes. Also returns how many held bytes were
    /// given up (a piece followed by bytes the other way).
    pub fn join_held<'a>(&mut self, chunk: Chunk<'a>, joined: &'a mut Vec<u8>) -> (Chunk<'a>, u64) {
        let ProtocolState::Undetected { held, .. } = &mut self.protocol else {
            return (chunk, 0);
        };
        let Some(piece) = held.take() else {
            return (chunk, 0);
        };
        if piece.direction != chunk.direction {
            return (chunk, piece.bytes.len() as u64);
        }
        let total_len = piece.bytes.len() as u64 + chunk.total_len;
        *joined = piece.bytes;
        joined.extend_from_slice(chunk.bytes);
        let chunk = Chunk {
            start_ns: piece.start_ns,
            bytes: joined,
            total_len,
            ..chunk
        };
        (chunk, 0)
    }

    /// Bytes held back from detection, which the connection's end gives up.
    pub fn held_len(&self) -> u64 {
        match &self.protocol {
            ProtocolState::Undetected {
                held: Some(piece), ..
            } => piece.bytes.len() as u64,
            _ => 0,
        }
    }

    /// Finds the protocol on the first chunks. Returns the session once one exists, and
    /// `Held` while a chunk that may begin a message waits for the next.
    pub fn session_for(
        &mut self,
        chunk: &Chunk<'_>,
        new_session: impl FnOnce(Role) -> Http1Session,
    ) -> Detection<'_> {
        if let ProtocolState::Undetected { attempts, held } = &mut self.protocol {
            if chunk.bytes.is_empty() {
                return Detection::None;
            }
            match detect_http1(chunk) {
                Some(role) => self.protocol = ProtocolState::Http1(Box::new(new_session(role))),
                // Bounded: only a few bytes without a line end pass the check.
                None if may_begin_http1(chunk) => {
                    *held = Some(Box::new(HeldPiece {
                        direction: chunk.direction,
                        start_ns: chunk.start_ns,
                        bytes: chunk.bytes.to_vec(),
                    }));
                    return Detection::Held;
                }
                None => {
                    *attempts += 1;
                    if *attempts >= DETECT_ATTEMPTS {
                        self.protocol = ProtocolState::Opaque;
                    }
                }
            }
        }
        match &mut self.protocol {
            ProtocolState::Http1(session) => Detection::Http1(session),
            _ => Detection::None,
        }
    }
}

/// What [`Connection::session_for`] made of a chunk.
pub enum Detection<'a> {
    Http1(&'a mut Http1Session),
    /// Kept back, to be joined to the next chunk.
    Held,
    /// Not (yet) a protocol loupe parses.
    None,
}

/// Addresses from the kernel's tuple; IPv4-mapped IPv6 addresses (dual-stack sockets)
/// are shown as the IPv4 address they are.
pub fn endpoints(tuple: &ConnTuple) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let addr = |bytes: &[u8; 16]| -> Option<IpAddr> {
        match tuple.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => {
                let v6 = Ipv6Addr::from(*bytes);
                Some(match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(v6),
                })
            }
            _ => None,
        }
    };
    (
        addr(&tuple.local_addr).map(|ip| SocketAddr::new(ip, tuple.local_port)),
        addr(&tuple.remote_addr).map(|ip| SocketAddr::new(ip, tuple.remote_port)),
    )
}

/// A connection's two ends as one side sees them, and the scope in which those
/// addresses name it on this host: loopback addresses repeat in every network namespace
/// (each pod has its own `127.0.0.1`, and its sidecars often the same ports), so for them
/// the scope is the namespace; other addresses name one connection host-wide (its two
/// sides may be in different namespaces, a pod and the host), and their scope is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub scope: u32,
}

/// Two IPv4 ends, nearly every connection, hash as one 128-bit word: the derived hash fed
/// the hasher several small writes, and two lookups of every server request paid for them.
impl Hash for Ends {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match (self.local, self.remote) {
            (SocketAddr::V4(local), SocketAddr::V4(remote)) => {
                state.write_u128(pack_v4(local, remote, self.scope));
            }
            (local, remote) => {
                local.hash(state);
                remote.hash(state);
                self.scope.hash(state);
            }
        }
    }
}

/// Every bit of two IPv4 ends and a scope, each field in its own bits.
fn pack_v4(local: SocketAddrV4, remote: SocketAddrV4, scope: u32) -> u128 {
    (u128::from(local.ip().to_bits()) << 96)
        | (u128::from(local.port()) << 80)
        | (u128::from(remote.ip().to_bits()) << 48)
        | (u128::from(remote.port()) << 32)
        | u128::from(scope)
}

impl Ends {
    pub fn of(local: Option<SocketAddr>, remote: Option<SocketAddr>, netns: u32) -> Option<Self> {
        let (local, remote) = local.zip(remote)?;
        let scope = if local.ip().is_loopback() || remote.ip().is_loopback() {
            netns
        } else {
            0
        };
        Some(Self {
            local,
            remote,
            scope,
        })
    }

    /// The same connection seen from its other end.
    pub fn mirrored(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
            scope: self.scope,
        }
    }
}

/// Bounded: when full, new connections are refused (and counted by the caller) rather
/// than evicting live ones; idle and dead connections are swept regularly.
pub struct ConnectionTable {
    entries: HashMap<ConnKey, Connection>,
    /// How many connections, open or kept while idle, have each pair of ends: tells
    /// whether loupe traces the other end of a connection.
    endpoints: HashMap<Ends, u32>,
    /// What is kept of connections finished for carrying nothing for a while (their fds
    /// may still be open): a keep-alive connection used again after a long pause gets its
    /// endpoints back, which the kernel sends only when a connection opens. Bounded like
    /// the table; dropped at the key's close or its process's end.
    parked: HashMap<ConnKey, Parked>,
    /// Idle connections whose endpoints found no room, since [`Self::take_park_refusals`].
    park_refusals: u64,
    /// The connection of each (process, ends) in `entries`: a second fd of a process with
    /// the same ends is the same socket.
    by_socket: HashMap<(u32, Ends), ConnKey>,
    /// Fds that reach a socket their process already uses under another fd.
    aliases: Aliases,
    capacity: usize,
}

struct Parked {
    conn_id: u64,
    ends: Ends,
    netns: u32,
    dialed: Option<bool>,
}

impl ConnectionTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            endpoints: HashMap::new(),
            parked: HashMap::new(),
            park_refusals: 0,
            by_socket: HashMap::new(),
            aliases: Aliases::default(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_mut(&mut self, key: &ConnKey) -> Option<&mut Connection> {
        self.entries.get_mut(key)
    }

    /// Inserts `conn`, returning the connection it replaced. Err when the table is full.
    pub fn insert(
        &mut self,
        key: ConnKey,
        conn: Connection,
    ) -> Result<Option<Connection>, Connection> {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            return Err(conn);
        }
        // `key` is a connection of its own now, no alias.
        self.aliases.remove(&key);
        let ends = conn.ends();
        let old = self.entries.insert(key, conn);
        if let Some(old) = &old {
            self.unindex(key, old);
            if old.ends() != ends {
                // Another socket at this fd: the old one's aliases are not this one's.
                self.aliases.drop_primary(&key);
            }
        }
        if let Some(ends) = ends {
            *self.endpoints.entry(ends).or_default() += 1;
            let socket = (key.tgid, ends);
            let taken = self
                .by_socket
                .get(&socket)
                .is_some_and(|other| *other != key && self.entries.contains_key(other));
            if !taken {
                self.by_socket.insert(socket, key);
            }
        }
        Ok(old)
    }

    /// Unindexes `conn`, just removed from `key`. Its aliases stay: a connection parked
    /// while idle is still theirs.
    fn unindex(&mut self, key: ConnKey, conn: &Connection) {
        if let Some(ends) = conn.ends() {
            self.unindex_ends(ends);
            let socket = (key.tgid, ends);
            if self.by_socket.get(&socket) == Some(&key) {
                self.by_socket.remove(&socket);
            }
        }
    }

    fn unindex_ends(&mut self, ends: Ends) {
        if let Some(count) = self.endpoints.get_mut(&ends) {
            *count -= 1;
            if *count == 0 {
                self.endpoints.remove(&ends);
            }
        }
    }

    /// Takes `conn`, just opened at `key`, as another fd of a connection its process
    /// already has with the same ends, if it has one: its records then go to that
    /// connection (see [`Self::resolve`]). `None` when it is a connection of its own;
    /// else what was at `key` before, which closed without a close loupe saw.
    pub fn adopt_as_alias(
        &mut self,
        key: ConnKey,
        conn: &Connection,
    ) -> Option<Option<Connection>> {
        let ends = conn.ends()?;
        let primary = *self.by_socket.get(&(key.tgid, ends))?;
        if primary == key || !self.entries.contains_key(&primary) {
            return None;
        }
        let old = self.remove(&key);
        if old.is_some() {
            self.aliases.drop_primary(&key);
        }
        self.aliases.add(key, primary, conn.conn_id);
        Some(old)
    }

    /// Where a record of connection `conn_id` on `key` goes: an alias's records go to its
    /// connection, under that connection's id, also while it is parked.
    pub fn resolve(&self, key: ConnKey, conn_id: u64) -> (ConnKey, u64) {
        match self.aliases.get(&key) {
            Some(alias) if alias.conn_id == conn_id => {
                let primary_id = self
                    .entries
                    .get(&alias.primary)
                    .map(|c| c.conn_id)
                    .or_else(|| self.parked.get(&alias.primary).map(|p| p.conn_id));
                primary_id.map_or((key, conn_id), |id| (alias.primary, id))
            }
            _ => (key, conn_id),
        }
    }

    /// The aliases of the connection at `key`, with their own connection ids.
    pub fn aliases_of(&self, key: &ConnKey) -> &[(ConnKey, u64)] {
        self.aliases.of_primary(key)
    }

    /// The fd `key` closed: returns the connection that ends with it, if one does. An
    /// alias's close ends its connection only when that connection's own fd closed
    /// before and no other alias is left; a connection's close, only when no alias holds
    /// its socket.
    pub fn close(&mut self, key: &ConnKey) -> Option<(ConnKey, Connection)> {
        if let Some(alias) = self.aliases.remove(key) {
            if !self.aliases.take_if_abandoned(&alias.primary) {
                return None;
            }
            self.forget_parked(&alias.primary);
            return self
                .remove(&alias.primary)
                .map(|conn| (alias.primary, conn));
        }
        if self.aliases.orphan(*key) {
            return None;
        }
        self.forget_parked(key);
        self.remove(key).map(|conn| (*key, conn))
    }

    /// True when a traced connection has exactly these ends.
    pub fn has_ends(&self, ends: Ends) -> bool {
        self.endpoints.contains_key(&ends)
    }

    pub fn remove(&mut self, key: &ConnKey) -> Option<Connection> {
        let conn = self.entries.remove(key)?;
        self.unindex(*key, &conn);
        Some(conn)
    }

    /// Removes and returns every connection for which `pred` holds.
    pub fn drain_where(
        &mut self,
        mut pred: impl FnMut(&ConnKey, &Connection) -> bool,
    ) -> Vec<(ConnKey, Connection)> {
        let keys: Vec<ConnKey> = self
            .entries
            .iter()
            .filter(|(k, c)| pred(k, c))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.remove(&k).map(|c| (k, c)))
            .collect()
    }

    /// Keeps the endpoints of `conn`, finished while idle, for when it is used again. They
    /// still count in [`Self::has_ends`]: its peer may read or write first.
    pub fn park(&mut self, key: ConnKey, conn: &Connection) {
        let Some(ends) = conn.ends() else {
            return;
        };
        if self.parked.len() >= self.capacity && !self.parked.contains_key(&key) {
            self.park_refusals += 1;
            return;
        }
        self.forget_parked(&key);
        *self.endpoints.entry(ends).or_default() += 1;
        let (conn_id, netns, dialed) = (conn.conn_id, conn.netns, conn.dialed);
        let parked = Parked {
            conn_id,
            ends,
            netns,
            dialed,
        };
        self.parked.insert(key, parked);
    }

    /// Idle connections whose endpoints could not be kept since the last call.
    pub fn take_park_refusals(&mut self) -> u64 {
        std::mem::take(&mut self.park_refusals)
    }

    /// Gives connection `conn` at `key`, seen again, the endpoints kept of it.
    pub fn unpark(&mut self, key: &ConnKey, conn: &mut Connection) {
        let Some(parked) = self.parked.remove(key) else {
            return;
        };
        self.unindex_ends(parked.ends);
        if parked.conn_id == conn.conn_id {
            (conn.local, conn.remote) = (Some(parked.ends.local), Some(parked.ends.remote));
            conn.netns = parked.netns;
            conn.dialed = parked.dialed;
        }
    }

    /// Forgets what was kept of the connection at `key`: it closed, or another opened there.
    pub fn forget_parked(&mut self, key: &ConnKey) {
        if let Some(parked) = self.parked.remove(key) {
            self.unindex_ends(parked.ends);
        }
    }

    /// Forgets what was kept of the connections of processes that ended, and their aliases.
    pub fn forget_parked_of(&mut self, tgids: &[u32]) {
        self.aliases.forget_processes(tgids);
        let keys: Vec<ConnKey> = self
            .parked
            .keys()
            .filter(|key| tgids.contains(&key.tgid))
            .copied()
            .collect();
        for key in keys {
            self.forget_parked(&key);
        }
    }

    /// The processes it holds anything of: connections, or endpoints kept of idle ones.
    pub fn tgids(&self) -> Vec<u32> {
        let keys = self.entries.keys().chain(self.parked.keys());
        let mut tgids: Vec<u32> = keys.map(|k| k.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }
}

#[cfg(test)]
#[path = "connections_tests.rs"]
mod tests;
