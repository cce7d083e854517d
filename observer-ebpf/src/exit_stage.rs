//! Per-CPU staging of exits: the common exit's way to userspace without the ring
//! buffer. A ring reservation takes the ring's spinlock with interrupts off and touches
//! cache lines the reader on another CPU shares (producer and consumer positions, fresh
//! data pages): about 350 ns per exit in an exit storm on a 2-core VM (variants of the
//! program, alternated). Here an exit goes into this CPU's own small ring in a
//! memory-mapped array (`ExitStage`): one cache line of stores and an exchange on a
//! line only this CPU writes, no lock, no helper. Userspace reads the stages at every
//! drain (every 20 ms at most) and whenever a ring record is later than its last read,
//! and merges them with the ring by time (observer/src/pipeline/staged.rs). A full
//! stage (userspace behind by EXIT_STAGE_SLOTS exits of one CPU) leaves the exit to the
//! ring buffer: nothing is lost that the ring would not lose.
use aya_ebpf::{helpers::bpf_get_smp_processor_id, macros::map, maps::Array};
use observer_common::{EXIT_STAGE_SLOTS, ExitStage, StagedExit};

use crate::atomic;

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
    /// store to it. BPF has no plain store-release before cpu v4 (kernel 6.16), so the
    /// store is an atomic exchange, which every JIT makes fully ordered (x86 `xchg`,
    /// arm64 `swpal`/`dmb`); on this CPU's own cache line it costs a few cycles.
    #[inline(always)]
    pub fn publish(self) {
        // SAFETY: see `take_slot`.
        unsafe { atomic::exchange(&raw mut (*self.stage).head, self.head.wrapping_add(1)) };
    }
}
