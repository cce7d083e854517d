//! Socket addresses and the reads behind them, shared by the TCP programs: from
//! tracepoint records, from `struct sock` at BTF offsets, and from a file descriptor to
//! its `struct sock`.
use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TracePointContext};
use observer_common::{AF_INET, SockLayout, SplitAddrLayout, TcpEndpoints};

use crate::{
    globals::{SOCK_LAYOUT, field},
    task,
};

/// One slot per CPU through which a typed pointer becomes a plain number.
#[map]
static ADDRESS_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The address a BTF-typed pointer holds, as a plain number to hash and compare: the
/// verifier refuses shifts and multiplications on pointers, and tracks a pointer
/// through registers and the stack, but not through map memory. (Storing a pointer
/// into a map needs CAP_PERFMON or root, which observer has.) Only `tcp_state` uses
/// the slot, and the kernel never nests a program's runs on one CPU.
#[inline(always)]
pub fn address_of(typed: u64) -> Option<u64> {
    let slot = ADDRESS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a successful lookup's pointer to this CPU's u64; volatile, so that the
    // compiler does not hand back the pointer it stored.
    unsafe {
        core::ptr::write_volatile(slot, typed);
        Some(core::ptr::read_volatile(slot))
    }
}

pub fn sock_layout() -> Option<SockLayout> {
    let layout = SOCK_LAYOUT.load();
    (layout.known != 0).then_some(layout)
}

/// Whether BTF gave the socket layout, without copying it: for hot paths, which then
/// read the offsets they use with `field!`.
#[inline(always)]
pub fn sock_layout_known() -> bool {
    field!(SOCK_LAYOUT.known) != 0
}

/// Reads a tracepoint's `sport`/`dport`/`family`/`saddr`/`daddr`(`_v6`) fields.
/// Inlined, as are the other readers here: a bpf-to-bpf call adds its whole frame to the
/// caller's, and 6.1's verifier refuses a combined stack over 512 bytes.
#[inline(always)]
pub fn read_split(ctx: &TracePointContext, layout: &SplitAddrLayout) -> Option<TcpEndpoints> {
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let family: u16 = unsafe { ctx.read_at(layout.family as usize).ok()? };
    let mut endpoints = TcpEndpoints {
        family,
        local_port: unsafe { ctx.read_at(layout.sport as usize).ok()? },
        remote_port: unsafe { ctx.read_at(layout.dport as usize).ok()? },
        ..Default::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = unsafe { ctx.read_at(layout.saddr as usize).ok()? };
        let remote: [u8; 4] = unsafe { ctx.read_at(layout.daddr as usize).ok()? };
        endpoints.local_addr[..4].copy_from_slice(&local);
        endpoints.remote_addr[..4].copy_from_slice(&remote);
    } else {
        endpoints.local_addr = unsafe { ctx.read_at(layout.saddr_v6 as usize).ok()? };
        endpoints.remote_addr = unsafe { ctx.read_at(layout.daddr_v6 as usize).ok()? };
    }
    Some(endpoints)
}

/// Reads two 28-byte sockaddr fields (sockaddr_in or sockaddr_in6: family, big-endian
/// port, then the IPv4 address, or flowinfo and the IPv6 address), only the parts used.
#[inline(always)]
pub fn read_sockaddrs(
    ctx: &TracePointContext,
    local_offset: u32,
    remote_offset: u32,
) -> Option<TcpEndpoints> {
    let (local, remote) = (local_offset as usize, remote_offset as usize);
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let family: u16 = unsafe { ctx.read_at(local).ok()? };
    let mut endpoints = TcpEndpoints {
        family,
        local_port: u16::from_be(unsafe { ctx.read_at(local + 2).ok()? }),
        remote_port: u16::from_be(unsafe { ctx.read_at(remote + 2).ok()? }),
        ..Default::default()
    };
    if family == AF_INET {
        let local_addr: [u8; 4] = unsafe { ctx.read_at(local + 4).ok()? };
        let remote_addr: [u8; 4] = unsafe { ctx.read_at(remote + 4).ok()? };
        endpoints.local_addr[..4].copy_from_slice(&local_addr);
        endpoints.remote_addr[..4].copy_from_slice(&remote_addr);
    } else {
        endpoints.local_addr = unsafe { ctx.read_at(local + 8).ok()? };
        endpoints.remote_addr = unsafe { ctx.read_at(remote + 8).ok()? };
    }
    Some(endpoints)
}

/// Reads a socket's addresses from its `struct sock_common`, and the local port from
/// `struct inet_sock` as the classic tracepoints do.
#[inline(always)]
pub fn sock_endpoints(sk: u64, layout: &SockLayout) -> Option<TcpEndpoints> {
    let family = task::read::<u16>(sk, layout.skc_family)?;
    let mut endpoints = TcpEndpoints {
        family,
        local_port: u16::from_be(task::read::<u16>(sk, layout.inet_sport)?),
        remote_port: u16::from_be(task::read::<u16>(sk, layout.skc_dport)?),
        ..Default::default()
    };
    if family == AF_INET {
        endpoints.local_addr[..4]
            .copy_from_slice(&task::read::<[u8; 4]>(sk, layout.skc_rcv_saddr)?);
        endpoints.remote_addr[..4].copy_from_slice(&task::read::<[u8; 4]>(sk, layout.skc_daddr)?);
    } else {
        endpoints.local_addr = task::read::<[u8; 16]>(sk, layout.skc_v6_rcv_saddr)?;
        endpoints.remote_addr = task::read::<[u8; 16]>(sk, layout.skc_v6_daddr)?;
    }
    Some(endpoints)
}

/// The `struct sock *` behind file descriptor `fd` of the current task:
/// `current->files->fdt->fd[fd]->private_data` (a `struct socket *`) `->sk`.
pub fn current_fd_sock(fd: u64, layout: &SockLayout) -> Option<u64> {
    let files = task::read::<u64>(task::current(), layout.task_files)?;
    let fdt = task::read::<u64>(files, layout.files_fdt)?;
    let max_fds = task::read::<u32>(fdt, layout.fdtable_max_fds)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let fd_array = task::read::<u64>(fdt, layout.fdtable_fd)?;
    let file = task::read::<u64>(fd_array + fd * 8, 0)?;
    let socket = task::read::<u64>(file, layout.file_private_data)?;
    task::read::<u64>(socket, layout.socket_sk).filter(|&sk| sk != 0)
}

/// Whether the current task is exiting (`PF_EXITING`); false without BTF.
#[inline(always)]
pub fn current_is_exiting() -> bool {
    // Checked on every close, so two fields of the layout, not all of it.
    sock_layout_known() && {
        let offset = field!(SOCK_LAYOUT.task_flags);
        let flags: u32 = if task::typed() {
            // SAFETY: a typed pointer.
            unsafe { task::load(task::current_typed(), offset) }
        } else {
            task::read(task::current(), offset).unwrap_or(0)
        };
        flags & observer_common::PF_EXITING != 0
    }
}
