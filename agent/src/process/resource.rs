//! The OpenTelemetry resource of a traced process: which service its spans belong to.
//!
//! `service.name` comes from the process's own `OTEL_SERVICE_NAME`, else from
//! `service.name` in its own `OTEL_RESOURCE_ATTRIBUTES`, else, in a Kubernetes pod, from
//! the workload its pod's name names, else, on a host, from the systemd service it runs
//! under, else from its executable name.
//! The agent's own `OTEL_RESOURCE_ATTRIBUTES` (cluster, environment, node ...) are added to
//! every process's resource without overriding what the process set itself.

use std::path::Path;

use crate::span::{AttrValue, Resource};

use super::procfs;

/// What the agent read of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    pub exe: Option<&'a Path>,
    pub comm: Option<&'a str>,
    pub environ: &'a [(String, String)],
    /// Its container and pod, as resource attributes.
    pub detected: &'a [(&'static str, String)],
    /// The systemd service it runs under, on a host.
    pub service_unit: Option<&'a str>,
}

/// Resource attributes that name things the agent itself does not know per process.
#[derive(Debug, Clone)]
pub struct ResourceDefaults {
    pub host_name: String,
    /// The agent's own resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, configuration file).
    pub agent_attributes: Vec<(String, String)>,
}

impl ResourceDefaults {
    /// `agent_attributes` are the agent's own resource attributes, from its configuration
    /// file and `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn new(agent_attributes: Vec<(String, String)>) -> Self {
        Self {
            host_name: host_name(),
            agent_attributes,
        }
    }

    /// Reads what it needs from /proc; a process that vanished gets a resource named after
    /// its command so its last spans are still exported. Also tells whether the process's
    /// environment sets up an OpenTelemetry SDK.
    pub fn for_process(&self, pid: u32, comm_hint: Option<&str>) -> (Resource, bool) {
        let exe = procfs::exe_path(pid);
        let comm = procfs::comm(pid).or_else(|| comm_hint.map(str::to_string));
        let environ = procfs::environ(pid);
        let sdk = super::instrumented::configured_by_environment(&environ);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let detected = super::container::attributes(pid, &cgroup, &environ);
        // Containers are named by what runs in them, not by the host service that may
        // have started their runtime.
        let in_container = detected.iter().any(|(key, _)| *key == "container.id");
        let service_unit = exe
            .as_deref()
            .filter(|_| !in_container)
            .and_then(|exe| super::systemd::service_of(pid, &cgroup, exe));
        let seen = Seen {
            exe: exe.as_deref(),
            comm: comm.as_deref(),
            environ: &environ,
            detected: &detected,
            service_unit: service_unit.as_deref(),
        };
        (self.build(pid, &seen), sdk)
    }

    /// The resource of process `pid`. Its own `OTEL_RESOURCE_ATTRIBUTES` win over what
    /// loupe `detected` (its container and pod), which wins over the agent's attributes.
    pub fn build(&self, pid: u32, seen: &Seen<'_>) -> Resource {
        let Seen {
            exe,
            comm,
            environ,
            detected,
            service_unit,
        } = *seen;
        let env = |name: &str| procfs::env_var(environ, name);
        let own: Vec<(String, String)> = env("OTEL_RESOURCE_ATTRIBUTES")
            .map(parse_resource_attributes)
            .unwrap_or_default();
        let exe_name = exe
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| comm.map(str::to_string));
        let service_name = env("OTEL_SERVICE_NAME")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| {
                own.iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .or_else(|| {
                detected
                    .iter()
                    .find(|(k, _)| *k == "k8s.pod.name")
                    .map(|(_, pod)| super::container::workload_name(pod).to_string())
            })
            .or_else(|| service_unit.map(str::to_string))
            .or_else(|| exe_name.clone())
            .unwrap_or_else(|| format!("pid-{pid}"));

        let mut attributes: Vec<(String, AttrValue)> = vec![
            ("service.name".into(), AttrValue::Str(service_name.clone())),
            ("process.pid".into(), AttrValue::Int(pid as i64)),
            ("host.name".into(), AttrValue::Str(self.host_name.clone())),
            (
                "telemetry.distro.name".into(),
                AttrValue::Str("loupe".into()),
            ),
            (
                "telemetry.distro.version".into(),
                AttrValue::Str(env!("CARGO_PKG_VERSION").into()),
            ),
        ];
        if let Some(name) = exe_name {
            attributes.push(("process.executable.name".into(), AttrValue::Str(name)));
        }
        if let Some(path) = exe {
            attributes.push((
                "process.executable.path".into(),
                AttrValue::Str(path.to_string_lossy().into_owned()),
            ));
        }
        fn pairs(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
            list.iter().map(|(k, v)| (k.as_str(), v.as_str()))
        }
        let layers = pairs(&own)
            .chain(detected.iter().map(|(k, v)| (*k, v.as_str())))
            .chain(pairs(&self.agent_attributes));
        for (key, value) in layers {
            if !attributes.iter().any(|(k, _)| k == key) {
                attributes.push((key.to_string(), AttrValue::Str(value.to_string())));
            }
        }
        Resource {
            service_name,
            attributes,
        }
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and the last byte stays 0.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Parses `key1=value1,key2=value2` with percent-encoded values, as the SDK spec defines
/// `OTEL_RESOURCE_ATTRIBUTES`. Malformed entries are skipped.
pub fn parse_resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            Some((key.to_string(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ResourceDefaults {
        ResourceDefaults {
            host_name: "node-1".into(),
            agent_attributes: vec![
                ("deployment.environment.name".into(), "prod".into()),
                ("service.namespace".into(), "agent-default".into()),
            ],
        }
    }

    fn seen<'a>(
        exe: Option<&'a Path>,
        comm: Option<&'a str>,
        environ: &'a [(String, String)],
        detected: &'a [(&'static str, String)],
    ) -> Seen<'a> {
        Seen {
            exe,
            comm,
            environ,
            detected,
            service_unit: None,
        }
    }

    fn attr<'a>(r: &'a Resource, key: &str) -> Option<&'a AttrValue> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn the_processs_own_attributes_beat_its_detected_pod_which_beats_the_agents() {
        let env = vec![(
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            "k8s.pod.name=from-downward-api".into(),
        )];
        let detected = [
            ("k8s.pod.name", "web-1".to_string()),
            ("k8s.namespace.name", "shop".to_string()),
            ("service.namespace", "detected".to_string()),
        ];
        let r = defaults().build(7, &seen(Some(Path::new("/srv/app")), None, &env, &detected));
        let text = |key| match attr(&r, key) {
            Some(AttrValue::Str(s)) => Some(s.as_str()),
            _ => None,
        };
        assert_eq!(text("k8s.pod.name"), Some("from-downward-api"));
        assert_eq!(text("k8s.namespace.name"), Some("shop"));
        assert_eq!(text("service.namespace"), Some("detected"));
        assert_eq!(text("deployment.environment.name"), Some("prod"));
    }

    #[test]
    fn a_pod_without_a_service_name_is_named_after_its_workload() {
        let detected = [("k8s.pod.name", "checkout-7d9f8c6b5-x2k9p".to_string())];
        let exe = Some(Path::new("/usr/bin/python3.11"));
        let r = defaults().build(7, &seen(exe, None, &[], &detected));
        assert_eq!(r.service_name, "checkout");
        // The process's own name still wins.
        let env = vec![("OTEL_SERVICE_NAME".into(), "payments".into())];
        let r = defaults().build(7, &seen(exe, None, &env, &detected));
        assert_eq!(r.service_name, "payments");
        // Outside a pod, the executable names it.
        assert_eq!(
            defaults().build(7, &seen(exe, None, &[], &[])).service_name,
            "python3.11"
        );
    }

    #[test]
    fn otel_service_name_wins() {
        let env = vec![
            ("OTEL_SERVICE_NAME".into(), "checkout".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                "service.name=ignored,service.namespace=shop".into(),
            ),
        ];
        let r = defaults().build(
            7,
            &seen(Some(Path::new("/usr/bin/python3.11")), None, &env, &[]),
        );
        assert_eq!(r.service_name, "checkout");
        assert_eq!(
            attr(&r, "service.name"),
            Some(&AttrValue::Str("checkout".into()))
        );
        // The process's own namespace beats the agent's default.
        assert_eq!(
            attr(&r, "service.namespace"),
            Some(&AttrValue::Str("shop".into()))
        );
        assert_eq!(
            attr(&r, "deployment.environment.name"),
            Some(&AttrValue::Str("prod".into()))
        );
        assert_eq!(attr(&r, "process.pid"), Some(&AttrValue::Int(7)));
        assert_eq!(
            attr(&r, "process.executable.name"),
            Some(&AttrValue::Str("python3.11".into()))
        );
        assert_eq!(
            attr(&r, "host.name"),
            Some(&AttrValue::Str("node-1".into()))
        );
        assert_eq!(
            attr(&r, "telemetry.distro.name"),
            Some(&AttrValue::Str("loupe".into()))
        );
    }

    #[test]
    fn resource_attributes_name_the_service_next() {
        let env = vec![(
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            "service.name=billing".into(),
        )];
        let r = defaults().build(7, &seen(Some(Path::new("/srv/app")), None, &env, &[]));
        assert_eq!(r.service_name, "billing");
    }

    #[test]
    fn executable_name_is_the_fallback() {
        let r = defaults().build(7, &seen(Some(Path::new("/usr/sbin/nginx")), None, &[], &[]));
        assert_eq!(r.service_name, "nginx");
        let r = defaults().build(8, &seen(None, Some("worker"), &[], &[]));
        assert_eq!(r.service_name, "worker");
        let r = defaults().build(9, &seen(None, None, &[], &[]));
        assert_eq!(r.service_name, "pid-9");
    }

    #[test]
    fn a_host_service_is_named_after_its_systemd_unit() {
        let exe = Some(Path::new("/usr/bin/python3.11"));
        let unit = Seen {
            service_unit: Some("catalog"),
            ..seen(exe, None, &[], &[])
        };
        let r = defaults().build(7, &unit);
        assert_eq!(r.service_name, "catalog");
        assert_eq!(
            attr(&r, "process.executable.name"),
            Some(&AttrValue::Str("python3.11".into()))
        );
        // The process's own name, and its pod's workload, come first.
        let env = vec![("OTEL_SERVICE_NAME".into(), "payments".into())];
        let named = Seen {
            environ: &env,
            ..unit
        };
        assert_eq!(defaults().build(7, &named).service_name, "payments");
        let detected = [("k8s.pod.name", "checkout-7d9f8c6b5-x2k9p".to_string())];
        let pod = Seen {
            detected: &detected,
            ..unit
        };
        assert_eq!(defaults().build(7, &pod).service_name, "checkout");
    }

    #[test]
    fn parses_and_decodes_attribute_lists() {
        assert_eq!(
            parse_resource_attributes("a=1, b = x%2Cy ,bad,=v,c=%zz"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x,y".into()),
                ("c".into(), "%zz".into()),
            ]
        );
    }
}
