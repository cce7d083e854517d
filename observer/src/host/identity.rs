//! Who a process is, from its cgroup v2 path: the systemd unit, the container id, and
//! the service a deploy groups it under.

/// The systemd unit: the innermost path component naming a `.service` (or, failing
/// that, a `.scope` that is not a container's).
pub fn unit(cgroup: &str) -> Option<String> {
    let components: Vec<&str> = cgroup.split('/').filter(|c| !c.is_empty()).collect();
    let service = components.iter().rev().find(|c| c.ends_with(".service"));
    service
        .or_else(|| {
            components
                .iter()
                .rev()
                .find(|c| c.ends_with(".scope") && container_in(c).is_none())
        })
        .map(|c| c.to_string())
}

/// A container id (64 hex digits) in the path: docker, containerd (`cri-containerd-`),
/// cri-o (`crio-`), podman (`libpod-`), or cgroupfs-style `/docker/<id>`.
pub fn container(cgroup: &str) -> Option<String> {
    cgroup.split('/').rev().find_map(container_in)
}

fn container_in(component: &str) -> Option<String> {
    let trimmed = component.strip_suffix(".scope").unwrap_or(component);
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| trimmed.strip_prefix(prefix))
    .unwrap_or(trimmed);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// A Kubernetes pod's uid: `kubepods-burstable-pod<uid, _ for ->.slice` (systemd cgroup
/// driver) or `/kubepods/burstable/pod<uid>/` (cgroupfs driver).
pub fn pod(cgroup: &str) -> Option<String> {
    cgroup.split('/').find_map(|component| {
        let name = component.strip_suffix(".slice").unwrap_or(component);
        let uid = name
            .rsplit_once("-pod")
            .map(|(_, uid)| uid)
            .or_else(|| name.strip_prefix("pod"))?;
        let uid = uid.replace('_', "-");
        let is_uid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        is_uid.then_some(uid)
    })
}

/// The service a deploy groups a process under: its systemd service, else its
/// container, else its cgroup (if not the root, nor a scope such as a login session's,
/// which groups whatever was started from it), else its command plus listening ports.
pub fn service(cgroup: Option<&str>, comm: &str, ports: &[u16]) -> String {
    if let Some(cgroup) = cgroup {
        if let Some(unit) = unit(cgroup).filter(|unit| unit.ends_with(".service")) {
            return format!("unit:{unit}");
        }
        if let Some(container) = container(cgroup) {
            return format!("container:{container}");
        }
        if dedicated(cgroup) {
            return format!("cgroup:{cgroup}");
        }
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    if ports.is_empty() {
        format!("comm:{comm}")
    } else {
        format!("comm:{comm}:{}", ports.join(","))
    }
}

/// A cgroup of its own: not the root, and not a scope (a login session, `systemd-run
/// --scope`) or slice that holds whatever happened to be started there.
fn dedicated(cgroup: &str) -> bool {
    let last = cgroup.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
    !last.is_empty() && !last.ends_with(".scope") && !last.ends_with(".slice")
}

/// Whether a process is an instance of a workload, whose stops make a deploy: a
/// systemd service, a container, a cgroup of its own, or a server (it listens). A
/// short-lived process that is none of these (a shell, a job a CI runner times out)
/// gets its shutdown report, but no deploy: a deploy is the replacement of instances.
pub fn is_workload(cgroup: Option<&str>, ports: &[u16]) -> bool {
    !ports.is_empty() || !service(cgroup, "", &[]).starts_with("comm:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reads_units_and_containers_from_cgroup_paths() {
        assert_eq!(
            unit("/system.slice/app.service").as_deref(),
            Some("app.service")
        );
        assert_eq!(
            unit("/user.slice/user-0.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit("/"), None);
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"
            ),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/kubepods/besteffort/pod1/crio-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            assert_eq!(container(&path).as_deref(), Some(ID), "{path}");
            assert_eq!(unit(&path), None, "{path}");
        }
        assert_eq!(container("/system.slice/app.service"), None);
    }

    #[test]
    fn reads_pod_uids_with_either_cgroup_driver() {
        let uid = "8f2a1c3e-4b5d-6e7f-8091-a2b3c4d5e6f7";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(pod(&systemd).as_deref(), Some(uid));
        assert_eq!(
            pod(&format!("/kubepods/besteffort/pod{uid}/{ID}")).as_deref(),
            Some(uid)
        );
        assert_eq!(pod("/system.slice/app.service"), None);
        assert_eq!(pod("/kubepods.slice/kubepods-burstable.slice"), None);
    }

    #[test]
    fn services_prefer_unit_then_container_then_cgroup_then_command() {
        assert_eq!(
            service(Some("/system.slice/app.service"), "node", &[]),
            "unit:app.service"
        );
        assert_eq!(
            service(Some(&format!("/docker/{ID}")), "node", &[]),
            format!("container:{ID}")
        );
        assert_eq!(
            service(Some("/workers/a"), "node", &[]),
            "cgroup:/workers/a"
        );
        assert_eq!(
            service(Some("/"), "node", &[8080, 9090]),
            "comm:node:8080,9090"
        );
        assert_eq!(service(None, "sh", &[]), "comm:sh");
        // A login session holds whatever was started from it: not a service.
        let session = "/user.slice/user-0.slice/session-3.scope";
        assert_eq!(service(Some(session), "node", &[3000]), "comm:node:3000");
        assert!(is_workload(Some(session), &[3000]), "a server");
        assert!(!is_workload(Some(session), &[]), "a shell's job");
        assert!(!is_workload(Some("/"), &[]));
        assert!(is_workload(Some("/system.slice/app.service"), &[]));
        assert!(is_workload(Some(&format!("/docker/{ID}")), &[]));
    }
}
