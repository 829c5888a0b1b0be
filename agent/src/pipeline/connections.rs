//! The userspace connection table: one entry per traced TCP connection, holding what is
//! known of its endpoints and the protocol session that reassembles its bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// hashbrown's seeded foldhash: these tables are looked up for every record, and SipHash
// showed in profiles.
use hashbrown::HashMap;

use loupe_common::{AF_INET, AF_INET6, ConnKey, ConnTuple};

use super::linking::NodeRef;
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
    pub protocol: ProtocolState,
    pub last_activity_ns: u64,
    /// The request its process was serving when it connected (see `Linker::client_start`).
    pub parent_hint: Option<NodeRef>,
    /// Chunks carried since it was known to carry no more HTTP/1.x.
    chunks_after_http: u32,
    /// The probes were asked to stop capturing it: what still comes was on its way.
    given_up: bool,
}

impl Connection {
    pub fn new(conn_id: u64, tuple: Option<&ConnTuple>, now_ns: u64) -> Self {
        let (local, remote) = tuple.map(endpoints).unwrap_or((None, None));
        Self {
            conn_id,
            local,
            remote,
            protocol: ProtocolState::Undetected {
                attempts: 0,
                held: None,
            },
            last_activity_ns: now_ns,
            parent_hint: None,
            chunks_after_http: 0,
            given_up: false,
        }
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
    use crate::protocol::http1::HttpExchange;

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

    /// Feeds `pieces` (direction, bytes, syscall entry time) the way the pipeline does;
    /// returns the finished exchanges and the bytes given up.
    fn feed(pieces: &[(Direction, &[u8], u64)]) -> (Vec<HttpExchange>, u64) {
        let (exchanges, given_up, _) = feed_counting(pieces);
        (exchanges, given_up)
    }

    /// [`feed`], also returning the pieces after which the connection asked the probes
    /// to stop capturing it, by index.
    fn feed_counting(pieces: &[(Direction, &[u8], u64)]) -> (Vec<HttpExchange>, u64, Vec<usize>) {
        let mut conn = Connection::new(1, None, 0);
        let (mut exchanges, mut given_up, mut asks) = (Vec::new(), 0, Vec::new());
        for (i, &(direction, bytes, start_ns)) in pieces.iter().enumerate() {
            let chunk = Chunk {
                direction,
                start_ns,
                end_ns: start_ns + 1,
                tid: 7,
                bytes,
                total_len: bytes.len() as u64,
            };
            let mut joined = Vec::new();
            let (chunk, lost) = conn.join_held(chunk, &mut joined);
            match conn.session_for(&chunk, |role| Http1Session::new(role, Default::default())) {
                Detection::Http1(session) => session.on_chunk(&chunk, &mut exchanges),
                Detection::Held => {}
                Detection::None => given_up += chunk.total_len,
            }
            given_up += lost;
            if conn.count_chunk_after_http() {
                asks.push(i);
                if i % 2 == 1 {
                    // Every other ask is refused (a full notice channel).
                    conn.give_up();
                }
            }
        }
        (exchanges, given_up + conn.held_len(), asks)
    }

    #[test]
    fn a_connection_without_http_is_given_up_to_the_probes_once_it_lives_on() {
        use Direction::{Egress, Ingress};
        // A TLS handshake's records, then application data both ways.
        let tls: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        let pieces: Vec<(Direction, &[u8], u64)> = (0..20)
            .map(|i| (if i % 2 == 0 { Egress } else { Ingress }, tls, i))
            .collect();
        let (exchanges, given_up, asks) = feed_counting(&pieces);
        assert!(exchanges.is_empty());
        assert_eq!(given_up, 20 * tls.len() as u64, "every byte is counted");
        // Declared not HTTP at the 4th chunk, which counts as its first after HTTP.
        let first_ask = DETECT_ATTEMPTS as usize - 1 + CHUNKS_BEFORE_IGNORING as usize - 1;
        assert_eq!(asks.first(), Some(&first_ask), "{asks:?}");
        // A refused ask is repeated with the next chunk, an accepted one never.
        assert_eq!(asks, vec![first_ask, first_ask + 1]);
    }

    #[test]
    fn a_connection_carrying_http_is_never_given_up() {
        use Direction::{Egress, Ingress};
        let mut pieces: Vec<(Direction, &[u8], u64)> = Vec::new();
        for i in 0..40 {
            pieces.push((Ingress, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 2 * i));
            pieces.push((
                Egress,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                2 * i + 1,
            ));
        }
        let (exchanges, given_up, asks) = feed_counting(&pieces);
        assert_eq!(exchanges.len(), 40);
        assert_eq!(given_up, 0);
        assert!(asks.is_empty(), "{asks:?}");
    }

    #[test]
    fn a_websocket_is_given_up_to_the_probes_after_its_upgrade() {
        use Direction::{Egress, Ingress};
        let mut pieces: Vec<(Direction, &[u8], u64)> = vec![
            (
                Ingress,
                b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                0,
            ),
            (
                Egress,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                1,
            ),
        ];
        // Frames both ways, one of them text that reads like a request line.
        for i in 0..10 {
            pieces.push((Ingress, b"\x81\x05hello", 2 + 2 * i));
            pieces.push((Egress, b"GET /not-http HTTP/1.1\r\n\r\n", 3 + 2 * i));
        }
        let (exchanges, _, asks) = feed_counting(&pieces);
        assert_eq!(exchanges.len(), 1, "the upgrade itself");
        assert_eq!(exchanges[0].response.as_ref().map(|r| r.status), Some(101));
        // The 101 response ends HTTP and counts as the first chunk after it.
        assert_eq!(
            asks.first(),
            Some(&(CHUNKS_BEFORE_IGNORING as usize)),
            "{asks:?}"
        );
    }

    #[test]
    fn a_request_line_written_in_pieces_is_one_request_from_its_first_piece() {
        use Direction::{Egress, Ingress};
        // As an unbuffered `write!` sends it: method, target, then the rest.
        let (exchanges, lost) = feed(&[
            (Egress, b"GET ", 10),
            (Egress, b"/healthz", 20),
            (Egress, b" HTTP/1.1\r\nHost: a\r\n\r\n", 30),
            (
                Ingress,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                40,
            ),
        ]);
        assert_eq!(lost, 0);
        assert_eq!(exchanges.len(), 1);
        let exchange = &exchanges[0];
        assert_eq!(exchange.role, Role::Client);
        assert_eq!(exchange.request.target, "/healthz");
        assert_eq!(exchange.request_first_start_ns, 10);
        assert_eq!(exchange.response.as_ref().unwrap().status, 200);

        // Byte by byte, on the server side, including the status line it writes.
        let request = b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let response = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut pieces: Vec<(Direction, &[u8], u64)> = Vec::new();
        pieces.extend((0..request.len()).map(|i| (Ingress, &request[i..=i], i as u64)));
        pieces.extend((0..response.len()).map(|i| (Egress, &response[i..=i], 100 + i as u64)));
        let (exchanges, lost) = feed(&pieces);
        assert_eq!(lost, 0);
        assert_eq!(exchanges.len(), 1);
        assert_eq!(exchanges[0].role, Role::Server);
        assert_eq!(exchanges[0].request.method, "POST");
        assert_eq!(exchanges[0].response.as_ref().unwrap().status, 204);
    }

    #[test]
    fn a_held_piece_not_followed_by_more_of_its_message_is_counted_as_unparsed() {
        use Direction::{Egress, Ingress};
        // Followed by bytes the other way.
        let (exchanges, lost) = feed(&[(Egress, b"GET", 1), (Ingress, b"+OK\r\n", 2)]);
        assert!(exchanges.is_empty());
        assert_eq!(lost, 3 + 5);
        // Followed by more bytes that are not HTTP.
        let (exchanges, lost) = feed(&[(Egress, b"GET", 1), (Egress, b"\x00\x01", 2)]);
        assert!(exchanges.is_empty());
        assert_eq!(lost, 5);
        // The connection ends with the piece still held.
        let (_, lost) = feed(&[(Egress, b"HTTP/1.", 1)]);
        assert_eq!(lost, 7);
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
