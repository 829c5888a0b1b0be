//! Whether each request's spans form exactly the expected tree.
//!
//! Every request carries an item id that each service passes on in its own path
//! (`/api/items/<id>` -> `/process/<id>` -> `/stock/<id>`, and `/check/<id>` for a frontend
//! that checks each request first), so every span of a request can
//! be found without trusting the links under test; then the links are checked against
//! what was found. Each link is also tallied on its own, which shows where links are lost.

use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
        }
    }
}

/// One received span, as much of it as the check needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub service: String,
    /// `url.path`.
    pub path: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// How a link between two spans is made, which decides what it can be expected to get
/// right under concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linking {
    /// A client call to its server request inside one event-loop process (Node): by
    /// which request is in flight, a guess when several are.
    EventLoop,
    /// A client call to its server request inside a thread-per-request process.
    Thread,
    /// A server request to the client call at the other end of its connection.
    Connection,
}

/// One span every request must produce: found by service, kind, and a path that is
/// `path_prefix` followed by the request's item id. A tree is a slice of hops, the root
/// first and every other hop after its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub service: &'static str,
    pub kind: Kind,
    pub path_prefix: &'static str,
    /// The index of the hop whose span is this one's parent (ignored on the root).
    pub parent: usize,
    /// How this hop's span is linked to its parent's (ignored on the root).
    pub linking: Linking,
}

impl Hop {
    pub fn label(&self) -> String {
        format!("{} {}", self.service, self.kind.name())
    }
}

/// The hops of link `l`, which joins hop `l + 1` to its parent: `(parent, child)`.
pub fn link_hops(tree: &[Hop], l: usize) -> Option<(&Hop, &Hop)> {
    let child = tree.get(l + 1)?;
    Some((tree.get(child.parent)?, child))
}

/// The tree as its paths from the root to each leaf, `A -> B -> C; A -> D`.
pub fn describe(tree: &[Hop]) -> String {
    let is_parent = |h: usize| tree.iter().skip(1).any(|hop| hop.parent == h);
    let paths: Vec<String> = (0..tree.len())
        .filter(|&h| !is_parent(h))
        .map(|leaf| {
            let mut labels = vec![tree[leaf].label()];
            let mut h = leaf;
            // Bounded by the tree's size, should a parent index point forward.
            for _ in 0..tree.len() {
                if h == 0 {
                    break;
                }
                h = tree[h].parent;
                labels.push(tree[h].label());
            }
            labels.reverse();
            labels.join(" -> ")
        })
        .collect();
    paths.join("; ")
}

/// How one link fared over all requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkTally {
    /// The child's parent is the parent span, in the same trace.
    pub exact: usize,
    /// The child hangs under some other span, or under the right one in another trace.
    pub misplaced: usize,
    /// The child has no parent.
    pub orphaned: usize,
    /// One of the two spans is missing or ambiguous.
    pub missing: usize,
}

impl LinkTally {
    pub fn checked(&self) -> usize {
        self.exact + self.misplaced + self.orphaned + self.missing
    }
}

/// The outcome for a set of requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completeness {
    pub requests: usize,
    pub exact: usize,
    /// One tally per link, link `i` joining hop `i + 1` to its parent.
    pub links: Vec<LinkTally>,
    /// Spans found per hop (at most one per request counts).
    pub found: Vec<usize>,
    /// Why requests were not exact: the first fault of each, by description.
    pub faults: BTreeMap<String, usize>,
    /// For each fault, the first request that had it and the spans found for it.
    pub examples: BTreeMap<String, String>,
    /// The most first-hop spans open at once: how concurrent the requests really were
    /// where they entered.
    pub peak_in_flight: usize,
}

impl Completeness {
    pub fn share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.exact as f64 / self.requests as f64)
    }
}

/// The first thing wrong with one request's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    Missing(usize),
    Duplicate(usize),
    RootHasParent,
    Link(usize, LinkFault),
    /// Hop `.0` has fewer children than the tree wants.
    NoChild(usize),
    /// Hop `.0` has children that belong to other requests.
    ForeignChildren(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkFault {
    Misplaced,
    Orphaned,
    OtherTrace,
}

impl Fault {
    fn describe(&self, chain: &[Hop]) -> String {
        let label = |i: usize| chain.get(i).map_or_else(|| "?".to_owned(), Hop::label);
        let parent = |i: usize| chain.get(i).map_or(0, |hop| hop.parent);
        match self {
            Fault::Missing(h) => format!("no {} span", label(*h)),
            Fault::Duplicate(h) => format!("several {} spans", label(*h)),
            Fault::RootHasParent => format!("{} span has a parent", label(0)),
            Fault::Link(l, fault) => {
                let what = match fault {
                    LinkFault::Misplaced => "under another span",
                    LinkFault::Orphaned => "without a parent",
                    LinkFault::OtherTrace => "in another trace",
                };
                format!("{} {what} (not {})", label(l + 1), label(parent(l + 1)))
            }
            Fault::NoChild(h) => format!("{} span has no child", label(*h)),
            Fault::ForeignChildren(h) => {
                format!("{} span has other requests' spans under it", label(*h))
            }
        }
    }
}

/// The spans of each hop by item id, and how many children each span id has.
struct Index<'a> {
    by_hop: Vec<HashMap<&'a str, Vec<&'a Span>>>,
    children: HashMap<&'a str, usize>,
}

impl<'a> Index<'a> {
    fn new(chain: &[Hop], spans: &'a [Span]) -> Self {
        let mut by_hop: Vec<HashMap<&str, Vec<&Span>>> = vec![HashMap::new(); chain.len()];
        let mut children: HashMap<&str, usize> = HashMap::new();
        for span in spans {
            if let Some(parent) = &span.parent {
                *children.entry(parent.as_str()).or_insert(0) += 1;
            }
            for (hop, map) in chain.iter().zip(by_hop.iter_mut()) {
                if span.kind != hop.kind || span.service != hop.service {
                    continue;
                }
                if let Some(item) = span.path.strip_prefix(hop.path_prefix)
                    && !item.is_empty()
                {
                    map.entry(item).or_default().push(span);
                }
            }
        }
        Self { by_hop, children }
    }

    /// Each hop's span for `item`: `Ok` when exactly one, else how many there are.
    fn hops(&self, item: &str) -> Vec<Result<&'a Span, usize>> {
        self.by_hop
            .iter()
            .map(|map| match map.get(item).map(Vec::as_slice) {
                Some([one]) => Ok(*one),
                Some(many) => Err(many.len()),
                None => Err(0),
            })
            .collect()
    }

    fn children_of(&self, span: &Span) -> usize {
        self.children
            .get(span.span_id.as_str())
            .copied()
            .unwrap_or(0)
    }
}

fn link_fault(parent: &Span, child: &Span) -> Option<LinkFault> {
    match &child.parent {
        None => Some(LinkFault::Orphaned),
        Some(p) if *p != parent.span_id => Some(LinkFault::Misplaced),
        Some(_) if child.trace_id != parent.trace_id => Some(LinkFault::OtherTrace),
        Some(_) => None,
    }
}

/// The first fault in one request's tree, `None` when it is exact.
fn first_fault(chain: &[Hop], index: &Index<'_>, hops: &[Result<&Span, usize>]) -> Option<Fault> {
    let mut found = Vec::with_capacity(hops.len());
    for (h, hop) in hops.iter().enumerate() {
        match hop {
            Ok(span) => found.push(*span),
            Err(0) => return Some(Fault::Missing(h)),
            Err(_) => return Some(Fault::Duplicate(h)),
        }
    }
    if found.first().is_some_and(|root| root.parent.is_some()) {
        return Some(Fault::RootHasParent);
    }
    for (h, hop) in chain.iter().enumerate().skip(1) {
        if let Some(fault) = found
            .get(hop.parent)
            .and_then(|parent| link_fault(parent, found[h]))
        {
            return Some(Fault::Link(h - 1, fault));
        }
    }
    for (h, span) in found.iter().enumerate() {
        let want = chain.iter().skip(1).filter(|hop| hop.parent == h).count();
        let have = index.children_of(span);
        if have < want {
            return Some(Fault::NoChild(h));
        }
        if have > want {
            return Some(Fault::ForeignChildren(h));
        }
    }
    None
}

/// Checks the requests named by `items` against `chain` over all received `spans`.
pub fn check(chain: &[Hop], spans: &[Span], items: &[String]) -> Completeness {
    let index = Index::new(chain, spans);
    let mut first_hops = Vec::new();
    let mut out = Completeness {
        requests: items.len(),
        links: vec![LinkTally::default(); chain.len().saturating_sub(1)],
        found: vec![0; chain.len()],
        ..Completeness::default()
    };
    for item in items {
        let hops = index.hops(item);
        if let Some(Ok(first)) = hops.first() {
            first_hops.push(*first);
        }
        for (h, hop) in hops.iter().enumerate() {
            if hop.is_ok() {
                out.found[h] += 1;
            }
        }
        for (l, tally) in out.links.iter_mut().enumerate() {
            match (&hops[chain[l + 1].parent], &hops[l + 1]) {
                (Ok(parent), Ok(child)) => match link_fault(parent, child) {
                    None => tally.exact += 1,
                    Some(LinkFault::Orphaned) => tally.orphaned += 1,
                    Some(LinkFault::Misplaced | LinkFault::OtherTrace) => tally.misplaced += 1,
                },
                _ => tally.missing += 1,
            }
        }
        match first_fault(chain, &index, &hops) {
            None => out.exact += 1,
            Some(fault) => {
                let description = fault.describe(chain);
                out.examples
                    .entry(description.clone())
                    .or_insert_with(|| example(chain, item, &hops));
                *out.faults.entry(description).or_insert(0) += 1;
            }
        }
    }
    out.peak_in_flight = peak_in_flight(&first_hops);
    out
}

/// One request's hop spans in a line: `item: HOP span (parent p, trace t) -> ...`.
fn example(chain: &[Hop], item: &str, hops: &[Result<&Span, usize>]) -> String {
    let short = |id: &str| id.chars().take(8).collect::<String>();
    let parts: Vec<String> = chain
        .iter()
        .zip(hops)
        .map(|(hop, found)| match found {
            Ok(span) => format!(
                "{} {} (parent {}, trace {})",
                hop.label(),
                short(&span.span_id),
                span.parent.as_deref().map_or_else(|| "-".to_owned(), short),
                short(&span.trace_id)
            ),
            Err(n) => format!("{} x{n}", hop.label()),
        })
        .collect();
    format!("{item}: {}", parts.join(" -> "))
}

/// The most spans open at one moment; a span that ends when another starts does not
/// overlap it.
pub fn peak_in_flight(spans: &[&Span]) -> usize {
    let mut edges: Vec<(u64, bool)> = spans
        .iter()
        .flat_map(|s| [(s.start_ns, true), (s.end_ns.max(s.start_ns), false)])
        .collect();
    // Ends sort before starts at the same instant.
    edges.sort_unstable();
    let (mut open, mut peak) = (0usize, 0usize);
    for (_, starts) in edges {
        if starts {
            open += 1;
            peak = peak.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    peak
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
