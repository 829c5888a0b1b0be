//! Picking spans and their attributes out of what the OTLP receiver got.

use loupe_integration_tests::otlp_receiver::ReceivedSpan;

/// The SERVER spans of `service`.
pub fn server_spans(spans: &[ReceivedSpan], service: &str) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| {
            s.kind == "server"
                && s.resource.get("service.name").map(String::as_str) == Some(service)
        })
        .cloned()
        .collect()
}

/// The span named `name`; panics with every span's name when there is none.
pub fn find<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span named {name:?} in {:#?}", names(spans)))
}

/// Each span's kind and name, for failure messages.
pub fn names(spans: &[ReceivedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {}", s.kind, s.name))
        .collect()
}

/// The value of attribute `key`; panics with the span's attributes when it has none.
pub fn attr<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| {
            panic!(
                "span {:?} has no attribute {key}: {:?}",
                span.name, span.attributes
            )
        })
}

/// Panics when a server span starts before its parent, a client span, or ends after it: a
/// request goes out before its server can read it, and the client has read the whole
/// response when its span ends, so a right trace has neither. The send times the probes
/// read from the clients' sockets must also seldom need moving to keep that order
/// (`agent`'s `loupe_client_span_starts_moved_total`, at most one client span in 50, and
/// one in a run of fewer, which a strict one-in-50 would not allow).
pub fn assert_clients_cover_their_servers(spans: &[ReceivedSpan], agent: &super::Agent) {
    let moved = *agent
        .metrics()
        .get("loupe_client_span_starts_moved_total")
        .expect("the moved-start counter is exported");
    let clients = spans.iter().filter(|s| s.kind == "client").count();
    assert!(
        moved <= (clients / 50).max(1) as f64,
        "{moved} of {clients} client spans started after their server span"
    );
    let outside = servers_outside_their_client(spans);
    assert!(
        outside.is_empty(),
        "{} server spans start before or end after their client span \
         ((client start, end), (server start, end)): {:?}",
        outside.len(),
        &outside[..outside.len().min(5)]
    );
}

/// A span's start and end.
type Times = (u64, u64);

/// Every server span whose parent, a client span, starts after it or ends before it:
/// `(the client's times, the server's)`.
fn servers_outside_their_client(spans: &[ReceivedSpan]) -> Vec<(Times, Times)> {
    let clients: std::collections::HashMap<&str, &ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == "client")
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    spans
        .iter()
        .filter(|s| s.kind == "server")
        .filter_map(|server| {
            let client = clients.get(server.parent_span_id.as_deref()?)?;
            (client.start_ns > server.start_ns || client.end_ns < server.end_ns).then_some((
                (client.start_ns, client.end_ns),
                (server.start_ns, server.end_ns),
            ))
        })
        .collect()
}

/// The SERVER spans of `front` whose only child is a CLIENT span of `front` whose only
/// child is `back`'s SERVER span for the same item (the last segment of `url.path`), all
/// in one trace; and how many SERVER spans `front` had.
pub fn exact_proxy_trees(spans: &[ReceivedSpan], front: &str, back: &str) -> (usize, usize) {
    let mut children: std::collections::HashMap<&str, Vec<&ReceivedSpan>> =
        std::collections::HashMap::new();
    for span in spans {
        if let Some(parent) = &span.parent_span_id {
            children.entry(parent.as_str()).or_default().push(span);
        }
    }
    let only_child = |span: &ReceivedSpan, kind: &str, service: &str| {
        let found = children.get(span.span_id.as_str())?;
        let [child] = found.as_slice() else {
            return None;
        };
        (child.kind == kind
            && child.service_name() == Some(service)
            && child.trace_id == span.trace_id)
            .then_some(*child)
    };
    let item = |span: &ReceivedSpan| {
        span.attr("url.path")
            .and_then(|p| p.rsplit('/').next().map(str::to_owned))
    };
    let fronts: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == "server" && s.service_name() == Some(front))
        .collect();
    let exact = fronts
        .iter()
        .filter(|server| {
            let Some(call) = only_child(server, "client", front) else {
                return false;
            };
            let Some(back) = only_child(call, "server", back) else {
                return false;
            };
            item(server).is_some() && item(server) == item(back)
        })
        .count();
    (exact, fronts.len())
}
