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

/// The service a deploy groups a process under: its unit, else its container, else its
/// cgroup (if not the root), else its command plus listening ports.
pub fn service(cgroup: Option<&str>, comm: &str, ports: &[u16]) -> String {
    if let Some(cgroup) = cgroup {
        if let Some(unit) = unit(cgroup) {
            return format!("unit:{unit}");
        }
        if let Some(container) = container(cgroup) {
            return format!("container:{container}");
        }
        if cgroup != "/" {
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
    }
}
