//! observer's kernel programs: classic, raw and BTF-typed tracepoints (no kprobes, fentry
//! or LSM on the hosts we target). Each program reads its tracepoint's fields at offsets
//! that userspace took from tracefs `format` files (or, raw and typed, its `TP_PROTO`
//! arguments and struct members at BTF offsets), filters cheaply, and hands one
//! fixed-size record to the ring buffer. Correlation happens in userspace.
#![no_std]
#![no_main]

mod emit;
mod exit_group;
mod globals;
mod owners;
mod process_exit;
mod scope;
mod shutting;
mod signal_deliver;
mod signal_generate;
mod sockets;
mod task;
mod tcp_accept;
mod tcp_reset;
mod tcp_state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing can panic at run time.
    loop {}
}

/// GPL: bpf_probe_read_kernel and the other tracing helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
