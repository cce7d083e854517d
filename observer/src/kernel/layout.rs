//! What the kernel programs need to know about this kernel: tracepoint field offsets
//! (tracefs `format` files) and struct member offsets (vmlinux BTF).
use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result, ensure};
use observer_common::{
    AcceptLayout, ExitGroupLayout, FIELD_ABSENT, InetSockSetStateLayout, ProcessExitLayout,
    SignalDeliverLayout, SignalGenerateLayout, SockLayout, SplitAddrLayout, TaskLayout,
    TcpResetLayout, addr_format,
};

use crate::{
    kernel::btf::Btf,
    kernel::tracepoints::{
        Fields, INET_SOCK_SET_STATE, SCHED_PROCESS_EXIT, SIGNAL_DELIVER, SIGNAL_GENERATE,
        SOCKADDR_SIZE, SYS_ENTER_EXIT_GROUP, SYS_EXIT_ACCEPT, SYS_EXIT_ACCEPT4, TCP_RECEIVE_RESET,
        TCP_SEND_RESET, Tracepoint,
    },
};

/// Offsets for the TCP programs.
pub struct TcpLayout {
    pub set_state: InetSockSetStateLayout,
    pub send_reset: TcpResetLayout,
    pub receive_reset: TcpResetLayout,
    /// None without syscall tracepoints: inbound sockets then have no known owner.
    pub accept: Option<AcceptLayout>,
}

/// Where the running kernel exposes its own BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel BTF to read: `OBSERVER_BTF` if set, else the running kernel's.
pub fn btf_path() -> std::path::PathBuf {
    std::env::var_os("OBSERVER_BTF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(KERNEL_BTF))
}

pub struct KernelLayout {
    pub signal_generate: SignalGenerateLayout,
    pub signal_deliver: SignalDeliverLayout,
    pub process_exit: ProcessExitLayout,
    /// None when syscall tracepoints are missing (CONFIG_FTRACE_SYSCALLS=n).
    pub exit_group: Option<ExitGroupLayout>,
    pub task: TaskLayout,
    /// Why BTF offsets are unknown, when they are.
    pub btf_problem: Option<String>,
    /// None when the TCP tracepoints are missing; `tcp_problem` says why.
    pub tcp: Option<TcpLayout>,
    pub tcp_problem: Option<String>,
    pub sock: SockLayout,
    /// `enum sk_rst_reason` value → name without its prefix ("NO_SOCKET"), from BTF.
    pub rst_reasons: HashMap<u32, String>,
}

impl KernelLayout {
    pub fn read(events: &Path, btf_path: &Path) -> Result<Self> {
        let fields = SIGNAL_GENERATE.read(events)?;
        let signal_generate = SignalGenerateLayout {
            sig: fields.offset("sig"),
            code: fields.offset("code"),
            comm: fields.offset("comm"),
            pid: fields.offset("pid"),
            group: fields.offset("group"),
            result: fields.offset("result"),
        };
        let fields = SIGNAL_DELIVER.read(events)?;
        let signal_deliver = SignalDeliverLayout {
            sig: fields.offset("sig"),
            code: fields.offset("code"),
            sa_handler: fields.offset("sa_handler"),
            sa_flags: fields.offset("sa_flags"),
        };
        let process_exit = ProcessExitLayout {
            group_dead: SCHED_PROCESS_EXIT.read(events)?.offset("group_dead"),
        };
        let exit_group = SYS_ENTER_EXIT_GROUP
            .read(events)
            .map(|fields| ExitGroupLayout {
                error_code: fields.offset("error_code"),
            })
            .ok();
        let btf = Btf::from_file(btf_path);
        let (task, btf_problem) = match btf.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")) {
            Ok(btf) => match task_layout(btf) {
                Ok(task) => (
                    TaskLayout {
                        typed: u32::from(btf_path == Path::new(KERNEL_BTF)),
                        ..task
                    },
                    None,
                ),
                Err(error) => (TaskLayout::default(), Some(format!("{error:#}"))),
            },
            Err(error) => (TaskLayout::default(), Some(format!("{error:#}"))),
        };
        let btf = btf.ok().filter(|_| btf_problem.is_none());
        let sock = btf
            .as_ref()
            .and_then(|btf| sock_layout(btf).ok())
            .unwrap_or_default();
        let rst_reasons = btf.as_ref().map(rst_reason_names).unwrap_or_default();
        let (tcp, tcp_problem) = match tcp_layout(events) {
            Ok(tcp) => (Some(tcp), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        Ok(Self {
            signal_generate,
            signal_deliver,
            process_exit,
            exit_group,
            task,
            btf_problem,
            tcp,
            tcp_problem,
            sock,
            rst_reasons,
        })
    }
}

fn split_addrs(fields: &Fields) -> SplitAddrLayout {
    SplitAddrLayout {
        sport: fields.offset("sport"),
        dport: fields.offset("dport"),
        family: fields.offset("family"),
        saddr: fields.offset("saddr"),
        daddr: fields.offset("daddr"),
        saddr_v6: fields.offset("saddr_v6"),
        daddr_v6: fields.offset("daddr_v6"),
    }
}

/// A reset tracepoint's layout, whichever way it stores addresses.
fn reset_layout(fields: &Fields) -> TcpResetLayout {
    let sockaddr = fields.size("saddr") == Some(SOCKADDR_SIZE);
    TcpResetLayout {
        skaddr: fields.offset("skaddr"),
        state: FIELD_ABSENT,
        reason: FIELD_ABSENT,
        addr_format: if sockaddr {
            addr_format::SOCKADDR
        } else {
            addr_format::SPLIT
        },
        sockaddr_local: if sockaddr { fields.offset("saddr") } else { 0 },
        sockaddr_remote: if sockaddr { fields.offset("daddr") } else { 0 },
        addrs: if sockaddr {
            SplitAddrLayout::default()
        } else {
            split_addrs(fields)
        },
    }
}

/// The offsets the TCP programs read, from the tracepoints' format files in `events`.
pub fn tcp_layout(events: &Path) -> Result<TcpLayout> {
    let fields = INET_SOCK_SET_STATE.read(events)?;
    let set_state = InetSockSetStateLayout {
        skaddr: fields.offset("skaddr"),
        oldstate: fields.offset("oldstate"),
        newstate: fields.offset("newstate"),
        protocol: fields.offset("protocol"),
        addrs: split_addrs(&fields),
    };
    let fields = TCP_SEND_RESET.read(events)?;
    let send_reset = TcpResetLayout {
        state: fields.offset("state"),
        reason: fields.offset("reason"),
        ..reset_layout(&fields)
    };
    let receive_reset = reset_layout(&TCP_RECEIVE_RESET.read(events)?);
    // One program serves accept4() and accept(): their `ret` must sit at one offset.
    let accept_ret = |tracepoint: &'static Tracepoint| {
        tracepoint.read(events).map(|fields| fields.offset("ret"))
    };
    let accept = match (accept_ret(&SYS_EXIT_ACCEPT4), accept_ret(&SYS_EXIT_ACCEPT)) {
        (Ok(a), Ok(b)) if a == b => Some(AcceptLayout { ret: a }),
        _ => None,
    };
    Ok(TcpLayout {
        set_state,
        send_reset,
        receive_reset,
        accept,
    })
}

fn sock_layout(btf: &Btf) -> Result<SockLayout> {
    let member = |st: &str, m: &str| btf.member_offset(st, m);
    // struct sock begins with struct sock_common __sk_common.
    let common = member("sock", "__sk_common")?;
    ensure!(common == 0, "sock.__sk_common is at {common}, not 0");
    let skc = |m: &str| member("sock_common", m);
    Ok(SockLayout {
        known: 1,
        task_flags: member("task_struct", "flags")?,
        task_files: member("task_struct", "files")?,
        files_fdt: member("files_struct", "fdt")?,
        fdtable_fd: member("fdtable", "fd")?,
        fdtable_max_fds: member("fdtable", "max_fds")?,
        file_private_data: member("file", "private_data")?,
        socket_sk: member("socket", "sk")?,
        sock_shutdown: member("sock", "sk_shutdown").context("sock.sk_shutdown")?,
        skc_state: skc("skc_state")?,
        skc_family: skc("skc_family")?,
        inet_sport: member("inet_sock", "inet_sport")?,
        skc_dport: skc("skc_dport")?,
        skc_rcv_saddr: skc("skc_rcv_saddr")?,
        skc_daddr: skc("skc_daddr")?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
        skc_v6_daddr: skc("skc_v6_daddr")?,
        sock_protocol: member("sock", "sk_protocol").context("sock.sk_protocol")?,
        sk_lock_owned: member("sock", "sk_lock.owned")?,
        tcp_rcv_nxt: member("tcp_sock", "rcv_nxt")?,
        tcp_copied_seq: member("tcp_sock", "copied_seq")?,
        tcp_snd_wl1: member("tcp_sock", "snd_wl1")?,
        tcp_snd_una: member("tcp_sock", "snd_una")?,
        tcp_write_seq: member("tcp_sock", "write_seq")?,
        tcp_bytes_received: member("tcp_sock", "bytes_received")?,
        sock_wmem_queued: member("sock", "sk_wmem_queued")?,
        sock_sndbuf: member("sock", "sk_sndbuf")?,
        sock_socket: member("sock", "sk_socket")?,
        socket_flags: member("socket", "flags")?,
    })
}

/// `SK_RST_REASON_NO_SOCKET = 1` → (1, "NO_SOCKET"). Empty before 6.10 (no such enum).
fn rst_reason_names(btf: &Btf) -> HashMap<u32, String> {
    btf.enum_values("sk_rst_reason")
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| name != "SK_RST_REASON_MAX")
        .map(|(name, value)| {
            let short = name
                .strip_prefix("SK_RST_REASON_")
                .unwrap_or(&name)
                .to_string();
            (value as u32, short)
        })
        .collect()
}

fn task_layout(btf: &Btf) -> Result<TaskLayout> {
    let task = |member| btf.member_offset("task_struct", member);
    let signal = |member| btf.member_offset("signal_struct", member);
    // Optional: without them, a signal's target has no cgroup id from the kernel.
    let cgroup_id = [
        ("task_struct", "cgroups"),
        ("css_set", "dfl_cgrp"),
        ("cgroup", "kn"),
        ("kernfs_node", "id"),
    ]
    .map(|(st, member)| btf.member_offset(st, member).ok());
    let [task_cgroups, css_set_dfl_cgrp, cgroup_kn, kernfs_node_id] =
        if cgroup_id.iter().all(Option::is_some) {
            cgroup_id.map(Option::unwrap_or_default)
        } else {
            [0; 4]
        };
    Ok(TaskLayout {
        known: 1,
        task_exit_code: task("exit_code")?,
        task_tgid: task("tgid")?,
        task_comm: task("comm")?,
        task_start_time: task("start_time")?,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_signal: task("signal")?,
        signal_flags: signal("flags")?,
        signal_group_exit_code: signal("group_exit_code")?,
        signal_live: signal("live")?,
        task_children: task("children")?,
        task_sibling: task("sibling")?,
        task_pid: task("pid")?,
        siginfo_code: btf.member_offset("kernel_siginfo", "si_code")?,
        task_sighand: task("sighand")?,
        sighand_action: btf.member_offset("sighand_struct", "action")?,
        k_sigaction_size: btf.struct_size("k_sigaction")?,
        k_sigaction_handler: btf.member_offset("k_sigaction", "sa.sa_handler")?,
        task_blocked: task("blocked")?,
        task_real_blocked: task("real_blocked")?,
        task_cgroups,
        css_set_dfl_cgrp,
        cgroup_kn,
        kernfs_node_id,
        typed: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(version: &str) -> TcpLayout {
        let events = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats")
            .join(version)
            .join("events");
        tcp_layout(&events).unwrap()
    }

    /// 6.1 stores tcp_send_reset's addresses as split fields and has no reason; 6.12
    /// and 6.18 store sockaddrs and have one. tcp_receive_reset is split everywhere.
    #[test]
    fn reset_layouts_follow_the_kernel() {
        let v6_1 = tcp("6.1");
        assert_eq!(v6_1.send_reset.addr_format, addr_format::SPLIT);
        assert_eq!(v6_1.send_reset.reason, FIELD_ABSENT);
        assert_eq!(v6_1.send_reset.state, 24);
        assert_eq!(v6_1.send_reset.addrs.sport, 28);
        for version in ["6.12", "6.18"] {
            let tcp = tcp(version);
            assert_eq!(tcp.send_reset.addr_format, addr_format::SOCKADDR);
            assert_eq!(tcp.send_reset.reason, 28);
            assert_eq!(tcp.send_reset.sockaddr_local, 32);
            assert_eq!(tcp.send_reset.sockaddr_remote, 60);
        }
        for version in ["6.1", "6.12", "6.18"] {
            let tcp = tcp(version);
            assert_eq!(tcp.receive_reset.addr_format, addr_format::SPLIT);
            assert_eq!(tcp.receive_reset.state, FIELD_ABSENT);
            assert_eq!(tcp.receive_reset.addrs.daddr_v6, 46);
            assert_eq!(tcp.set_state.addrs.saddr, 32, "{version}");
            assert!(tcp.accept.is_some(), "{version}");
        }
    }
}
