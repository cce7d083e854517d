//! `inet_sock_set_state`: every TCP state change on the host — the hot path. Most calls
//! only look at the two states and return. Reported: listeners opening (CLOSE→LISTEN)
//! and closing (LISTEN→CLOSE), and sockets the kernel closes while their process exits.
//! Ownership is learnt at CLOSE→LISTEN and →SYN_SENT, which run in the listening/
//! connecting process's context; it is forgotten when the socket is destroyed
//! (tcp_destroy.rs), not at CLOSE: tcp_close() enters CLOSE before it sends the RST of
//! an abort, whose owner we still want.
//!
//! Two attachments, one logic (`on_state_change`):
//! - `tcp_state`, a raw tracepoint: `TP_PROTO(const struct sock *sk, const int oldstate,
//!   const int newstate)` arrives as three u64 context slots, plain loads. The kernel does
//!   not build a trace record and the filter costs no helper call. Addresses come from
//!   `struct sock_common` at BTF offsets, so this needs BTF.
//! - `tcp_state_tp`, the classic tracepoint, for kernels without BTF. Record on 6.18:
//!   ```text
//!   const void *skaddr; int oldstate; int newstate; __u16 sport; __u16 dport;
//!   __u16 family; __u16 protocol; __u8 saddr[4]; __u8 daddr[4];
//!   __u8 saddr_v6[16]; __u8 daddr_v6[16];
//!   ```
//!   Each field read is a bpf_probe_read_kernel: the verifier refuses direct loads at
//!   offsets only known at load time.
//!
//! A close at exit: the current task has PF_EXITING, the socket has SHUTDOWN_MASK (which
//! __tcp_close() sets before changing state) and leaves an open state. Softirq work that
//! runs on an exiting task's stack changes sockets that lack SHUTDOWN_MASK (the loopback
//! peer receiving our FIN) or that were already closed (our FIN_WAIT1 getting its ACK).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use observer_common::{
    IPPROTO_TCP, InetSockSetStateLayout, SHUTDOWN_MASK, SockLayout, TcpEndpoints, TcpStateRecord,
    kind, role, tcp_flags, tcp_state,
};

use crate::{
    emit::{header, submit},
    globals::INET_SOCK_SET_STATE_LAYOUT,
    scope, sockets, task,
};

/// What one `inet_sock_set_state` call offers, however the program is attached.
trait StateChange {
    fn states(&self) -> Option<(i32, i32)>;
    fn protocol(&self) -> Option<u16>;
    fn sock(&self) -> Option<u64>;
    fn endpoints(&self) -> Option<TcpEndpoints>;
}

struct RawArgs<'a> {
    ctx: &'a RawTracePointContext,
    sock: SockLayout,
}

impl StateChange for RawArgs<'_> {
    #[inline(always)]
    fn states(&self) -> Option<(i32, i32)> {
        Some((self.ctx.arg(1), self.ctx.arg(2)))
    }
    #[inline(always)]
    fn protocol(&self) -> Option<u16> {
        task::read(self.ctx.arg(0), self.sock.sock_protocol)
    }
    #[inline(always)]
    fn sock(&self) -> Option<u64> {
        Some(self.ctx.arg(0))
    }
    #[inline(always)]
    fn endpoints(&self) -> Option<TcpEndpoints> {
        sockets::sock_endpoints(self.ctx.arg(0), &self.sock)
    }
}

struct ClassicRecord<'a> {
    ctx: &'a TracePointContext,
    layout: InetSockSetStateLayout,
}

impl StateChange for ClassicRecord<'_> {
    #[inline(always)]
    fn states(&self) -> Option<(i32, i32)> {
        // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
        let old_state = unsafe { self.ctx.read_at(self.layout.oldstate as usize) }.ok()?;
        let new_state = unsafe { self.ctx.read_at(self.layout.newstate as usize) }.ok()?;
        Some((old_state, new_state))
    }
    #[inline(always)]
    fn protocol(&self) -> Option<u16> {
        unsafe { self.ctx.read_at(self.layout.protocol as usize) }.ok()
    }
    #[inline(always)]
    fn sock(&self) -> Option<u64> {
        unsafe { self.ctx.read_at(self.layout.skaddr as usize) }.ok()
    }
    #[inline(always)]
    fn endpoints(&self) -> Option<TcpEndpoints> {
        sockets::read_split(self.ctx, &self.layout.addrs).ok()
    }
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_state(ctx: RawTracePointContext) -> u32 {
    // Attached only when BTF gave the socket layout.
    if let Some(sock) = sockets::sock_layout() {
        on_state_change(&RawArgs { ctx: &ctx, sock });
    }
    0
}

#[tracepoint]
pub fn tcp_state_tp(ctx: TracePointContext) -> u32 {
    on_state_change(&ClassicRecord {
        ctx: &ctx,
        layout: INET_SOCK_SET_STATE_LAYOUT.load(),
    });
    0
}

#[inline(always)]
fn on_state_change(change: &impl StateChange) -> Option<()> {
    // The hot path reads the two states and returns: every connection makes several
    // transitions and only a few matter here. The protocol and the socket are read
    // only for those.
    let (old_state, new_state) = change.states()?;
    let opens_listener = new_state == tcp_state::LISTEN;
    let connects = new_state == tcp_state::SYN_SENT;
    let listener_closed = old_state == tcp_state::LISTEN && new_state == tcp_state::CLOSE;
    // tcp_close() takes an open socket to FIN_WAIT1, LAST_ACK or (aborting) CLOSE.
    let may_close_at_exit = tcp_state::is_open(old_state)
        && matches!(
            new_state,
            tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE
        );
    // Most closes happen in tasks that are not exiting: that is checked first, the
    // protocol and the socket only after.
    let exiting_close = may_close_at_exit && sockets::current_is_exiting();
    if !(opens_listener || connects || listener_closed || exiting_close) {
        return None;
    }
    // Every transition reported below runs in its process's context (listen(),
    // connect(), close(), exit): the current task is the one to filter. SCTP changes
    // state through the same function, with its own state numbers.
    if change.protocol()? != IPPROTO_TCP || scope::current_out_of_scope() {
        return None;
    }
    let sk = change.sock()?;

    if connects {
        sockets::remember_owner(sk, &sockets::current_owner(role::OUTBOUND));
        return None;
    }
    if opens_listener {
        let owner = sockets::current_owner(role::LISTENER);
        sockets::remember_owner(sk, &owner);
        return report(change, old_state, new_state, owner, 0);
    }
    let closed_at_exit = exiting_close && closed_by_exiting_owner(sk);
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
        return report(change, old_state, new_state, owner, flags);
    }
    None
}

/// For a socket changing state in an exiting task: whether the exit closed it (and not
/// softirq work that happened to run on the exiting task's stack).
fn closed_by_exiting_owner(sk: u64) -> bool {
    let Some(layout) = sockets::sock_layout() else {
        return false;
    };
    if task::read::<u8>(sk, layout.sock_shutdown) != Some(SHUTDOWN_MASK) {
        return false;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    sockets::owner_tgid_or(sk, tgid) == tgid
}

// Inlined: with the socket owner by value, more arguments than a BPF call can pass
// (five registers).
#[inline(always)]
fn report(
    change: &impl StateChange,
    old_state: i32,
    new_state: i32,
    owner: observer_common::SocketOwner,
    flags: u8,
) -> Option<()> {
    submit(TcpStateRecord {
        header: header(kind::TCP_STATE),
        endpoints: change.endpoints()?,
        owner,
        old_state: old_state as u8,
        new_state: new_state as u8,
        flags,
        _pad: [0; 5],
    });
    Some(())
}
