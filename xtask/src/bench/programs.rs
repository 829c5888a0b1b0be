//! In-kernel time by eBPF program: which of the agent's programs make up a request's
//! in-kernel figure, with the agent tracing the service and with it tracing nothing.
//!
//! The kernel counts runs per program, not per process, so a program's runs include those
//! of the load generator and of every other process on the host; the untraced column shows
//! what the same program costs when it stops at the traced-process check for everyone.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::procfs::ProgStats;
use super::report::ModeRun;

/// One program's run time and runs over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProgramPhase {
    pub run_ns: f64,
    pub runs: f64,
}

/// Programs whose share of a request is below this (ns) are left out of the breakdown:
/// connection setup, process exec and exit, which a keep-alive benchmark barely runs.
const SHOWN_FROM_NS: f64 = 0.5;

/// The names of the loaded eBPF programs with these ids; an id whose name cannot be read
/// (the program was unloaded, or listing programs is not allowed) is left out.
pub fn names_of(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, String> {
    let wanted: Vec<u64> = ids.into_iter().collect();
    let mut names = BTreeMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        let id = u64::from(info.id());
        if wanted.contains(&id)
            && let Some(name) = info.name_as_str()
        {
            names.insert(id, name.to_owned());
        }
    }
    names
}

/// Readings by program id, by program name. The kernel keeps 15 characters of a name, so
/// two programs may share one (`loupe_connect_enter` and `loupe_connect_exit` are both
/// `loupe_connect_e`): those get `#1`, `#2` in the order they were loaded (by id), which
/// is the same in every agent of a run. A program without a known name keeps its id
/// (`prog 42`).
pub fn by_name(
    stats: &BTreeMap<u64, ProgStats>,
    names: &BTreeMap<u64, String>,
) -> BTreeMap<String, ProgStats> {
    let name_of = |id: &u64| {
        names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("prog {id}"))
    };
    let mut ids_by_name: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for id in stats.keys() {
        ids_by_name.entry(name_of(id)).or_default().push(*id);
    }
    let mut out = BTreeMap::new();
    for (name, ids) in ids_by_name {
        // The map's keys come sorted, so the ids are in load order.
        for (rank, id) in ids.iter().enumerate() {
            let label = if ids.len() == 1 {
                name.clone()
            } else {
                format!("{name}#{}", rank + 1)
            };
            out.insert(label, stats[id]);
        }
    }
    out
}

/// What each program did between two readings; programs missing from either are left
/// out, and a counter that went backwards (the program was reloaded) gives nothing.
pub fn since(
    now: &BTreeMap<String, ProgStats>,
    then: &BTreeMap<String, ProgStats>,
) -> BTreeMap<String, ProgramPhase> {
    now.iter()
        .filter_map(|(name, n)| {
            let t = then.get(name)?;
            Some((
                name.clone(),
                ProgramPhase {
                    run_ns: n.run_time_ns.checked_sub(t.run_time_ns)? as f64,
                    runs: n.run_cnt.checked_sub(t.run_cnt)? as f64,
                },
            ))
        })
        .collect()
}

/// One program's part of a fixed-rate request.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramRow {
    pub name: String,
    pub runs_per_request: f64,
    pub ns_per_run: f64,
    pub ns_per_request: f64,
    /// The same program's ns per request with the agent tracing nothing (`--host-tax`).
    pub untraced_ns_per_request: Option<f64>,
}

/// Each program's runs and time per fixed-rate request over these runs, the costliest
/// first; empty without `--bpf-stats` (no runs counted).
pub fn breakdown(with: &[&ModeRun], untraced: &[&ModeRun]) -> Vec<ProgramRow> {
    let traced = per_request(with);
    let idle = per_request(untraced);
    let mut rows: Vec<ProgramRow> = traced
        .into_iter()
        .filter(|(_, (ns, _))| *ns >= SHOWN_FROM_NS)
        .map(|(name, (ns, runs))| ProgramRow {
            // A program that never ran while the agent traced nothing cost nothing then.
            untraced_ns_per_request: (!idle.is_empty())
                .then(|| idle.get(&name).map_or(0.0, |&(ns, _)| ns)),
            ns_per_run: if runs > 0.0 { ns / runs } else { 0.0 },
            runs_per_request: runs,
            ns_per_request: ns,
            name,
        })
        .collect();
    rows.sort_by(|a, b| b.ns_per_request.total_cmp(&a.ns_per_request));
    rows
}

/// (ns, runs) per fixed-rate request of each program, over the runs that have program
/// readings (an agent, and `--bpf-stats`).
fn per_request(modes: &[&ModeRun]) -> BTreeMap<String, (f64, f64)> {
    let mut sums: BTreeMap<String, ProgramPhase> = BTreeMap::new();
    let mut requests = 0.0;
    for mode in modes {
        let Some(agent) = mode.agent.as_ref().filter(|a| !a.fixed.programs.is_empty()) else {
            continue;
        };
        requests += mode.fixed.completed as f64;
        for (name, phase) in &agent.fixed.programs {
            let sum = sums.entry(name.clone()).or_default();
            sum.run_ns += phase.run_ns;
            sum.runs += phase.runs;
        }
    }
    if requests <= 0.0 {
        return BTreeMap::new();
    }
    sums.into_iter()
        .filter(|(_, s)| s.runs > 0.0)
        .map(|(name, s)| (name, (s.run_ns / requests, s.runs / requests)))
        .collect()
}

/// The breakdown as report rows: a heading, then one row per program.
pub fn text_rows(rows: &[ProgramRow]) -> Vec<(String, String)> {
    if rows.is_empty() {
        return Vec::new();
    }
    let mut out = vec![(
        "  by program at the fixed rate (15 characters of a name; #1, #2 in load order)".to_owned(),
        "runs x ns per run = ns per request  (tracing nothing)".to_owned(),
    )];
    for row in rows {
        let untraced = row
            .untraced_ns_per_request
            .map_or_else(String::new, |ns| format!("  ({ns:.0})"));
        out.push((
            format!("    {}", row.name),
            format!(
                "{:.2} x {:.0} = {:.0}{untraced}",
                row.runs_per_request, row.ns_per_run, row.ns_per_request
            ),
        ));
    }
    out
}

pub fn json_rows(rows: &[ProgramRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "program": r.name,
                    "runs_per_request": r.runs_per_request,
                    "ns_per_run": r.ns_per_run,
                    "ns_per_request": r.ns_per_request,
                    "untraced_ns_per_request": r.untraced_ns_per_request,
                })
            })
            .collect(),
    )
}

/// A phase's programs for the per-round JSON.
pub fn phase_json(programs: &BTreeMap<String, ProgramPhase>) -> Value {
    programs
        .iter()
        .map(|(name, p)| (name.clone(), json!({"run_ns": p.run_ns, "runs": p.runs})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_named_and_cut_names_told_apart() {
        let stats = |run_time_ns, run_cnt| ProgStats {
            run_time_ns,
            run_cnt,
        };
        let by_id = BTreeMap::from([
            (7, stats(100, 1)),
            (8, stats(50, 2)),
            (9, stats(5, 5)),
            (10, stats(70, 7)),
        ]);
        let names = BTreeMap::from([
            (8, "loupe_connect_e".to_owned()),
            (7, "loupe_connect_e".to_owned()),
            (10, "loupe_read_exit".to_owned()),
        ]);
        assert_eq!(
            by_name(&by_id, &names),
            BTreeMap::from([
                ("loupe_connect_e#1".to_owned(), stats(100, 1)),
                ("loupe_connect_e#2".to_owned(), stats(50, 2)),
                ("loupe_read_exit".to_owned(), stats(70, 7)),
                ("prog 9".to_owned(), stats(5, 5)),
            ])
        );
    }
}
