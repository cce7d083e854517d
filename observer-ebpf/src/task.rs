//! Reads from `struct task_struct` and `struct signal_struct` at offsets from vmlinux BTF
//! (TASK_LAYOUT). Every read goes through bpf_probe_read_kernel, so a wrong offset can
//! only yield a wrong value, never a fault.
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
};
use observer_common::{COMM_LEN, TaskLayout};

use crate::globals::TASK_LAYOUT;

pub fn layout() -> Option<TaskLayout> {
    let layout = TASK_LAYOUT.load();
    (layout.known != 0).then_some(layout)
}

pub fn current() -> u64 {
    // SAFETY: no arguments; returns the current task_struct's address.
    unsafe { bpf_get_current_task() }
}

/// Reads a `T` at `base + offset` in kernel memory.
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address and reports failure.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The comm of the current thread group's leader (what `ps` shows for the process),
/// falling back to the current thread's comm. When the current thread is the leader
/// (single-threaded servers, main threads) its own comm is that, one helper call.
pub fn current_process_comm() -> [u8; COMM_LEN] {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32
        && let Some(layout) = layout()
    {
        let leader = read::<u64>(current(), layout.task_group_leader).unwrap_or(0);
        if let Some(comm) = read::<[u8; COMM_LEN]>(leader, layout.task_comm) {
            return comm;
        }
    }
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}
