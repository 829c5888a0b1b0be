//! Pairing: requests wait in arrival order; each final response answers the oldest one.

use std::collections::VecDeque;

use super::body::{BodyMode, Chunked};
use super::head::{Framing, RequestHead, ResponseHead};
use super::stream::{ChunkMeta, Closed, Cursor, Event, Progress, StreamParser};
use super::{
    ExchangeOutcome, Http1Limits, HttpExchange, HttpRequest, HttpResponse, RequestStart,
    SessionStats,
};
use crate::protocol::{Chunk, Direction, Role};
use crate::span::context::PROPAGATION_HEADERS;

/// A request waiting for its final response.
struct PendingRequest {
    id: u64,
    request: HttpRequest,
    first: ChunkMeta,
    last_end_ns: u64,
    /// Bytes the response stream had skipped out of sync when this request arrived.
    response_skip_mark: u64,
}

/// The response the response stream is reading.
struct ResponseInProgress {
    /// The request it answers; `None` for interim (1xx) responses and responses nobody asked
    /// for.
    request_id: Option<u64>,
    response: HttpResponse,
    first: ChunkMeta,
    interim: bool,
    /// After it, the connection no longer carries HTTP.
    tunnel: bool,
}

/// HTTP/1.x state of one connection, both directions.
pub struct Http1Session {
    role: Role,
    limits: Http1Limits,
    requests: StreamParser<RequestHead>,
    responses: StreamParser<ResponseHead>,
    pending: VecDeque<PendingRequest>,
    next_id: u64,
    /// The request whose body the request stream is reading.
    current_request: Option<u64>,
    current_response: Option<ResponseInProgress>,
    stats: SessionStats,
    /// Request heads seen since the last [`Http1Session::take_started`].
    started: Vec<RequestStart>,
}

impl Http1Session {
    pub fn new(role: Role, limits: Http1Limits) -> Self {
        Self {
            role,
            limits,
            requests: StreamParser::new(),
            responses: StreamParser::new(),
            pending: VecDeque::new(),
            next_id: 0,
            current_request: None,
            current_response: None,
            stats: SessionStats::default(),
            started: Vec::new(),
        }
    }

    /// Whether the response stream still knows where each response begins and ends.
    pub fn responses_in_step(&self) -> bool {
        self.responses.in_step()
    }

    /// The connection switched to another protocol (101 Switching Protocols, or a
    /// tunnel after CONNECT): nothing more on it is HTTP.
    pub fn tunnelled(&self) -> bool {
        self.requests.is_passthrough()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Requests still waiting for their final response.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// The request a read of requests is for once fed: the one whose body is being read,
    /// else the last whose head was read.
    pub fn request_being_read(&self) -> Option<u64> {
        self.current_request
            .or_else(|| self.pending.back().map(|r| r.id))
    }

    /// The request the next response bytes answer: the oldest still waiting.
    pub fn request_awaiting_response(&self) -> Option<u64> {
        self.pending.front().map(|r| r.id)
    }

    /// Bytes of incomplete heads held, both directions together; each direction holds fewer
    /// than [`Http1Limits::max_header_bytes`].
    pub fn buffered_head_bytes(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    fn request_direction(&self) -> Direction {
        match self.role {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }

    /// Feeds one captured syscall; exchanges whose response completed are appended to `out`
    /// in request order.
    pub fn on_chunk(&mut self, chunk: &Chunk, out: &mut Vec<HttpExchange>) {
        if chunk.total_len == 0 && chunk.bytes.is_empty() {
            return;
        }
        let mut cur = Cursor::new(chunk);
        if chunk.direction == self.request_direction() {
            while let Some(event) = self.requests.poll(&mut cur, &self.limits, &mut self.stats) {
                match event {
                    Event::Head { head, first } => self.on_request_head(head, first, out),
                    Event::End(progress) => self.on_request_end(progress),
                }
            }
        } else {
            while let Some(event) = self.responses.poll(&mut cur, &self.limits, &mut self.stats) {
                match event {
                    Event::Head { head, first } => self.on_response_head(head, first),
                    Event::End(progress) => self.on_response_end(progress, out),
                }
            }
        }
    }

    /// Bytes moved in `direction` that were never reported, not even as a count (the kernel
    /// dropped events): that direction stops trusting its framing until the next message
    /// start. When the count is known, prefer feeding a chunk with no bytes and that
    /// `total_len`, which keeps length framing exact.
    #[cfg(test)]
    pub fn on_lost(&mut self, direction: Direction) {
        if direction == self.request_direction() {
            self.requests.lose_sync(&mut self.stats);
        } else {
            self.responses.lose_sync(&mut self.stats);
        }
    }

    /// The connection closed (or its process exited): what is in flight is emitted, a response
    /// cut short as `ResponseIncomplete`, requests never answered as `NoResponse`.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<HttpExchange>) {
        if self.front_response_lost() {
            self.emit_front_lost(ts_ns, out);
        }
        match self.requests.close(&self.limits, &mut self.stats) {
            Closed::Ended { progress, .. } => self.on_request_end(progress),
            Closed::PartialHead {
                head: Some(head),
                first,
                last,
            } => {
                self.push_request(head.request, first, last.end_ns);
            }
            Closed::PartialHead { head: None, .. } | Closed::Nothing => {}
        }
        self.current_request = None;

        let answered = match self.responses.close(&self.limits, &mut self.stats) {
            Closed::Ended { progress, complete } => self.current_response.take().and_then(|r| {
                let outcome = if complete {
                    ExchangeOutcome::Complete
                } else {
                    ExchangeOutcome::ResponseIncomplete
                };
                (!r.interim).then_some((r, progress, outcome))
            }),
            Closed::PartialHead {
                head: Some(head),
                first,
                last,
            } => {
                let request_id = self.pending.front().map(|r| r.id);
                Some((
                    ResponseInProgress {
                        request_id,
                        response: head.response,
                        first,
                        interim: false,
                        tunnel: false,
                    },
                    Progress::at_head(last),
                    ExchangeOutcome::ResponseIncomplete,
                ))
            }
            Closed::PartialHead { head: None, .. } | Closed::Nothing => None,
        };
        self.current_response = None;
        if let Some((response, progress, outcome)) = answered {
            self.complete_front(response, progress, outcome, ts_ns, out);
        }

        while let Some(request) = self.pending.pop_front() {
            self.stats.requests_without_response += 1;
            out.push(self.exchange(request, None, ExchangeOutcome::NoResponse, ts_ns));
        }
        self.requests = StreamParser::new();
        self.responses = StreamParser::new();
    }

    /// Counts since the last call.
    pub fn take_stats(&mut self) -> SessionStats {
        std::mem::take(&mut self.stats)
    }

    /// Moves the requests whose head was seen since the last call onto `to`, in order.
    /// Bounded by the pipelining limit when nobody takes them. Appending keeps both
    /// buffers' capacity: a fresh vector per request was an allocation per request.
    pub fn append_started(&mut self, to: &mut Vec<RequestStart>) {
        to.append(&mut self.started);
    }

    #[cfg(test)]
    pub fn take_started(&mut self) -> Vec<RequestStart> {
        std::mem::take(&mut self.started)
    }

    fn on_request_head(
        &mut self,
        head: RequestHead,
        first: ChunkMeta,
        out: &mut Vec<HttpExchange>,
    ) {
        // A new request means a response that could only end at close has ended.
        if let Some(progress) = self.responses.finish_open_ended(&mut self.stats) {
            self.on_response_end(progress, out);
        }
        if self.front_response_lost() {
            self.emit_front_lost(0, out);
        }
        let (mode, declared) = match head.framing {
            Framing::Unspecified => (BodyMode::Length(0), None),
            Framing::Length(n) => (BodyMode::Length(n), Some(n)),
            Framing::Chunked => (BodyMode::Chunked(Chunked::default()), None),
            // A request cannot be read until close; its end is unknown.
            Framing::OtherCoding => (BodyMode::LostSync, None),
            Framing::Invalid => {
                self.stats.parse_errors += 1;
                (BodyMode::LostSync, None)
            }
        };
        let id = self.push_request(head.request, first, first.end_ns);
        self.current_request = Some(id);
        self.requests.begin_body(mode, declared);
    }

    /// Whether the oldest request's response went by unrecognised: the response direction is
    /// skipping bytes it cannot parse and has skipped some since that request arrived. Without
    /// pipelining a new request (or the close) means that response is over; pairing the next
    /// response with this request would shift every later pair by one.
    fn front_response_lost(&self) -> bool {
        match (self.responses.desynced_skipped(), self.pending.front()) {
            (Some(skipped), Some(front)) => front.response_skip_mark < skipped,
            _ => false,
        }
    }

    fn emit_front_lost(&mut self, close_ns: u64, out: &mut Vec<HttpExchange>) {
        if let Some(request) = self.pop_front() {
            self.stats.requests_without_response += 1;
            out.push(self.exchange(request, None, ExchangeOutcome::ResponseLost, close_ns));
        }
    }

    fn push_request(&mut self, request: HttpRequest, first: ChunkMeta, last_end_ns: u64) -> u64 {
        while self.pending.len() >= self.limits.max_pending_requests.max(1) {
            self.pending.pop_front();
            self.stats.dropped_requests += 1;
            self.stats.requests_without_response += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.started.len() >= self.limits.max_pending_requests.max(1) {
            self.started.remove(0);
        }
        self.started.push(RequestStart {
            request_id: id,
            tid: first.tid,
            start_ns: first.start_ns,
            end_ns: first.end_ns,
            // Only what linking reads: cloning every header of every request would be the
            // hot path's biggest allocation.
            headers: request
                .headers
                .iter()
                .filter(|(name, _)| PROPAGATION_HEADERS.contains(&name.as_ref()))
                .cloned()
                .collect(),
        });
        self.pending.push_back(PendingRequest {
            id,
            request,
            first,
            last_end_ns,
            response_skip_mark: self.responses.skipped(),
        });
        id
    }

    fn on_request_end(&mut self, progress: Progress) {
        let Some(id) = self.current_request.take() else {
            return;
        };
        if let Some(pending) = self.pending.iter_mut().rev().find(|r| r.id == id) {
            pending.request.body_len = progress.body_len;
            pending.last_end_ns = progress.last_end_ns;
        }
    }

    fn on_response_head(&mut self, head: ResponseHead, first: ChunkMeta) {
        // A response means the request before it was read in full, even if its framing was
        // lost.
        if let Some(progress) = self.requests.finish_open_ended(&mut self.stats) {
            self.on_request_end(progress);
        }
        let status = head.response.status;
        // 101 is final: the connection switches protocol after it.
        let interim = (100..200).contains(&status) && status != 101;
        let request = if interim { None } else { self.pending.front() };
        if !interim && request.is_none() {
            self.stats.responses_without_request += 1;
        }
        let method = request.map(|r| r.request.method.as_ref());
        let tunnel = status == 101 || (method == Some("CONNECT") && (200..300).contains(&status));
        let no_body = interim || status == 204 || status == 304 || method == Some("HEAD");
        let (mode, declared) = if tunnel {
            (BodyMode::Tunnel, None)
        } else if no_body {
            (BodyMode::Length(0), None)
        } else {
            match head.framing {
                Framing::Length(n) => (BodyMode::Length(n), Some(n)),
                Framing::Chunked => (BodyMode::Chunked(Chunked::default()), None),
                Framing::Unspecified | Framing::OtherCoding => (BodyMode::UntilClose, None),
                Framing::Invalid => {
                    self.stats.parse_errors += 1;
                    (BodyMode::LostSync, None)
                }
            }
        };
        self.current_response = Some(ResponseInProgress {
            request_id: request.map(|r| r.id),
            response: head.response,
            first,
            interim,
            tunnel,
        });
        self.responses.begin_body(mode, declared);
    }

    fn on_response_end(&mut self, progress: Progress, out: &mut Vec<HttpExchange>) {
        let Some(response) = self.current_response.take() else {
            return;
        };
        if response.interim {
            return;
        }
        if response.tunnel {
            self.requests.set_passthrough();
            self.current_request = None;
        }
        self.complete_front(response, progress, ExchangeOutcome::Complete, 0, out);
    }

    /// Emits the oldest request with this response, if the response answers it (it may have
    /// been dropped past the pipelining limit meanwhile).
    fn complete_front(
        &mut self,
        mut response: ResponseInProgress,
        progress: Progress,
        outcome: ExchangeOutcome,
        close_ns: u64,
        out: &mut Vec<HttpExchange>,
    ) {
        let answers_front = response.request_id.is_some()
            && self.pending.front().map(|r| r.id) == response.request_id;
        if !answers_front {
            return;
        }
        let Some(request) = self.pop_front() else {
            return;
        };
        response.response.body_len = progress.body_len;
        let mut exchange = self.exchange(request, Some(response.response), outcome, close_ns);
        exchange.response_first_start_ns = response.first.start_ns;
        exchange.response_last_end_ns = progress.last_end_ns;
        exchange.response_tid = progress.last_tid;
        out.push(exchange);
    }

    /// The oldest request, with its body so far when it is still being read (answered
    /// before its body was fully read, as early error responses are).
    fn pop_front(&mut self) -> Option<PendingRequest> {
        let mut request = self.pending.pop_front()?;
        if self.current_request == Some(request.id)
            && let Some(so_far) = self.requests.progress()
        {
            request.request.body_len = so_far.body_len;
            request.last_end_ns = so_far.last_end_ns;
        }
        Some(request)
    }

    fn exchange(
        &self,
        request: PendingRequest,
        response: Option<HttpResponse>,
        outcome: ExchangeOutcome,
        close_ns: u64,
    ) -> HttpExchange {
        HttpExchange {
            role: self.role,
            request: request.request,
            response,
            request_first_start_ns: request.first.start_ns,
            request_first_end_ns: request.first.end_ns,
            request_last_end_ns: request.last_end_ns,
            response_first_start_ns: 0,
            response_last_end_ns: 0,
            request_tid: request.first.tid,
            response_tid: 0,
            outcome,
            close_ns,
            request_id: request.id,
        }
    }
}
