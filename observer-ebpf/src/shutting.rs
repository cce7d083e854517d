//! Processes that received a termination signal: the little per-process state that lets
//! the TCP programs send per-connection events (accepts) only for processes that are
//! shutting down.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};

/// tgid → CLOCK_MONOTONIC ns of its first termination signal. Removed at exit; the LRU
/// bound covers exits missed while observer was down.
#[map]
static SHUTTING_DOWN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16_384, 0);

/// BPF_NOEXIST: keep the first signal's time.
const BPF_NOEXIST: u64 = 1;

pub fn mark(tgid: u32) {
    // A lookup first: an LRU insert takes a free node (and may evict) before it finds
    // the key present, and a signal storm marks the same process again and again.
    if is_shutting_down(tgid) {
        return;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SHUTTING_DOWN.insert(tgid, now, BPF_NOEXIST);
}

pub fn is_shutting_down(tgid: u32) -> bool {
    SHUTTING_DOWN.get_ptr(tgid).is_some()
}

pub fn forget(tgid: u32) {
    let _ = SHUTTING_DOWN.remove(tgid);
}
