use super::*;

const CHAIN: [Hop; 3] = [
    Hop {
        service: "front",
        kind: Kind::Server,
        path_prefix: "/api/",
        parent: 0,
        linking: Linking::Connection,
    },
    Hop {
        service: "front",
        kind: Kind::Client,
        path_prefix: "/p/",
        parent: 0,
        linking: Linking::EventLoop,
    },
    Hop {
        service: "back",
        kind: Kind::Server,
        path_prefix: "/p/",
        parent: 1,
        linking: Linking::Connection,
    },
];

fn span(trace: &str, id: &str, parent: Option<&str>, hop: &Hop, item: &str) -> Span {
    Span {
        trace_id: trace.to_owned(),
        span_id: id.to_owned(),
        parent: parent.map(str::to_owned),
        kind: hop.kind,
        service: hop.service.to_owned(),
        path: format!("{}{item}", hop.path_prefix),
        start_ns: 0,
        end_ns: 0,
    }
}

/// The exact tree for `item`, span ids `<item>0`, `<item>1`, ...
fn tree(item: &str) -> Vec<Span> {
    let trace = format!("t{item}");
    let ids: Vec<String> = (0..CHAIN.len()).map(|i| format!("{item}{i}")).collect();
    CHAIN
        .iter()
        .enumerate()
        .map(|(i, hop)| {
            let parent = i.checked_sub(1).map(|p| ids[p].as_str());
            span(&trace, &ids[i], parent, hop, item)
        })
        .collect()
}

fn items(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn exact_trees_count_and_every_link_is_exact() {
    let mut spans = tree("a");
    spans.extend(tree("b"));
    let got = check(&CHAIN, &spans, &items(&["a", "b"]));
    assert_eq!(got.requests, 2);
    assert_eq!(got.exact, 2);
    assert_eq!(got.share(), Some(1.0));
    assert_eq!(got.found, vec![2, 2, 2]);
    assert!(got.links.iter().all(|l| l.exact == 2 && l.checked() == 2));
    assert!(got.faults.is_empty());
}

#[test]
fn swapped_clients_are_misplaced_on_both_requests() {
    let mut a = tree("a");
    let mut b = tree("b");
    // Each front CLIENT hangs under the other request's SERVER: the counts of children
    // look right, only the paths tell.
    a[1].parent = Some("b0".to_owned());
    a[1].trace_id = "tb".to_owned();
    b[1].parent = Some("a0".to_owned());
    b[1].trace_id = "ta".to_owned();
    a[2].trace_id = "tb".to_owned();
    b[2].trace_id = "ta".to_owned();
    let spans: Vec<Span> = a.into_iter().chain(b).collect();
    let got = check(&CHAIN, &spans, &items(&["a", "b"]));
    assert_eq!(got.exact, 0);
    assert_eq!(got.links[0].misplaced, 2);
    assert_eq!(got.links[1].exact, 2, "the connection link is still right");
    assert_eq!(
        got.faults
            .get("front CLIENT under another span (not front SERVER)"),
        Some(&2)
    );
}

#[test]
fn an_orphan_a_missing_span_and_a_duplicate_are_told_apart() {
    let mut spans = tree("a");
    spans[2].parent = None;
    let mut b = tree("b");
    b.remove(1);
    spans.extend(b);
    spans.extend(tree("c"));
    let extra = span("tc", "c9", Some("c1"), &CHAIN[2], "c");
    spans.push(extra);
    let got = check(&CHAIN, &spans, &items(&["a", "b", "c", "never-sent"]));
    assert_eq!(got.requests, 4);
    assert_eq!(got.exact, 0);
    assert_eq!(got.links[1].orphaned, 1);
    assert_eq!(got.found, vec![3, 2, 2]);
    assert_eq!(got.faults.get("no front CLIENT span"), Some(&1));
    assert_eq!(got.faults.get("several back SERVER spans"), Some(&1));
    assert_eq!(got.faults.get("no front SERVER span"), Some(&1));
    assert_eq!(
        got.faults
            .get("back SERVER without a parent (not front CLIENT)"),
        Some(&1)
    );
    assert_eq!(got.share(), Some(0.0));
}

#[test]
fn a_foreign_child_or_a_parented_root_breaks_the_tree() {
    let mut spans = tree("a");
    // Another request's client placed under a's server: a's own links are all right, but
    // its tree holds a span that is not its own.
    spans.push(span("ta", "x", Some("a0"), &CHAIN[1], "zzz"));
    let mut b = tree("b");
    b[0].parent = Some("from-elsewhere".to_owned());
    spans.extend(b);
    let got = check(&CHAIN, &spans, &items(&["a", "b"]));
    assert_eq!(got.exact, 0);
    assert_eq!(got.links[0].exact, 2);
    assert_eq!(
        got.faults
            .get("front SERVER span has other requests' spans under it"),
        Some(&1)
    );
    assert_eq!(got.faults.get("front SERVER span has a parent"), Some(&1));
}

#[test]
fn a_link_into_another_trace_is_misplaced() {
    let mut spans = tree("a");
    spans[2].trace_id = "elsewhere".to_owned();
    let got = check(&CHAIN, &spans, &items(&["a"]));
    assert_eq!(got.exact, 0);
    assert_eq!(got.links[1].misplaced, 1);
    assert_eq!(
        got.faults
            .get("back SERVER in another trace (not front CLIENT)"),
        Some(&1)
    );
}

#[test]
fn spans_of_other_services_kinds_or_paths_are_not_hops() {
    let mut spans = tree("a");
    let mut stray = span("ta", "s", None, &CHAIN[0], "a");
    stray.service = "other".to_owned();
    spans.push(stray);
    let mut bare = span("ta", "s2", None, &CHAIN[0], "");
    bare.path = "/api/".to_owned();
    spans.push(bare);
    let got = check(&CHAIN, &spans, &items(&["a"]));
    assert_eq!(got.exact, 1);
    assert_eq!(check(&CHAIN, &[], &[]).share(), None);
}

#[test]
fn a_span_without_its_child_is_not_exact_even_when_the_child_is_found_elsewhere() {
    let mut spans = tree("a");
    // The back SERVER claims a front CLIENT that is not a's: a's client has no child.
    spans[2].parent = Some("elsewhere".to_owned());
    let got = check(&CHAIN, &spans, &items(&["a"]));
    assert_eq!(got.links[1].misplaced, 1);
    let mut last = tree("b");
    last.push(span("tb", "b9", Some("b2"), &CHAIN[0], "other"));
    let got = check(&CHAIN, &last, &items(&["b"]));
    assert_eq!(
        got.faults
            .get("back SERVER span has other requests' spans under it"),
        Some(&1)
    );
}

#[test]
fn peak_in_flight_counts_overlaps_only() {
    let timed = |start: u64, end: u64| Span {
        start_ns: start,
        end_ns: end,
        ..span("t", "s", None, &CHAIN[0], "x")
    };
    let spans = [
        timed(0, 10),
        timed(5, 20),
        timed(10, 12),
        timed(11, 30),
        timed(40, 41),
    ];
    let refs: Vec<&Span> = spans.iter().collect();
    // At 11: [5,20), [10,12) and [11,30) are open; [0,10) ended as [10,12) began.
    assert_eq!(peak_in_flight(&refs), 3);
    assert_eq!(peak_in_flight(&refs[4..]), 1);
    assert_eq!(peak_in_flight(&[]), 0);
    let mut a = tree("a");
    a[0] = Span {
        start_ns: 1,
        end_ns: 9,
        ..a[0].clone()
    };
    let mut b = tree("b");
    b[0] = Span {
        start_ns: 2,
        end_ns: 8,
        ..b[0].clone()
    };
    let spans: Vec<Span> = a.into_iter().chain(b).collect();
    assert_eq!(check(&CHAIN, &spans, &items(&["a", "b"])).peak_in_flight, 2);
}

/// The root calls out twice; each call reaches its own server.
const BRANCHES: [Hop; 5] = [
    CHAIN[0],
    Hop {
        path_prefix: "/check/",
        ..CHAIN[1]
    },
    Hop {
        path_prefix: "/check/",
        ..CHAIN[2]
    },
    CHAIN[1],
    Hop {
        parent: 3,
        ..CHAIN[2]
    },
];

/// `item`'s spans for `BRANCHES`, ids `<item>0`.., each hop's parent as the tree says
/// unless `parents` names another.
fn branches(item: &str, parents: [usize; 5]) -> Vec<Span> {
    let ids: Vec<String> = (0..BRANCHES.len()).map(|i| format!("{item}{i}")).collect();
    BRANCHES
        .iter()
        .enumerate()
        .map(|(i, hop)| {
            let parent = (i > 0).then(|| ids[parents[i]].as_str());
            span(&format!("t{item}"), &ids[i], parent, hop, item)
        })
        .collect()
}

#[test]
fn a_tree_with_branches_checks_each_hop_against_its_own_parent() {
    let mut spans = branches("a", [0, 0, 1, 0, 3]);
    // b's second call hangs under its check instead of under its request.
    spans.extend(branches("b", [0, 0, 1, 1, 3]));
    let got = check(&BRANCHES, &spans, &items(&["a", "b"]));
    assert_eq!(got.exact, 1);
    let exact: Vec<usize> = got.links.iter().map(|t| t.exact).collect();
    assert_eq!(exact, [2, 2, 1, 2]);
    assert_eq!(
        got.faults.keys().collect::<Vec<_>>(),
        ["front CLIENT under another span (not front SERVER)"]
    );
    let prefixes = |l| link_hops(&BRANCHES, l).map(|(p, c)| (p.path_prefix, c.path_prefix));
    assert_eq!(
        prefixes(2),
        Some(("/api/", "/p/")),
        "the second call under the root"
    );
    assert_eq!(prefixes(3), Some(("/p/", "/p/")));
    assert_eq!(prefixes(4), None);
    assert_eq!(
        describe(&BRANCHES),
        "front SERVER -> front CLIENT -> back SERVER; front SERVER -> front CLIENT -> back SERVER"
    );
    assert_eq!(
        describe(&CHAIN),
        "front SERVER -> front CLIENT -> back SERVER"
    );
}

#[test]
fn a_branch_hung_under_another_span_is_misplaced_link_by_link() {
    let mut spans = branches("a", [0, 0, 1, 0, 3]);
    // The check's two spans hang under some other span, each.
    spans[1].parent = Some("elsewhere".to_owned());
    spans[2].parent = Some("elsewhere".to_owned());
    let got = check(&BRANCHES, &spans, &items(&["a"]));
    assert_eq!(got.exact, 0);
    assert_eq!(got.links[0].misplaced, 1);
    assert_eq!(got.links[1].misplaced, 1);
    assert_eq!(
        (got.links[2].exact, got.links[3].exact),
        (1, 1),
        "the other branch"
    );
}

#[test]
fn every_measured_tree_names_each_parent_before_its_child() {
    use super::super::Frontend;
    for frontend in [Frontend::Immediate, Frontend::Deferred, Frontend::Awaits] {
        let tree = frontend.tree();
        for (h, hop) in tree.iter().enumerate().skip(1) {
            assert!(hop.parent < h, "{} hop {h}", frontend.name());
        }
        assert_eq!(tree[0].kind, Kind::Server);
    }
}
