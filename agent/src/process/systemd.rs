//! The systemd service a host process runs under, read from its cgroup path. On a host
//! (not in a pod), `catalog.service` names a Python service better than the interpreter's
//! `python3.11` does, and systemd puts every process of a service in the service's
//! cgroup, forks and execs included.

/// The service named by a `/proc/<pid>/cgroup` file: the innermost `*.service` in the
/// path of the systemd hierarchy (cgroup v2's `0::` line, or v1's `name=systemd`), without
/// the suffix and, for a template's instance (`worker@3.service`), the instance. `None`
/// outside a service (a login session's or a container's scope), for a user's service
/// manager (`user@1000.service`), and for the generated names of transient units
/// (`systemd-run`'s `run-u42.service`).
pub fn service_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|line| {
            // hierarchy-id:controllers:path
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers.is_empty() || controllers == "name=systemd").then_some(path)
        })
        .find_map(service_in_path)
}

fn service_in_path(path: &str) -> Option<String> {
    let unit = path
        .rsplit('/')
        .find_map(|segment| segment.strip_suffix(".service"))?;
    let name = unit.split_once('@').map_or(unit, |(template, _)| template);
    if name.is_empty() || name == "user" || is_generated(name) {
        return None;
    }
    Some(unescape(name))
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

/// A unit name with systemd's `\xNN` escapes (`my\x2dapp`) decoded; an escape that does
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
        // Hybrid, as on Debian with systemd.unified_cgroup_hierarchy=0: the named v1
        // hierarchy carries the unit; other controllers' paths are not read.
        let hybrid = "12:cpu,cpuacct:/elsewhere.service\n\
                      1:name=systemd:/system.slice/billing.service\n\
                      0::/system.slice/billing.service\n";
        assert_eq!(service_unit(hybrid).as_deref(), Some("billing"));
        let only_cpu = "12:cpu,cpuacct:/system.slice/catalog.service\n1:name=systemd:/\n0::/\n";
        assert_eq!(service_unit(only_cpu), None);
        // A service that made cgroups of its own below its unit (Delegate=yes).
        assert_eq!(
            service_unit("0::/system.slice/jobs.service/worker-3\n").as_deref(),
            Some("jobs")
        );
        // A user's own service, under the user's service manager.
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/notes.service\n";
        assert_eq!(service_unit(user).as_deref(), Some("notes"));
    }

    #[test]
    fn templates_lose_their_instance_and_escapes_are_decoded() {
        assert_eq!(
            service_unit("0::/system.slice/system-worker.slice/worker@3.service\n").as_deref(),
            Some("worker")
        );
        assert_eq!(
            service_unit("0::/system.slice/my\\x2dapp.service\n").as_deref(),
            Some("my-app")
        );
        // A broken escape stays as written.
        assert_eq!(
            service_unit("0::/system.slice/odd\\xZZ.service\n").as_deref(),
            Some("odd\\xZZ")
        );
    }

    #[test]
    fn no_service_names_nothing() {
        for cgroup in [
            "0::/\n",
            "0::/init.scope\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/docker-4f0c2e2b7b.scope\n",
            "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-ab12.scope\n",
            // The user's service manager itself, and the processes right under it.
            "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
            // systemd-run's generated names say nothing about the program.
            "0::/system.slice/run-u42.service\n",
            "0::/system.slice/run-r5c0ffee.service\n",
            "0::/system.slice/run-p1234-i5678.service\n",
            "0::/system.slice/.service\n",
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
