//! Who a container is — its name, image, compose project and service, Kubernetes pod —
//! read from what its runtime keeps on disk, once per container id (no round trip to a
//! runtime's API per event):
//!
//! - docker: `<data-root>/containers/<id>/config.v2.json` (`Name`, `Config.Image`,
//!   `Config.Labels`: compose's `com.docker.compose.project`/`.service`, and the
//!   `io.kubernetes.*` labels of cri-dockerd);
//! - containerd (CRI): the OCI bundle of the running task,
//!   `/run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`, whose
//!   annotations `io.kubernetes.cri.sandbox-namespace`, `…sandbox-name`,
//!   `…container-name` and `…image-name` name the pod, its container and image;
//! - cri-o: `/run/containers/storage/overlay-containers/<id>/userdata/config.json`, with
//!   the annotations `io.kubernetes.pod.namespace`, `…pod.name`, `…container.name`;
//! - failing those, a pod uid in the cgroup path is looked up in kubelet's log layout,
//!   `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    event::ContainerInfo,
    host::{identity, signals},
};

/// Where runtimes keep their metadata (all overridable, for tests and unusual hosts).
#[derive(Clone, Debug)]
pub struct Roots {
    pub docker: PathBuf,
    pub containerd_tasks: PathBuf,
    pub crio_containers: PathBuf,
    pub pod_logs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            docker: PathBuf::from("/var/lib/docker"),
            containerd_tasks: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"),
            crio_containers: PathBuf::from("/run/containers/storage/overlay-containers"),
            pod_logs: PathBuf::from("/var/log/pods"),
        }
    }
}

/// Containers remembered at once.
const CACHED: usize = 4096;
/// A container whose metadata was not found is looked up again after this long (its
/// runtime may not have written it yet).
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Resolver {
    roots: Roots,
    cache: HashMap<String, (Instant, ContainerInfo, bool)>,
}

impl Resolver {
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            cache: HashMap::new(),
        }
    }

    /// The container a cgroup v2 path names, with what its runtime recorded about it.
    pub fn resolve(&mut self, cgroup: &str) -> Option<ContainerInfo> {
        let id = identity::container(cgroup)?;
        if let Some((read, info, complete)) = self.cache.get(&id)
            && (*complete || read.elapsed() < RETRY_AFTER)
        {
            return Some(info.clone());
        }
        let (info, complete) = read(&self.roots, &id, cgroup);
        if self.cache.len() >= CACHED {
            self.cache.clear();
        }
        self.cache
            .insert(id, (Instant::now(), info.clone(), complete));
        Some(info)
    }
}

/// The signals that may stop a container here besides SIGTERM: the usual ones
/// ([`signals::CONTAINER_STOP_SIGNALS`]) and those docker's containers under
/// `docker_root` name, read once at start.
pub fn stop_signals(docker_root: &Path) -> Vec<i32> {
    let mut found = signals::CONTAINER_STOP_SIGNALS.to_vec();
    let configs = std::fs::read_dir(docker_root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| read_json(&entry.path().join("config.v2.json")));
    for config in configs {
        if let Some(sig) = stop_signal(&config["Config"]["StopSignal"])
            && !found.contains(&sig)
        {
            found.push(sig);
        }
    }
    found
}

/// Everything on disk about container `id`; whether its runtime's metadata was found.
pub fn read(roots: &Roots, id: &str, cgroup: &str) -> (ContainerInfo, bool) {
    let mut info = ContainerInfo {
        id: id.to_string(),
        runtime: runtime_from_cgroup(cgroup).to_string(),
        ..ContainerInfo::default()
    };
    let found = docker(&roots.docker, id, &mut info)
        || containerd(&roots.containerd_tasks, id, &mut info)
        || crio(&roots.crio_containers, id, &mut info);
    if info.pod_name.is_none()
        && let Some(uid) = identity::pod(cgroup)
    {
        pod_from_logs(&roots.pod_logs, &uid, &mut info);
    }
    (info, found)
}

fn runtime_from_cgroup(cgroup: &str) -> &'static str {
    if cgroup.contains("cri-containerd-") || cgroup.contains("/containerd-") {
        "containerd"
    } else if cgroup.contains("crio-") {
        "cri-o"
    } else if cgroup.contains("libpod-") {
        "podman"
    } else {
        "docker"
    }
}

fn read_json(path: &Path) -> Option<Value> {
    // Bounded: these files are a few KiB; a runaway one is not read whole.
    let text = std::fs::read_to_string(path).ok()?;
    if text.len() > 4 << 20 {
        return None;
    }
    serde_json::from_str(&text).ok()
}

fn text(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn docker(root: &Path, id: &str, info: &mut ContainerInfo) -> bool {
    let Some(config) = read_json(&root.join("containers").join(id).join("config.v2.json")) else {
        return false;
    };
    info.runtime = "docker".to_string();
    info.name = text(&config["Name"]).map(|name| name.trim_start_matches('/').to_string());
    info.image = text(&config["Config"]["Image"]);
    let labels = &config["Config"]["Labels"];
    info.compose_project = text(&labels["com.docker.compose.project"]);
    info.compose_service = text(&labels["com.docker.compose.service"]);
    info.pod_namespace = text(&labels["io.kubernetes.pod.namespace"]);
    info.pod_name = text(&labels["io.kubernetes.pod.name"]);
    info.pod_container = text(&labels["io.kubernetes.container.name"]);
    info.stop_signal = stop_signal(&config["Config"]["StopSignal"]).map(signals::name);
    true
}

/// A runtime's stop signal ("SIGUSR1", "USR1" or "10"); None for SIGTERM, which every
/// stop is watched for anyway.
fn stop_signal(value: &Value) -> Option<i32> {
    let sig = signals::parse(value.as_str()?).ok()?;
    (sig != signals::SIGTERM).then_some(sig)
}

fn containerd(tasks: &Path, id: &str, info: &mut ContainerInfo) -> bool {
    let Ok(namespaces) = std::fs::read_dir(tasks) else {
        return false;
    };
    let Some(config) = namespaces
        .flatten()
        .find_map(|ns| read_json(&ns.path().join(id).join("config.json")))
    else {
        return false;
    };
    let annotations = &config["annotations"];
    info.runtime = "containerd".to_string();
    info.pod_namespace = text(&annotations["io.kubernetes.cri.sandbox-namespace"]);
    info.pod_name = text(&annotations["io.kubernetes.cri.sandbox-name"]);
    info.pod_container = text(&annotations["io.kubernetes.cri.container-name"]);
    info.image = text(&annotations["io.kubernetes.cri.image-name"]);
    info.name = info.pod_container.clone();
    true
}

fn crio(containers: &Path, id: &str, info: &mut ContainerInfo) -> bool {
    let path = containers.join(id).join("userdata/config.json");
    let Some(config) = read_json(&path) else {
        return false;
    };
    let annotations = &config["annotations"];
    info.runtime = "cri-o".to_string();
    info.pod_namespace = text(&annotations["io.kubernetes.pod.namespace"]);
    info.pod_name = text(&annotations["io.kubernetes.pod.name"]);
    info.pod_container = text(&annotations["io.kubernetes.container.name"]);
    info.image = text(&annotations["io.kubernetes.cri-o.ImageName"]);
    info.name = info.pod_container.clone();
    true
}

/// `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`: the pod of `uid`, and its
/// container when it has only one.
fn pod_from_logs(logs: &Path, uid: &str, info: &mut ContainerInfo) {
    let Ok(pods) = std::fs::read_dir(logs) else {
        return;
    };
    let suffix = format!("_{uid}");
    for pod in pods.flatten() {
        let name = pod.file_name().to_string_lossy().into_owned();
        let Some((namespace, pod_name)) = name
            .strip_suffix(&suffix)
            .and_then(|rest| rest.split_once('_'))
        else {
            continue;
        };
        info.pod_namespace = Some(namespace.to_string());
        info.pod_name = Some(pod_name.to_string());
        let containers: Vec<String> = std::fs::read_dir(pod.path())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let [only] = containers.as_slice() {
            info.pod_container = Some(only.clone());
        }
        return;
    }
}

/// The service a container's processes deploy under: its workload, never its id (a
/// recreated container has a new one): `compose:PROJECT/SERVICE`, `k8s:NAMESPACE/OWNER`
/// (a Deployment's pods share the name before the ReplicaSet and pod suffixes, a
/// StatefulSet's before the ordinal), else `container:NAME`, else `image:IMAGE`; none
/// when nothing but the id is known.
pub fn service(info: &ContainerInfo) -> Option<String> {
    if let (Some(project), Some(service)) = (&info.compose_project, &info.compose_service) {
        return Some(format!("compose:{project}/{service}"));
    }
    if let (Some(namespace), Some(pod)) = (&info.pod_namespace, &info.pod_name) {
        return Some(format!("k8s:{namespace}/{}", pod_owner(pod)));
    }
    if let Some(name) = &info.name {
        return Some(format!("container:{name}"));
    }
    info.image.as_ref().map(|image| format!("image:{image}"))
}

/// The workload a pod's name comes from: `web-7d4b9c8f6-x2x7z` (Deployment → ReplicaSet
/// hash → pod suffix) → `web`, `agent-x2x7z` (DaemonSet, Job) → `agent`, `db-0`
/// (StatefulSet) → `db`; a bare pod's name is its own.
pub fn pod_owner(pod: &str) -> &str {
    // Kubernetes' generated suffixes use this alphabet (no vowels, no 0/1/3).
    let generated = |s: &str, lengths: std::ops::RangeInclusive<usize>| {
        lengths.contains(&s.len())
            && s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    };
    let Some((rest, last)) = pod.rsplit_once('-') else {
        return pod;
    };
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return rest;
    }
    if !generated(last, 5..=5) {
        return pod;
    }
    match rest.rsplit_once('-') {
        Some((owner, hash)) if generated(hash, 6..=10) => owner,
        _ => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn roots(dir: &Path) -> Roots {
        Roots {
            docker: dir.join("docker"),
            containerd_tasks: dir.join("tasks"),
            crio_containers: dir.join("crio"),
            pod_logs: dir.join("pods"),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("observer-containers-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_dockers_config_with_compose_labels_once_per_container() {
        let dir = scratch("docker");
        write(
            dir.join(format!("docker/containers/{ID}/config.v2.json")),
            r#"{"ID":"x","Name":"/shop_web_1","Config":{"Image":"shop/web:2","Labels":{"com.docker.compose.project":"shop","com.docker.compose.service":"web"}}}"#,
        );
        let mut resolver = Resolver::new(roots(&dir));
        let info = resolver.resolve(&format!("/docker/{ID}")).unwrap();
        assert_eq!(info.id, ID);
        assert_eq!(info.runtime, "docker");
        assert_eq!(info.name.as_deref(), Some("shop_web_1"));
        assert_eq!(info.image.as_deref(), Some("shop/web:2"));
        assert_eq!(
            (
                info.compose_project.as_deref(),
                info.compose_service.as_deref()
            ),
            (Some("shop"), Some("web"))
        );
        // Cached: the file is not read again.
        std::fs::remove_dir_all(dir.join("docker")).unwrap();
        let again = resolver
            .resolve(&format!("/system.slice/docker-{ID}.scope"))
            .unwrap();
        assert_eq!(again, info);
        assert_eq!(resolver.resolve("/system.slice/app.service"), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_containers_stop_signal_is_read_by_name_and_listed_at_start() {
        let dir = scratch("stop-signal");
        let config = |id: &str, stop: &str| {
            write(
                dir.join(format!("docker/containers/{id}/config.v2.json")),
                &format!(r#"{{"Name":"/c","Config":{{"StopSignal":"{stop}"}}}}"#),
            );
        };
        let other = ID.replace('0', "f");
        config(ID, "USR1");
        config(&other, "SIGUSR2");
        let mut resolver = Resolver::new(roots(&dir));
        let info = resolver.resolve(&format!("/docker/{ID}")).unwrap();
        assert_eq!(info.stop_signal.as_deref(), Some("SIGUSR1"));
        assert_eq!(
            stop_signals(&dir.join("docker")),
            [10, 28, 37, 12],
            "the usual ones, then SIGUSR2 that a container names"
        );
        for (named, expected) in [("10", Some(10)), ("SIGTERM", None), ("", None)] {
            assert_eq!(stop_signal(&Value::from(named)), expected);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lines_container_comes_last_and_reads_back() {
        use crate::event::{Event, Line, LostEvent};
        let line = Line {
            v: 1,
            event: Event::Lost(LostEvent { count: 1 }),
            time: "2026-12-01T00:00:00.000000000Z".into(),
            mono_ns: 1,
            host: "h".into(),
            container_info: Some(ContainerInfo {
                id: ID.into(),
                runtime: "docker".into(),
                name: Some("web".into()),
                ..ContainerInfo::default()
            }),
        };
        let json = line.to_json();
        assert!(
            json.ends_with(&format!(
                r#""count":1,"container_info":{{"id":"{ID}","runtime":"docker","name":"web"}}}}"#
            )),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), line);
    }

    #[test]
    fn a_containers_service_is_its_workload_never_its_id() {
        let mut info = ContainerInfo {
            id: ID.into(),
            runtime: "docker".into(),
            ..ContainerInfo::default()
        };
        assert_eq!(service(&info), None);
        info.image = Some("shop/web:2".into());
        assert_eq!(service(&info).as_deref(), Some("image:shop/web:2"));
        info.name = Some("web".into());
        assert_eq!(service(&info).as_deref(), Some("container:web"));
        info.compose_project = Some("shop".into());
        info.compose_service = Some("web".into());
        assert_eq!(service(&info).as_deref(), Some("compose:shop/web"));
        let pod = |namespace: &str, pod: &str| ContainerInfo {
            pod_namespace: Some(namespace.into()),
            pod_name: Some(pod.into()),
            ..ContainerInfo::default()
        };
        assert_eq!(
            service(&pod("shop", "web-7d4b9c8f6-x2x7z")).as_deref(),
            Some("k8s:shop/web")
        );
        assert_eq!(pod_owner("node-exporter-x2x7z"), "node-exporter");
        assert_eq!(pod_owner("db-0"), "db");
        assert_eq!(pod_owner("my-app"), "my-app");
        assert_eq!(pod_owner("debug"), "debug");
    }

    #[test]
    fn reads_a_cri_containers_pod_from_its_bundle_or_kubelets_log_layout() {
        let dir = scratch("cri");
        write(
            dir.join(format!("tasks/k8s.io/{ID}/config.json")),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-name":"web-7d4b9c8f6-x2x7z","io.kubernetes.cri.container-name":"app","io.kubernetes.cri.image-name":"registry/web:2"}}"#,
        );
        let uid = "8f2a1c3e-4b5d-6e7f-8091-a2b3c4d5e6f7";
        let cgroup = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        let (info, found) = read(&roots(&dir), ID, &cgroup);
        assert!(found);
        assert_eq!(info.runtime, "containerd");
        assert_eq!(info.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(info.pod_name.as_deref(), Some("web-7d4b9c8f6-x2x7z"));
        assert_eq!(info.pod_container.as_deref(), Some("app"));
        assert_eq!(info.image.as_deref(), Some("registry/web:2"));

        std::fs::remove_dir_all(dir.join("tasks")).unwrap();
        std::fs::create_dir_all(dir.join(format!("pods/shop_web-7d4b9c8f6-x2x7z_{uid}/app")))
            .unwrap();
        let (info, found) = read(&roots(&dir), ID, &cgroup);
        assert!(!found);
        assert_eq!(info.runtime, "containerd");
        assert_eq!(
            (
                info.pod_namespace.as_deref(),
                info.pod_name.as_deref(),
                info.pod_container.as_deref()
            ),
            (Some("shop"), Some("web-7d4b9c8f6-x2x7z"), Some("app"))
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
