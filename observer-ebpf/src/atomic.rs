//! The atomic operations the programs need. The BPF target has atomic read-modify-write
//! instructions but no compare-and-swap, so `core::sync::atomic` offers only loads and
//! stores there: these use the intrinsics, which every JIT makes fully ordered (x86
//! `lock`-prefixed or `xchg`, arm64 LSE with acquire-release or `dmb`). On the host
//! (where the crate is only built, never run) they are the std equivalents.
#[cfg(not(target_arch = "bpf"))]
use core::sync::atomic::{AtomicU64, Ordering};

/// Stores `value` at `target` after every earlier store, returning the old value.
///
/// # Safety
/// `target` must be valid for an aligned u64 access.
#[inline(always)]
pub unsafe fn exchange(target: *mut u64, value: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            target, value,
        )
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises.
    unsafe {
        AtomicU64::from_ptr(target).swap(value, Ordering::SeqCst)
    }
}

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to `target`. The old value is not
/// returned, so this is the plain atomic add every BPF CPU version has.
///
/// # Safety
/// `target` must be valid for an aligned u64 access.
#[inline(always)]
pub unsafe fn add(target: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            target, delta,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as the caller promises.
    unsafe {
        AtomicU64::from_ptr(target).fetch_add(delta, Ordering::SeqCst);
    }
}
