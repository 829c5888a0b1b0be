//! Typed spans built from paired requests and responses, and the trace context they carry.

pub mod context;
pub mod route;

use std::sync::Arc;

use crate::protocol::InlineText;

/// A W3C trace id. All zeroes is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id. All zeroes is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

/// The identity a span inherits from its parent, whether the parent arrived in a request
/// header (remote) or was another span loupe built (local).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C trace flags; bit 0 is "sampled".
    pub trace_flags: u8,
    /// The raw `tracestate` header, passed on untouched.
    pub trace_state: Option<String>,
    /// True when the context came from another process over the wire.
    pub is_remote: bool,
}

/// Which of the HTTP conventions' attributes spans carry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SpanAttributes {
    /// The required, conditionally required and recommended ones.
    Recommended,
    /// Those and the opt-in ones loupe knows: `client.port`, `network.local.address`,
    /// `network.local.port`, `http.request.body.size` and `http.response.body.size`.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// An HTTP span, with fields named after the stable HTTP semantic conventions.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_flags: u8,
    pub trace_state: Option<String>,
    pub kind: SpanKind,
    /// `{method} {route}`. Shared between spans of the same name, as the route is.
    pub name: Arc<str>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// `http.request.method`, normalised: unknown methods become `_OTHER`.
    pub method: &'static str,
    /// `http.request.method_original`, set only when `method` is `_OTHER`.
    pub method_original: Option<String>,
    /// `url.path`.
    pub path: InlineText,
    /// `url.query`, already redacted.
    pub query: Option<String>,
    /// `url.scheme`.
    pub scheme: &'static str,
    /// `http.route`.
    pub route: Option<Arc<str>>,
    /// `http.response.status_code`; `None` when no response was seen.
    pub status_code: Option<u16>,
    /// `network.protocol.version`: "1.0" or "1.1".
    pub protocol_version: &'static str,
    /// `server.address` / `server.port`.
    pub server_address: Option<Arc<str>>,
    pub server_port: Option<u16>,
    /// `client.address` / `client.port` (server spans).
    pub client_address: Option<Arc<str>>,
    pub client_port: Option<u16>,
    /// `network.peer.address` / `network.peer.port`.
    pub peer_address: Option<Arc<str>>,
    pub peer_port: Option<u16>,
    /// `network.local.address` / `network.local.port`.
    pub local_address: Option<Arc<str>>,
    pub local_port: Option<u16>,
    /// `user_agent.original`.
    pub user_agent: Option<Arc<str>>,
    /// `http.request.body.size` / `http.response.body.size`.
    pub request_body_size: Option<u64>,
    pub response_body_size: Option<u64>,
    /// `error.type`: the status code as a string for error statuses, or a short reason
    /// such as `connection_closed` when the exchange did not complete.
    pub error_type: Option<String>,
    /// A span of another trace this one links to (OTLP `Span.links`). Boxed: rare, and
    /// every span is moved through the pipeline's queues.
    pub link: Option<Box<SpanLink>>,
}

/// A span that another span links to: the request a call was made for, when the call
/// went out in a trace of its own (see `pipeline::linking`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl HttpSpan {
    /// Leaves out the attributes the conventions make opt-in (see [`SpanAttributes::All`]).
    pub fn clear_opt_in(&mut self) {
        self.client_port = None;
        self.local_address = None;
        self.local_port = None;
        self.request_body_size = None;
        self.response_body_size = None;
    }

    /// `url.full` of a client span, which the conventions require there:
    /// `scheme://host[:port]path[?query]`, the port left out when it is the scheme's
    /// default, an IPv6 address bracketed, the query as redacted. A request that named its
    /// absolute URL (one sent to a proxy) has that URL. `None` for server spans, when no
    /// host is known, and for targets that are no URL path (`CONNECT host:port`,
    /// `OPTIONS *`).
    pub fn url_full(&self) -> Option<String> {
        use std::fmt::Write as _;
        if self.kind != SpanKind::Client {
            return None;
        }
        let absolute = ["http://", "https://"].iter().any(|scheme| {
            self.path
                .get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        });
        let mut url = String::new();
        if !absolute {
            if !self.path.starts_with('/') {
                return None;
            }
            let host = self.server_address.as_deref()?;
            // An IPv6 address is bracketed in a URL.
            let _ = if host.contains(':') {
                write!(url, "{}://[{host}]", self.scheme)
            } else {
                write!(url, "{}://{host}", self.scheme)
            };
            let default_port = if self.scheme == "https" { 443 } else { 80 };
            if let Some(port) = self.server_port.filter(|&p| p != default_port) {
                let _ = write!(url, ":{port}");
            }
        }
        url.push_str(&self.path);
        if let Some(query) = &self.query {
            url.push('?');
            url.push_str(query);
        }
        Some(url)
    }

    /// Span status per the HTTP conventions: 5xx is an error on both sides, 4xx only on
    /// clients, and an exchange that did not complete is an error.
    pub fn is_error(&self) -> bool {
        match self.status_code {
            Some(code) if code >= 500 => true,
            Some(code) if code >= 400 => self.kind == SpanKind::Client,
            Some(_) => false,
            None => self.error_type.is_some(),
        }
    }
}

/// A resource attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

/// The resource of one traced process: who emitted the spans.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// `service.name`, also kept among `attributes`.
    pub service_name: String,
    pub attributes: Vec<(String, AttrValue)>,
}

/// A span ready for export, with the resource of the process it belongs to.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub resource: Arc<Resource>,
    pub span: HttpSpan,
}
