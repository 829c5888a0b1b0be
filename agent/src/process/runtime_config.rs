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

/// Where runtimes keep a running container's config, `{id}` its 64-hex id: containerd's
/// task bundles (also under k3s's own state directory), then CRI-O's container state.
const CONFIG_PATHS: [&str; 4] = [
    "run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
    "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json",
    "run/containers/storage/overlay-containers/{id}/userdata/config.json",
    "var/lib/containers/storage/overlay-containers/{id}/userdata/config.json",
];

/// A config is a few to some tens of KiB; one larger than this is not read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The annotations naming the pod, its namespace and the container: containerd's CRI
/// plugin's, then CRI-O's (the kubelet's label names).
const POD_KEYS: [&str; 2] = ["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
const NAMESPACE_KEYS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
];
const CONTAINER_KEYS: [&str; 2] = [
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
];

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

/// The names the runtime config of container `id` holds, found under `host_root`; `None`
/// when no runtime keeps a readable config for it (Docker, a runtime elsewhere, a
/// container already gone).
pub fn names(host_root: &Path, id: &str) -> Option<RuntimeNames> {
    // The id comes from a cgroup path: only a plain 64-hex id may become a path.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let config = CONFIG_PATHS
        .iter()
        .find_map(|path| read_config(host_root, &path.replace("{id}", id)))?;
    let first_valid = |keys: &[&str]| {
        keys.iter()
            .filter_map(|key| config.annotations.get(*key))
            .map(|value| value.trim())
            .find(|value| valid_name(value))
            .map(str::to_string)
    };
    Some(RuntimeNames {
        pod: first_valid(&POD_KEYS),
        namespace: first_valid(&NAMESPACE_KEYS),
        container: first_valid(&CONTAINER_KEYS),
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

    /// A host root holding `config` at `layout` (one of [`CONFIG_PATHS`]) for [`ID`].
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

    #[test]
    fn containerd_and_cri_o_configs_name_the_pod_namespace_and_container() {
        let containerd = r#"{"ociVersion":"1.1.0","process":{"env":["A=b"]},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"api",
            "io.kubernetes.cri.sandbox-name":"checkout-7d9f8c6b5-x2k9p",
            "io.kubernetes.cri.sandbox-namespace":"shop"}}"#;
        let cri_o = r#"{"annotations":{"io.kubernetes.container.name":"api",
            "io.kubernetes.pod.name":"checkout-7d9f8c6b5-x2k9p",
            "io.kubernetes.pod.namespace":"shop"}}"#;
        let expected = RuntimeNames {
            pod: some("checkout-7d9f8c6b5-x2k9p"),
            namespace: some("shop"),
            container: some("api"),
        };
        for (layout, config) in [
            (CONFIG_PATHS[0], containerd),
            (CONFIG_PATHS[1], containerd),
            (CONFIG_PATHS[2], cri_o),
            (CONFIG_PATHS[3], cri_o),
        ] {
            let host = host_with(layout, config);
            assert_eq!(names(host.path(), ID), Some(expected.clone()), "{layout}");
        }
    }

    #[test]
    fn missing_unreadable_and_odd_configs_name_nothing() {
        let host = host_with(CONFIG_PATHS[0], r#"{"annotations":{}}"#);
        // Another container's id, and ids that are not plain hex, find nothing.
        let other = ID.replace('4', "5");
        assert_eq!(names(host.path(), &other), None);
        assert_eq!(names(host.path(), "../../../etc"), None);
        assert_eq!(names(host.path(), ID), Some(RuntimeNames::default()));
        // Not JSON, annotations of the wrong type: no names, no panic.
        for config in ["not json", r#"{"annotations":["a"]}"#, "", "{"] {
            let host = host_with(CONFIG_PATHS[0], config);
            assert_eq!(names(host.path(), ID), None, "{config}");
        }
        // A value that is no Kubernetes name is left out; the other family's may stand in.
        let host = host_with(
            CONFIG_PATHS[0],
            r#"{"annotations":{"io.kubernetes.cri.sandbox-name":"Not A Name",
                "io.kubernetes.pod.name":"web-0","io.kubernetes.cri.container-name":"x/y"}}"#,
        );
        assert_eq!(
            names(host.path(), ID),
            Some(RuntimeNames {
                pod: some("web-0"),
                ..RuntimeNames::default()
            })
        );
    }

    #[test]
    fn an_oversized_config_is_not_read() {
        let padding = " ".repeat(MAX_CONFIG_BYTES as usize);
        let config = format!(r#"{{"annotations":{{"io.kubernetes.pod.name":"web-0"}}}}{padding}"#);
        let host = host_with(CONFIG_PATHS[2], &config);
        assert_eq!(names(host.path(), ID), None);
    }
}
