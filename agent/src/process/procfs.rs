//! The few facts loupe reads about processes from /proc.

use std::{fs, io, path::PathBuf};

/// Most bytes read from a process's environment; a huge environment is cut, not loaded.
const MAX_ENVIRON: u64 = 256 * 1024;

/// Every numeric entry of /proc: process ids (threads are not listed at the top level).
pub fn all_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

pub fn exe_path(pid: u32) -> Option<PathBuf> {
    let path = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A replaced binary reads as "/usr/bin/x (deleted)": the name is still the best we have.
    let text = path.to_string_lossy();
    Some(PathBuf::from(text.trim_end_matches(" (deleted)")))
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// True when `id` is a live process rather than a thread or gone.
pub fn is_process(id: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{id}/status")) else {
        return false;
    };
    tgid_from_status(&status) == Some(id)
}

fn tgid_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Process start time in clock ticks since boot: with the pid, it names a process
/// uniquely even when pids are reused.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(&read_stat(pid)?, START_TIME)
}

/// The process's parent.
pub fn parent(pid: u32) -> Option<u32> {
    stat_field(&read_stat(pid)?, PARENT)
}

/// Fields of `/proc/<pid>/stat` counted from 1, as proc(5) numbers them.
const PARENT: usize = 4;
const START_TIME: usize = 22;

fn read_stat(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Field `field` (3 or later) of a stat line.
fn stat_field<T: std::str::FromStr>(stat: &str, field: usize) -> Option<T> {
    // The command name (field 2) may contain spaces and parentheses: fields resume after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The process's environment as (name, value) pairs.
pub fn environ(pid: u32) -> Vec<(String, String)> {
    use std::io::Read;
    let Ok(file) = fs::File::open(format!("/proc/{pid}/environ")) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if file.take(MAX_ENVIRON).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    parse_environ(&bytes)
}

/// The value of `name` in an environment read by [`environ`]; of duplicates, the last.
pub fn env_var<'a>(environ: &'a [(String, String)], name: &str) -> Option<&'a str> {
    environ
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_environ(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (name, value) = text.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_environ_blocks() {
        let env = parse_environ(b"A=1\0OTEL_SERVICE_NAME=shop\0broken\0B=x=y\0");
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("OTEL_SERVICE_NAME".into(), "shop".into()),
                ("B".into(), "x=y".into()),
            ]
        );
    }

    #[test]
    fn parent_survives_odd_command_names() {
        let stat = "42 (a) b (c) S 7 42 42 0 -1 4194560";
        assert_eq!(stat_field::<u32>(stat, PARENT), Some(7));
        assert_eq!(stat_field::<u32>("garbage", PARENT), None);
        assert_eq!(
            parent(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 100 1";
        assert_eq!(stat_field::<u64>(stat, START_TIME), Some(12345));
        assert_eq!(stat_field::<u64>("garbage", START_TIME), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(is_process(me));
        assert!(exe_path(me).is_some());
        assert!(start_time(me).is_some());
        assert!(all_pids().unwrap().contains(&me));
        assert_eq!(tgid_from_status("Name:\tx\nTgid:\t7\n"), Some(7));
    }
}
