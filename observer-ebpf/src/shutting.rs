//! Processes that received a termination signal: the little per-process state that lets
//! the TCP programs send per-connection events (accepts) only for processes that are
//! shutting down, and the exit program read children only for them.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::atomic;

/// tgid → CLOCK_MONOTONIC ns of its first termination signal. Removed at exit; the LRU
/// bound covers exits missed while observer was down.
#[map]
static SHUTTING_DOWN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// Index 0: at least the number of entries in SHUTTING_DOWN. Counted up before an insert
/// and down after a delete that found its key, so it is never below the truth; an
/// entry the LRU evicts is never counted down, which only costs lookups. Every exit on
/// the host asks whether its process is shutting down, and a hash map lookup on a cold
/// cache costs about 440 ns there (an exit storm on a 2-core VM): while nothing is
/// shutting down, this one load answers.
#[map]
static MARKED: Array<u64> = Array::with_max_entries(1, 0);

/// BPF_NOEXIST: keep the first signal's time.
const BPF_NOEXIST: u64 = 1;

pub fn mark(tgid: u32) {
    // A lookup first: an LRU insert takes a free node (and may evict) before it finds
    // the key present, and a signal storm marks the same process again and again.
    if is_shutting_down(tgid) {
        return;
    }
    count_marked(1);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if SHUTTING_DOWN.insert(tgid, now, BPF_NOEXIST).is_err() {
        // Already there (another CPU won), or no room: not one more.
        count_marked(u64::MAX);
    }
}

#[inline(always)]
pub fn is_shutting_down(tgid: u32) -> bool {
    // SAFETY: an array slot, aligned.
    let none_marked = MARKED
        .get_ptr(0)
        .is_some_and(|marked| unsafe { core::ptr::read_volatile(marked) } == 0);
    !none_marked && SHUTTING_DOWN.get_ptr(tgid).is_some()
}

pub fn forget(tgid: u32) {
    if SHUTTING_DOWN.remove(tgid).is_ok() {
        count_marked(u64::MAX);
    }
}

/// Adds `delta` (wrapping) to the count of marked processes.
fn count_marked(delta: u64) {
    if let Some(marked) = MARKED.get_ptr_mut(0) {
        // SAFETY: an array slot, aligned; programs on several CPUs count at once.
        unsafe { atomic::add(marked, delta) };
    }
}
