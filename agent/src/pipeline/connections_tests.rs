use super::*;
use crate::protocol::http1::HttpExchange;
use hashbrown::HashSet;
use std::hash::BuildHasher as _;

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
    (conn.local, conn.remote, conn.netns) = (Some(pair.0), Some(pair.1), 5);
    let ends = conn.ends().unwrap();
    assert!(big.insert(k3, conn).is_ok());
    assert!(big.has_ends(ends));
    assert!(!big.has_ends(ends.mirrored()));
    // The same loopback addresses in another network namespace are another connection.
    assert!(!big.has_ends(Ends { scope: 6, ..ends }));
    big.remove(&k3);
    assert!(!big.has_ends(ends));
    let drained = table.drain_where(|k, _| k.tgid == 1);
    assert_eq!(drained.len(), 1);
    assert_eq!(table.len(), 0);
}

#[test]
fn an_idle_connection_gets_its_endpoints_back_only_as_itself() {
    let mut table = ConnectionTable::new(2);
    let key = |fd| ConnKey { tgid: 1, fd };
    let mut tuple = tuple_v4();
    tuple.netns = 4026531840;
    let mut idle = Connection::new(7, Some(&tuple), 0);
    idle.dialed = Some(true);
    // What a data record of a connection the pipeline does not hold starts with.
    let seen_again = |conn_id| Connection::new(conn_id, None, 0);
    let taken_back = |table: &mut ConnectionTable, conn_id| {
        let mut conn = seen_again(conn_id);
        table.unpark(&key(3), &mut conn);
        (conn.local, conn.remote, conn.netns, conn.dialed)
    };
    table.park(key(3), &idle);
    // Its peer still finds it traced; the process still counts as one loupe holds.
    let ends = idle.ends().unwrap();
    assert!(table.has_ends(ends));
    assert_eq!(table.tgids(), vec![1]);
    // The same connection comes back: its endpoints and namespace, once.
    // Whether its process opened it too: a connection seen again may start with a read.
    let whole = (idle.local, idle.remote, idle.netns, Some(true));
    assert_eq!(taken_back(&mut table, 7), whole);
    assert!(!table.has_ends(ends));
    assert_eq!(taken_back(&mut table, 7), (None, None, 0, None));
    // Another connection at the key, or the key's close, takes them away.
    table.park(key(3), &idle);
    assert_eq!(taken_back(&mut table, 8), (None, None, 0, None));
    assert_eq!(taken_back(&mut table, 7), (None, None, 0, None));
    table.park(key(3), &idle);
    table.forget_parked(&key(3));
    assert_eq!(taken_back(&mut table, 7), (None, None, 0, None));
    assert!(table.endpoints.is_empty());
    // Bounded by the table's capacity; nothing kept of a connection without endpoints.
    for fd in 10..20 {
        table.park(key(fd), &Connection::new(u64::from(fd), Some(&tuple), 0));
    }
    assert_eq!(table.parked.len(), 2);
    assert_eq!(table.take_park_refusals(), 8);
    assert_eq!(table.take_park_refusals(), 0);
    table.park(key(30), &seen_again(30));
    assert!(!table.parked.contains_key(&key(30)));
    // A process's end forgets its connections'.
    table.forget_parked_of(&[1]);
    assert!(table.parked.is_empty());
    assert!(table.endpoints.is_empty());
    assert!(table.tgids().is_empty());
}

#[test]
fn a_second_fd_of_the_same_socket_is_an_alias_of_the_first() {
    let mut table = ConnectionTable::new(8);
    let key = |tgid, fd| ConnKey { tgid, fd };
    let tuple = tuple_v4();
    let mut other = tuple_v4();
    other.remote_port += 1;
    // An inetd-style server: the request read on fd 0, the answer written on fd 1.
    let stdin = Connection::new(10, Some(&tuple), 0);
    assert!(table.insert(key(1, 0), stdin).is_ok());
    let stdout = Connection::new(11, Some(&tuple), 0);
    assert!(matches!(
        table.adopt_as_alias(key(1, 1), &stdout),
        Some(None)
    ));
    assert_eq!(table.len(), 1, "no connection of its own");
    assert_eq!(table.resolve(key(1, 1), 11), (key(1, 0), 10));
    assert_eq!(table.aliases_of(&key(1, 0)), &[(key(1, 1), 11)]);
    // The fd's earlier connection (another id), and fds that are no alias, stay as they are.
    assert_eq!(table.resolve(key(1, 1), 9), (key(1, 1), 9));
    assert_eq!(table.resolve(key(1, 0), 10), (key(1, 0), 10));
    // Another process with a socket of the same ends (a fork's copy, whose records carry
    // its own tgid), another connection of the process, and one without ends: no aliases.
    let same = Connection::new(12, Some(&tuple), 0);
    assert!(table.adopt_as_alias(key(2, 1), &same).is_none());
    let another = Connection::new(13, Some(&other), 0);
    assert!(table.adopt_as_alias(key(1, 2), &another).is_none());
    assert!(
        table
            .adopt_as_alias(key(1, 3), &Connection::new(14, None, 0))
            .is_none()
    );
    // The alias's close ends nothing; the connection's close then ends it.
    assert!(table.close(&key(1, 1)).is_none());
    assert_eq!(table.resolve(key(1, 1), 11), (key(1, 1), 11));
    assert_eq!(
        table.close(&key(1, 0)).map(|(k, c)| (k, c.conn_id)),
        Some((key(1, 0), 10))
    );
    assert!(table.is_empty());
}

/// A table holding one socket of process 1 under `fds`: the first fd's connection (id 10),
/// the others its aliases (ids 11, 12 ...).
fn one_socket_under(fds: &[u32]) -> ConnectionTable {
    let mut table = ConnectionTable::new(8);
    let tuple = tuple_v4();
    for (i, &fd) in fds.iter().enumerate() {
        let key = ConnKey { tgid: 1, fd };
        let conn = Connection::new(10 + i as u64, Some(&tuple), 0);
        if i == 0 {
            assert!(table.insert(key, conn).is_ok());
        } else {
            assert!(matches!(table.adopt_as_alias(key, &conn), Some(None)));
        }
    }
    table
}

#[test]
fn a_connection_whose_own_fd_closed_first_lasts_until_its_last_alias_closes() {
    let mut table = one_socket_under(&[0, 1, 2]);
    let key = |fd| ConnKey { tgid: 1, fd };
    // stdin pointed at /dev/null after the request: the answer is still to come on fd 1.
    assert!(table.close(&key(0)).is_none());
    assert_eq!(table.resolve(key(1), 11), (key(0), 10));
    assert!(table.close(&key(2)).is_none());
    let ended = table.close(&key(1)).map(|(k, c)| (k, c.conn_id));
    assert_eq!(ended, Some((key(0), 10)));
    assert!(table.is_empty());
}

#[test]
fn an_alias_follows_its_connection_into_the_park_and_out() {
    let mut table = one_socket_under(&[0, 1]);
    let key = |fd| ConnKey { tgid: 1, fd };
    // Idle past the timeout: parked, as housekeeping does.
    let idle = table.drain_where(|_, _| true);
    let [(k, conn)] = idle.as_slice() else {
        panic!("one idle connection");
    };
    table.park(*k, conn);
    // The answer's record on fd 1 goes to the parked connection, which unparks with its ends.
    assert_eq!(table.resolve(key(1), 11), (key(0), 10));
    let mut back = Connection::new(10, None, 0);
    table.unpark(&key(0), &mut back);
    assert!(back.ends().is_some());
    assert!(table.insert(key(0), back).is_ok());
    assert_eq!(table.resolve(key(1), 11), (key(0), 10));
    // The process ends: its aliases go with what was kept of it.
    table.forget_parked_of(&[1]);
    assert_eq!(table.resolve(key(1), 11), (key(1), 11));
}

#[test]
fn an_alias_opened_over_an_unclosed_connection_hands_that_connection_back() {
    let mut table = ConnectionTable::new(8);
    let key = |fd| ConnKey { tgid: 1, fd };
    let tuple = tuple_v4();
    let mut other = tuple_v4();
    other.remote_port += 1;
    assert!(
        table
            .insert(key(0), Connection::new(10, Some(&tuple), 0))
            .is_ok()
    );
    // fd 5 held another connection whose close loupe missed.
    assert!(
        table
            .insert(key(5), Connection::new(20, Some(&other), 0))
            .is_ok()
    );
    let replaced = table.adopt_as_alias(key(5), &Connection::new(21, Some(&tuple), 0));
    assert_eq!(replaced.flatten().map(|c| c.conn_id), Some(20));
    assert_eq!(table.resolve(key(5), 21), (key(0), 10));
    // The same socket announced again at the connection's own fd keeps its aliases ...
    assert!(
        table
            .insert(key(0), Connection::new(30, Some(&tuple), 0))
            .is_ok()
    );
    assert_eq!(table.resolve(key(5), 21), (key(0), 30));
    // ... another socket there does not, and a new connection at an alias's fd ends it.
    assert!(
        table
            .insert(key(0), Connection::new(31, Some(&other), 0))
            .is_ok()
    );
    assert_eq!(table.resolve(key(5), 21), (key(5), 21));
    assert!(
        table
            .adopt_as_alias(key(6), &Connection::new(32, Some(&other), 0))
            .is_some()
    );
    assert!(
        table
            .insert(key(6), Connection::new(33, Some(&tuple), 0))
            .is_ok()
    );
    assert_eq!(table.resolve(key(6), 32), (key(6), 32));
    assert!(table.aliases_of(&key(0)).is_empty());
}

/// Each field of two IPv4 ends has bits of its own in the packed word, and together they
/// fill it: no two different ends pack alike.
#[test]
fn packed_ipv4_ends_give_every_field_its_own_bits() {
    let zero = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let ip = SocketAddrV4::new(Ipv4Addr::BROADCAST, 0);
    let port = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, u16::MAX);
    let fields = [
        pack_v4(ip, zero, 0),
        pack_v4(port, zero, 0),
        pack_v4(zero, ip, 0),
        pack_v4(zero, port, 0),
        pack_v4(zero, zero, u32::MAX),
    ];
    for (i, a) in fields.iter().enumerate() {
        for b in &fields[i + 1..] {
            assert_eq!(a & b, 0, "fields {a:#x} and {b:#x} overlap");
        }
    }
    assert_eq!(fields.iter().fold(0, |all, f| all | f), u128::MAX);
}

/// Ends hash consistently with their equality, whatever their family, and the packed
/// hash of two IPv4 ends loses no field.
#[test]
fn ends_hash_consistently_and_every_field_counts() {
    let v4 = |a: [u8; 4], p: u16| SocketAddr::from((a, p));
    let v6 = |p: u16| SocketAddr::from((Ipv6Addr::LOCALHOST, p));
    let base = Ends {
        local: v4([127, 0, 0, 1], 8080),
        remote: v4([127, 0, 0, 1], 40000),
        scope: 7,
    };
    let with_local = |local| Ends { local, ..base };
    let with_remote = |remote| Ends { remote, ..base };
    let all = [
        base,
        base.mirrored(),
        Ends { scope: 8, ..base },
        Ends { scope: 0, ..base },
        with_local(v4([127, 0, 0, 2], 8080)),
        with_local(v4([127, 0, 0, 1], 8081)),
        with_remote(v4([10, 0, 0, 1], 40000)),
        with_remote(v4([127, 0, 0, 1], 40001)),
        Ends {
            local: v6(8080),
            ..base
        },
        Ends {
            local: v6(8080),
            remote: v6(40000),
            scope: 7,
        },
        Ends {
            local: v6(8080),
            remote: v6(40000),
            scope: 8,
        },
    ];
    let mut table: HashMap<Ends, usize> = HashMap::new();
    for (i, ends) in all.iter().enumerate() {
        assert_eq!(
            table.insert(*ends, i),
            None,
            "{ends:?} collided with an earlier key"
        );
    }
    for (i, ends) in all.iter().enumerate() {
        assert_eq!(table.get(ends), Some(&i));
    }
    let hashes: HashSet<u64> = all.iter().map(|e| table.hasher().hash_one(e)).collect();
    assert_eq!(hashes.len(), all.len(), "two different ends hashed alike");
}
