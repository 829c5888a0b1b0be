//! The identity of one series: instrument, resource and attributes. Lookups use a borrowed
//! view of a span's fields, so recording a request allocates nothing unless it starts a new
//! series.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use crate::span::{HttpSpan, Resource, SpanKind};

/// The route of requests that arrived after their service already had the most routes the
/// cardinality guard allows.
pub const OTHER_ROUTE: &str = "{other}";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    /// `http.server.request.duration`
    Server,
    /// `http.client.request.duration`
    Client,
}

impl Instrument {
    pub fn of(kind: SpanKind) -> Self {
        match kind {
            SpanKind::Server => Instrument::Server,
            SpanKind::Client => Instrument::Client,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Instrument::Server => 0,
            Instrument::Client => 1,
        }
    }
}

/// A series as stored.
#[derive(Debug)]
pub struct SeriesKey {
    pub instrument: Instrument,
    pub resource: Arc<Resource>,
    pub method: String,
    pub scheme: String,
    /// `http.route` on servers, `url.template` on clients; `{other}` when folded.
    pub route: Option<String>,
    pub status_code: Option<u16>,
    pub error_type: Option<String>,
    /// Clients only.
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    /// The series that takes what the series limit kept from having its own; all the
    /// attributes above are empty on it.
    pub overflow: bool,
}

/// A series as looked up: the same fields, borrowed from a span.
#[derive(Clone, Copy, Debug)]
pub struct SeriesRef<'a> {
    pub instrument: Instrument,
    pub resource: &'a Arc<Resource>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub route: Option<&'a str>,
    pub status_code: Option<u16>,
    pub error_type: Option<&'a str>,
    pub server_address: Option<&'a str>,
    pub server_port: Option<u16>,
    pub overflow: bool,
}

impl<'a> SeriesRef<'a> {
    /// The series a span belongs to, before the cardinality guard.
    pub fn of(resource: &'a Arc<Resource>, span: &'a HttpSpan) -> Self {
        let instrument = Instrument::of(span.kind);
        let (server_address, server_port) = match instrument {
            // A server's own address would only repeat what the resource says.
            Instrument::Server => (None, None),
            Instrument::Client => (span.server_address.as_deref(), span.server_port),
        };
        Self {
            instrument,
            resource,
            method: span.method,
            scheme: span.scheme,
            route: route_of(span),
            status_code: span.status_code,
            error_type: span.error_type.as_deref(),
            server_address,
            server_port,
            overflow: false,
        }
    }

    /// The overflow series of this one's instrument and resource.
    pub fn overflow(self) -> Self {
        Self {
            method: "",
            scheme: "",
            route: None,
            status_code: None,
            error_type: None,
            server_address: None,
            server_port: None,
            overflow: true,
            ..self
        }
    }

    pub fn to_owned_key(self) -> SeriesKey {
        SeriesKey {
            instrument: self.instrument,
            resource: Arc::clone(self.resource),
            method: self.method.to_owned(),
            scheme: self.scheme.to_owned(),
            route: self.route.map(str::to_owned),
            status_code: self.status_code,
            error_type: self.error_type.map(str::to_owned),
            server_address: self.server_address.map(str::to_owned),
            server_port: self.server_port,
            overflow: self.overflow,
        }
    }
}

/// The route a span was named with: `http.route` on servers; on clients, whose spans carry
/// no `http.route`, the template in the span name after the method.
fn route_of(span: &HttpSpan) -> Option<&str> {
    if let Some(route) = &span.route {
        return Some(route);
    }
    span.name
        .strip_prefix(span.method)
        .and_then(|rest| rest.strip_prefix(' '))
        .filter(|route| !route.is_empty())
}

impl SeriesKey {
    pub fn view(&self) -> SeriesRef<'_> {
        SeriesRef {
            instrument: self.instrument,
            resource: &self.resource,
            method: &self.method,
            scheme: &self.scheme,
            route: self.route.as_deref(),
            status_code: self.status_code,
            error_type: self.error_type.as_deref(),
            server_address: self.server_address.as_deref(),
            server_port: self.server_port,
            overflow: self.overflow,
        }
    }
}

impl PartialEq for SeriesRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.instrument == other.instrument
            && self.method == other.method
            && self.route == other.route
            && self.status_code == other.status_code
            && self.error_type == other.error_type
            && self.server_address == other.server_address
            && self.server_port == other.server_port
            && self.overflow == other.overflow
            && self.scheme == other.scheme
            // The pointer test is the common case; equal content covers a process whose
            // resource was built again (after an exec of the same program).
            && (Arc::ptr_eq(self.resource, other.resource) || self.resource == other.resource)
    }
}

/// Hashes what `eq` compares, the resource by its service name only: resources with equal
/// content have equal names, and the few processes of one service part on `eq`.
impl Hash for SeriesRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.instrument.hash(state);
        self.resource.service_name.hash(state);
        self.method.hash(state);
        self.scheme.hash(state);
        self.route.hash(state);
        self.status_code.hash(state);
        self.error_type.hash(state);
        self.server_address.hash(state);
        self.server_port.hash(state);
        self.overflow.hash(state);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl hashbrown::Equivalent<Arc<SeriesKey>> for SeriesRef<'_> {
    fn equivalent(&self, key: &Arc<SeriesKey>) -> bool {
        *self == key.view()
    }
}
