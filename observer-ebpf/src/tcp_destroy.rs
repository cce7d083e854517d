//! `tcp_destroy_sock`, a raw tracepoint: inet_csk_destroy_sock() is freeing a TCP
//! socket, so its owner entry goes (the address may be reused by the next socket). Once
//! per connection: `TP_PROTO(struct sock *sk)` arrives as one u64 context slot, a plain
//! load, and the kernel builds no trace record. Raw tracepoints need no BTF.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::sockets;

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy(ctx: RawTracePointContext) -> u32 {
    sockets::forget(ctx.arg(0));
    0
}
