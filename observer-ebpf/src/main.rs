//! observer's kernel programs: classic, raw and BTF-typed tracepoints (no kprobes, fentry
//! or LSM on the hosts we target). Each program reads its tracepoint's fields at offsets
//! that userspace took from tracefs `format` files (or, raw and typed, its `TP_PROTO`
//! arguments and struct members at BTF offsets), filters cheaply, and hands one
//! fixed-size record to the ring buffer. Correlation happens in userspace.
//!
//! One file per tracepoint, named after it (`tcp_reset.rs` holds tcp_send_reset and
//! tcp_receive_reset), and programs named after their tracepoint within the 15 bytes of
//! a name the kernel keeps: `process_exit`, `exit_group_call` (sys_enter_exit_group, the
//! record's name), `tcp_state` (inet_sock_set_state, the record's name), `tcp_recv_reset`,
//! `sys_exit_accept` (and sys_exit_accept4); a classic fallback of a raw or typed program
//! ends in `_tp` (`signal_gen_tp`, `tcp_state_tp`). One error convention: a program's body is a function returning
//! `Option<()>`, where `None` (a failed read, nothing to report) ends it early; the
//! program itself always returns 0.
// Built for bpfel-unknown-none by `cargo xtask build-ebpf`; on the host (`cargo build
// --workspace`) it is an ordinary program that does nothing, so that the workspace builds.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The atomic intrinsics (atomic.rs): core::sync::atomic has no swap or add on BPF.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod atomic;
mod emit;
mod exit_stage;
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

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing can panic at run time.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// GPL: bpf_probe_read_kernel and the other tracing helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
