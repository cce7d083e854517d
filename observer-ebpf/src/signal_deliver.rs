//! `signal:signal_deliver`: the target thread dequeued a signal and is about to act on it
//! (run its handler, ignore it, or take the default action). Runs in the target's context,
//! so the current pid/tgid are the receiver's.
//!
//! Tracepoint record on 6.18:
//! ```text
//! int sig; int errno; int code; unsigned long sa_handler; unsigned long sa_flags;
//! ```
//!
//! get_signal() reports a group exit in progress as a SIGKILL delivery to every thread
//! (`trace_signal_deliver(SIGKILL, SEND_SIG_NOINFO, …)`), whether the group is dying of
//! SIGKILL, of another fatal signal with no handler, or of exit_group()/exec. With BTF we
//! read `signal->group_exit_code` to report the signal that really caused it, and drop the
//! deliveries of exit_group()/exec teardowns (no signal caused them).
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_common::{COMM_LEN, SIG_DFL, SIGKILL, SignalDeliverRecord, kind, signal_bit};

use crate::{
    emit::{header, submit},
    globals::{SETTINGS, SIGNAL_DELIVER_LAYOUT, TASK_LAYOUT, field},
    scope, task,
};

#[tracepoint]
pub fn signal_deliver(ctx: TracePointContext) -> u32 {
    let _ = try_signal_deliver(&ctx);
    0
}

fn try_signal_deliver(ctx: &TracePointContext) -> Option<()> {
    // Most deliveries are SIGCHLD, which no mask holds: the signal number first, then
    // the two masks (`.rodata` fields, no copy), before any other read.
    let sig_offset = field!(SIGNAL_DELIVER_LAYOUT.sig) as usize;
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let dequeued_sig: i32 = unsafe { ctx.read_at(sig_offset).ok()? };
    let (signal_mask, fatal_default_mask) = (
        field!(SETTINGS.signal_mask),
        field!(SETTINGS.fatal_default_mask),
    );
    let task_known = field!(TASK_LAYOUT.known) != 0;
    // A SIGKILL delivery may stand for a group exit by another signal (below).
    let may_be_group_exit = dequeued_sig == SIGKILL && task_known;
    if !may_be_group_exit && (signal_mask | fatal_default_mask) & signal_bit(dequeued_sig) == 0 {
        return Some(());
    }
    if scope::current_out_of_scope() {
        return Some(());
    }
    let mut sig = dequeued_sig;
    let mut group_exit_code = -1;
    if may_be_group_exit {
        let code = task::read::<u64>(task::current(), field!(TASK_LAYOUT.task_signal)).and_then(
            |signal| task::read::<i32>(signal, field!(TASK_LAYOUT.signal_group_exit_code)),
        );
        if let Some(code) = code {
            if code & 0x7f == 0 {
                return Some(()); // exit_group() or exec tearing down the other threads
            }
            sig = code & 0x7f;
            group_exit_code = code;
        }
    }
    let bit = signal_bit(sig);
    if signal_mask & bit == 0 && fatal_default_mask & bit == 0 {
        return Some(());
    }
    let sa_handler_offset = field!(SIGNAL_DELIVER_LAYOUT.sa_handler) as usize;
    let sa_handler: u64 = unsafe { ctx.read_at(sa_handler_offset).ok()? };
    if signal_mask & bit == 0 && sa_handler != SIG_DFL {
        // Only wanted for exit-status inference, which needs default-action deliveries.
        return Some(());
    }
    let si_code_offset = field!(SIGNAL_DELIVER_LAYOUT.code) as usize;
    let si_code: i32 = unsafe { ctx.read_at(si_code_offset).ok()? };
    let sa_flags_offset = field!(SIGNAL_DELIVER_LAYOUT.sa_flags) as usize;
    let sa_flags: u64 = unsafe { ctx.read_at(sa_flags_offset).ok()? };
    let pid_tgid = bpf_get_current_pid_tgid();
    submit(SignalDeliverRecord {
        header: header(kind::SIGNAL_DELIVER),
        sig,
        dequeued_sig,
        si_code,
        group_exit_code,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        sa_handler,
        sa_flags,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    Some(())
}
