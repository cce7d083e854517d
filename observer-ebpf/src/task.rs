//! Reads from `struct task_struct` and `struct signal_struct` at offsets from vmlinux BTF
//! (TASK_LAYOUT), two ways, neither of which can fault:
//! - `read`: bpf_probe_read_kernel, from any address (a wrong one fails the read).
//! - `load`: a plain load through a pointer the verifier has typed from BTF, which checks
//!   the offset against that struct when the program loads. No helper call: the hot
//!   paths use it, when the running kernel has BTF of its own (`typed`).
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
    bpf_probe_read_kernel,
};
use observer_common::{COMM_LEN, TaskLayout};

use crate::globals::{TASK_LAYOUT, field};

pub fn layout() -> Option<TaskLayout> {
    let layout = TASK_LAYOUT.load();
    (layout.known != 0).then_some(layout)
}

pub fn current() -> u64 {
    // SAFETY: no arguments; returns the current task_struct's address.
    unsafe { bpf_get_current_task() }
}

/// Whether the offsets are the running kernel's own BTF, so that `current_typed` and
/// `load` may be used. A load-time constant: the verifier never walks the other branch.
#[inline(always)]
pub fn typed() -> bool {
    field!(TASK_LAYOUT.typed) != 0
}

/// The current task as a BTF-typed pointer, for `load`.
#[inline(always)]
pub fn current_typed() -> u64 {
    // SAFETY: no arguments; returns the current task_struct, typed for the verifier.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// Loads a `T` at `base + offset` through a BTF-typed pointer (`current_typed()`, a
/// `tp_btf` argument, or a pointer member loaded through one), without a helper call.
/// The offset is a `.rodata` constant, so the verifier checks `offset..offset+size`
/// against the struct's BTF at load time, and the JIT emits a plain load whose fault
/// (a bad pointer) reads zero.
///
/// # Safety
/// `base` must be such a pointer, or the program is refused at load time.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: u64, offset: u32) -> T {
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

/// Reads a `T` at `base + offset` in kernel memory.
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address and reports failure.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The current task's parent (`real_parent`): its tgid and its thread group leader's
/// comm; zeros without the task layout. Helper reads: it runs per reported signal only.
#[inline(always)]
pub fn current_parent() -> (u32, [u8; COMM_LEN]) {
    let Some(layout) = layout() else {
        return (0, [0; COMM_LEN]);
    };
    let Some(parent) = read::<u64>(current(), layout.task_real_parent) else {
        return (0, [0; COMM_LEN]);
    };
    let tgid = read::<u32>(parent, layout.task_tgid).unwrap_or(0);
    let comm = read::<u64>(parent, layout.task_group_leader)
        .and_then(|leader| read::<[u8; COMM_LEN]>(leader, layout.task_comm))
        .unwrap_or([0; COMM_LEN]);
    (tgid, comm)
}

/// The current process: its tgid, and the comm of its thread group's leader (what `ps`
/// shows). With the kernel's BTF, one helper call and plain loads; with offsets from a
/// BTF file, the leader's comm through helper reads; without BTF, the current thread's
/// comm. Runs on every
/// connect(), so it reads the three offsets it needs, not the layout. Inlined: as a
/// bpf-to-bpf call, the helper-read branch returned with r0 still pointing at its own
/// stack, which the verifier refuses ("cannot return stack pointer to the caller").
#[inline(always)]
pub fn current_process() -> (u32, [u8; COMM_LEN]) {
    let (leader_offset, comm_offset) = (
        field!(TASK_LAYOUT.task_group_leader),
        field!(TASK_LAYOUT.task_comm),
    );
    // Set only with a known layout.
    if typed() {
        let task = current_typed();
        let tgid_offset = field!(TASK_LAYOUT.task_tgid);
        // SAFETY: typed pointers; a task's group_leader is never null.
        unsafe {
            let leader: u64 = load(task, leader_offset);
            let halves: [u64; 2] = [load(leader, comm_offset), load(leader, comm_offset + 8)];
            // Two u64s are sixteen bytes.
            let comm = core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>(halves);
            return (load(task, tgid_offset), comm);
        }
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if field!(TASK_LAYOUT.known) != 0
        && let Some(leader) = read::<u64>(current(), leader_offset)
        && let Some(comm) = read::<[u8; COMM_LEN]>(leader, comm_offset)
    {
        return (tgid, comm);
    }
    (tgid, bpf_get_current_comm().unwrap_or([0; COMM_LEN]))
}
