//! Span assembly: one paired request/response becomes one typed HTTP span with the
//! stable HTTP semantic conventions, its timing in Unix time, and its trace context.

use std::net::SocketAddr;

use crate::{
    events::clock::Clock,
    protocol::{
        InlineText, Role,
        http1::{ExchangeOutcome, HttpExchange, convention_method},
    },
    span::{HttpSpan, SpanAttributes, SpanKind, route::RouteMatcher},
};

use super::{linking::ResolvedIds, texts::TextCache};

/// Longest `user_agent.original` exported; the rest is cut.
const MAX_USER_AGENT: usize = 256;

pub struct SpanAssembler {
    routes: RouteMatcher,
    clock: Clock,
    texts: TextCache,
    scratch: String,
    opt_in: bool,
}

impl SpanAssembler {
    /// An assembler that fills every attribute it can (`SpanAttributes::All`).
    pub fn new(routes: RouteMatcher, clock: Clock) -> Self {
        Self {
            routes,
            clock,
            texts: TextCache::default(),
            scratch: String::new(),
            opt_in: true,
        }
    }

    pub fn with_attributes(mut self, set: SpanAttributes) -> Self {
        self.opt_in = set == SpanAttributes::All;
        self
    }

    /// Uses `clock` as it is, where [`Self::set_clock`] keeps the one it has through a
    /// re-measure's jitter: for the replay, whose clock is fixed.
    pub fn use_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Takes a fresh measure of the clock offset (see [`Clock::updated`]).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = self.clock.updated(clock);
    }

    pub fn assemble(
        &mut self,
        mut exchange: HttpExchange,
        ids: ResolvedIds,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    ) -> HttpSpan {
        let (path, query) = split_target(std::mem::take(&mut exchange.request.target));
        let request = &exchange.request;
        let kind = match exchange.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        };
        let (mut start_ns, mut end_ns) = timing(&exchange);
        match exchange.role {
            Role::Client => {
                start_ns = ids.client_start_ns(start_ns);
                if exchange.outcome == ExchangeOutcome::Complete {
                    end_ns = ids.client_end_ns(end_ns);
                }
            }
            Role::Server => end_ns = ids.server_end_ns(start_ns, end_ns),
        }
        let (method, method_original) = normalise_method(&request.method);
        // The name and the route repeat across requests: both are built in a reused
        // buffer and shared through the text cache, not allocated per span. Only server
        // spans carry the route.
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.push_str(method);
        scratch.push(' ');
        let route_start = scratch.len();
        self.routes.write_route(&path, scratch);
        let name = self.texts.name(scratch);
        let route = (kind == SpanKind::Server).then(|| self.texts.name(&scratch[route_start..]));
        let status_code = exchange.response.as_ref().map(|r| r.status);

        let ResolvedIds {
            trace_id,
            span_id,
            parent_span_id,
            trace_flags,
            trace_state,
            link,
            ..
        } = ids;

        let host = request.header("host").and_then(parse_host);
        let host_name = host.map(|h| self.texts.text(h.0));
        // The local address is opt-in (`network.local.address`), and otherwise only names
        // a server reached without a Host header: looked up, and its shared text counted
        // once more, only then.
        let local_ip = if self.opt_in || (kind == SpanKind::Server && host_name.is_none()) {
            local.map(|a| self.texts.ip(a.ip()))
        } else {
            None
        };
        let remote_ip = remote.map(|a| self.texts.ip(a.ip()));
        let (server_address, server_port, client_address, client_port) = match kind {
            SpanKind::Server => (
                host_name.or_else(|| local_ip.clone()),
                host.as_ref()
                    .and_then(|h| h.1)
                    .or_else(|| local.map(|a| a.port())),
                remote_ip.clone(),
                remote.map(|a| a.port()),
            ),
            SpanKind::Client => (
                host_name.or_else(|| remote_ip.clone()),
                host.as_ref()
                    .and_then(|h| h.1)
                    .or_else(|| remote.map(|a| a.port())),
                None,
                None,
            ),
        };

        let error_type = match (status_code, exchange.outcome) {
            (Some(code), _) if code >= 500 || (code >= 400 && kind == SpanKind::Client) => {
                Some(code.to_string())
            }
            (Some(_), _) => None,
            (None, ExchangeOutcome::ResponseIncomplete) => Some("response_incomplete".into()),
            (None, ExchangeOutcome::NoResponse) => Some("no_response".into()),
            // The response went by but loupe could not read it: the request's fate is
            // unknown, which is loupe's loss (counted), not the service's error.
            (None, ExchangeOutcome::ResponseLost | ExchangeOutcome::Complete) => None,
        };

        let mut span = HttpSpan {
            trace_id,
            span_id,
            parent_span_id,
            trace_flags,
            trace_state,
            kind,
            name,
            start_unix_ns: self.clock.to_unix_ns(start_ns),
            end_unix_ns: self.clock.to_unix_ns(end_ns.max(start_ns)),
            method,
            method_original,
            path,
            query: query.map(|q| redact_query(&q)),
            scheme: "http",
            route,
            status_code,
            protocol_version: protocol_version(request.minor_version),
            server_address,
            server_port,
            client_address,
            client_port,
            peer_address: remote_ip,
            peer_port: remote.map(|a| a.port()),
            local_address: local_ip,
            local_port: local.map(|a| a.port()),
            // Shared, like the addresses: a client sends the same one with every request.
            user_agent: request
                .header("user-agent")
                .map(|ua| self.texts.text(cut_at(ua, MAX_USER_AGENT))),
            request_body_size: (request.body_len > 0).then_some(request.body_len),
            response_body_size: exchange
                .response
                .as_ref()
                .filter(|r| r.body_len > 0)
                .map(|r| r.body_len),
            error_type,
            link: link.map(Box::new),
        };
        if !self.opt_in {
            span.clear_opt_in();
        }
        span
    }
}

/// A server span runs from the request's first byte in hand (the first read's return)
/// to the response's last byte written; a client span from when its first write sent
/// (or began, where writes are hooked at entry) to the return of the last read. Without
/// a response, the span ends when the connection closed, or else with the request.
fn timing(exchange: &HttpExchange) -> (u64, u64) {
    let start = match exchange.role {
        Role::Server => exchange.request_first_end_ns,
        Role::Client => exchange.request_first_start_ns,
    };
    (start, end_ns(exchange))
}

/// When the span of `exchange` ends (see [`timing`]).
pub(super) fn end_ns(exchange: &HttpExchange) -> u64 {
    if exchange.response_last_end_ns > 0 {
        exchange.response_last_end_ns
    } else if exchange.close_ns > 0 {
        exchange.close_ns
    } else {
        exchange.request_last_end_ns
    }
}

/// Splits a request target into path and query; absolute-form targets (proxies) lose
/// their scheme and authority.
fn split_target(target: InlineText) -> (InlineText, Option<String>) {
    // Origin-form (`/path`), nearly every request, has no authority to look for, and
    // without query or fragment it is the path as it was parsed.
    if target.starts_with('/') && !target.contains(['?', '#']) {
        return (target, None);
    }
    let target = target.as_str();
    let absolute = if target.starts_with('/') {
        None
    } else {
        target.find("://")
    };
    let target = match absolute {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    let target = target.split('#').next().unwrap_or(target);
    match target.split_once('?') {
        Some((path, query)) => (path.into(), Some(query.to_string())),
        None => (target.into(), None),
    }
}

fn normalise_method(method: &str) -> (&'static str, Option<String>) {
    match convention_method(method) {
        Some(known) => (known, None),
        None => ("_OTHER", Some(truncate(method, 32))),
    }
}

/// httparse only accepts HTTP/1.0 and HTTP/1.1.
fn protocol_version(minor: u8) -> &'static str {
    if minor == 0 { "1.0" } else { "1.1" }
}

/// Keeps the keys of a query string and replaces every value: values often carry tokens,
/// e-mail addresses or session ids. Best effort for what is not `key=value`:
/// - an item without `=` may be a flag (`?wsdl`, `?debug`) or a bare value (`?3f9a…`, a
///   one-time code): it is kept only when it reads like a flag, up to 32 ASCII letters,
///   `-`, `_` or `.`;
/// - an item whose key does not read like one (over 64 bytes, or other than ASCII letters,
///   digits, `-`, `_`, `.`, `[`, `]`, `%`), or whose value starts with `=` (a base64 token's
///   padding, `?dG9rZW4==`), is a value too;
/// - so is an item with an empty value (`?dG9rZW4=`, `?482913=`) whose key does not read
///   like a flag.
///
/// Either becomes `REDACTED` whole; empty items stay empty.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|item| match item.split_once('=') {
            Some((key, value))
                if reads_like_a_key(key)
                    && !value.starts_with('=')
                    && (!value.is_empty() || reads_like_a_flag(key)) =>
            {
                format!("{key}=REDACTED")
            }
            // An empty item reads like a flag too, and stays empty.
            None if reads_like_a_flag(item) => item.to_string(),
            _ => "REDACTED".to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn reads_like_a_flag(item: &str) -> bool {
    item.len() <= 32
        && item
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'_' | b'.'))
}

fn reads_like_a_key(key: &str) -> bool {
    key.len() <= 64
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'[' | b']' | b'%')
        })
}

/// `host[:port]` or `[v6]:port` from a Host header.
fn parse_host(value: &str) -> Option<(&str, Option<u16>)> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok())),
        _ => Some((value, None)),
    }
}

fn truncate(text: &str, max: usize) -> String {
    cut_at(text, max).to_string()
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_at(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
#[path = "assemble_tests.rs"]
mod tests;
