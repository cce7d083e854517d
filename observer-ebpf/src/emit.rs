//! The one ring buffer every program writes to, and the per-CPU count of records it
//! could not take (userspace turns that count into `lost` events).
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use observer_common::RecordHeader;

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

/// Copies `record` into the ring buffer, or counts it as lost.
pub fn submit<T: 'static>(record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
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
