//! `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept`: a process accepted a
//! connection. Runs in the accepting process's context, so this is where an inbound
//! socket's owner is learnt: the returned fd leads to its `struct sock`. Reported to
//! userspace only for processes that are shutting down.
//!
//! Attached only while some process is shutting down: a syscall tracepoint, even one
//! program on one syscall, sends every syscall of every task on the host down the slow
//! path (about +50 ns each), so it is not left on.
//!
//! Tracepoint record: `int __syscall_nr; long ret;` (`ret` is the new fd, or -errno).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use observer_common::{TcpAcceptRecord, kind, role};

use crate::{
    emit::{header, submit},
    globals::ACCEPT_LAYOUT,
    owners, scope, shutting, sockets,
};

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit_accept(&ctx);
    0
}

fn try_sys_exit_accept(ctx: &TracePointContext) -> Option<()> {
    if scope::current_out_of_scope() {
        return Some(());
    }
    // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
    let fd: i64 = unsafe { ctx.read_at(ACCEPT_LAYOUT.load().ret as usize).ok()? };
    let Some(layout) = sockets::sock_layout() else {
        return Some(());
    };
    if fd < 0 {
        return Some(());
    }
    let Some(sk) = sockets::current_fd_sock(fd as u64, &layout) else {
        return Some(());
    };
    let Some(endpoints) = sockets::sock_endpoints(sk, &layout) else {
        return Some(());
    };
    let owner = owners::current(role::INBOUND);
    owners::remember_connection(sk, endpoints.remote_port, &owner);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if shutting::is_shutting_down(tgid) {
        submit(TcpAcceptRecord {
            header: header(kind::TCP_ACCEPT),
            endpoints,
            owner,
        });
    }
    Some(())
}
