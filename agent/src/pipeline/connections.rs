//! The userspace connection table: one entry per traced TCP connection, holding what is
//! known of its endpoints and the protocol session that reassembles its bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// hashbrown's seeded foldhash: these tables are looked up for every record, and SipHash
// showed in profiles.
use hashbrown::HashMap;

use loupe_common::{AF_INET, AF_INET6, ConnKey, ConnTuple};

use super::linking::NodeRef;
use crate::protocol::{Chunk, Role, detect_http1, http1::Http1Session};

/// Chunks looked at before a connection is declared not HTTP and left alone.
const DETECT_ATTEMPTS: u8 = 4;

pub enum ProtocolState {
    Undetected {
        attempts: u8,
    },
    Http1(Box<Http1Session>),
    /// Not a protocol loupe parses (TLS, a database protocol ...): bytes are only counted.
    Opaque,
}

pub struct Connection {
    pub conn_id: u64,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub protocol: ProtocolState,
    pub last_activity_ns: u64,
    /// The request its process was serving when it connected (see `Linker::client_start`).
    pub parent_hint: Option<NodeRef>,
}

impl Connection {
    pub fn new(conn_id: u64, tuple: Option<&ConnTuple>, now_ns: u64) -> Self {
        let (local, remote) = tuple.map(endpoints).unwrap_or((None, None));
        Self {
            conn_id,
            local,
            remote,
            protocol: ProtocolState::Undetected { attempts: 0 },
            last_activity_ns: now_ns,
            parent_hint: None,
        }
    }

    /// Finds the protocol on the first chunks. Returns the session once one exists.
    pub fn session_for(
        &mut self,
        chunk: &Chunk<'_>,
        new_session: impl FnOnce(Role) -> Http1Session,
    ) -> Option<&mut Http1Session> {
        if let ProtocolState::Undetected { attempts } = &mut self.protocol {
            if chunk.bytes.is_empty() {
                return None;
            }
            match detect_http1(chunk) {
                Some(role) => self.protocol = ProtocolState::Http1(Box::new(new_session(role))),
                None => {
                    *attempts += 1;
                    if *attempts >= DETECT_ATTEMPTS {
                        self.protocol = ProtocolState::Opaque;
                    }
                }
            }
        }
        match &mut self.protocol {
            ProtocolState::Http1(session) => Some(session),
            _ => None,
        }
    }
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

/// Bounded: when full, new connections are refused (and counted by the caller) rather
/// than evicting live ones; idle and dead connections are swept regularly.
pub struct ConnectionTable {
    entries: HashMap<ConnKey, Connection>,
    /// How many entries have each (local, remote) pair: tells whether loupe traces the
    /// other end of a connection.
    endpoints: HashMap<(SocketAddr, SocketAddr), u32>,
    capacity: usize,
}

impl ConnectionTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            endpoints: HashMap::new(),
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
        if let Some(pair) = conn.local.zip(conn.remote) {
            *self.endpoints.entry(pair).or_default() += 1;
        }
        let old = self.entries.insert(key, conn);
        if let Some(old) = &old {
            self.unindex(old);
        }
        Ok(old)
    }

    fn unindex(&mut self, conn: &Connection) {
        if let Some(pair) = conn.local.zip(conn.remote)
            && let Some(count) = self.endpoints.get_mut(&pair)
        {
            *count -= 1;
            if *count == 0 {
                self.endpoints.remove(&pair);
            }
        }
    }

    /// True when a traced connection has exactly these local and remote endpoints.
    pub fn has_endpoints(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.endpoints.contains_key(&(local, remote))
    }

    pub fn remove(&mut self, key: &ConnKey) -> Option<Connection> {
        let conn = self.entries.remove(key)?;
        self.unindex(&conn);
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

    pub fn tgids(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.entries.keys().map(|k| k.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple_v4() -> ConnTuple {
        let mut t = ConnTuple {
            family: AF_INET,
            local_port: 8080,
            remote_port: 51000,
            ..Default::default()
        };
        t.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        t.remote_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        t
    }

    #[test]
    fn endpoints_from_ipv4_and_mapped_ipv6() {
        let (local, remote) = endpoints(&tuple_v4());
        assert_eq!(local.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(remote.unwrap().to_string(), "10.1.2.3:51000");

        let mut t = ConnTuple {
            family: AF_INET6,
            local_port: 80,
            remote_port: 4000,
            ..Default::default()
        };
        t.local_addr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        t.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let (local, remote) = endpoints(&t);
        assert_eq!(local.unwrap().to_string(), "127.0.0.1:80");
        assert_eq!(remote.unwrap().to_string(), "[::1]:4000");

        t.family = 99;
        assert_eq!(endpoints(&t), (None, None));
    }

    #[test]
    fn table_refuses_when_full_but_replaces_same_key() {
        let mut table = ConnectionTable::new(1);
        let k1 = ConnKey { tgid: 1, fd: 3 };
        let k2 = ConnKey { tgid: 1, fd: 4 };
        let first = table.insert(k1, Connection::new(1, None, 0));
        assert!(matches!(first, Ok(None)));
        assert!(table.insert(k2, Connection::new(2, None, 0)).is_err());
        let old = table.insert(k1, Connection::new(3, None, 0)).ok().unwrap();
        assert_eq!(old.unwrap().conn_id, 1);
        assert_eq!(table.len(), 1);
        let pair = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let k3 = ConnKey { tgid: 2, fd: 3 };
        let mut big = ConnectionTable::new(4);
        let mut conn = Connection::new(9, None, 0);
        (conn.local, conn.remote) = (Some(pair.0), Some(pair.1));
        assert!(big.insert(k3, conn).is_ok());
        assert!(big.has_endpoints(pair.0, pair.1));
        assert!(!big.has_endpoints(pair.1, pair.0));
        big.remove(&k3);
        assert!(!big.has_endpoints(pair.0, pair.1));
        let drained = table.drain_where(|k, _| k.tgid == 1);
        assert_eq!(drained.len(), 1);
        assert_eq!(table.len(), 0);
    }
}
