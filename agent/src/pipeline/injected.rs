//! Ids the kernel put on the wire (`--inject-traceparent`): the server span ids it chose
//! when a request was read, and the client span ids it wrote into an outgoing request.
//! Each record arrives just before the data record of the same syscall; the next request
//! start on that connection (server) or thread (client) takes it.

use hashbrown::HashMap;

use loupe_common::{ClientContextEvent, ConnKey, ServerContextEvent};

use super::linking::KernelIds;
use crate::span::{SpanId, TraceId};

/// Ids not taken within this time belong to a request loupe never parsed.
const TTL_NS: u64 = 2_000_000_000;
const MAX_PENDING: usize = 16_384;

#[derive(Default)]
pub struct InjectedIds {
    servers: HashMap<ConnKey, (KernelIds, u64)>,
    clients: HashMap<(u32, u32), (KernelIds, u64)>,
}

fn ids(trace_id: [u8; 16], span_id: [u8; 8], parent: [u8; 8], flags: u8) -> KernelIds {
    KernelIds {
        trace_id: TraceId(trace_id),
        span_id: SpanId(span_id),
        parent_span_id: (parent != [0; 8]).then_some(SpanId(parent)),
        trace_flags: flags,
    }
}

impl InjectedIds {
    pub fn on_server(&mut self, ctx: &ServerContextEvent) {
        if self.servers.len() < MAX_PENDING {
            let key = ConnKey {
                tgid: ctx.tgid,
                fd: ctx.fd,
            };
            let value = ids(
                ctx.trace_id,
                ctx.span_id,
                ctx.parent_span_id,
                ctx.trace_flags,
            );
            self.servers.insert(key, (value, ctx.ts_ns));
        }
    }

    pub fn on_client(&mut self, ctx: &ClientContextEvent) {
        if self.clients.len() < MAX_PENDING {
            let value = ids(
                ctx.trace_id,
                ctx.span_id,
                ctx.parent_span_id,
                ctx.trace_flags,
            );
            self.clients.insert((ctx.tgid, ctx.tid), (value, ctx.ts_ns));
        }
    }

    pub fn server_ids(&mut self, key: ConnKey) -> Option<KernelIds> {
        self.servers.remove(&key).map(|(ids, _)| ids)
    }

    pub fn client_ids(&mut self, tgid: u32, tid: u32) -> Option<KernelIds> {
        self.clients.remove(&(tgid, tid)).map(|(ids, _)| ids)
    }

    pub fn expire(&mut self, now_ns: u64) {
        self.servers
            .retain(|_, (_, ts)| now_ns.saturating_sub(*ts) <= TTL_NS);
        self.clients
            .retain(|_, (_, ts)| now_ns.saturating_sub(*ts) <= TTL_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_common::{ConnTuple, EventKind};

    #[test]
    fn ids_are_taken_once_and_expire() {
        let mut injected = InjectedIds::default();
        injected.on_server(&ServerContextEvent {
            kind: EventKind::ServerContext as u8,
            trace_flags: 1,
            _pad: [0; 2],
            tgid: 1,
            tid: 2,
            fd: 3,
            conn_id: 4,
            ts_ns: 100,
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_span_id: [0; 8],
        });
        let key = ConnKey { tgid: 1, fd: 3 };
        let taken = injected.server_ids(key).expect("server ids");
        assert_eq!(taken.trace_id, TraceId([7; 16]));
        assert_eq!(taken.parent_span_id, None);
        assert!(injected.server_ids(key).is_none());

        injected.on_client(&ClientContextEvent {
            kind: EventKind::ClientContext as u8,
            trace_flags: 1,
            _pad: [0; 2],
            tgid: 1,
            tid: 2,
            _pad2: 0,
            ts_ns: 100,
            trace_id: [7; 16],
            span_id: [9; 8],
            parent_span_id: [8; 8],
            tuple: ConnTuple::default(),
        });
        injected.expire(100 + TTL_NS + 1);
        assert!(injected.client_ids(1, 2).is_none(), "stale ids are dropped");
    }
}
