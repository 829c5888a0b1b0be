//! What the pipeline knows of each traced process: its resource, and whether it runs an
//! OpenTelemetry SDK of its own.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::{
    process::{procfs, resource::ResourceDefaults},
    span::Resource,
};

pub struct ProcessEntry {
    pub resource: Arc<Resource>,
    /// The process exports its own spans (see `process::instrumented`).
    pub sdk: bool,
    /// When the process started (/proc's clock ticks), which tells it from a later one
    /// that takes its pid over; `None` when /proc had nothing.
    started: Option<u64>,
}

pub struct Processes {
    entries: HashMap<u32, ProcessEntry>,
    defaults: ResourceDefaults,
}

impl Processes {
    pub fn new(defaults: ResourceDefaults) -> Self {
        Self {
            entries: HashMap::new(),
            defaults,
        }
    }

    /// The process's entry, read from /proc the first time the process shows up, while it
    /// is most likely still alive. `comm` names it if /proc has nothing left.
    pub fn get(&mut self, tgid: u32, comm: Option<&[u8]>) -> &mut ProcessEntry {
        let defaults = &self.defaults;
        self.entries.entry(tgid).or_insert_with(|| {
            let comm = comm.map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            });
            let (resource, sdk) = defaults.for_process(tgid, comm.as_deref());
            ProcessEntry {
                resource: Arc::new(resource),
                sdk,
                started: procfs::start_time(tgid),
            }
        })
    }

    /// The process exec'd another program: what was known no longer holds. True when
    /// there was an entry, which a connection of the process made.
    pub fn forget(&mut self, tgid: u32) -> bool {
        self.entries.remove(&tgid).is_some()
    }

    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.entries.retain(|tgid, _| keep(*tgid));
    }

    /// The tgids whose entry is another process's: `start_time` gives a different start
    /// for the process that has the pid now (one that took it over without an exec,
    /// which would have told).
    pub fn taken_over(&self, start_time: impl Fn(u32) -> Option<u64>) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|&(&tgid, entry)| {
                entry
                    .started
                    .is_some_and(|then| start_time(tgid).is_some_and(|now| now != then))
            })
            .map(|(&tgid, _)| tgid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_taken_over_when_its_pid_names_a_later_process() {
        let mut processes = Processes::new(ResourceDefaults::new(Vec::new()));
        let me = std::process::id();
        processes.get(me, None);
        // Pids that name no process get entries from their command name alone.
        processes.get(u32::MAX - 1, Some(&b"gone\0"[..]));
        let started = procfs::start_time(me).expect("this process's start");
        assert!(processes.taken_over(procfs::start_time).is_empty());
        let later = |tgid| (tgid == me).then_some(started + 1);
        assert_eq!(processes.taken_over(later), vec![me]);
        // An entry whose start was never known is never taken for another's.
        assert_eq!(processes.taken_over(|_| Some(1)), vec![me]);
    }
}
