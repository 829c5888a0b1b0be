//! Shared text for span attributes that repeat across requests: peer and local addresses,
//! Host header names, user agents, span names and routes. Formatting an address for every
//! span was a seventh of the reader thread's time; a lookup here is a hash of a few bytes
//! and a reference count.

use std::{net::IpAddr, sync::Arc};

use hashbrown::{HashMap, HashSet};

/// Entries kept per table; past it the table starts over, so hostile traffic with ever
/// new addresses, Host values, user agents or paths costs memory up to this bound only.
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct TextCache {
    ips: HashMap<IpAddr, Arc<str>>,
    strings: HashSet<Arc<str>>,
    /// Span names and routes, apart: a service whose paths defeat the route heuristic
    /// (`/wiki/<title>`) fills this table with new ones, and starting it over then does
    /// not cost the hosts and user agents theirs.
    names: HashSet<Arc<str>>,
}

impl TextCache {
    pub fn ip(&mut self, ip: IpAddr) -> Arc<str> {
        let ips = &mut self.ips;
        if let Some(text) = ips.get(&ip) {
            return text.clone();
        }
        if ips.len() >= MAX_ENTRIES {
            ips.clear();
        }
        let text: Arc<str> = ip.to_string().into();
        ips.insert(ip, text.clone());
        text
    }

    /// Host names and user agents.
    pub fn text(&mut self, value: &str) -> Arc<str> {
        shared(&mut self.strings, value)
    }

    /// Span names and routes.
    pub fn name(&mut self, value: &str) -> Arc<str> {
        shared(&mut self.names, value)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize, usize) {
        (self.ips.len(), self.strings.len(), self.names.len())
    }
}

/// `value` from `table`, added when missing.
fn shared(table: &mut HashSet<Arc<str>>, value: &str) -> Arc<str> {
    if let Some(text) = table.get(value) {
        return text.clone();
    }
    if table.len() >= MAX_ENTRIES {
        table.clear();
    }
    let text: Arc<str> = value.into();
    table.insert(text.clone());
    text
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn repeats_share_one_allocation() {
        let mut cache = TextCache::default();
        let a = cache.ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let b = cache.ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(&*a, "10.0.0.1");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*cache.ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), "::1");
        let h1 = cache.text("shop.example");
        assert!(Arc::ptr_eq(&h1, &cache.text("shop.example")));
    }

    #[test]
    fn bounded_under_ever_new_values() {
        let mut cache = TextCache::default();
        for i in 0..(3 * MAX_ENTRIES as u32) {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            assert_eq!(*cache.ip(ip), *ip.to_string());
            let host = format!("h{i}");
            assert_eq!(&*cache.text(&host), host);
            let name = format!("GET /wiki/page-{i}");
            assert_eq!(&*cache.name(&name), name);
        }
        let (ips, strings, names) = cache.len();
        assert!(ips <= MAX_ENTRIES && strings <= MAX_ENTRIES && names <= MAX_ENTRIES);
    }

    #[test]
    fn new_names_do_not_push_out_hosts() {
        let mut cache = TextCache::default();
        let host = cache.text("shop.example");
        for i in 0..(2 * MAX_ENTRIES as u32) {
            cache.name(&format!("GET /wiki/page-{i}"));
        }
        assert!(Arc::ptr_eq(&host, &cache.text("shop.example")));
    }
}
