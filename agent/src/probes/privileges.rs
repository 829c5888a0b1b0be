//! The capabilities loupe needs, checked up front so a missing one is a one-line error
//! instead of an obscure EPERM from deep inside program loading.

use std::fs;

/// Capability bit numbers from linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "loupe needs CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or root); missing: {missing} — run it as root or grant them (see README, 'Privileges')"
    )]
    Missing { missing: String },
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(std::io::Error),
}

/// Parses the `CapEff:` line of /proc/<pid>/status.
fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    // CAP_SYS_ADMIN still grants BPF and perf on kernels older than 5.8.
    let admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || admin) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || admin) {
        missing.push("CAP_PERFMON");
    }
    // Reading other processes' /proc/<pid>/environ and exe link.
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    missing
}

pub fn check() -> Result<(), PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Unreadable)?;
    let caps = effective_caps(&status).unwrap_or(0);
    let missing = missing_caps(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing {
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn root_has_everything() {
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
    }

    #[test]
    fn unprivileged_misses_all() {
        assert_eq!(
            missing_caps(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon() {
        let caps = (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE);
        assert!(missing_caps(caps).is_empty());
    }
}
