//! Which container and Kubernetes pod a traced process runs in, read from the host's
//! /proc without the Kubernetes API: on a node where many pods run the same program,
//! these attributes tell their spans apart.
//!
//! - `container.id`: the 64-hex id in the process's cgroup path, as every runtime names
//!   its cgroups (`/kubepods/burstable/pod<uid>/<id>`, `.../cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`).
//! - `k8s.pod.uid`: the `pod<uid>` segment of a `kubepods` cgroup path (with `_` for `-`
//!   under the systemd cgroup driver).
//! - `k8s.pod.name`, `k8s.namespace.name`, `k8s.container.name`: the kubelet's names in
//!   the container's runtime config, where the node has one (see `runtime_config`).
//!   Where it does not, or lacks a name:
//!   - the pod's hostname is its name. Read from the process's `HOSTNAME` (container
//!     runtimes set it), else its `/etc/hostname` (the kubelet mounts it), and only when
//!     the process has a hostname of its own (a UTS namespace other than the host's): a
//!     `hostNetwork` pod has the node's;
//!   - the namespace is in the service-account namespace file Kubernetes mounts into
//!     every container that has a token (the default);
//!   - the container goes unnamed.
//!
//! The pod attributes are only set for processes in a `kubepods` cgroup. A pod's name
//! also names its workload ([`workload_name`]), the service of a process that names none.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::runtime_config;

/// Where Kubernetes mounts a pod's service-account files, `/var/run/secrets/...`. Most
/// images make `/var/run` a link to `/run`, where the mount then is: the second path
/// only matters where links cannot be followed inside the root (see [`open_in_root`]).
const NAMESPACE_FILES: [&str; 2] = [
    "var/run/secrets/kubernetes.io/serviceaccount/namespace",
    "run/secrets/kubernetes.io/serviceaccount/namespace",
];
/// Longest Kubernetes object name (a DNS subdomain), and a little room.
const MAX_NAME: u64 = 256;

/// What a cgroup path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// A process's container and pod, as resource attributes (semantic-convention names),
/// from its `/proc/<pid>/cgroup` file, `cgroup`.
pub fn attributes(
    pid: u32,
    cgroup: &str,
    environ: &[(String, String)],
) -> Vec<(&'static str, String)> {
    let process = || Process {
        root: Path::new("/proc").join(pid.to_string()).join("root"),
        own_hostname: has_own_hostname(pid),
    };
    attributes_on(runtime_config::host_root, process, cgroup, environ)
}

/// What the fallbacks read of a process: its root directory, and whether it has a
/// hostname of its own.
struct Process {
    root: PathBuf,
    own_hostname: bool,
}

/// [`attributes`] with the node's root from `host_root` and the process from `process`,
/// both asked for only for a process in a pod.
fn attributes_on<'a>(
    host_root: impl FnOnce() -> &'a Path,
    process: impl FnOnce() -> Process,
    cgroup: &str,
    environ: &[(String, String)],
) -> Vec<(&'static str, String)> {
    let identity = from_cgroup_file(cgroup);
    let mut attributes = Vec::new();
    attributes.extend(identity.container_id.clone().map(|id| ("container.id", id)));
    let Some(uid) = identity.pod_uid else {
        return attributes;
    };
    // The runtime's names are the kubelet's own; the process's files stand in for them.
    let names = identity
        .container_id
        .and_then(|id| runtime_config::names(host_root(), &id, &uid))
        .unwrap_or_default();
    attributes.push(("k8s.pod.uid", uid));
    let process = process();
    let root = &process.root;
    let pod = names.pod.or_else(|| {
        process
            .own_hostname
            .then(|| pod_name(environ, root))
            .flatten()
    });
    attributes.extend(pod.map(|name| ("k8s.pod.name", name)));
    let namespace = names.namespace.or_else(|| {
        NAMESPACE_FILES
            .iter()
            .find_map(|file| read_name_in(root, file))
    });
    attributes.extend(namespace.map(|namespace| ("k8s.namespace.name", namespace)));
    attributes.extend(names.container.map(|name| ("k8s.container.name", name)));
    attributes
}

/// The identity named by a `/proc/<pid>/cgroup` file (v1 controllers, or the v2 `0::`
/// line): of each, the first line's that names one, and within a path its innermost.
pub fn from_cgroup_file(text: &str) -> CgroupIdentity {
    let mut found = CgroupIdentity::default();
    for line in text.lines() {
        // hierarchy-id:controllers:path
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let identity = from_cgroup_path(path);
        if found.container_id.is_none() {
            found.container_id = identity.container_id;
        }
        if found.pod_uid.is_none() {
            found.pod_uid = identity.pod_uid;
        }
    }
    found
}

fn from_cgroup_path(path: &str) -> CgroupIdentity {
    let in_pod = path.contains("kubepods");
    let mut identity = CgroupIdentity::default();
    for segment in path.split('/') {
        if let Some(id) = container_id(segment) {
            identity.container_id = Some(id.to_string());
        }
        if in_pod && let Some(uid) = pod_uid(segment) {
            identity.pod_uid = Some(uid);
        }
    }
    identity
}

/// A 64-hex container id, bare or with a runtime's prefix and `.scope` suffix.
fn container_id(segment: &str) -> Option<&str> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = name.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The uid of `pod<uid>` (cgroupfs driver) or `kubepods-<class>-pod<uid>.slice` (systemd
/// driver, which writes its dashes as underscores).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let start = name.rfind("pod")? + 3;
    let uid = name[start..].replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// False when the process shares the host's UTS namespace (or it cannot be told), where
/// its hostname is the node's. The host's is init's (loupe runs with the host's pids);
/// where init's cannot be read, loupe's own, as a daemon on the host has it.
fn has_own_hostname(pid: u32) -> bool {
    let uts = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/uts")).ok();
    match (uts(&pid.to_string()), uts("1").or_else(|| uts("self"))) {
        (Some(own), Some(host)) => own != host,
        _ => false,
    }
}

fn pod_name(environ: &[(String, String)], root: &Path) -> Option<String> {
    super::procfs::env_var(environ, "HOSTNAME")
        .map(str::trim)
        .filter(|v| valid_name(v))
        .map(str::to_string)
        .or_else(|| read_name_in(root, "etc/hostname"))
}

/// Opens `relative` as the process whose root directory is `root` (`/proc/<pid>/root`)
/// sees it: every link on the way, absolute ones included, resolves inside that root
/// (`openat2` with `RESOLVE_IN_ROOT`, Linux 5.6). Opened plainly, an absolute link would
/// resolve against loupe's own root: `/var/run -> /run` would lead to loupe's own `/run`,
/// in a DaemonSet to loupe's own service account. Where the call is refused (a seccomp
/// profile that predates it), only a path with no absolute link on the way is opened.
pub(super) fn open_in_root(root: &Path, relative: &str) -> Option<fs::File> {
    let file = open_in_root_unchecked(root, relative)?;
    file.metadata()
        .is_ok_and(|meta| meta.is_file())
        .then_some(file)
}

/// [`open_in_root`] for any kind of file. Non-blocking: a FIFO that an image put where a
/// name file belongs would otherwise hold the open, and the agent's pipeline, forever.
fn open_in_root_unchecked(root: &Path, relative: &str) -> Option<fs::File> {
    use std::os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::OpenOptionsExt,
    };
    let dir = fs::File::open(root).ok()?;
    let path = std::ffi::CString::new(relative).ok()?;
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: a valid directory fd, a NUL-terminated path and an open_how of the size
    // passed; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the fd was just opened and is owned by nothing else.
        return Some(unsafe { fs::File::from_raw_fd(fd as i32) });
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM) => fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(inside(root, relative)?)
            .ok(),
        _ => None,
    }
}

/// `relative` under `root`, unless an absolute link lies on the way; relative links (the
/// service-account files are links into `..data/`) stay inside and are followed.
fn inside(root: &Path, relative: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for component in relative.split('/') {
        path.push(component);
        if let Ok(target) = fs::read_link(&path)
            && target.is_absolute()
        {
            return None;
        }
    }
    Some(path)
}

/// The workload a pod's name names, as controllers name their pods: a Deployment's
/// `<name>-<template hash>-<suffix>`, a DaemonSet's or Job's `<name>-<suffix>`, a
/// CronJob's `<name>-<scheduled minute>-<suffix>`, a StatefulSet's `<name>-<ordinal>`.
/// The generated parts are drawn from an alphabet without vowels
/// (`bcdfghjklmnpqrstvwxz2456789`), which keeps real words in place. A name
/// that matches none of these is its own workload (a bare pod). The OpenTelemetry
/// conventions rank the workload's name above the pod's for `service.name`.
pub fn workload_name(pod: &str) -> &str {
    let generated = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&part.len()) && part.bytes().all(|b| GENERATED.contains(&b))
    };
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if last.len() <= 5 && !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        // A StatefulSet's ordinal.
        return rest;
    }
    if !generated(last, 5..=5) {
        return pod;
    }
    let digits = |part: &str| part.len() >= 8 && part.bytes().all(|b| b.is_ascii_digit());
    match rest.rsplit_once('-') {
        Some((deployment, hash)) if generated(hash, 6..=10) && !deployment.is_empty() => deployment,
        // A CronJob's Job: `<name>-<scheduled time in minutes>`.
        Some((cronjob, time)) if digits(time) && !cronjob.is_empty() => cronjob,
        _ if rest.is_empty() => pod,
        _ => rest,
    }
}

/// The characters Kubernetes draws generated name parts from.
const GENERATED: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A Kubernetes object name from a small file inside a process's `root`, when it holds one.
fn read_name_in(root: &Path, relative: &str) -> Option<String> {
    let mut text = String::new();
    open_in_root(root, relative)?
        .take(MAX_NAME)
        .read_to_string(&mut text)
        .ok()?;
    let name = text.trim();
    valid_name(name).then(|| name.to_string())
}

/// Lower-case letters, digits, `-` and `.`, as Kubernetes names are.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4e2b9c4d8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829304";
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn identity(text: &str) -> (Option<String>, Option<String>) {
        let found = from_cgroup_file(text);
        (found.container_id, found.pod_uid)
    }

    #[test]
    fn pods_under_either_cgroup_driver_and_version() {
        let some = |s: &str| Some(s.to_string());
        // cgroup v1, cgroupfs driver: every controller line names the pod.
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        assert_eq!(identity(&v1), (some(ID), some(UID)));
        // cgroup v2, systemd driver, containerd and CRI-O.
        let systemd_uid = UID.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            let v2 = format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid}.slice/{runtime}-{ID}.scope\n"
            );
            assert_eq!(identity(&v2), (some(ID), some(UID)), "{runtime}");
        }
        // Guaranteed pods have no QoS level; seen from a cgroup namespace, paths climb.
        let guaranteed = format!("0::/../../kubepods-pod{systemd_uid}.slice/crio-{ID}.scope\n");
        assert_eq!(identity(&guaranteed), (some(ID), some(UID)));
        // The pause container's sibling: a pod's own cgroup, no container.
        assert_eq!(
            identity(&format!("0::/kubepods/pod{UID}\n")),
            (None, some(UID))
        );
    }

    #[test]
    fn containers_outside_kubernetes_and_plain_processes() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            identity(&format!("0::/system.slice/docker-{ID}.scope\n")),
            (some(ID), None)
        );
        assert_eq!(
            identity(&format!("4:pids:/docker/{ID}\n")),
            (some(ID), None)
        );
        assert_eq!(
            identity(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")),
            (some(ID), None)
        );
        // A pod-looking segment outside kubepods is not a pod.
        assert_eq!(
            identity(&format!("0::/user.slice/pod{UID}\n")),
            (None, None)
        );
        for plain in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/\n",
            "12:memory:/system.slice/nginx.service\n",
            "",
            "garbage",
            "0::/kubepods/podnot-a-uid/abc\n",
            // 63 and 65 hex digits.
            &format!("0::/docker/{}\n", &ID[1..]),
            &format!("0::/docker/{ID}0\n"),
        ] {
            assert_eq!(identity(plain), (None, None), "{plain:?}");
        }
    }

    #[test]
    fn links_in_a_process_root_resolve_inside_it() {
        let root = std::env::temp_dir().join(format!("loupe-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let account = root.join("run/secrets/kubernetes.io/serviceaccount");
        fs::create_dir_all(account.join("..data")).unwrap();
        fs::write(account.join("..data/namespace"), "shop\n").unwrap();
        std::os::unix::fs::symlink("..data/namespace", account.join("namespace")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        // The image's absolute /var/run -> /run leads to the root's own /run.
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        assert_eq!(
            read_name_in(&root, NAMESPACE_FILES[0]).as_deref(),
            Some("shop")
        );
        assert_eq!(
            read_name_in(&root, NAMESPACE_FILES[1]).as_deref(),
            Some("shop")
        );
        // A link to an absolute path never leads out of the root: this host's /etc/hostname
        // exists, the root's does not.
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        assert!(Path::new("/etc/hostname").exists());
        assert_eq!(read_name_in(&root, "etc/hostname"), None);
        // Where links cannot be followed inside the root, a path across an absolute one
        // is not opened at all.
        assert_eq!(inside(&root, NAMESPACE_FILES[0]), None);
        assert!(inside(&root, NAMESPACE_FILES[1]).is_some());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_runtimes_names_come_before_the_processs_own_files() {
        let base = std::env::temp_dir().join(format!("loupe-names-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let host = base.join("host");
        let bundle = host.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
        ));
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"checkout-7d9f8c6b5-x2k9p",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.container-name":"api"}}"#,
        )
        .unwrap();
        // The process's own root names other things: a pod that set `spec.hostname`.
        let root = base.join("root");
        let account = root.join("run/secrets/kubernetes.io/serviceaccount");
        fs::create_dir_all(&account).unwrap();
        fs::write(account.join("namespace"), "from-files\n").unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "custom-hostname\n").unwrap();
        let process = || Process {
            root: root.clone(),
            own_hostname: true,
        };
        let cgroup = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
        let found = attributes_on(|| &host, process, &cgroup, &[]);
        let pairs = |list: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            list.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };
        assert_eq!(
            found,
            pairs(&[
                ("container.id", ID),
                ("k8s.pod.uid", UID),
                ("k8s.pod.name", "checkout-7d9f8c6b5-x2k9p"),
                ("k8s.namespace.name", "shop"),
                ("k8s.container.name", "api"),
            ])
        );
        // Without the runtime's config, the process's own files name the pod.
        fs::remove_dir_all(&host).unwrap();
        let found = attributes_on(|| &host, process, &cgroup, &[]);
        assert_eq!(
            found,
            pairs(&[
                ("container.id", ID),
                ("k8s.pod.uid", UID),
                ("k8s.pod.name", "custom-hostname"),
                ("k8s.namespace.name", "from-files"),
            ])
        );
        // Outside a pod, only the container, and neither the node's root nor the
        // process's files are looked at.
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        let unasked = || -> &Path { panic!("the host's root asked for outside a pod") };
        let no_process = || -> Process { panic!("the process's files read outside a pod") };
        assert_eq!(
            attributes_on(unasked, no_process, &docker, &[]),
            pairs(&[("container.id", ID)])
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_fifo_where_a_name_file_belongs_is_not_waited_on() {
        let root = std::env::temp_dir().join(format!("loupe-fifo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("etc")).unwrap();
        let fifo = std::ffi::CString::new(root.join("etc/hostname").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(read_name_in(&root, "etc/hostname"), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn workloads_are_read_from_their_pods_names() {
        for (pod, workload) in [
            ("checkout-7d9f8c6b5-x2k9p", "checkout"),
            ("payments-api-5c8f7d9b64-qzt2w", "payments-api"),
            ("fluent-bit-x8k2m", "fluent-bit"),
            ("redis-0", "redis"),
            ("kafka-broker-12", "kafka-broker"),
            ("nightly-report-28911840-b6w4z", "nightly-report"),
            ("migrate-db-q7m2x", "migrate-db"),
            // Nothing generated: a bare pod is its own workload.
            ("debug", "debug"),
            ("api-v2", "api-v2"),
            ("web-frontend", "web-frontend"),
            ("web-abcde", "web-abcde"),
            ("-x2k9p", "-x2k9p"),
        ] {
            assert_eq!(workload_name(pod), workload, "{pod}");
        }
    }

    #[test]
    fn names_must_look_like_kubernetes_names() {
        assert!(valid_name("web-7d9f8c6b5-x2k9p"));
        assert!(valid_name("payments.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Web"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(254)));
        let env = |v: &str| vec![("HOSTNAME".to_string(), v.to_string())];
        let nowhere = Path::new("/nonexistent-root");
        assert_eq!(pod_name(&env("web-1\n"), nowhere).as_deref(), Some("web-1"));
        assert_eq!(pod_name(&env("NOT A NAME"), nowhere), None);
        assert_eq!(pod_name(&[], nowhere), None);
    }
}
