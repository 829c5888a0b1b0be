//! Typed access to the maps shared with the kernel programs.

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use loupe_common::{COMM_LEN, CommPrefix, ConnKey, ConnState, counter};

use crate::process::selector::ExecHints;

use super::ProbeError;

pub type ConnectionMap = HashMap<MapData, ConnKey, ConnState>;
/// Connection ids by connection: the agent's requests to stop capturing them.
pub type IgnoreRequestMap = HashMap<MapData, ConnKey, u64>;
pub type CounterMap = PerCpuArray<MapData, u64>;

/// The map `name`, taken out of the loaded object.
pub fn take_raw(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Map {
        map: name,
        detail: "not found".into(),
    })
}

/// The map `name` as a typed map.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(take_raw(ebpf, name)?).map_err(|e| ProbeError::Map {
        map: name,
        detail: e.to_string(),
    })
}

pub fn write_ports(ebpf: &mut Ebpf, ports: &[u16]) -> Result<(), ProbeError> {
    let err = |e: aya::maps::MapError| ProbeError::Map {
        map: "TRACED_PORTS",
        detail: e.to_string(),
    };
    let map = ebpf.map_mut("TRACED_PORTS").ok_or(ProbeError::Map {
        map: "TRACED_PORTS",
        detail: "not found".into(),
    })?;
    let mut ports_map: HashMap<&mut MapData, u16, u8> = HashMap::try_from(map).map_err(err)?;
    for port in ports {
        ports_map.insert(port, 1, 0).map_err(err)?;
    }
    Ok(())
}

pub fn write_exec_hints(ebpf: &mut Ebpf, hints: &ExecHints) -> Result<(), ProbeError> {
    let err = |map: &'static str| {
        move |e: aya::maps::MapError| ProbeError::Map {
            map,
            detail: e.to_string(),
        }
    };
    let map = ebpf.map_mut("EXEC_NAMES").ok_or(ProbeError::Map {
        map: "EXEC_NAMES",
        detail: "not found".into(),
    })?;
    let mut names: HashMap<&mut MapData, [u8; COMM_LEN], u8> =
        HashMap::try_from(map).map_err(err("EXEC_NAMES"))?;
    for name in &hints.names {
        names.insert(name, 1, 0).map_err(err("EXEC_NAMES"))?;
    }
    let map = ebpf.map_mut("EXEC_PREFIXES").ok_or(ProbeError::Map {
        map: "EXEC_PREFIXES",
        detail: "not found".into(),
    })?;
    let mut prefixes: Array<&mut MapData, CommPrefix> =
        Array::try_from(map).map_err(err("EXEC_PREFIXES"))?;
    for (index, prefix) in hints.prefixes.iter().enumerate() {
        prefixes
            .set(index as u32, prefix, 0)
            .map_err(err("EXEC_PREFIXES"))?;
    }
    Ok(())
}

/// Totals of the kernel's per-CPU drop counters, indexed like `loupe_common::counter`.
pub fn read_counters(counters: &CounterMap) -> [u64; counter::COUNT as usize] {
    let mut totals = [0u64; counter::COUNT as usize];
    for (index, total) in totals.iter_mut().enumerate() {
        if let Ok(values) = counters.get(&(index as u32), 0) {
            *total = values.iter().sum();
        }
    }
    totals
}
