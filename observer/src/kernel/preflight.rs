//! Checks made before loading anything, each failing with what to do about it.
use anyhow::{Result, bail};

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails unless this process can load tracing programs and read tracefs.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    // SAFETY: geteuid has no preconditions.
    let missing = missing_capabilities(effective, unsafe { libc::geteuid() });
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "observer needs privileges to load eBPF tracing programs: run it as root \
         (`sudo observer watch`; as root, CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE are \
         enough), or grant CAP_BPF, CAP_PERFMON and CAP_DAC_OVERRIDE (tracefs is \
         root-only), plus CAP_SYS_ADMIN if tracefs must be mounted. \
         Missing: {}",
        missing.join(", ")
    )
}

fn missing_capabilities(effective: u64, euid: u32) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    // Before CAP_BPF/CAP_PERFMON existed (5.8), CAP_SYS_ADMIN covered both.
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    // tracefs is root's: uid 0 reads it as its owner, anyone else needs the override.
    if euid != 0 && !has(CAP_DAC_OVERRIDE) {
        missing.push("CAP_DAC_OVERRIDE");
    }
    missing
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    parse_release(&release)
        .ok_or_else(|| anyhow::anyhow!("cannot parse kernel release '{}'", release.trim()))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Fails on kernels without the BPF ring buffer (added in 5.8).
pub fn check_kernel((major, minor): (u32, u32)) -> Result<()> {
    if (major, minor) < (5, 8) {
        bail!(
            "kernel {major}.{minor} is too old: observer needs the BPF ring buffer, \
             added in Linux 5.8"
        );
    }
    Ok(())
}

/// Lifts RLIMIT_MEMLOCK. BPF memory is charged to the memory cgroup since 5.11, so a
/// failure (no CAP_SYS_RESOURCE) only matters on older kernels.
pub fn raise_memlock((major, minor): (u32, u32)) {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    let failed = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0;
    if failed && (major, minor) < (5, 11) {
        eprintln!(
            "observer: warning: cannot raise RLIMIT_MEMLOCK ({}); loading may fail on \
             kernel {major}.{minor}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability() {
        const USER: u32 = 1000;
        assert_eq!(
            missing_capabilities(0, USER),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_DAC_OVERRIDE"]
        );
        let bpf_perfmon = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert!(missing_capabilities(bpf_perfmon | (1 << CAP_DAC_OVERRIDE), USER).is_empty());
        let sys_admin = (1 << CAP_SYS_ADMIN) | (1 << CAP_DAC_OVERRIDE);
        assert!(missing_capabilities(sys_admin, USER).is_empty());
        // Root owns tracefs: no override needed.
        assert!(missing_capabilities(bpf_perfmon, 0).is_empty());
        assert_eq!(missing_capabilities(0, 0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn parses_kernel_releases_and_rejects_old_ones() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(
            check_kernel((5, 4))
                .unwrap_err()
                .to_string()
                .contains("5.8")
        );
        assert!(check_kernel((5, 8)).is_ok() && check_kernel((6, 1)).is_ok());
    }
}
