//! The completeness figures as a table or JSON, each next to its goal. It reports; a figure
//! below its goal is marked, not failed.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    Settings,
    tree::{Completeness, Hop, Linking, describe, link_hops},
};

/// Agent counters shown per level (differences over the level).
pub const METRICS: [&str; 6] = [
    "loupe_client_spans_unplaced_total",
    "loupe_server_spans_awaited_client_total",
    "loupe_spans_held_with_server_total",
    "loupe_server_spans_peer_unmatched_total",
    "loupe_ringbuf_drops_total",
    "loupe_opaque_answers_followed_total",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub delta: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LevelResult {
    /// Which Node frontend the chain began with.
    pub frontend: &'static str,
    /// The spans each of its requests was expected to make.
    pub tree: &'static [Hop],
    pub concurrency: u32,
    /// Requests that got no 2xx answer (they count as sent, and as not exact).
    pub failed_requests: usize,
    pub outcome: Completeness,
    pub metrics: Vec<Metric>,
}

/// The share a link is expected to get right at `concurrency`: everything when requests
/// come one at a time; under concurrency, links the agent knows for certain (by thread or
/// by connection) nearly always, and an event loop's guess most of the time.
pub fn link_goal(linking: Linking, concurrency: u32) -> f64 {
    match (concurrency, linking) {
        (0 | 1, _) => 1.0,
        (_, Linking::EventLoop) => 0.95,
        (_, Linking::Thread | Linking::Connection) => 0.99,
    }
}

/// A whole tree is as good as its weakest link's goal.
pub fn tree_goal(chain: &[Hop], concurrency: u32) -> f64 {
    chain
        .iter()
        .skip(1)
        .map(|hop| link_goal(hop.linking, concurrency))
        .fold(1.0, f64::min)
}

fn share(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Rounded down, so that 1999 of 2000 does not print as 100.0 %.
fn percent(value: Option<f64>) -> String {
    value.map_or_else(
        || "n/a".to_owned(),
        |v| format!("{:.1} %", (v * 1000.0).floor() / 10.0),
    )
}

/// `meets` or `BELOW`, with the goal.
fn verdict(value: Option<f64>, goal: f64) -> String {
    let mark = match value {
        // A rounding hair below 100 % is still below.
        Some(v) if v + 1e-9 >= goal => "meets",
        Some(_) => "BELOW",
        None => "n/a",
    };
    let op = if goal >= 1.0 { "=" } else { ">=" };
    format!("{mark} goal {op} {:.0} %", goal * 100.0)
}

fn metric_text(delta: Option<f64>) -> String {
    delta.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

/// A progress line for one level.
pub fn one_line(result: &LevelResult) -> String {
    let o = &result.outcome;
    format!(
        "{} / {} exact trees ({}), {} requests failed",
        o.exact,
        o.requests,
        percent(o.share()),
        result.failed_requests
    )
}

pub fn table(settings: &Settings, results: &[LevelResult]) -> String {
    let mut out = String::new();
    let injecting = if settings.inject_traceparent {
        ", the agent injecting traceparent"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "\nTrace completeness{injecting}: {} requests per level, each expected as exactly",
        settings.requests
    );
    let mut described: Vec<&str> = Vec::new();
    for r in results {
        if !described.contains(&r.frontend) {
            described.push(r.frontend);
            let _ = writeln!(out, "  {} frontend: {}", r.frontend, describe(r.tree));
        }
    }
    let _ = writeln!(
        out,
        "\n{:<9}  {:>11}  {:>8}  {:>11}  {:>8}  goal",
        "frontend", "concurrency", "requests", "exact trees", "share"
    );
    for r in results {
        let o = &r.outcome;
        let _ = writeln!(
            out,
            "{:<9}  {:>11}  {:>8}  {:>11}  {:>8}  {}",
            r.frontend,
            r.concurrency,
            o.requests,
            o.exact,
            percent(o.share()),
            verdict(o.share(), tree_goal(r.tree, r.concurrency))
        );
    }
    for r in results {
        let o = &r.outcome;
        let _ = writeln!(
            out,
            "\n{} frontend, concurrency {} (peak in flight at {}: {}):",
            r.frontend,
            r.concurrency,
            r.tree.first().map_or_else(String::new, Hop::label),
            o.peak_in_flight,
        );
        if r.failed_requests > 0 {
            let _ = writeln!(
                out,
                "  requests without a 2xx answer: {}",
                r.failed_requests
            );
        }
        for (l, tally) in o.links.iter().enumerate() {
            let Some((parent, child)) = link_hops(r.tree, l) else {
                continue;
            };
            let linked = share(tally.exact, tally.checked());
            let _ = writeln!(
                out,
                "  link {:<52} {:>5} / {:<5} {:>8}  {}  ({} misplaced, {} orphaned, {} missing)",
                format!(
                    "{} -> {} {}",
                    parent.label(),
                    child.label(),
                    child.path_prefix
                ),
                tally.exact,
                tally.checked(),
                percent(linked),
                verdict(linked, link_goal(child.linking, r.concurrency)),
                tally.misplaced,
                tally.orphaned,
                tally.missing,
            );
        }
        for metric in &r.metrics {
            let _ = writeln!(out, "  {:<45} {}", metric.name, metric_text(metric.delta));
        }
        for (fault, count) in &o.faults {
            let _ = writeln!(out, "  not exact: {fault}: {count}");
            if let Some(example) = o.examples.get(fault) {
                let _ = writeln!(out, "    e.g. {example}");
            }
        }
    }
    out
}

pub fn json(settings: &Settings, results: &[LevelResult]) -> Value {
    let levels: Vec<Value> = results
        .iter()
        .map(|r| {
            let o = &r.outcome;
            let links: Vec<Value> = o
                .links
                .iter()
                .enumerate()
                .filter_map(|(l, t)| {
                    let (parent, child) = link_hops(r.tree, l)?;
                    Some(json!({
                        "from": parent.label(),
                        "to": child.label(),
                        "to_path": child.path_prefix,
                        "exact": t.exact,
                        "misplaced": t.misplaced,
                        "orphaned": t.orphaned,
                        "missing": t.missing,
                        "share": share(t.exact, t.checked()),
                        "goal": link_goal(child.linking, r.concurrency),
                    }))
                })
                .collect();
            let metrics: serde_json::Map<String, Value> = r
                .metrics
                .iter()
                .map(|m| (m.name.to_owned(), json!(m.delta)))
                .collect();
            json!({
                "frontend": r.frontend,
                "concurrency": r.concurrency,
                "peak_in_flight": o.peak_in_flight,
                "requests": o.requests,
                "failed_requests": r.failed_requests,
                "exact_trees": o.exact,
                "share": o.share(),
                "tree": describe(r.tree),
                "goal": tree_goal(r.tree, r.concurrency),
                "links": links,
                "faults": o.faults,
                "fault_examples": o.examples,
                "metrics": metrics,
            })
        })
        .collect();
    json!({
        "requests_per_level": settings.requests,
        "inject_traceparent": settings.inject_traceparent,
        "levels": levels,
    })
}

#[cfg(test)]
mod tests {
    use super::super::CHAIN;
    use super::super::tree::LinkTally;
    use super::*;
    use std::collections::BTreeMap;

    fn result(concurrency: u32, exact: usize) -> LevelResult {
        let mut links = vec![
            LinkTally {
                exact: 500,
                ..LinkTally::default()
            };
            4
        ];
        links[0] = LinkTally {
            exact,
            misplaced: 500 - exact,
            ..LinkTally::default()
        };
        LevelResult {
            frontend: "immediate",
            tree: &CHAIN,
            concurrency,
            failed_requests: 0,
            outcome: Completeness {
                requests: 500,
                exact,
                links,
                found: vec![500; 5],
                faults: [(
                    "frontend-api CLIENT under another span (not frontend-api SERVER)".to_owned(),
                    500 - exact,
                )]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
                peak_in_flight: concurrency as usize,
                examples: BTreeMap::new(),
            },
            metrics: vec![
                Metric {
                    name: METRICS[0],
                    delta: Some(0.0),
                },
                Metric {
                    name: METRICS[4],
                    delta: None,
                },
            ],
        }
    }

    #[test]
    fn goals_follow_the_weakest_link_and_the_concurrency() {
        assert_eq!(tree_goal(&CHAIN, 1), 1.0);
        assert_eq!(tree_goal(&CHAIN, 10), 0.95);
        assert_eq!(link_goal(Linking::Thread, 10), 0.99);
        assert_eq!(link_goal(Linking::EventLoop, 1), 1.0);
        assert_eq!(verdict(Some(0.99), 0.99), "meets goal >= 99 %");
        assert_eq!(verdict(Some(0.998), 1.0), "BELOW goal = 100 %");
        assert_eq!(verdict(None, 1.0), "n/a goal = 100 %");
        assert_eq!(percent(Some(1999.0 / 2000.0)), "99.9 %");
        assert_eq!(percent(Some(1.0)), "100.0 %");
        assert_eq!(percent(Some(0.5)), "50.0 %");
    }

    #[test]
    fn table_shows_each_level_its_links_and_counters() {
        let text = table(&settings(false), &[result(1, 500), result(10, 480)]);
        assert!(text.contains("\nTrace completeness: 500 requests per level"));
        assert!(text.contains(
            "immediate frontend: frontend-api SERVER -> frontend-api CLIENT -> catalog SERVER"
        ));
        assert!(text.contains(
            "immediate            1       500          500   100.0 %  meets goal = 100 %"
        ));
        assert!(text.contains(
            "immediate           10       500          480    96.0 %  meets goal >= 95 %"
        ));
        assert!(text.contains("concurrency 10 (peak in flight at frontend-api SERVER: 10):"));
        let node_link = text
            .lines()
            .filter(|l| l.contains("link frontend-api SERVER -> frontend-api CLIENT /process/"))
            .nth(1)
            .unwrap_or_default();
        assert!(node_link.contains(" 480 / 500 "), "{node_link}");
        assert!(
            node_link
                .ends_with("96.0 %  meets goal >= 95 %  (20 misplaced, 0 orphaned, 0 missing)"),
            "{node_link}"
        );
        assert!(text.contains("loupe_client_spans_unplaced_total             0"));
        assert!(text.contains("loupe_ringbuf_drops_total                     n/a"));
        assert_eq!(
            text.matches("not exact: frontend-api CLIENT under another span")
                .count(),
            1
        );
    }

    #[test]
    fn injection_is_named_in_both() {
        let results = [result(10, 500)];
        let text = table(&settings(true), &results);
        assert!(text.contains(
            "\nTrace completeness, the agent injecting traceparent: 500 requests per level"
        ));
        assert_eq!(json(&settings(true), &results)["inject_traceparent"], true);
    }

    fn settings(inject_traceparent: bool) -> Settings {
        Settings {
            requests: 500,
            levels: vec![1, 10],
            frontends: Vec::new(),
            inject_traceparent,
        }
    }

    #[test]
    fn json_carries_the_same_figures() {
        let value = json(&settings(false), &[result(10, 450)]);
        assert_eq!(value["requests_per_level"], 500);
        assert_eq!(value["inject_traceparent"], false);
        assert_eq!(value["levels"][0]["exact_trees"], 450);
        assert_eq!(value["levels"][0]["frontend"], "immediate");
        assert_eq!(value["levels"][0]["peak_in_flight"], 10);
        assert_eq!(value["levels"][0]["share"], 0.9);
        assert_eq!(value["levels"][0]["goal"], 0.95);
        assert_eq!(value["levels"][0]["links"][0]["misplaced"], 50);
        assert_eq!(value["levels"][0]["links"][0]["to_path"], "/process/");
        assert_eq!(value["levels"][0]["links"][1]["goal"], 0.99);
        assert_eq!(
            value["levels"][0]["metrics"]["loupe_ringbuf_drops_total"],
            Value::Null
        );
        assert!(
            value["levels"][0]["tree"]
                .as_str()
                .is_some_and(|t| t.ends_with("catalog CLIENT -> nginx SERVER"))
        );
    }
}
