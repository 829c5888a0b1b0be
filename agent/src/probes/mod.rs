//! Loading loupe's kernel programs, attaching them to syscall tracepoints, and the maps
//! the agent shares with them.

pub mod attach;
pub mod connection_cache;
pub mod inject;
pub mod maps;
pub mod privileges;
mod shared_words;
pub mod tgid_set;
mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::trace_point::TracePointLink,
};
use loupe_common::ProbeConfig;

use crate::{cli::DataProbes, process::selector::ExecHints};

pub use connection_cache::ConnectionCache;
pub use maps::{ConnectionMap, CounterMap, IgnoreRequestMap};
pub use tgid_set::{ProcessMarks, TgidSet};

/// Why the probes could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("tracefs is not mounted at /sys/kernel/tracing and mounting it failed: {0}")]
    Tracefs(std::io::Error),
    #[error(
        "this loupe was built without its kernel programs (AYA_BUILD_SKIP); rebuild without it"
    )]
    NotBuilt,
    #[error("loading the kernel programs failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("kernel program {program} is missing from the object (build mismatch)")]
    MissingProgram { program: &'static str },
    #[error("kernel map {map} is missing or has the wrong type: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("the kernel rejected program {program}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to tracepoint {category}:{tracepoint}")]
    Attach {
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "--data-probes exit: this kernel's BTF shows no pt_regs layout the {family} exit \
         programs know (x86_64 and arm64 are supported), or, for writes, no \
         tcp_sock.tcp_clock_cache (Linux 4.20); use --data-probes entry"
    )]
    ExitUnsupported { family: &'static str },
    #[error("setting up --inject-traceparent")]
    Inject(#[from] inject::InjectError),
}

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe"));

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<TracePointLink>,
    injection: Option<inject::InjectAttachment>,
    data_hooks: attach::DataHooks,
}

/// The kernel's connection table, the cache in front of it, and the agent's requests to
/// stop capturing connections.
pub struct KernelConnections {
    pub table: ConnectionMap,
    pub cache: ConnectionCache,
    pub ignore_requests: IgnoreRequestMap,
}

/// The maps the agent works with, taken out of the loaded object.
pub struct ProbeMaps {
    pub events: RingBuf<MapData>,
    pub processes: TgidSet,
    pub marks: ProcessMarks,
    pub connections: KernelConnections,
    pub counters: CounterMap,
}

impl Probes {
    /// Loads the programs with `config`, fills the port filter, and attaches every program
    /// (the read and write programs `data_probes` asks for, the injection programs only when
    /// `config.inject_traceparent` is set).
    pub fn load(
        config: &ProbeConfig,
        ports: &[u16],
        exec_hints: &ExecHints,
        ring_bytes: u32,
        data_probes: DataProbes,
    ) -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        tracefs::ensure_mounted().map_err(ProbeError::Tracefs)?;
        let mut config = *config;
        config.fork_child_pid_offset =
            tracefs::field_offset("sched", "sched_process_fork", "child_pid")
                .filter(|offset| loupe_common::FORK_CHILD_PID_OFFSETS.contains(offset))
                .unwrap_or_else(|| {
                    log::warn!(
                        "sched_process_fork records have an unknown layout: children of traced \
                         processes are picked up by the /proc scan (within 2 s), not at fork"
                    );
                    0
                });
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("EVENTS", ring_bytes)
            .override_global("PROBE_CONFIG", &config, true)
            .override_global("RING_BYTES", &ring_bytes, true);
        if config.inject_traceparent == 0 {
            // Only injection keeps trace contexts: the kernel need not set aside room
            // for them (1.7 MiB for the threads' alone).
            for map in [
                "THREAD_CONTEXT",
                "INJECTED_CONTEXTS",
                "LIVE_CONTEXTS",
                "PROCESS_CONTEXT",
                "LONE_FIRST_BYTES",
            ] {
                loader.map_max_entries(map, 1);
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        maps::write_ports(&mut ebpf, ports)?;
        maps::write_exec_hints(&mut ebpf, exec_hints)?;
        let support = attach::ExitSupport {
            regs: config.offsets.regs_layout != loupe_common::regs_layout::UNKNOWN,
            send_clock: config.offsets.tcp_clock != 0,
        };
        let (data_hooks, links) = attach::attach_all(&mut ebpf, data_probes, support)?;
        let injection = if config.inject_traceparent != 0 {
            Some(inject::attach(&mut ebpf)?)
        } else {
            None
        };
        Ok(Self {
            ebpf,
            links,
            injection,
            data_hooks,
        })
    }

    /// Takes every program off the kernel, the tracepoints side by side (see
    /// [`attach::detach_all`]).
    pub fn detach(mut self) {
        attach::detach_all(std::mem::take(&mut self.links));
    }

    /// How reads and writes ended up hooked.
    pub fn data_hooks(&self) -> attach::DataHooks {
        self.data_hooks
    }

    /// Where `traceparent` injection is attached, when it is on.
    pub fn injection(&self) -> Option<&inject::InjectAttachment> {
        self.injection.as_ref()
    }

    /// Takes the shared maps out; call once.
    pub fn take_maps(&mut self) -> Result<ProbeMaps, ProbeError> {
        Ok(ProbeMaps {
            events: maps::take(&mut self.ebpf, "EVENTS")?,
            processes: TgidSet::new(
                maps::take_raw(&mut self.ebpf, "TRACED_TGIDS")?,
                "TRACED_TGIDS",
            )?,
            marks: ProcessMarks {
                whole_responses: TgidSet::new(
                    maps::take_raw(&mut self.ebpf, "WHOLE_RESPONSE_TGIDS")?,
                    "WHOLE_RESPONSE_TGIDS",
                )?,
                event_loops: TgidSet::new(
                    maps::take_raw(&mut self.ebpf, "EVENT_LOOP_TGIDS")?,
                    "EVENT_LOOP_TGIDS",
                )?,
            },
            connections: KernelConnections {
                table: maps::take(&mut self.ebpf, "CONNECTIONS")?,
                cache: ConnectionCache::new(maps::take_raw(&mut self.ebpf, "CONNECTION_CACHE")?)?,
                ignore_requests: maps::take(&mut self.ebpf, "IGNORE_REQUESTS")?,
            },
            counters: maps::take(&mut self.ebpf, "COUNTERS")?,
        })
    }
}
