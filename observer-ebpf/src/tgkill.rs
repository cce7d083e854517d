//! `syscalls:sys_enter_tgkill`: remembers, per calling thread, the (tgid, tid) a
//! tgkill(2)/pthread_kill(3) is aimed at, so that `signal_generate` (which only sees the
//! target thread id) can name the target's thread group exactly.
//!
//! Tracepoint record (each argument is a long):
//! ```text
//! int __syscall_nr; pid_t tgid; pid_t pid; int sig;
//! ```
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use observer_common::signal_bit;

use crate::globals::{SETTINGS, TGKILL_LAYOUT};

#[derive(Clone, Copy)]
#[repr(C)]
pub struct TgkillTarget {
    tgid: u32,
    tid: u32,
}

/// Calling thread id → its tgkill target. One entry per thread with a tgkill in flight;
/// the LRU bound evicts entries whose tgkill failed before generating a signal.
#[map]
static TGKILL_TARGETS: LruHashMap<u32, TgkillTarget> = LruHashMap::with_max_entries(4096, 0);

#[tracepoint]
pub fn tgkill_enter(ctx: TracePointContext) -> u32 {
    let _ = try_tgkill_enter(&ctx);
    0
}

fn try_tgkill_enter(ctx: &TracePointContext) -> Result<(), i32> {
    let layout = TGKILL_LAYOUT.load();
    // SAFETY (all reads): offsets from the format file; bpf_probe_read_kernel underneath.
    let sig: u64 = unsafe { ctx.read_at(layout.sig as usize)? };
    let settings = SETTINGS.load();
    let wanted = settings.signal_mask | settings.termination_mask | settings.fatal_default_mask;
    if wanted & signal_bit(sig as i32) == 0 {
        return Ok(());
    }
    let tgid: u64 = unsafe { ctx.read_at(layout.tgid as usize)? };
    let tid: u64 = unsafe { ctx.read_at(layout.pid as usize)? };
    let caller_tid = bpf_get_current_pid_tgid() as u32;
    let target = TgkillTarget {
        tgid: tgid as u32,
        tid: tid as u32,
    };
    TGKILL_TARGETS.insert(caller_tid, target, 0)
}

/// The thread group of `target_tid` if `caller_tid` is inside a tgkill aimed at it.
pub fn take_tgkill_target(caller_tid: u32, target_tid: u32) -> Option<u32> {
    let target = TGKILL_TARGETS.get_ptr(caller_tid)?;
    // SAFETY: the pointer comes from a successful lookup; entries are plain integers.
    let target = unsafe { *target };
    let _ = TGKILL_TARGETS.remove(caller_tid);
    (target.tid == target_tid).then_some(target.tgid)
}
