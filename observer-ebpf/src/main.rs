//! observer's kernel programs: classic, raw and BTF-typed tracepoints (no kprobes, fentry
//! or LSM on the hosts we target). Each program reads its tracepoint's fields at offsets
//! that userspace took from tracefs `format` files (or, raw and typed, its `TP_PROTO`
//! arguments and struct members at BTF offsets), filters cheaply, and hands one
//! fixed-size record to the ring buffer. Correlation happens in userspace.
//!
//! One file per tracepoint, named after it (`tcp_reset.rs` holds tcp_send_reset and
//! tcp_receive_reset). One error convention: a program's body is a function returning
//! `Option<()>`, where `None` (a failed read, nothing to report) ends it early; the
//! program itself always returns 0.
#![no_std]
#![no_main]

mod emit;
mod globals;
mod inet_sock_set_state;
mod owners;
mod sched_process_exit;
mod scope;
mod shutting;
mod signal_deliver;
mod signal_generate;
mod sockets;
mod sys_enter_exit_group;
mod sys_exit_accept;
mod task;
mod tcp_reset;

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
