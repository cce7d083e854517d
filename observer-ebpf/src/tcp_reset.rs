//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: RSTs, with the owner looked up by
//! socket address (these often run in softirq context, or in the peer's).
//!
//! tcp_send_reset on 6.18:
//! ```text
//! const void *skbaddr; const void *skaddr; int state; enum sk_rst_reason reason;
//! __u8 saddr[28]; __u8 daddr[28];          // sockaddr_in / sockaddr_in6
//! ```
//! (before 6.10: no `reason`, and sport/dport/family/saddr[4]/daddr[4]/saddr_v6/daddr_v6).
//!
//! tcp_receive_reset on 6.18:
//! ```text
//! const void *skaddr; __u16 sport; __u16 dport; __u16 family; __u8 saddr[4];
//! __u8 daddr[4]; __u8 saddr_v6[16]; __u8 daddr_v6[16]; __u64 sock_cookie;
//! ```
//! Both store the local side as `saddr`/`sport`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::{
    FIELD_ABSENT, TcpResetLayout, TcpResetRecord, addr_format, kind, reset_flags,
};

use crate::{
    emit::{header, submit},
    globals::{TCP_RECEIVE_RESET_LAYOUT, TCP_SEND_RESET_LAYOUT},
    owners, sockets, task,
};

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = report_reset(&ctx, &TCP_SEND_RESET_LAYOUT.load(), 0);
    0
}

#[tracepoint]
pub fn tcp_recv_reset(ctx: TracePointContext) -> u32 {
    let _ = report_reset(
        &ctx,
        &TCP_RECEIVE_RESET_LAYOUT.load(),
        reset_flags::RECEIVED,
    );
    0
}

fn report_reset(ctx: &TracePointContext, layout: &TcpResetLayout, mut flags: u8) -> Option<()> {
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let sk: u64 = unsafe { ctx.read_at(layout.skaddr as usize).ok()? };
    let endpoints = if layout.addr_format == addr_format::SOCKADDR {
        sockets::read_sockaddrs(ctx, layout.sockaddr_local, layout.sockaddr_remote)?
    } else {
        sockets::read_split(ctx, &layout.addrs)?
    };
    let mut state = 0u8;
    if layout.state != FIELD_ABSENT {
        let value: i32 = unsafe { ctx.read_at(layout.state as usize).ok()? };
        state = value as u8;
        flags |= reset_flags::STATE_KNOWN;
    } else if let Some(sock_layout) = sockets::sock_layout()
        && let Some(value) = task::read::<u8>(sk, sock_layout.skc_state)
    {
        state = value;
        flags |= reset_flags::STATE_KNOWN;
    }
    let mut reason = 0u32;
    if layout.reason != FIELD_ABSENT {
        reason = unsafe { ctx.read_at(layout.reason as usize).ok()? };
        flags |= reset_flags::REASON_KNOWN;
    }
    if sk != 0 {
        flags |= reset_flags::HAS_SOCKET;
    }
    submit(TcpResetRecord {
        header: header(kind::TCP_RESET),
        endpoints,
        owner: owners::of_reset(sk, endpoints.remote_port),
        reason,
        state,
        flags,
        _pad: [0; 2],
    });
    Some(())
}
