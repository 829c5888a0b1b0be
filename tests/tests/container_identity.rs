//! A traced process in a Kubernetes pod is told apart from the other pods on its node by
//! its resource: `container.id`, `k8s.pod.uid`, `k8s.pod.name` and `k8s.namespace.name`,
//! read from /proc without the Kubernetes API, and without a service name of its own it
//! is named after its workload. The pod here is built as a container
//! runtime builds one: a cgroup named as the kubelet's systemd driver names it, a UTS
//! namespace whose hostname is the pod's name, and a mount namespace holding the
//! service-account namespace file. On a host, a process of a systemd service without a
//! name of its own is named after the service, its cgroup made as systemd makes it.

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
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup2 hierarchy is mounted")
}

/// Nested cgroups made for a test, removed (innermost first) once their process is gone.
struct Cgroup {
    levels: Vec<PathBuf>,
}

impl Cgroup {
    /// `names`, each inside the one before, under the cgroup v2 root; those that exist
    /// already are left as they are.
    fn create(names: &[String]) -> Self {
        let mut path = cgroup2_root();
        let mut levels = Vec::new();
        for name in names {
            path.push(name);
            if !path.exists() {
                fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                levels.push(path.clone());
            }
        }
        Self { levels }
    }

    /// The innermost cgroup's process list.
    fn procs(&self) -> PathBuf {
        let innermost = self.levels.last().expect("the innermost cgroup is new");
        innermost.join("cgroup.procs")
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
fn pod_cgroup() -> Cgroup {
    let uid = POD_UID.replace('-', "_");
    Cgroup::create(&[
        "kubepods.slice".to_string(),
        "kubepods-besteffort.slice".to_string(),
        format!("kubepods-besteffort-pod{uid}.slice"),
        format!("cri-containerd-{CONTAINER_ID}.scope"),
    ])
}

#[test]
fn a_process_in_a_pod_carries_its_container_and_pod() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    let pod = pod_cgroup();
    let secrets = "/run/secrets/kubernetes.io/serviceaccount";
    // Joins the pod's cgroup, names its UTS namespace after the pod, and in its own mount
    // namespace mounts its /etc/hostname and service-account directory as the kubelet
    // does, then execs the server. Without the HOSTNAME the test's own environment may
    // carry, the pod's name comes from its /etc/hostname.
    let hostname_file = support::scratch_dir("pod").join("hostname");
    fs::write(&hostname_file, format!("{POD_NAME}\n")).expect("write the pod's hostname");
    let setup = format!(
        "unset HOSTNAME && echo $$ > {procs} && hostname {POD_NAME} \
         && mount --bind {hostname_file} /etc/hostname && mount -t tmpfs tmpfs /run \
         && mkdir -p {secrets} && echo {NAMESPACE} > {secrets}/namespace && exec \"$@\"",
        procs = pod.procs().display(),
        hostname_file = hostname_file.display(),
    );
    let pod_port = free_port();
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
    // No OTEL_SERVICE_NAME: a zero-code service in a pod is named after its workload.
    let _in_pod = servers::python_wrapped(pod_port, &wrapper, &[]);
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

#[test]
fn a_host_process_of_a_systemd_service_is_named_after_the_service() {
    require_root();
    let receiver = OtlpReceiver::start().expect("start OTLP receiver");
    // As systemd starts a service: its processes in `system.slice/<unit>.service`.
    let unit = format!("loupe-catalog-{}", std::process::id());
    let service = Cgroup::create(&["system.slice".to_string(), format!("{unit}.service")]);
    let setup = format!(
        "echo $$ > {procs} && exec \"$@\"",
        procs = service.procs().display()
    );
    let port = free_port();
    // No OTEL_SERVICE_NAME: the interpreter's name would say nothing about the service.
    let _server = servers::python_wrapped(port, &["sh", "-c", &setup, "sh"], &[]);
    let agent = Agent::start(
        &["--exe", "python3*", "--port", &port.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/ok")]), vec![200]);
    let spans = receiver.wait_for_spans(1, WAIT);
    let span = spans.first().expect("the request's span");
    assert_eq!(
        span.service_name(),
        Some(unit.as_str()),
        "{:?}",
        span.resource
    );
    let exe = span
        .resource
        .get("process.executable.name")
        .map(String::as_str);
    assert!(
        exe.is_some_and(|name| name.starts_with("python3")),
        "the executable is still named: {exe:?}"
    );
    drop(agent);
}
