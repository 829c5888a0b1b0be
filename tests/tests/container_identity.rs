//! A traced process in a Kubernetes pod is told apart from the other pods on its node by
//! its resource: `container.id`, `k8s.pod.uid`, `k8s.pod.name` and `k8s.namespace.name`,
//! read from /proc without the Kubernetes API, and without a service name of its own it
//! is named after its workload. The pod here is built as a container
//! runtime builds one: a cgroup named as the kubelet's systemd driver names it, a UTS
//! namespace whose hostname is the pod's name, and a mount namespace holding the
//! service-account namespace file. Where the runtime left the container's config on the
//! node (containerd's task bundle here), its names win: a pod whose own hostname and
//! service-account file name other things is still named right, and its container
//! too. On a host, a process of a systemd service without a name of its own is named
//! after the service, its cgroup made as systemd makes it.

mod support;

use std::{fs, path::PathBuf, thread, time::Duration};

use loupe_integration_tests::otlp_receiver::OtlpReceiver;
use support::{Agent, curl, free_port, require_root, servers};

const WAIT: Duration = Duration::from_secs(20);
const POD_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const CONTAINER_ID: &str = "4e2b9c4d8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829304";
const POD_NAME: &str = "checkout-7d9f8c6b5-x2k9p";
const NAMESPACE: &str = "shop";

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    mount_point(|fstype, options| fstype == "cgroup2" && !options.is_empty())
        .expect("a cgroup2 hierarchy is mounted")
}

/// Where systemd keeps its services: the v1 `name=systemd` hierarchy on a hybrid or
/// legacy host, and the v2 one.
fn systemd_roots() -> Vec<PathBuf> {
    let named = mount_point(|fstype, options| {
        fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
    });
    named.into_iter().chain([cgroup2_root()]).collect()
}

/// The first mount whose type and options `wanted` accepts.
fn mount_point(wanted: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(point), Some(fstype), Some(options)) =
            (fields.get(1), fields.get(2), fields.get(3))
        else {
            return None;
        };
        wanted(fstype, options).then(|| PathBuf::from(point))
    })
}

/// Nested cgroups made for a test, removed (innermost first) once their process is gone.
struct Cgroup {
    levels: Vec<PathBuf>,
    innermost: Vec<PathBuf>,
}

impl Cgroup {
    /// `names`, each inside the one before, under each of `roots`; those that exist
    /// already are left as they are, and the innermost must be new.
    fn create(roots: &[PathBuf], names: &[String]) -> Self {
        let mut levels = Vec::new();
        let mut innermost = Vec::new();
        for root in roots {
            let mut path = root.clone();
            for name in names {
                path.push(name);
                if !path.exists() {
                    fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    levels.push(path.clone());
                }
            }
            assert_eq!(levels.last(), Some(&path), "{} is new", path.display());
            innermost.push(path);
        }
        Self { levels, innermost }
    }

    /// A shell command that moves the shell into the innermost cgroups.
    fn join_command(&self) -> String {
        self.innermost
            .iter()
            .map(|path| format!("echo $$ > {}/cgroup.procs", path.display()))
            .collect::<Vec<_>>()
            .join(" && ")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for level in self.levels.iter().rev() {
            // The killed server may take a moment to leave its cgroup.
            for _ in 0..50 {
                if fs::remove_dir(level).is_ok() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The cgroups of a pod's container, named as the kubelet's systemd driver names them.
fn pod_cgroup(pod_uid: &str, container_id: &str) -> Cgroup {
    let uid = pod_uid.replace('-', "_");
    Cgroup::create(
        &[cgroup2_root()],
        &[
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{uid}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ],
    )
}

/// A Python server on `port` in `pod`'s cgroup, started as a container runtime starts a
/// pod's process: a UTS namespace named `hostname`, and in its own mount namespace the
/// kubelet's `/etc/hostname` and a service-account directory naming `namespace`. Without
/// the HOSTNAME the test's own environment may carry, the pod's name comes from its
/// /etc/hostname.
fn python_in_pod(pod: &Cgroup, hostname: &str, namespace: &str, port: u16) -> support::Guard {
    let hostname_file = support::scratch_dir("pod").join("hostname");
    fs::write(&hostname_file, format!("{hostname}\n")).expect("write the pod's hostname");
    let secrets = "/run/secrets/kubernetes.io/serviceaccount";
    let setup = format!(
        "unset HOSTNAME && {join} && hostname {hostname} \
         && mount --bind {hostname_file} /etc/hostname && mount -t tmpfs tmpfs /run \
         && mkdir -p {secrets} && echo {namespace} > {secrets}/namespace && exec \"$@\"",
        join = pod.join_command(),
        hostname_file = hostname_file.display(),
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "sh",
        "-c",
        &setup,
        "sh",
    ];
    servers::python_wrapped(port, &wrapper, &[])
}

#[test]
fn a_process_in_a_pod_carries_its_container_and_pod() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let pod = pod_cgroup(POD_UID, CONTAINER_ID);
    let pod_port = free_port();
    // No OTEL_SERVICE_NAME: a zero-code service in a pod is named after its workload.
    let _in_pod = python_in_pod(&pod, POD_NAME, NAMESPACE, pod_port);
    let host_port = free_port();
    let _on_host = servers::python(host_port, &[("OTEL_SERVICE_NAME", "on-host")]);
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &[
            "--exe",
            "python3*",
            "--port",
            &pod_port.to_string(),
            "--port",
            &host_port.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    for port in [pod_port, host_port] {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/ok")]), vec![200]);
    }
    let spans = receiver.wait_for_spans(2, WAIT);
    let resource_of = |service: &str| {
        spans
            .iter()
            .find(|s| s.service_name() == Some(service))
            .unwrap_or_else(|| panic!("no span of {service}: {spans:?}"))
            .resource
            .clone()
    };
    let in_pod = resource_of("checkout");
    let attr = |key: &str| in_pod.get(key).map(String::as_str);
    assert_eq!(attr("container.id"), Some(CONTAINER_ID));
    assert_eq!(attr("k8s.pod.uid"), Some(POD_UID));
    assert_eq!(attr("k8s.pod.name"), Some(POD_NAME));
    assert_eq!(attr("k8s.namespace.name"), Some(NAMESPACE));
    // A process outside the pod is in no pod: none of its attributes, not the host's name
    // as a pod's. (It has a container id of its own only when the test runs in one.)
    let on_host = resource_of("on-host");
    for key in ["k8s.pod.uid", "k8s.pod.name", "k8s.namespace.name"] {
        assert_eq!(on_host.get(key), None, "{key} on a host process");
    }
    assert_ne!(
        on_host.get("container.id").map(String::as_str),
        Some(CONTAINER_ID)
    );
    drop(agent);
}

/// A container's task bundle as containerd keeps it on the node, holding `config`; what
/// it made is removed when dropped.
struct ContainerdBundle {
    made: Vec<PathBuf>,
}

impl ContainerdBundle {
    fn create(container_id: &str, config: &str) -> Self {
        let mut made = Vec::new();
        let mut path = PathBuf::from("/");
        for name in [
            "run",
            "containerd",
            "io.containerd.runtime.v2.task",
            "k8s.io",
        ] {
            path.push(name);
            if !path.exists() {
                fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                made.push(path.clone());
            }
        }
        // The test's own bundle, left behind by an earlier run that was killed.
        path.push(container_id);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fs::write(path.join("config.json"), config).expect("write the container's config");
        made.push(path);
        Self { made }
    }
}

impl Drop for ContainerdBundle {
    fn drop(&mut self) {
        if let Some(bundle) = self.made.pop() {
            let _ = fs::remove_dir_all(bundle);
        }
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_pod_is_named_by_its_runtimes_config_whatever_its_hostname() {
    require_root();
    const UID: &str = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d";
    const ID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let pod = pod_cgroup(UID, ID);
    let _bundle = ContainerdBundle::create(
        ID,
        r#"{"ociVersion":"1.1.0","process":{"args":["python3"]},"annotations":{
            "io.kubernetes.cri.container-type":"container",
            "io.kubernetes.cri.container-name":"api",
            "io.kubernetes.cri.sandbox-name":"inventory-5b7c9d8f6-q4w2x",
            "io.kubernetes.cri.sandbox-namespace":"warehouse",
            "io.kubernetes.cri.sandbox-uid":"7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"}}"#,
    );
    // The pod sets `spec.hostname`, and its own files name another namespace too: the
    // runtime's names must win over both.
    let port = free_port();
    let _server = python_in_pod(&pod, "custom-hostname", "from-files", port);
    let endpoint = receiver.grpc_endpoint();
    let agent = Agent::start(
        &["--exe", "python3*", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/ok")]), vec![200]);
    let spans = receiver.wait_for_spans(1, WAIT);
    let resource = &spans[0].resource;
    let attr = |key: &str| resource.get(key).map(String::as_str);
    assert_eq!(attr("container.id"), Some(ID));
    assert_eq!(attr("k8s.pod.uid"), Some(UID));
    assert_eq!(attr("k8s.pod.name"), Some("inventory-5b7c9d8f6-q4w2x"));
    assert_eq!(attr("k8s.namespace.name"), Some("warehouse"));
    assert_eq!(attr("k8s.container.name"), Some("api"));
    // Named after the workload its pod's real name names.
    assert_eq!(spans[0].service_name(), Some("inventory"));
    drop(agent);
}

/// A Python server started as systemd starts `<unit>.service` (its cgroup in every
/// hierarchy systemd uses): with `exec`, Python is the service's own program; without,
/// the shell that started it is, and Python is just something the service runs.
fn python_in_service(unit: &str, exec: bool, port: u16) -> (Cgroup, support::Guard) {
    let service = Cgroup::create(
        &systemd_roots(),
        &["loupe-test.slice".to_string(), format!("{unit}.service")],
    );
    // `; true` keeps the shell from exec'ing its last command itself.
    let run = if exec { "exec \"$@\"" } else { "\"$@\"; true" };
    let setup = format!("{} && {run}", service.join_command());
    // No OTEL_SERVICE_NAME: the interpreter's name would say nothing about the service.
    let server = servers::python_wrapped(port, &["sh", "-c", &setup, "sh"], &[]);
    (service, server)
}

#[test]
fn a_host_process_of_a_systemd_service_is_named_after_the_service() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let unit = format!("loupe-catalog-{}", std::process::id());
    let started = format!("loupe-supervisor-{}", std::process::id());
    let (own_port, started_port) = (free_port(), free_port());
    // Servers before cgroups in drop order: a cgroup goes once its process is gone.
    let (_own_cgroup, _own) = python_in_service(&unit, true, own_port);
    let (_started_cgroup, _started) = python_in_service(&started, false, started_port);
    let agent = Agent::start(
        &[
            "--exe",
            "python3*",
            "--port",
            &own_port.to_string(),
            "--port",
            &started_port.to_string(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    for port in [own_port, started_port] {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/ok")]), vec![200]);
    }
    let spans = receiver.wait_for_spans(2, WAIT);
    let service_at = |port: u16| {
        let span = spans
            .iter()
            .find(|s| s.attr("server.port") == Some(&port.to_string()))
            .unwrap_or_else(|| panic!("no span of port {port}: {spans:?}"));
        (
            span.service_name().map(str::to_owned),
            span.resource.clone(),
        )
    };
    let (own, resource) = service_at(own_port);
    assert_eq!(own.as_deref(), Some(unit.as_str()), "{resource:?}");
    let exe = resource.get("process.executable.name").map(String::as_str);
    assert!(
        exe.is_some_and(|name| name.starts_with("python3")),
        "the executable is still named: {exe:?}"
    );
    let (other, resource) = service_at(started_port);
    assert!(
        other
            .as_deref()
            .is_some_and(|name| name.starts_with("python3")),
        "a program the service started keeps its executable's name: {resource:?}"
    );
    drop(agent);
}
