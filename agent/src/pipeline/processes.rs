//! What the pipeline knows of each traced process: its resource, and whether it runs an
//! OpenTelemetry SDK of its own.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::{process::resource::ResourceDefaults, span::Resource};

pub struct ProcessEntry {
    pub resource: Arc<Resource>,
    /// The process exports its own spans (see `process::instrumented`).
    pub sdk: bool,
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
}
