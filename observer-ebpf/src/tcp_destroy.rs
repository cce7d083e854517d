//! `tcp:tcp_destroy_sock`: inet_csk_destroy_sock() is freeing a TCP socket, so its owner
//! entry goes (the address may be reused by the next socket).
//!
//! Tracepoint record on 6.18: `const void *skaddr; __u16 sport; __u16 dport; …`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{globals::TCP_DESTROY_LAYOUT, sockets};

#[tracepoint]
pub fn tcp_destroy(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(TCP_DESTROY_LAYOUT.load().skaddr as usize) } {
        sockets::forget(sk);
    }
    0
}
