//! Who owns a socket, for the TCP programs that run where the current task is not its
//! owner (softirq, a peer's context).
//!
//! Ownership is learnt where it is certain — in process context at listen()
//! (CLOSE→LISTEN), connect() (→SYN_SENT) and accept() (traced while some process is
//! shutting down) — and looked up by the socket's address later. Two tables, because the
//! two kinds of socket live differently:
//! - Listeners: few and long-lived, in a hash map. An entry goes when its listener closes
//!   (LISTEN→CLOSE, which every listener passes through).
//! - Connections: one per connect(), on the hot path. A set-associative table: a hash of
//!   the `struct sock *` picks a set of four ways. Remembering is a few loads and one
//!   store (no lock, no allocation), and nothing is deleted when a socket is destroyed,
//!   so no program runs then. An LRU hash map cost an insert and two deletes per
//!   connection, about 3% of wrk → nginx throughput with a new connection per request.
//!   A way is taken in this order: one holding the same socket; one whose socket is gone
//!   (read from the socket: CLOSE, or another remote port — the memory now holds
//!   another socket); else one picked by the hash. So a live connection loses its entry
//!   only when all four ways of its set hold live connections.
//!
//! A lookup matches the socket's address and the remote port recorded with its owner. A
//! stale entry (the socket freed, its memory reused) therefore matches only a new socket
//! that went through neither connect() nor a traced accept() (or it would have replaced
//! the entry) and has the old socket's remote port: an inbound socket whose client's
//! ephemeral port equals the port the old socket connected to.
use aya_ebpf::{macros::map, maps::Array, maps::LruHashMap};
use observer_common::{SocketOwner, role, tcp_state};

use crate::{
    globals::{SOCK_LAYOUT, field},
    sockets, task,
};

/// `struct sock *` of a listener → its owner. The LRU bound only matters for listeners
/// that closed while observer was not running.
#[map]
static LISTENER_OWNERS: LruHashMap<u64, SocketOwner> = LruHashMap::with_max_entries(16_384, 0);

/// log2 of the connection table's sets: 16,384 sets of four 40-byte ways, 2.5 MiB.
const SET_BITS: u32 = 14;
const WAYS: usize = 4;

/// One way of a set.
#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectionOwner {
    /// 0 while the way is unused.
    sk: u64,
    /// The socket's remote port when its owner was learnt (host order).
    remote_port: u16,
    _pad: [u8; 6],
    owner: SocketOwner,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectionSet {
    ways: [ConnectionOwner; WAYS],
}

const _: () = assert!(core::mem::size_of::<ConnectionSet>() == 160);

#[map]
static CONNECTION_OWNERS: Array<ConnectionSet> = Array::with_max_entries(1 << SET_BITS, 0);

/// The set of a `struct sock *`, and the way to evict when every way is live:
/// Fibonacci hashing of the address without its low bits, which slab alignment makes
/// alike for every socket.
#[inline(always)]
fn set_of(sk: u64) -> (u32, usize) {
    let hash = (sk >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (
        (hash >> (64 - SET_BITS)) as u32,
        (hash >> (64 - SET_BITS - 2)) as usize % WAYS,
    )
}

/// The current process as the owner of a socket playing `role`.
pub fn current(role: u8) -> SocketOwner {
    let (tgid, comm) = task::current_process();
    SocketOwner {
        tgid,
        role,
        _pad: [0; 3],
        comm,
    }
}

pub fn remember_listener(sk: u64, owner: &SocketOwner) {
    let _ = LISTENER_OWNERS.insert(sk, *owner, 0);
}

pub fn forget_listener(sk: u64) {
    let _ = LISTENER_OWNERS.remove(sk);
}

/// Whether the socket a way names is still the connection it was learnt for. Read
/// through bpf_probe_read_kernel: TCP sockets' slab is SLAB_TYPESAFE_BY_RCU, and a
/// failed read counts as gone.
#[inline(always)]
fn still_connected(way: &ConnectionOwner) -> bool {
    way.sk != 0
        && task::read::<u8>(way.sk, field!(SOCK_LAYOUT.skc_state))
            .is_some_and(|state| i32::from(state) != tcp_state::CLOSE)
        && task::read::<u16>(way.sk, field!(SOCK_LAYOUT.skc_dport))
            .is_some_and(|port| u16::from_be(port) == way.remote_port)
}

/// Remembers the owner of a connected (or connecting) socket. Two sockets of one set
/// remembered at the same instant on two CPUs may pick the same way and interleave
/// their stores (no lock: that is the point): one of them then loses its entry, or,
/// rarer still, is named with the other's owner.
pub fn remember_connection(sk: u64, remote_port: u16, owner: &SocketOwner) {
    let (set, evict) = set_of(sk);
    let Some(set) = CONNECTION_OWNERS.get_ptr_mut(set) else {
        return;
    };
    // SAFETY: a successful lookup's pointer into the array's value area; plain integers.
    let set = unsafe { &mut *set };
    let mut chosen = WAYS;
    for (i, way) in set.ways.iter().enumerate() {
        if way.sk == sk {
            chosen = i;
        }
    }
    // Without BTF the sockets cannot be read: the hash picks.
    if chosen == WAYS && sockets::sock_layout_known() {
        for (i, way) in set.ways.iter().enumerate() {
            if chosen == WAYS && !still_connected(way) {
                chosen = i;
            }
        }
    }
    if let Some(way) = set
        .ways
        .get_mut(if chosen == WAYS { evict } else { chosen })
    {
        *way = ConnectionOwner {
            sk,
            remote_port,
            _pad: [0; 6],
            owner: *owner,
        };
    }
}

/// The socket's known owner, else `fallback`. `remote_port` is the socket's now.
// Explicit branches returning defined values on every path: with an
// `Option<SocketOwner>`, LLVM may compare the (undefined) payload of `None`, which the
// verifier rejects as a read of an uninitialised register.
pub fn known_or(sk: u64, remote_port: u16, fallback: SocketOwner) -> SocketOwner {
    if sk == 0 {
        return fallback;
    }
    if let Some(set) = CONNECTION_OWNERS.get_ptr(set_of(sk).0) {
        // SAFETY: as above.
        let set = unsafe { &*set };
        for way in &set.ways {
            if way.sk == sk && way.remote_port == remote_port {
                return way.owner;
            }
        }
    }
    match LISTENER_OWNERS.get_ptr(sk) {
        // SAFETY: a successful lookup's pointer; entries are plain integers.
        Some(owner) => unsafe { *owner },
        None => fallback,
    }
}

/// The owner to report for an RST on a socket: the one learnt in process context; else,
/// while a task holds the socket (`sk_lock.owned`), the current task, which is that
/// holder: close() with unread data, SO_LINGER 0, exit, or backlog work its
/// release_sock() runs. Else unknown (tgid 0), e.g. softirq work on an accepted socket
/// whose accept() was not traced.
#[inline(always)]
pub fn of_reset(sk: u64, remote_port: u16) -> SocketOwner {
    let unknown = SocketOwner {
        role: role::UNKNOWN,
        ..Default::default()
    };
    let held = sockets::sock_layout()
        .is_some_and(|layout| task::read::<u32>(sk, layout.sk_lock_owned).is_some_and(|o| o != 0));
    known_or(
        sk,
        remote_port,
        if held {
            current(role::UNKNOWN)
        } else {
            unknown
        },
    )
}
