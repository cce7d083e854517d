//! `sock:inet_sock_set_state`: every TCP state change on the host — the hot path. Most
//! calls only read the protocol and the two states and return. Reported: listeners
//! opening (CLOSE→LISTEN) and closing (LISTEN→CLOSE), and sockets the kernel closes
//! while their process exits. Ownership is learnt at CLOSE→LISTEN and →SYN_SENT, which
//! run in the listening/connecting process's context; it is forgotten when the socket is
//! destroyed (tcp_destroy.rs), not at CLOSE: tcp_close() enters CLOSE before it sends
//! the RST of an abort, whose owner we still want.
//!
//! Tracepoint record on 6.18:
//! ```text
//! const void *skaddr; int oldstate; int newstate; __u16 sport; __u16 dport;
//! __u16 family; __u16 protocol; __u8 saddr[4]; __u8 daddr[4];
//! __u8 saddr_v6[16]; __u8 daddr_v6[16];
//! ```
//!
//! A close at exit: the current task has PF_EXITING, the socket has SHUTDOWN_MASK (which
//! __tcp_close() sets before changing state) and leaves an open state. Softirq work that
//! runs on an exiting task's stack changes sockets that lack SHUTDOWN_MASK (the loopback
//! peer receiving our FIN) or that were already closed (our FIN_WAIT1 getting its ACK).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use observer_common::{
    IPPROTO_TCP, SHUTDOWN_MASK, TcpStateRecord, kind, role, tcp_flags, tcp_state,
};

use crate::{
    emit::{header, submit},
    globals::INET_SOCK_SET_STATE_LAYOUT,
    scope, sockets, task,
};

#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_state(&ctx);
    0
}

fn try_tcp_state(ctx: &TracePointContext) -> Result<(), i32> {
    let layout = INET_SOCK_SET_STATE_LAYOUT.load();
    // The hot path reads the two states and returns: every connection makes several
    // transitions and only a few matter here. The protocol and the socket are read
    // only for those.
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let old_state: i32 = unsafe { ctx.read_at(layout.oldstate as usize)? };
    let new_state: i32 = unsafe { ctx.read_at(layout.newstate as usize)? };
    let opens_listener = new_state == tcp_state::LISTEN;
    let connects = new_state == tcp_state::SYN_SENT;
    let listener_closed = old_state == tcp_state::LISTEN && new_state == tcp_state::CLOSE;
    // tcp_close() takes an open socket to FIN_WAIT1, LAST_ACK or (aborting) CLOSE.
    let may_close_at_exit = tcp_state::is_open(old_state)
        && matches!(
            new_state,
            tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE
        );
    if !(opens_listener || connects || listener_closed || may_close_at_exit) {
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(layout.protocol as usize)? };
    // Every transition reported below runs in its process's context (listen(),
    // connect(), close(), exit): the current task is the one to filter.
    if protocol != IPPROTO_TCP || scope::current_out_of_scope() {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(layout.skaddr as usize)? };

    if connects {
        sockets::remember_owner(sk, &sockets::current_owner(role::OUTBOUND));
        return Ok(());
    }
    if opens_listener {
        let owner = sockets::current_owner(role::LISTENER);
        sockets::remember_owner(sk, &owner);
        return report(ctx, &layout, old_state, new_state, owner, 0);
    }
    let closed_at_exit = may_close_at_exit && closed_by_exiting_owner(sk);
    if listener_closed || closed_at_exit {
        // A listener closes in the process context of whoever held it last (close(),
        // shutdown(), exit): that process, not its opener, which may have forked it
        // away (a daemonizing server) and be gone.
        let owner = if listener_closed {
            sockets::current_owner(role::LISTENER)
        } else {
            sockets::owner_or(sk, sockets::current_owner(role::UNKNOWN))
        };
        let flags = if closed_at_exit {
            tcp_flags::CLOSED_AT_EXIT
        } else {
            0
        };
        return report(ctx, &layout, old_state, new_state, owner, flags);
    }
    Ok(())
}

fn closed_by_exiting_owner(sk: u64) -> bool {
    let Some(layout) = sockets::sock_layout() else {
        return false;
    };
    if !sockets::current_is_exiting(&layout)
        || task::read::<u8>(sk, layout.sock_shutdown) != Some(SHUTDOWN_MASK)
    {
        return false;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    sockets::owner_tgid_or(sk, tgid) == tgid
}

// Inlined: seven arguments are more than a BPF call can pass (five registers).
#[inline(always)]
fn report(
    ctx: &TracePointContext,
    layout: &observer_common::InetSockSetStateLayout,
    old_state: i32,
    new_state: i32,
    owner: observer_common::SocketOwner,
    flags: u8,
) -> Result<(), i32> {
    submit(TcpStateRecord {
        header: header(kind::TCP_STATE),
        endpoints: sockets::read_split(ctx, &layout.addrs)?,
        owner,
        old_state: old_state as u8,
        new_state: new_state as u8,
        flags,
        _pad: [0; 5],
    });
    Ok(())
}
