//! The systemd service a host process runs under, read from its cgroup path. On a host
//! (not in a container), `catalog.service` names a Python service better than the
//! interpreter's `python3.11` does. Only the service's own program takes its name: a
//! service that starts other programs (a process supervisor, cron, a CI runner) leaves
//! them their executables' names.

use std::{fs, path::Path};

use super::procfs;

/// Most ancestors walked looking for the service's main process.
const MAX_ANCESTORS: usize = 32;

/// The service `pid` runs under, when `pid` is the service's own program: every ancestor
/// of it in the same cgroup runs the same executable `exe` (the main process, or a
/// gunicorn master over its workers); `cgroup` is `pid`'s `/proc/<pid>/cgroup`.
pub fn service_of(pid: u32, cgroup: &str, exe: &Path) -> Option<String> {
    let unit = service_unit(cgroup)?;
    let mut current = pid;
    for _ in 0..MAX_ANCESTORS {
        let parent = procfs::parent(current)?;
        // The service manager (or init, for a daemon that forked away from its starter).
        if parent <= 1 {
            return Some(unit);
        }
        let parents_cgroup = fs::read_to_string(format!("/proc/{parent}/cgroup")).ok()?;
        if parents_cgroup != cgroup {
            return Some(unit);
        }
        if procfs::exe_path(parent)?.as_path() != exe {
            return None;
        }
        current = parent;
    }
    None
}

/// The service named by a `/proc/<pid>/cgroup` file, from the systemd hierarchy: cgroup
/// v1's `name=systemd` line where there is one (on a hybrid host a container runtime may
/// leave the v2 line at the service that started it), else the v2 `0::` line. The
/// innermost `*.service` of its path, unless a `.scope` lies inside it (a login session, a
/// container, another systemd's payload); without the suffix, and without a template's
/// instance when that is a number (`worker@3.service` is `worker`, `app@shop.service` is
/// `app@shop`). `None` outside a service, for a user's service manager
/// (`user@1000.service`), and for the generated names of transient units (`systemd-run`'s
/// `run-u42.service`).
pub fn service_unit(cgroup: &str) -> Option<String> {
    let mut v1 = None;
    let mut v2 = None;
    for line in cgroup.lines() {
        // hierarchy-id:controllers:path
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        match controllers {
            "name=systemd" => v1 = Some(path),
            "" => v2 = Some(path),
            _ => {}
        }
    }
    service_in_path(v1.or(v2)?)
}

fn service_in_path(path: &str) -> Option<String> {
    let unit = path
        .rsplit('/')
        .map(|segment| segment.strip_prefix('_').unwrap_or(segment))
        .find_map(|segment| {
            if segment.ends_with(".scope") {
                Some(None)
            } else {
                segment.strip_suffix(".service").map(Some)
            }
        })??;
    if unit.is_empty() || unit.starts_with("user@") || is_generated(unit) {
        return None;
    }
    let name = match unit.split_once('@') {
        Some((template, instance)) if instance.bytes().all(|b| b.is_ascii_digit()) => template,
        _ => unit,
    };
    (!name.is_empty()).then(|| unescape(name))
}

/// `systemd-run`'s names for units it was given no name for: `run-u<N>`, `run-r<hex>`,
/// `run-p<pid>-i<N>`.
fn is_generated(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("run-") else {
        return false;
    };
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (hex && b.is_ascii_hexdigit()))
    };
    if let Some(n) = rest.strip_prefix('u') {
        return digits(n, false);
    }
    if let Some(n) = rest.strip_prefix('r') {
        return digits(n, true);
    }
    rest.strip_prefix('p')
        .and_then(|r| r.split_once("-i"))
        .is_some_and(|(pid, n)| digits(pid, false) && digits(n, false))
}

/// A unit name with systemd's `\xNN` escapes (`by\x2duuid`) decoded; an escape that does
/// not decode stays as it is.
fn unescape(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(byte) = bytes
                .get(i + 2..i + 4)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::service_unit;

    #[test]
    fn services_under_either_cgroup_version() {
        // cgroup v2.
        assert_eq!(
            service_unit("0::/system.slice/catalog.service\n").as_deref(),
            Some("catalog")
        );
        // Hybrid: the named v1 hierarchy is read, other controllers' paths are not.
        let hybrid = "12:cpu,cpuacct:/elsewhere.service\n\
                      1:name=systemd:/system.slice/billing.service\n\
                      0::/system.slice/billing.service\n";
        assert_eq!(service_unit(hybrid).as_deref(), Some("billing"));
        let only_cpu = "12:cpu,cpuacct:/system.slice/catalog.service\n1:name=systemd:/\n0::/\n";
        assert_eq!(service_unit(only_cpu), None);
        // A runtime that moved a container in v1 only: the stale v2 line is not read.
        let runc_v1 = "1:name=systemd:/docker/4f0c2e2b7b\n0::/system.slice/containerd.service\n";
        assert_eq!(service_unit(runc_v1), None);
        // Pure v1.
        assert_eq!(
            service_unit("1:name=systemd:/system.slice/billing.service\n").as_deref(),
            Some("billing")
        );
        // A service that made cgroups of its own below its unit (Delegate=yes).
        assert_eq!(
            service_unit("0::/system.slice/jobs.service/worker-3\n").as_deref(),
            Some("jobs")
        );
        // A user's own service, under the user's service manager.
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/notes.service\n";
        assert_eq!(service_unit(user).as_deref(), Some("notes"));
        // Named `user`, without a user's manager's `@`.
        assert_eq!(
            service_unit("0::/system.slice/user.service\n").as_deref(),
            Some("user")
        );
    }

    #[test]
    fn numbered_instances_share_their_templates_name() {
        for (cgroup, name) in [
            (
                "0::/system.slice/system-worker.slice/worker@3.service\n",
                "worker",
            ),
            // A named instance is a service of its own.
            (
                "0::/system.slice/system-app.slice/app@shop.service\n",
                "app@shop",
            ),
            ("0::/system.slice/my\\x2dapp.service\n", "my-app"),
            // A broken escape stays as written; systemd's `_` before a kernel name goes.
            ("0::/system.slice/odd\\xZZ.service\n", "odd\\xZZ"),
            ("0::/system.slice/_cpu.service\n", "cpu"),
        ] {
            assert_eq!(service_unit(cgroup).as_deref(), Some(name), "{cgroup:?}");
        }
    }

    #[test]
    fn no_service_names_nothing() {
        for cgroup in [
            "0::/\n",
            "0::/init.scope\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/docker-4f0c2e2b7b.scope\n",
            "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-ab12.scope\n",
            // A scope inside a service belongs to another systemd, or to a session.
            "0::/machine.slice/systemd-nspawn@web.service/payload/init.scope\n",
            "0::/system.slice/ssh.service/user.slice/session-c1.scope\n",
            // The user's service manager itself, and the processes right under it.
            "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
            "0::/user.slice/user-1000.slice/user@1000.service\n",
            // systemd-run's generated names say nothing about the program.
            "0::/system.slice/run-u42.service\n",
            "0::/system.slice/run-r5c0ffee.service\n",
            "0::/system.slice/run-p1234-i5678.service\n",
            "0::/system.slice/.service\n",
            "0::/system.slice/@3.service\n",
            "garbage\n",
            "",
        ] {
            assert_eq!(service_unit(cgroup), None, "{cgroup:?}");
        }
        // A unit merely starting with `run-` is a name like any other.
        assert_eq!(
            service_unit("0::/system.slice/run-books.service\n").as_deref(),
            Some("run-books")
        );
    }
}
