//! The exit records the kernel staged per CPU instead of sending them through the ring
//! buffer (observer-ebpf/src/exit_stage.rs says why): the `EXIT_STAGE` array, one
//! [`ExitStage`] per possible CPU, mapped into this process and read without a syscall.
use std::{
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result, ensure};
use aya::maps::{Map, MapData};
use observer_common::{EXIT_STAGE_SLOTS, ExitStage, ProcessExitRecord};

pub struct ExitStages {
    stages: NonNull<ExitStage>,
    cpus: usize,
    mapped_len: usize,
    /// Holds the map's fd for as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for ExitStages {}

impl ExitStages {
    /// Maps `EXIT_STAGE`, loaded with one element per possible CPU.
    pub fn map(map: Map) -> Result<Self> {
        let Map::Array(data) = map else {
            anyhow::bail!("map EXIT_STAGE is not an array");
        };
        let cpus = data
            .info()
            .context("reading map EXIT_STAGE's info")?
            .max_entries() as usize;
        ensure!(cpus > 0, "map EXIT_STAGE has no elements");
        let mapped_len = cpus * size_of::<ExitStage>();
        // SAFETY: a shared mapping of the map's values (a BPF_F_MMAPABLE array maps them
        // from offset 0, page-aligned); nothing else in this process maps it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&data.fd().as_fd()),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping EXIT_STAGE");
        }
        Ok(Self {
            stages: NonNull::new(address.cast()).context("mmap gave a null address")?,
            cpus,
            mapped_len,
            _map: data,
        })
    }

    /// Appends every exit published since the last call, each CPU's in order, as the
    /// record the ring buffer would have carried, and gives their slots back.
    pub fn take(&mut self, into: &mut Vec<ProcessExitRecord>) {
        for cpu in 0..self.cpus {
            // SAFETY: `cpu` is below the element count the mapping covers, which stays
            // mapped while `self` lives.
            unsafe { take_from(self.stages.as_ptr().add(cpu), cpu as u32, into) };
        }
    }
}

/// Takes one CPU's published exits out of `stage`.
///
/// # Safety
/// `stage` must point to a live, aligned `ExitStage`, whose `taken` only this thread writes.
unsafe fn take_from(stage: *mut ExitStage, cpu: u32, into: &mut Vec<ProcessExitRecord>) {
    // SAFETY: as the caller promises. The kernel writes `head` (after the exit it counts:
    // this acquire load pairs with its exchange) and the slots; this thread writes
    // `taken`, after copying the slots it frees (the release store).
    unsafe {
        let head = AtomicU64::from_ptr(&raw mut (*stage).head).load(Ordering::Acquire);
        let taken_at = &raw mut (*stage).taken;
        let taken = AtomicU64::from_ptr(taken_at).load(Ordering::Relaxed);
        // The kernel never runs more than a stage ahead; the bound keeps a corrupted
        // count from reading a slot twice.
        let from = taken.max(head.saturating_sub(EXIT_STAGE_SLOTS as u64));
        for n in from..head {
            let slot = &raw const (*stage).slots[n as usize % EXIT_STAGE_SLOTS];
            into.push(std::ptr::read_volatile(slot).into_record(cpu));
        }
        AtomicU64::from_ptr(taken_at).store(head, Ordering::Release);
    }
}

impl Drop for ExitStages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.stages.as_ptr().cast(), self.mapped_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{ExitFacts, StagedExit};

    fn empty_stage() -> Box<ExitStage> {
        Box::new(ExitStage {
            head: 0,
            _pad_head: [0; 7],
            taken: 0,
            _pad_taken: [0; 7],
            slots: [StagedExit::default(); EXIT_STAGE_SLOTS],
        })
    }

    /// Plays the kernel's side: writes the slot, then counts it.
    fn publish(stage: &mut ExitStage, tgid: u32) {
        let room = stage.head - stage.taken < EXIT_STAGE_SLOTS as u64;
        assert!(
            room,
            "the kernel would send this exit through the ring buffer"
        );
        stage.slots[stage.head as usize % EXIT_STAGE_SLOTS] = StagedExit {
            mono_ns: u64::from(tgid) * 10,
            facts: ExitFacts {
                tgid,
                ..ExitFacts::default()
            },
        };
        stage.head += 1;
    }

    fn take(stage: &mut ExitStage, cpu: u32) -> Vec<ProcessExitRecord> {
        let mut taken = Vec::new();
        // SAFETY: a live stage this test owns.
        unsafe { take_from(stage, cpu, &mut taken) };
        taken
    }

    #[test]
    fn each_exit_is_taken_once_in_order_as_a_whole_record_of_its_cpu() {
        let mut stage = empty_stage();
        // Around the ring of slots more than once, in batches of uneven sizes.
        let mut next = 1;
        let mut seen = Vec::new();
        for batch in [3, EXIT_STAGE_SLOTS, 0, 1, EXIT_STAGE_SLOTS - 1, 17] {
            for _ in 0..batch {
                publish(&mut stage, next);
                next += 1;
            }
            let taken = take(&mut stage, 1);
            assert_eq!(taken.len(), batch);
            assert_eq!(stage.taken, stage.head, "every slot given back");
            seen.extend(taken);
        }
        let tgids: Vec<u32> = seen.iter().map(|record| record.facts.tgid).collect();
        assert_eq!(tgids, (1..next).collect::<Vec<_>>());
        let record = seen[4];
        assert_eq!(record.header.kind, observer_common::kind::PROCESS_EXIT);
        assert_eq!((record.header.cpu, record.header.mono_ns), (1, 50));
        assert_eq!(record.child_count, 0);
    }

    #[test]
    fn a_count_beyond_the_stage_reads_each_slot_at_most_once() {
        let mut stage = empty_stage();
        stage.head = 3 * EXIT_STAGE_SLOTS as u64;
        let taken = take(&mut stage, 0);
        assert_eq!(taken.len(), EXIT_STAGE_SLOTS);
        assert_eq!(stage.taken, stage.head);
    }
}
