//! A Kubernetes container's pod, namespace and name as its container runtime recorded them.
//!
//! containerd and CRI-O write each container's OCI runtime config (`config.json`) on the
//! node, and among its annotations are the kubelet's names for the container, its pod and
//! the pod's namespace. They are the real names where the process's own files only
//! suggest them: a pod that sets `spec.hostname` has a hostname other than its name, and
//! one without a service-account token has no namespace file. loupe reads them through
//! the host's root as init sees it (`/proc/1/root`, the node's root for a DaemonSet with
//! `hostPID`), so no extra mount is needed.

use std::{collections::HashMap, io::Read, path::Path, sync::OnceLock};

use serde::Deserialize;

use super::container::{open_in_root, valid_name};

/// The node's root directory: init's (loupe runs with the host's pids), or where init's
/// cannot be opened (an AppArmor profile, a missing `CAP_SYS_PTRACE`), loupe's own, as a
/// daemon on the host has it, said once.
pub fn host_root() -> &'static Path {
    static ROOT: OnceLock<&'static Path> = OnceLock::new();
    ROOT.get_or_init(|| {
        let init = Path::new("/proc/1/root");
        match std::fs::File::open(init) {
            Ok(_) => init,
            Err(error) => {
                log::info!(
                    "cannot open {} ({error}): pods are named from their processes' \
                     hostnames and service-account files, not their runtime's config",
                    init.display()
                );
                Path::new("/")
            }
        }
    })
}

/// The annotations a runtime names a container's pod, namespace, self and pod uid by.
struct Keys {
    pod: &'static str,
    namespace: &'static str,
    container: &'static str,
    pod_uid: &'static str,
}

/// containerd's CRI plugin's own keys (the uid in its newer releases).
const CONTAINERD: Keys = Keys {
    pod: "io.kubernetes.cri.sandbox-name",
    namespace: "io.kubernetes.cri.sandbox-namespace",
    container: "io.kubernetes.cri.container-name",
    pod_uid: "io.kubernetes.cri.sandbox-uid",
};

/// CRI-O's: the kubelet's label names.
const CRI_O: Keys = Keys {
    pod: "io.kubernetes.pod.name",
    namespace: "io.kubernetes.pod.namespace",
    container: "io.kubernetes.container.name",
    pod_uid: "io.kubernetes.pod.uid",
};

/// Where runtimes keep a running container's config, `{id}` its 64-hex id, and the keys
/// each writes: containerd's task bundles (also under k3s's own state directory), then
/// CRI-O's container state. Only the runtime's own keys are read: CRI-O copies a pod's
/// annotations into its containers' configs, so a pod could carry containerd's keys.
const LAYOUTS: [(&str, &Keys); 4] = [
    (
        "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
        &CONTAINERD,
    ),
    (
        "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
        &CONTAINERD,
    ),
    (
        "run/containers/storage/overlay-containers/{id}/userdata/config.json",
        &CRI_O,
    ),
    (
        "var/lib/containers/storage/overlay-containers/{id}/userdata/config.json",
        &CRI_O,
    ),
];

/// A config is a few to some tens of KiB; one larger than this is not read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What a container's runtime config names; each only when it is a valid Kubernetes name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeNames {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub container: Option<String>,
}

/// The part of an OCI runtime config read here; the rest is skipped unparsed.
#[derive(Deserialize)]
struct OciConfig {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The names the runtime config of container `id` of pod `pod_uid` holds, found under
/// `host_root`; `None` when no runtime keeps a readable config for it (Docker, a runtime
/// elsewhere, a container already gone), or when the config is another pod's.
pub fn names(host_root: &Path, id: &str, pod_uid: &str) -> Option<RuntimeNames> {
    // The id comes from a cgroup path: only a plain 64-hex id may become a path.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (config, keys) = LAYOUTS.iter().find_map(|(path, keys)| {
        read_config(host_root, &path.replace("{id}", id)).map(|config| (config, *keys))
    })?;
    let annotation = |key: &str| {
        config
            .annotations
            .get(key)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    // A process that made itself a cgroup named after another container must not take
    // that container's names.
    if let Some(uid) = annotation(keys.pod_uid)
        && uid != pod_uid
    {
        log::debug!("container {id}: runtime config of pod {uid}, not {pod_uid}");
        return None;
    }
    let name = |key: &str| {
        annotation(key)
            .filter(|value| valid_name(value))
            .map(str::to_string)
    };
    Some(RuntimeNames {
        pod: name(keys.pod),
        namespace: name(keys.namespace),
        container: name(keys.container),
    })
}

fn read_config(host_root: &Path, relative: &str) -> Option<OciConfig> {
    let mut text = Vec::new();
    open_in_root(host_root, relative)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        log::debug!("{relative}: runtime config over {MAX_CONFIG_BYTES} bytes, not read");
        return None;
    }
    match serde_json::from_slice(&text) {
        Ok(config) => Some(config),
        Err(error) => {
            log::debug!("{relative}: unreadable runtime config: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const ID: &str = "4e2b9c4d8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829304";
    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    /// A directory standing in for the node's root, removed when dropped.
    struct HostRoot(std::path::PathBuf);

    impl HostRoot {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for HostRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A host root holding `config` at `layout` (one of [`LAYOUTS`]' paths) for [`ID`].
    fn host_with(layout: &str, config: &str) -> HostRoot {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("loupe-host-{}-{n}", std::process::id()));
        let path = root.join(layout.replace("{id}", ID));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, config).unwrap();
        HostRoot(root)
    }

    fn some(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    const CONTAINERD_CONFIG: &str = r#"{"ociVersion":"1.1.0","process":{"env":["A=b"]},
        "annotations":{"io.kubernetes.cri.container-type":"container",
        "io.kubernetes.cri.container-name":"api",
        "io.kubernetes.cri.sandbox-name":"checkout-7d9f8c6b5-x2k9p",
        "io.kubernetes.cri.sandbox-namespace":"shop",
        "io.kubernetes.cri.sandbox-uid":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"}}"#;
    const CRI_O_CONFIG: &str = r#"{"annotations":{"io.kubernetes.container.name":"api",
        "io.kubernetes.pod.name":"checkout-7d9f8c6b5-x2k9p",
        "io.kubernetes.pod.namespace":"shop",
        "io.kubernetes.pod.uid":"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"}}"#;

    #[test]
    fn containerd_and_cri_o_configs_name_the_pod_namespace_and_container() {
        let expected = RuntimeNames {
            pod: some("checkout-7d9f8c6b5-x2k9p"),
            namespace: some("shop"),
            container: some("api"),
        };
        let configs = [
            CONTAINERD_CONFIG,
            CONTAINERD_CONFIG,
            CRI_O_CONFIG,
            CRI_O_CONFIG,
        ];
        for ((layout, _), config) in LAYOUTS.iter().zip(configs) {
            let host = host_with(layout, config);
            let found = names(host.path(), ID, UID);
            assert_eq!(found, Some(expected.clone()), "{layout}");
            // Another pod's config (a process in a cgroup named after another container).
            let other_pod = "11111111-2222-3333-4444-555555555555";
            assert_eq!(names(host.path(), ID, other_pod), None, "{layout}");
        }
        // Each runtime's own keys only: CRI-O copies a pod's annotations into its
        // containers' configs, where containerd's keys mean nothing.
        let host = host_with(LAYOUTS[2].0, CONTAINERD_CONFIG);
        assert_eq!(names(host.path(), ID, UID), Some(RuntimeNames::default()));
        let host = host_with(LAYOUTS[0].0, CRI_O_CONFIG);
        assert_eq!(names(host.path(), ID, UID), Some(RuntimeNames::default()));
        // Without a uid (an older containerd) the names stand.
        let host = host_with(
            LAYOUTS[0].0,
            r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"web-0"}}"#,
        );
        let found = names(host.path(), ID, UID);
        assert_eq!(found.and_then(|n| n.pod), some("web-0"));
    }

    #[test]
    fn missing_unreadable_and_odd_configs_name_nothing() {
        let host = host_with(LAYOUTS[0].0, r#"{"annotations":{}}"#);
        // Another container's id finds nothing, and an id that is not plain hex is not
        // followed even where the path it makes leads to a config.
        let other = ID.replace('4', "5");
        assert_eq!(names(host.path(), &other, UID), None);
        let around = format!("../k8s.io/{ID}");
        assert_eq!(names(host.path(), &around, UID), None);
        assert_eq!(names(host.path(), ID, UID), Some(RuntimeNames::default()));
        // Not JSON, annotations of the wrong type: no names, no panic.
        for config in ["not json", r#"{"annotations":["a"]}"#, "", "{"] {
            let host = host_with(LAYOUTS[0].0, config);
            assert_eq!(names(host.path(), ID, UID), None, "{config}");
        }
        // A value that is no Kubernetes name is left out.
        let host = host_with(
            LAYOUTS[0].0,
            r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"Not A Name",
                "io.kubernetes.cri.sandbox-namespace":" shop ",
                "io.kubernetes.cri.container-name":"x/y"}}"#,
        );
        assert_eq!(
            names(host.path(), ID, UID),
            Some(RuntimeNames {
                namespace: some("shop"),
                ..RuntimeNames::default()
            })
        );
    }

    #[test]
    fn oversized_configs_and_fifos_are_not_read() {
        let padding = " ".repeat(MAX_CONFIG_BYTES as usize);
        let config = format!(r#"{{"annotations":{{"io.kubernetes.pod.name":"web-0"}}}}{padding}"#);
        let host = host_with(LAYOUTS[2].0, &config);
        assert_eq!(names(host.path(), ID, UID), None);
        // A FIFO where the config belongs: opening it must not wait for a writer.
        let host = host_with(LAYOUTS[0].0, "");
        let path = host.path().join(LAYOUTS[0].0.replace("{id}", ID));
        fs::remove_file(&path).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert_eq!(names(host.path(), ID, UID), None);
    }
}
