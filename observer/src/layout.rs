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
    btf::Btf,
    tracefs::{self, Format},
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

/// Optional tracepoint fields older kernels lack, and what observer reports without them
/// (for `check` and watch's start-up warnings): less, never something wrong.
const OPTIONAL_FIELDS: [(&str, &str, &str); 2] = [
    (
        "tcp_send_reset",
        "reason",
        "kernel before 6.10: RSTs carry no reason (null), and RSTs sent without a socket \
         (refused connects to closed ports) are not traced, so refused_after_exit stays 0",
    ),
    (
        "sched_process_exit",
        "group_dead",
        "the last thread of a process is found through signal->live instead",
    ),
];

/// What observer cannot report when `tracepoint` lacks the optional `field`.
pub fn missing_field_consequence(tracepoint: &str, field: &str) -> Option<&'static str> {
    OPTIONAL_FIELDS
        .iter()
        .find(|(tp, f, _)| *tp == tracepoint && *f == field)
        .map(|(_, _, consequence)| *consequence)
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
        let format = tracefs::read_format(events, "signal", "signal_generate")?;
        let tp = "signal:signal_generate";
        let signal_generate = SignalGenerateLayout {
            sig: format.offset(tp, "sig", &[4])?,
            code: format.offset(tp, "code", &[4])?,
            comm: format.offset(tp, "comm", &[16])?,
            pid: format.offset(tp, "pid", &[4])?,
            group: format.offset(tp, "group", &[4])?,
            result: format.offset(tp, "result", &[4])?,
        };
        let format = tracefs::read_format(events, "signal", "signal_deliver")?;
        let tp = "signal:signal_deliver";
        let signal_deliver = SignalDeliverLayout {
            sig: format.offset(tp, "sig", &[4])?,
            code: format.offset(tp, "code", &[4])?,
            sa_handler: format.offset(tp, "sa_handler", &[8])?,
            sa_flags: format.offset(tp, "sa_flags", &[8])?,
        };
        let format = tracefs::read_format(events, "sched", "sched_process_exit")?;
        let process_exit = ProcessExitLayout {
            group_dead: format.optional_offset("group_dead").unwrap_or(FIELD_ABSENT),
        };
        let exit_group = tracefs::read_format(events, "syscalls", "sys_enter_exit_group")
            .and_then(|format| {
                let tp = "syscalls:sys_enter_exit_group";
                Ok(ExitGroupLayout {
                    error_code: format.offset(tp, "error_code", &[8])?,
                })
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

fn split_addrs(format: &Format, tp: &str) -> Result<SplitAddrLayout> {
    Ok(SplitAddrLayout {
        sport: format.offset(tp, "sport", &[2])?,
        dport: format.offset(tp, "dport", &[2])?,
        family: format.offset(tp, "family", &[2])?,
        saddr: format.offset(tp, "saddr", &[4])?,
        daddr: format.offset(tp, "daddr", &[4])?,
        saddr_v6: format.offset(tp, "saddr_v6", &[16])?,
        daddr_v6: format.offset(tp, "daddr_v6", &[16])?,
    })
}

/// Reads a reset tracepoint's layout, whichever way it stores addresses.
fn reset_layout(format: &Format, tp: &str) -> Result<TcpResetLayout> {
    let sockaddr = format
        .fields
        .get("saddr")
        .is_some_and(|field| field.size == 28);
    Ok(TcpResetLayout {
        skaddr: format.offset(tp, "skaddr", &[8])?,
        state: format.optional_offset("state").unwrap_or(FIELD_ABSENT),
        reason: format.optional_offset("reason").unwrap_or(FIELD_ABSENT),
        addr_format: if sockaddr {
            addr_format::SOCKADDR
        } else {
            addr_format::SPLIT
        },
        sockaddr_local: if sockaddr {
            format.offset(tp, "saddr", &[28])?
        } else {
            0
        },
        sockaddr_remote: if sockaddr {
            format.offset(tp, "daddr", &[28])?
        } else {
            0
        },
        addrs: if sockaddr {
            SplitAddrLayout::default()
        } else {
            split_addrs(format, tp)?
        },
    })
}

fn tcp_layout(events: &Path) -> Result<TcpLayout> {
    let tp = "sock:inet_sock_set_state";
    let format = tracefs::read_format(events, "sock", "inet_sock_set_state")?;
    let set_state = InetSockSetStateLayout {
        skaddr: format.offset(tp, "skaddr", &[8])?,
        oldstate: format.offset(tp, "oldstate", &[4])?,
        newstate: format.offset(tp, "newstate", &[4])?,
        protocol: format.offset(tp, "protocol", &[2])?,
        addrs: split_addrs(&format, tp)?,
    };
    let send_reset = reset_layout(
        &tracefs::read_format(events, "tcp", "tcp_send_reset")?,
        "tcp:tcp_send_reset",
    )?;
    let receive_reset = reset_layout(
        &tracefs::read_format(events, "tcp", "tcp_receive_reset")?,
        "tcp:tcp_receive_reset",
    )?;
    // One program serves accept4() and accept(): their `ret` must sit at one offset.
    let accept_ret = |name: &str| -> Result<u32> {
        let format = tracefs::read_format(events, "syscalls", name)?;
        format.offset(&format!("syscalls:{name}"), "ret", &[8])
    };
    let accept = match (
        accept_ret("sys_exit_accept4"),
        accept_ret("sys_exit_accept"),
    ) {
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
