//! The one ring buffer every program writes to, and the per-CPU count of records it
//! could not take (userspace turns that count into `lost` events).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use observer_common::RecordHeader;

use crate::globals::{SETTINGS, field};

/// Resized by userspace (`--ring-buffer-kib`); this is only the default.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Index 0: records dropped on this CPU because the ring buffer was full.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

pub fn header(kind: u32) -> RecordHeader {
    // SAFETY: no arguments; always allowed in tracing programs.
    header_at(kind, unsafe { bpf_ktime_get_ns() })
}

/// The header of a record whose time was taken already (`mono_ns`, bpf_ktime_get_ns()).
pub fn header_at(kind: u32, mono_ns: u64) -> RecordHeader {
    RecordHeader {
        kind,
        // SAFETY: no arguments; always allowed in tracing programs.
        cpu: unsafe { bpf_get_smp_processor_id() },
        mono_ns,
    }
}

/// Copies `record` into the ring buffer, or counts it as lost. Userspace is not woken for
/// it unless the ring has filled to `wakeup_bytes`: it polls the ring every few
/// milliseconds, so a busy host costs it one wake-up per batch instead of one per record.
pub fn submit<T: 'static>(record: T) {
    commit(record, wakeup(false));
}

/// Like `submit`, but wakes userspace if it is waiting: for the records it must act on
/// while their subject still runs (it reads a signal target's /proc entry).
pub fn submit_now<T: 'static>(record: T) {
    commit(record, wakeup(true));
}

/// Room for a `T` in the ring buffer, to be written in place and handed over with
/// [`send`]: a large record is then written once instead of built and copied. None
/// (counted as lost) when the ring is full.
pub fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost();
    }
    entry
}

/// Hands over a record written in place, waking userspace as [`submit`] does (or at
/// once, as [`submit_now`] does, when `now`).
pub fn send<T: 'static>(entry: RingBufEntry<T>, now: bool) {
    entry.submit(wakeup(now).into());
}

/// A forced wake-up is an irq_work, a self-interrupt: about 20 µs per record on a
/// virtual machine (measured with a reserve-and-discard program in an exit storm). A
/// record userspace must hear of at once takes the kernel's adaptive wake-up instead,
/// which wakes it only when it had read everything before this record (when it may be
/// asleep); a busy reader finds the record in its next batch, a few ms later at most.
fn wakeup(now: bool) -> u32 {
    if now {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= field!(SETTINGS.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
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
