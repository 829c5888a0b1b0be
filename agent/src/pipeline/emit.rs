//! From finished exchanges to spans in the export queue: each exchange's place in its
//! trace, sampling, request metrics, and the outbox.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use loupe_common::ConnKey;

use super::{
    OUTBOX_SPANS, Pipeline, SAMPLED,
    assemble::end_ns,
    awaiting_client::trace_awaits_client,
    connections::Ends,
    linking::{NodeRef, Parent, RequestKey, resolve},
};
use crate::{
    export::otlp::sent_by_loupe,
    process::instrumented::is_otlp_export,
    protocol::{
        Role,
        http1::{ExchangeOutcome, HttpExchange},
    },
    sampling::tail::Released,
    span::{FinishedSpan, HttpSpan, Resource, context::extract},
};

/// An exchange whose span is ready to be made, with what the span needs.
pub(super) struct ReadySpan {
    exchange: HttpExchange,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    resource: Arc<Resource>,
}

impl Pipeline {
    /// Turns pending exchanges into spans and hands them to the exporter.
    pub(super) fn emit(
        &mut self,
        key: ConnKey,
        conn_id: u64,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        ends: Option<Ends>,
    ) {
        if self.exchanges.is_empty() {
            return;
        }
        // Taken and put back drained, keeping its capacity for the next request.
        let mut exchanges = std::mem::take(&mut self.exchanges);
        if exchanges
            .iter()
            .any(|e| e.role == Role::Client && is_otlp_export(&e.request.method, &e.request.target))
        {
            self.processes.get(key.tgid, None).sdk = true;
        }
        let entry = self.processes.get(key.tgid, None);
        // One reference to the resource for the whole call, moved into the last span
        // rather than cloned for it and dropped here: each count is a locked instruction.
        // It is `None` only once the last exchange has taken it.
        let (mut resource, skip) = (
            Some(entry.resource.clone()),
            entry.sdk && self.sdk_spans == super::SdkSpans::Skip,
        );
        let mut exchanges_left = exchanges.drain(..);
        while let Some(exchange) = exchanges_left.next() {
            let last = exchanges_left.len() == 0;
            let request_key = RequestKey {
                tgid: key.tgid,
                fd: key.fd,
                conn_id,
                request_id: exchange.request_id,
            };
            let node = match self.linker.finish(&request_key) {
                Some(node) => node,
                // Every exchange's start is linked before it completes; this is a guard.
                None => {
                    let header = extract(&exchange.request.headers);
                    match exchange.role {
                        Role::Server => {
                            let traced_peer =
                                ends.filter(|ends| self.connections.has_ends(ends.mirrored()));
                            self.linker
                                .server_start(request_key, 0, 0, traced_peer, header, None)
                        }
                        Role::Client => {
                            self.linker
                                .client_start(request_key, 0, 0, None, header, None, None)
                                .0
                        }
                    };
                    match self.linker.finish(&request_key) {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            if exchange.role == Role::Server
                && sent_by_loupe(&exchange.request.method, || {
                    exchange.request.header("user-agent")
                })
            {
                self.metrics.spans_skipped_own_export.inc();
                continue;
            }
            if skip {
                // The process's SDK exports this request's span itself.
                self.metrics.spans_skipped_sdk.inc();
                continue;
            }
            let Some(span_resource) = &resource else {
                break;
            };
            if trace_awaits_client(&node) {
                // Loupe traces the client of this trace's first span: its request record
                // may still be on its way and change the trace (see `awaiting_client`).
                let ended_ns = end_ns(&exchange);
                let ready = ReadySpan {
                    exchange,
                    local,
                    remote,
                    resource: span_resource.clone(),
                };
                // The SERVER span at the top of its trace is counted apart from the spans
                // it caused.
                if node.borrow().still_awaits_client() {
                    self.metrics.server_spans_awaited_client.inc();
                } else {
                    self.metrics.spans_held_with_server.inc();
                }
                if let Some((first, node)) = self.awaiting_client.hold(ready, node, ended_ns) {
                    self.finish_awaited(first, &node);
                }
                continue;
            }
            let Some(span) = self.make_span(exchange, &node, local, remote, span_resource) else {
                continue;
            };
            let resource = if last {
                resource.take()
            } else {
                resource.clone()
            };
            if let Some(resource) = resource {
                self.hand_on(FinishedSpan { resource, span });
            }
        }
        drop(exchanges_left);
        self.exchanges = exchanges;
    }

    /// The span of `exchange`, placed in its trace by `node` and counted in the request
    /// metrics; `None` when sampled out.
    fn make_span(
        &mut self,
        exchange: HttpExchange,
        node: &NodeRef,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        resource: &Arc<Resource>,
    ) -> Option<HttpSpan> {
        let ids = resolve(node);
        match exchange.role {
            Role::Client => {
                if ids.client_start_ns(exchange.request_first_start_ns)
                    < exchange.request_first_start_ns
                {
                    self.metrics.client_span_starts_moved.inc();
                }
                // The server span below, made later, ends no later than this client's
                // read of the whole response; a client that gave up says nothing of it.
                if exchange.outcome == ExchangeOutcome::Complete {
                    node.borrow_mut().client_end_ns = exchange.response_last_end_ns;
                    if ids.client_end_ns(exchange.response_last_end_ns)
                        > exchange.response_last_end_ns
                    {
                        self.metrics.client_span_ends_moved.inc();
                    }
                }
            }
            Role::Server if ids.caller_end_ns != 0 => {
                let ended_ns = end_ns(&exchange);
                if ids.server_end_ns(exchange.request_first_end_ns, ended_ns) < ended_ns {
                    self.metrics.server_span_ends_moved.inc();
                }
            }
            // Made before the client span above it: that one, made later, ends no earlier
            // than this answer's write.
            Role::Server if exchange.outcome == ExchangeOutcome::Complete => {
                if let Parent::Local(client) = &node.borrow().parent {
                    client.borrow_mut().server_end_ns = exchange.response_last_end_ns;
                }
            }
            Role::Server => {}
        }
        let sampled = self
            .head_sampler
            .sampled(&ids.trace_id, ids.root_is_remote, ids.trace_flags);
        let mut span = self.assembler.assemble(exchange, ids, local, remote);
        self.red.record(resource, &span);
        self.created_unreported += 1;
        if !sampled {
            self.metrics.spans_sampled_out.inc();
            return None;
        }
        span.trace_flags |= SAMPLED;
        Some(span)
    }

    /// Hands a finished span to tail sampling, when on, or to the outbox.
    fn hand_on(&mut self, finished: FinishedSpan) {
        match &mut self.tail_sampler {
            Some(tail) => {
                let released = tail.offer(finished, Instant::now());
                self.release(released);
            }
            None => self.send(finished),
        }
    }

    /// Finishes a span that waited for the client of its trace's SERVER span; counts that
    /// SERVER span when no client joined it.
    fn finish_awaited(&mut self, ready: ReadySpan, node: &NodeRef) {
        let ReadySpan {
            exchange,
            local,
            remote,
            resource,
        } = ready;
        if node.borrow().still_awaits_client() {
            // Loupe traces the client at the other end, yet found no span to join. The
            // span goes in a trace of its own now, so a client record found later must
            // not move the node, nor the spans it causes, into another.
            self.metrics.server_spans_peer_unmatched.inc();
            node.borrow_mut().awaits_client = false;
        }
        if let Some(span) = self.make_span(exchange, node, local, remote, &resource) {
            self.hand_on(FinishedSpan { resource, span });
        }
    }

    /// Finishes the held spans whose trace's SERVER span has been linked to its client
    /// since, and those whose wait is over now that the reader has found the ring buffer
    /// empty.
    pub(super) fn release_awaiting_client(&mut self) {
        if self.awaiting_client.is_empty() {
            return;
        }
        let mut ready = Vec::new();
        self.awaiting_client.release(self.read_empty_ns, &mut ready);
        for (span, node) in ready {
            self.finish_awaited(span, &node);
        }
    }

    /// Finishes every held span, as the agent stops.
    pub(super) fn release_all_awaiting_client(&mut self) {
        let mut ready = Vec::new();
        self.awaiting_client.release_all(&mut ready);
        for (span, node) in ready {
            self.finish_awaited(span, &node);
        }
    }

    pub(super) fn send(&mut self, span: FinishedSpan) {
        self.outbox.push(span);
        if self.outbox.len() >= OUTBOX_SPANS {
            self.flush_outbox();
        }
    }

    /// Hands the outbox to the export queue, which drops and counts what it has no room for.
    pub(super) fn flush_outbox(&mut self) {
        self.report_created();
        if !self.outbox.is_empty() {
            let spans = std::mem::replace(&mut self.outbox, Vec::with_capacity(OUTBOX_SPANS));
            self.exporter.submit_all(spans);
        }
    }

    pub(super) fn report_created(&mut self) {
        self.metrics
            .spans_created
            .add(std::mem::take(&mut self.created_unreported));
    }

    /// Hands what tail sampling kept to the exporter and counts the rest.
    pub(super) fn release(&mut self, released: Released) {
        self.metrics.spans_tail_dropped.add(released.dropped);
        self.metrics.tail_decisions_forced.add(released.forced);
        for span in released.kept {
            self.send(span);
        }
        if let Some(tail) = &self.tail_sampler {
            self.metrics.tail_held_spans.set(tail.held().1 as u64);
        }
    }
}
