//! The one ring buffer every program writes to, and the per-CPU count of records it
//! could not take (userspace turns that count into `lost` events).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use observer_common::RecordHeader;

use crate::globals::{SETTINGS, field};

/// Resized by userspace (`--ring-buffer-kib`); this is only the default.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Index 0: records dropped on this CPU because the ring buffer was full.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

pub fn header(kind: u32) -> RecordHeader {
    // SAFETY: both helpers take no arguments and are always allowed in tracing programs.
    unsafe {
        RecordHeader {
            kind,
            cpu: bpf_get_smp_processor_id(),
            mono_ns: bpf_ktime_get_ns(),
        }
    }
}

/// Copies `record` into the ring buffer, or counts it as lost. Userspace is not woken for
/// it unless the ring has filled to `wakeup_bytes`: it polls the ring every few
/// milliseconds, so a busy host costs it one wake-up per batch instead of one per record.
pub fn submit<T: 'static>(record: T) {
    let filled = EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= field!(SETTINGS.wakeup_bytes);
    commit(
        record,
        if filled {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        },
    );
}

/// Like `submit`, but wakes userspace at once: for the records it must act on while
/// their subject still runs (it reads a signal target's /proc entry).
pub fn submit_now<T: 'static>(record: T) {
    commit(record, BPF_RB_FORCE_WAKEUP);
}

fn commit<T: 'static>(record: T, wakeup: u32) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(wakeup.into());
        }
        None => count_lost(),
    }
}

fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // Tracing programs do not nest on one CPU (the kernel skips a program that would
        // recurse), so a plain add on this CPU's slot cannot race.
        unsafe { *lost += 1 };
    }
}
