//! `inet_sock_set_state`: every TCP state change on the host — the hot path. Most calls
//! only look at the two states and return. Reported: listeners opening (CLOSE→LISTEN)
//! and closing (LISTEN→CLOSE), and sockets the kernel closes while their process exits.
//! Ownership is learnt at CLOSE→LISTEN and →SYN_SENT, which run in the listening/
//! connecting process's context. A listener's is forgotten when it closes; a
//! connection's stays until its slot is reused (sockets.rs), so no hook runs when a
//! socket is destroyed.
//!
//! Two attachments, one logic (`on_state_change`):
//! - `tcp_state`, a BTF-typed raw tracepoint (`tp_btf`): `TP_PROTO(const struct sock *sk,
//!   const int oldstate, const int newstate)` arrives as three u64 context slots, plain
//!   loads, and the kernel builds no trace record. The verifier knows `sk` is a
//!   `struct sock *`, so its members (at BTF offsets, `.rodata` constants) are plain
//!   loads too, checked at load time, where a raw tracepoint needs a
//!   bpf_probe_read_kernel call for each (about 27 ns apiece on the bench host). Needs
//!   BTF.
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
//! A close in flight: the same close by a process that is shutting down (shutting.rs)
//! but not exiting, of a connection with a request in flight — a server cutting its
//! clients itself before it exits.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{
    IPPROTO_TCP, SHUTDOWN_MASK, SOCK_NOSPACE, SocketOwner, TcpEndpoints, TcpStateRecord, kind,
    role, tcp_flags, tcp_state,
};

use crate::{
    emit::{self, header},
    globals::{INET_SOCK_SET_STATE_LAYOUT, SOCK_LAYOUT, field},
    owners, scope, shutting, sockets, task,
};

/// What one `inet_sock_set_state` call offers, however the program is attached, beyond
/// the two states (read first, by the entry points).
trait StateChange {
    fn protocol(&self) -> Option<u16>;
    fn sock(&self) -> Option<u64>;
    fn remote_port(&self) -> Option<u16>;
    fn endpoints(&self) -> Option<TcpEndpoints>;
}

/// Socket members at offsets read one by one (`field!`): most calls that get here are
/// connects and closes that need two or three of them.
struct TypedArgs<'a> {
    ctx: &'a BtfTracePointContext,
}

impl TypedArgs<'_> {
    /// `sk` as the verifier types it: `struct sock *`, for `task::load`.
    #[inline(always)]
    fn sock_typed(&self) -> u64 {
        self.ctx.arg(0)
    }
}

impl StateChange for TypedArgs<'_> {
    #[inline(always)]
    fn protocol(&self) -> Option<u16> {
        let offset = field!(SOCK_LAYOUT.sock_protocol);
        // SAFETY: a typed pointer.
        Some(unsafe { task::load(self.sock_typed(), offset) })
    }
    #[inline(always)]
    fn sock(&self) -> Option<u64> {
        sockets::address_of(self.sock_typed())
    }
    #[inline(always)]
    fn remote_port(&self) -> Option<u16> {
        let offset = field!(SOCK_LAYOUT.skc_dport);
        // SAFETY: a typed pointer.
        Some(u16::from_be(unsafe {
            task::load(self.sock_typed(), offset)
        }))
    }
    #[inline(always)]
    fn endpoints(&self) -> Option<TcpEndpoints> {
        sockets::sock_endpoints(self.sock()?, &sockets::sock_layout()?)
    }
}

/// The record's fields at offsets read from `.rodata` as each is needed: a copy of the
/// whole layout would sit on the stack, which 6.1 allows this call chain 512 bytes of.
struct ClassicRecord<'a> {
    ctx: &'a TracePointContext,
}

impl ClassicRecord<'_> {
    /// The record's value at `offset`.
    #[inline(always)]
    fn at<T>(&self, offset: u32) -> Option<T> {
        // SAFETY: offsets from the format file; bpf_probe_read_kernel underneath.
        unsafe { self.ctx.read_at(offset as usize) }.ok()
    }

    #[inline(always)]
    fn states(&self) -> Option<(i32, i32)> {
        let old_state = self.at(field!(INET_SOCK_SET_STATE_LAYOUT.oldstate))?;
        let new_state = self.at(field!(INET_SOCK_SET_STATE_LAYOUT.newstate))?;
        Some((old_state, new_state))
    }
}

impl StateChange for ClassicRecord<'_> {
    #[inline(always)]
    fn protocol(&self) -> Option<u16> {
        self.at(field!(INET_SOCK_SET_STATE_LAYOUT.protocol))
    }
    #[inline(always)]
    fn sock(&self) -> Option<u64> {
        self.at(field!(INET_SOCK_SET_STATE_LAYOUT.skaddr))
    }
    #[inline(always)]
    fn remote_port(&self) -> Option<u16> {
        self.at(field!(INET_SOCK_SET_STATE_LAYOUT.addrs).dport)
    }
    #[inline(always)]
    fn endpoints(&self) -> Option<TcpEndpoints> {
        sockets::read_split(self.ctx, &field!(INET_SOCK_SET_STATE_LAYOUT.addrs))
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_state(ctx: BtfTracePointContext) -> u32 {
    let (old_state, new_state): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    // Most transitions end here, before any global is read. Attached only when BTF gave
    // the socket layout, which the check below lets the verifier see.
    if let Some(interest) = Interest::of(old_state, new_state)
        && sockets::sock_layout_known()
    {
        on_state_change(&TypedArgs { ctx: &ctx }, old_state, new_state, interest);
    }
    0
}

#[tracepoint]
pub fn tcp_state_tp(ctx: TracePointContext) -> u32 {
    let record = ClassicRecord { ctx: &ctx };
    if let Some((old_state, new_state)) = record.states()
        && let Some(interest) = Interest::of(old_state, new_state)
    {
        on_state_change(&record, old_state, new_state, interest);
    }
    0
}

/// The transitions worth a second look; every connection makes several others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Interest {
    /// CLOSE→LISTEN: a listener opens, in the listening process's context.
    OpensListener,
    /// →SYN_SENT: connect(), in the connecting process's context.
    Connects,
    /// LISTEN→CLOSE: a listener closes, in the context of whoever held it last (which
    /// may be its exit).
    ListenerClosed,
    /// tcp_close() takes an open socket to FIN_WAIT1, LAST_ACK or (aborting) CLOSE:
    /// reported if the current task is exiting and the close is its own, or if its
    /// process is shutting down and the close cuts a request.
    MayCloseAtExit,
}

impl Interest {
    #[inline(always)]
    fn of(old_state: i32, new_state: i32) -> Option<Self> {
        if new_state == tcp_state::LISTEN {
            Some(Self::OpensListener)
        } else if new_state == tcp_state::SYN_SENT {
            Some(Self::Connects)
        } else if old_state == tcp_state::LISTEN && new_state == tcp_state::CLOSE {
            Some(Self::ListenerClosed)
        } else if tcp_state::is_open(old_state)
            && matches!(
                new_state,
                tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE
            )
        {
            Some(Self::MayCloseAtExit)
        } else {
            None
        }
    }
}

#[inline(always)]
fn on_state_change(
    change: &impl StateChange,
    old_state: i32,
    new_state: i32,
    interest: Interest,
) -> Option<()> {
    // Most closes happen in tasks that are neither exiting nor shutting down: that is
    // checked first (one array load while nothing shuts down), the protocol and the
    // socket only after.
    let exiting = interest == Interest::MayCloseAtExit && sockets::current_is_exiting();
    if interest == Interest::MayCloseAtExit
        && !exiting
        && !shutting::is_shutting_down((bpf_get_current_pid_tgid() >> 32) as u32)
    {
        return None;
    }
    // Every transition reported below runs in its process's context (listen(),
    // connect(), close(), exit): the current task is the one to filter. SCTP changes
    // state through the same function, with its own state numbers.
    if change.protocol()? != IPPROTO_TCP || scope::current_out_of_scope() {
        return None;
    }
    let sk = change.sock()?;
    match interest {
        Interest::Connects => {
            let owner = owners::current(role::OUTBOUND);
            owners::remember_connection(sk, change.remote_port()?, &owner);
            None
        }
        Interest::OpensListener => {
            let owner = owners::current(role::LISTENER);
            owners::remember_listener(sk, &owner);
            report(change.endpoints()?, old_state, new_state, owner, 0)
        }
        Interest::MayCloseAtExit => {
            let endpoints = change.endpoints()?;
            // __tcp_close() marks the socket before changing its state; softirq work
            // on an exiting task's stack changes sockets it has not marked.
            if !shut_down(sk) {
                return None;
            }
            let current = owners::current(role::UNKNOWN);
            let known = owners::known_or(sk, endpoints.remote_port, current);
            // The exiting process closes what it held, whoever the table says learnt
            // it: a socket passed over a Unix socket (Node cluster's primary hands
            // accepted connections to its workers) or inherited across fork().
            let owner = if known.tgid == current.tgid {
                known
            } else {
                SocketOwner {
                    role: known.role,
                    ..current
                }
            };
            let (traffic_flags, unread, unsent) = traffic(sk);
            let how = if exiting {
                tcp_flags::CLOSED_AT_EXIT
            } else if cuts_a_request(old_state, traffic_flags, unsent)
                && owner.role != role::OUTBOUND
            {
                // Not a connection it opened: abandoning an outbound call that has no
                // answer yet is also how a long poll ends.
                tcp_flags::CLOSED_IN_FLIGHT
            } else {
                return None;
            };
            report_with_traffic(
                endpoints,
                (old_state, new_state),
                owner,
                how | traffic_flags,
                (unread, unsent),
            )
        }
        Interest::ListenerClosed => {
            let endpoints = change.endpoints()?;
            owners::forget_listener(sk);
            // A listener closes in the context of the last process holding it, which
            // may not be its opener (a daemonizing server, a worker holding its
            // master's listener): if that process is exiting, its exit closed it.
            let flags = if sockets::current_is_exiting() && shut_down(sk) {
                tcp_flags::CLOSED_AT_EXIT
            } else {
                0
            };
            let closer = SocketOwner {
                role: role::LISTENER,
                ..owners::current(role::UNKNOWN)
            };
            report(endpoints, old_state, new_state, closer, flags)
        }
    }
}

/// A close by a process that is shutting down cuts a request: the peer sent a request
/// (its last segment carried data) and the process had sent nothing since (nothing of
/// its own is unacknowledged). Whatever it wrote before closing is still delivered
/// (close() sends the queue, then FIN), so a full send buffer is a whole answer on its
/// way, not one cut; an idle connection closed is a good drain, and one the peer had
/// closed (CLOSE_WAIT: its FIN is its last segment) is the peer's goodbye.
#[inline(always)]
fn cuts_a_request(old_state: i32, traffic_flags: u8, unsent: u32) -> bool {
    let asked = tcp_flags::PEER_SENT_DATA | tcp_flags::PEER_SPOKE_LAST;
    old_state == tcp_state::ESTABLISHED && traffic_flags & asked == asked && unsent == 0
}

/// __tcp_close() has begun on `sk` (it sets SHUTDOWN_MASK before changing the state).
fn shut_down(sk: u64) -> bool {
    sockets::sock_layout_known()
        && task::read::<u8>(sk, field!(SOCK_LAYOUT.sock_shutdown)) == Some(SHUTDOWN_MASK)
}

/// What a connection closed at exit carried, from `struct tcp_sock` (its members at BTF
/// offsets, read with bpf_probe_read_kernel: `sk` is typed as `struct sock`, smaller
/// than a `tcp_sock`). Runs once per socket an exiting process still held.
/// __tcp_close() has purged the receive queue by now but left `copied_seq` and
/// `rcv_nxt` as they were, so the bytes the process never read are still their
/// difference. Returns [`tcp_flags`] bits, unread bytes and unacknowledged bytes.
#[inline(always)]
fn traffic(sk: u64) -> (u8, u32, u32) {
    let read = |offset| task::read::<u32>(sk, offset);
    let (Some(rcv_nxt), Some(copied), Some(wl1), Some(una), Some(write_seq), Some(received)) = (
        read(field!(SOCK_LAYOUT.tcp_rcv_nxt)),
        read(field!(SOCK_LAYOUT.tcp_copied_seq)),
        read(field!(SOCK_LAYOUT.tcp_snd_wl1)),
        read(field!(SOCK_LAYOUT.tcp_snd_una)),
        read(field!(SOCK_LAYOUT.tcp_write_seq)),
        task::read::<u64>(sk, field!(SOCK_LAYOUT.tcp_bytes_received)),
    ) else {
        return (0, 0, 0);
    };
    let mut flags = tcp_flags::TRAFFIC_KNOWN;
    if received > 0 {
        flags |= tcp_flags::PEER_SENT_DATA;
    }
    // Sequence numbers wrap: compare as the kernel's before() does.
    if (wl1.wrapping_sub(rcv_nxt) as i32) < 0 {
        flags |= tcp_flags::PEER_SPOKE_LAST;
    }
    if still_writing(sk) {
        flags |= tcp_flags::STILL_WRITING;
    }
    (
        flags,
        rcv_nxt.wrapping_sub(copied),
        write_seq.wrapping_sub(una),
    )
}

/// Whether the process was in the middle of writing to `sk` (see
/// [`tcp_flags::STILL_WRITING`]).
#[inline(always)]
fn still_writing(sk: u64) -> bool {
    let queued = task::read::<i32>(sk, field!(SOCK_LAYOUT.sock_wmem_queued)).unwrap_or(0);
    let sndbuf = task::read::<i32>(sk, field!(SOCK_LAYOUT.sock_sndbuf)).unwrap_or(i32::MAX);
    if queued > 0 && queued >= sndbuf / 2 {
        return true;
    }
    task::read::<u64>(sk, field!(SOCK_LAYOUT.sock_socket))
        .and_then(|socket| task::read::<u64>(socket, field!(SOCK_LAYOUT.socket_flags)))
        .is_some_and(|flags| flags & SOCK_NOSPACE != 0)
}

/// A state-change record; `traffic` (unread, unacknowledged bytes) only for a close at
/// exit whose socket was read (see `traffic`), else zeros.
#[inline(always)]
fn report_with_traffic(
    endpoints: TcpEndpoints,
    (old_state, new_state): (i32, i32),
    owner: SocketOwner,
    flags: u8,
    (unread_bytes, unsent_bytes): (u32, u32),
) -> Option<()> {
    // Written in place, part by part: a record built on the stack, then copied, took 96
    // of the 512 bytes the classic attachment's call chain may use on 6.1.
    let mut entry = emit::reserve::<TcpStateRecord>()?;
    let record = entry.as_mut_ptr();
    // SAFETY: the entry is this program's until sent, 8-byte aligned; every byte is
    // written here.
    unsafe {
        (&raw mut (*record).header).write(header(kind::TCP_STATE));
        (&raw mut (*record).endpoints).write(endpoints);
        (&raw mut (*record).owner).write(owner);
        (&raw mut (*record).old_state).write(old_state as u8);
        (&raw mut (*record).new_state).write(new_state as u8);
        (&raw mut (*record).flags).write(flags);
        (&raw mut (*record)._pad).write([0; 5]);
        (&raw mut (*record).unread_bytes).write(unread_bytes);
        (&raw mut (*record).unsent_bytes).write(unsent_bytes);
    }
    emit::send(entry, false);
    Some(())
}

// Inlined: with the socket owner by value, more arguments than a BPF call can pass
// (five registers).
#[inline(always)]
fn report(
    endpoints: TcpEndpoints,
    old_state: i32,
    new_state: i32,
    owner: SocketOwner,
    flags: u8,
) -> Option<()> {
    report_with_traffic(endpoints, (old_state, new_state), owner, flags, (0, 0))
}
