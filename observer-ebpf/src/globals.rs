//! Values userspace sets at load time (`EbpfLoader::override_global`). They live in
//! `.rodata`, so the verifier sees them as constants.
//!
//! `Global::load` copies a whole struct with one volatile load per field (19 for the
//! socket layout). Hot paths read the fields they need with `field!` instead.
use aya_ebpf::Global;
use observer_common::{
    AcceptLayout, ExitGroupLayout, InetSockSetStateLayout, ProcessExitLayout, Settings,
    SignalDeliverLayout, SignalGenerateLayout, SockLayout, SplitAddrLayout, TaskLayout,
    TcpResetLayout,
};

#[unsafe(no_mangle)]
pub static SETTINGS: Global<Settings> = Global::new(Settings {
    signal_mask: 0,
    fatal_default_mask: 0,
    termination_mask: 0,
    scope_filtered: 0,
    wakeup_bytes: 0,
    stores_in_order: 0,
});

const NO_SPLIT_ADDRS: SplitAddrLayout = SplitAddrLayout {
    sport: 0,
    dport: 0,
    family: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
};

const NO_RESET_LAYOUT: TcpResetLayout = TcpResetLayout {
    skaddr: 0,
    state: 0,
    reason: 0,
    addr_format: 0,
    sockaddr_local: 0,
    sockaddr_remote: 0,
    addrs: NO_SPLIT_ADDRS,
};

#[unsafe(no_mangle)]
pub static INET_SOCK_SET_STATE_LAYOUT: Global<InetSockSetStateLayout> =
    Global::new(InetSockSetStateLayout {
        skaddr: 0,
        oldstate: 0,
        newstate: 0,
        protocol: 0,
        addrs: NO_SPLIT_ADDRS,
    });

#[unsafe(no_mangle)]
pub static TCP_SEND_RESET_LAYOUT: Global<TcpResetLayout> = Global::new(NO_RESET_LAYOUT);

#[unsafe(no_mangle)]
pub static TCP_RECEIVE_RESET_LAYOUT: Global<TcpResetLayout> = Global::new(NO_RESET_LAYOUT);

#[unsafe(no_mangle)]
pub static ACCEPT_LAYOUT: Global<AcceptLayout> = Global::new(AcceptLayout { ret: 0 });

#[unsafe(no_mangle)]
pub static SOCK_LAYOUT: Global<SockLayout> = Global::new(SockLayout {
    known: 0,
    task_flags: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_private_data: 0,
    socket_sk: 0,
    sock_shutdown: 0,
    skc_state: 0,
    skc_family: 0,
    inet_sport: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    sock_protocol: 0,
    sk_lock_owned: 0,
    tcp_rcv_nxt: 0,
    tcp_copied_seq: 0,
    tcp_snd_wl1: 0,
    tcp_snd_una: 0,
    tcp_write_seq: 0,
    tcp_bytes_received: 0,
    sock_wmem_queued: 0,
    sock_sndbuf: 0,
    sock_socket: 0,
    socket_flags: 0,
});

#[unsafe(no_mangle)]
pub static SIGNAL_GENERATE_LAYOUT: Global<SignalGenerateLayout> =
    Global::new(SignalGenerateLayout {
        sig: 0,
        code: 0,
        comm: 0,
        pid: 0,
        group: 0,
        result: 0,
    });

#[unsafe(no_mangle)]
pub static SIGNAL_DELIVER_LAYOUT: Global<SignalDeliverLayout> = Global::new(SignalDeliverLayout {
    sig: 0,
    code: 0,
    sa_handler: 0,
    sa_flags: 0,
});

#[unsafe(no_mangle)]
pub static PROCESS_EXIT_LAYOUT: Global<ProcessExitLayout> =
    Global::new(ProcessExitLayout { group_dead: 0 });

#[unsafe(no_mangle)]
pub static EXIT_GROUP_LAYOUT: Global<ExitGroupLayout> =
    Global::new(ExitGroupLayout { error_code: 0 });

#[unsafe(no_mangle)]
pub static TASK_LAYOUT: Global<TaskLayout> = Global::new(TaskLayout {
    known: 0,
    task_exit_code: 0,
    task_tgid: 0,
    task_comm: 0,
    task_start_time: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_signal: 0,
    signal_flags: 0,
    signal_group_exit_code: 0,
    signal_live: 0,
    task_children: 0,
    task_sibling: 0,
    task_pid: 0,
    siginfo_code: 0,
    task_sighand: 0,
    sighand_action: 0,
    k_sigaction_size: 0,
    k_sigaction_handler: 0,
    task_blocked: 0,
    task_real_blocked: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    typed: 0,
});

/// The struct inside a global, for `field!`.
#[inline(always)]
pub fn inside<T>(global: &'static Global<T>) -> *const T {
    // A Global<T> is one always-initialised MaybeUninit<T>; as large as T, that field
    // can only start at the global's own address.
    const { assert!(core::mem::size_of::<Global<T>>() == core::mem::size_of::<T>()) };
    global as *const Global<T> as *const T
}

/// `field!(SOCK_LAYOUT.task_flags)`: one field of a global, one volatile load (which the
/// verifier, reading the frozen `.rodata`, still sees as a constant).
macro_rules! field {
    ($global:ident . $field:ident) => {
        // SAFETY: a field of a live static, read in place.
        unsafe { core::ptr::read_volatile(&raw const (*$crate::globals::inside(&$global)).$field) }
    };
}
pub(crate) use field;
