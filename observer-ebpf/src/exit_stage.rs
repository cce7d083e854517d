//! Per-CPU staging of exits: the common exit's way to userspace without the ring
//! buffer. A ring reservation takes the ring's spinlock with interrupts off and touches
//! cache lines the reader on another CPU shares (producer and consumer positions, fresh
//! data pages): about 350 ns per exit in an exit storm on a 2-core VM (variants of the
//! program, alternated). Here an exit goes into this CPU's own small ring in a
//! memory-mapped array (`ExitStage`): one cache line of stores and a publishing store
//! on a line only this CPU writes, no lock, no helper. Userspace reads the stages at
//! every drain (every 20 ms at most) and whenever a ring record is later than its last
//! read, and merges them with the ring by time (observer/src/pipeline/staged.rs). A full
//! stage (userspace behind by EXIT_STAGE_SLOTS exits of one CPU) leaves the exit to the
//! ring buffer: nothing is lost that the ring would not lose.
use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{helpers::bpf_get_smp_processor_id, macros::map, maps::Array};
use observer_common::{EXIT_STAGE_SLOTS, ExitStage, StagedExit};

use crate::{
    atomic,
    globals::{SETTINGS, field},
};

/// BPF_F_MMAPABLE: userspace maps the array's values and reads them without syscalls.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One element per possible CPU (userspace sets the count before load).
#[map]
static EXIT_STAGE: Array<ExitStage> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A slot of this CPU's stage, taken and not yet published.
pub struct StagedSlot {
    stage: *mut ExitStage,
    head: u64,
}

/// This CPU's next free slot, or None when userspace has not yet taken the last
/// EXIT_STAGE_SLOTS records staged here.
#[inline(always)]
pub fn take_slot() -> Option<StagedSlot> {
    // SAFETY: no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let stage = EXIT_STAGE.get_ptr_mut(cpu)?;
    // SAFETY: a map value; `head` is written by this CPU's program only. `taken` is
    // stored by userspace after it has copied the slots it frees; the slot stores below
    // depend on this load through the branch, which orders them after it on every CPU
    // architecture (and an old value only makes the stage look fuller).
    let (head, taken) = unsafe {
        (
            (*stage).head,
            core::ptr::read_volatile(&raw const (*stage).taken),
        )
    };
    (head.wrapping_sub(taken) < EXIT_STAGE_SLOTS as u64).then_some(StagedSlot { stage, head })
}

impl StagedSlot {
    /// Writes `exit` into the slot.
    #[inline(always)]
    pub fn write(&mut self, exit: StagedExit) {
        let index = (self.head as usize) & (EXIT_STAGE_SLOTS - 1);
        // SAFETY: the slot is this CPU's until published (see `take_slot`); the index is
        // masked into the array, which the verifier sees.
        unsafe { (&raw mut (*self.stage).slots[index]).write(exit) };
    }

    /// Makes the record visible to userspace: `head` moves past it only after every
    /// store to it. On x86 (`stores_in_order`) other CPUs see stores in program order,
    /// so a plain store after a compiler fence does it, as the kernel's own
    /// smp_store_release() there. Elsewhere the store is an atomic exchange, which every
    /// JIT makes fully ordered (arm64 `swpal`/`dmb`): BPF has no plain store-release
    /// before cpu v4 (kernel 6.16). On x86 the exchange would be an `xchg`, a locked
    /// instruction that waits for the slot's stores to reach the cache, and with them
    /// every store the exit path made before: 150 to 200 ns per exit in an exit storm
    /// (alternated with the plain store on a 2-core VM).
    #[inline(always)]
    pub fn publish(self) {
        // SAFETY: see `take_slot`.
        let head = unsafe { &raw mut (*self.stage).head };
        let next = self.head.wrapping_add(1);
        if field!(SETTINGS.stores_in_order) != 0 {
            compiler_fence(Ordering::Release);
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(head, next) };
        } else {
            // SAFETY: as above.
            unsafe { atomic::exchange(head, next) };
        }
    }
}
