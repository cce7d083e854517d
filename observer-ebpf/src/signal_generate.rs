//! `signal:signal_generate`: a signal was generated for a task. Runs in the sender's
//! context (or in whatever context the kernel generated it from, e.g. a timer).
//!
//! Tracepoint record on 6.18 (offsets come from the `format` file, never from here):
//! ```text
//! int sig; int errno; int code; char comm[16]; pid_t pid; int group; int result;
//! ```
//! `pid` and `comm` are the *target thread's*; `group` is 1 for kill(), 0 for tgkill().
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use observer_common::{COMM_LEN, SignalGenerateRecord, kind, signal_bit};

use crate::{
    emit::{header, submit_now},
    globals::{SETTINGS, SIGNAL_GENERATE_LAYOUT},
    shutting,
    task::current_process_comm,
    tgkill::take_tgkill_target,
};

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal_generate(&ctx);
    0
}

fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i32> {
    let layout = SIGNAL_GENERATE_LAYOUT.load();
    // SAFETY (all reads): offsets come from this kernel's format file; read_at uses
    // bpf_probe_read_kernel, which fails cleanly on a bad address.
    let sig: i32 = unsafe { ctx.read_at(layout.sig as usize)? };
    let settings = SETTINGS.load();
    let bit = signal_bit(sig);
    let reported = (settings.signal_mask | settings.fatal_default_mask) & bit != 0;
    let terminating = settings.termination_mask & bit != 0;
    if !reported && !terminating {
        return Ok(());
    }
    let si_code: i32 = unsafe { ctx.read_at(layout.code as usize)? };
    let target_tid: i32 = unsafe { ctx.read_at(layout.pid as usize)? };
    let group: i32 = unsafe { ctx.read_at(layout.group as usize)? };
    let result: i32 = unsafe { ctx.read_at(layout.result as usize)? };
    let target_comm: [u8; COMM_LEN] = unsafe { ctx.read_at(layout.comm as usize)? };

    let pid_tgid = bpf_get_current_pid_tgid();
    let sender_tgid = (pid_tgid >> 32) as u32;
    let sender_tid = pid_tgid as u32;
    let target_tid = target_tid as u32;
    // The tracepoint names the target thread only. Its thread group is known here when a
    // thread signals itself (raise, faults) or came through tgkill(); otherwise 0 asks
    // userspace to resolve it.
    let target_tgid = if target_tid == sender_tid {
        sender_tgid
    } else {
        take_tgkill_target(sender_tid, target_tid).unwrap_or(0)
    };

    if result == 0 && terminating {
        // kill() names a process by its leader's id, so an unresolved target is its tgid.
        shutting::mark(if target_tgid != 0 {
            target_tgid
        } else {
            target_tid
        });
    }
    if !reported {
        return Ok(());
    }
    submit_now(SignalGenerateRecord {
        header: header(kind::SIGNAL_GENERATE),
        sig,
        si_code,
        result,
        group: group as u32,
        target_tid,
        target_tgid,
        sender_tgid,
        sender_tid,
        target_comm,
        sender_comm: current_process_comm(),
    });
    Ok(())
}
