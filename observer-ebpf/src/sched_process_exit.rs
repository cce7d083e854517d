//! `sched:sched_process_exit`: a thread is exiting; fires in the exiting thread's context,
//! after do_exit() stored `task->exit_code`. Only the last thread of a group (the whole
//! process) is reported.
//!
//! Tracepoint record on 6.18:
//! ```text
//! char comm[16]; pid_t pid; int prio; bool group_dead;
//! ```
//! (`group_dead` is missing on older kernels.)
//!
//! The status is computed as wait_task_zombie() does for the parent's waitpid():
//! `signal->flags & SIGNAL_GROUP_EXIT ? signal->group_exit_code : leader->exit_code`.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_common::{
    COMM_LEN, FIELD_ABSENT, ProcessExitRecord, SIGNAL_GROUP_EXIT, TaskLayout, exit_flags, kind,
};

use crate::{
    emit::{header, submit, submit_now},
    globals::{PROCESS_EXIT_LAYOUT, SETTINGS},
    scope, shutting, task,
};

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_process_exit(&ctx);
    0
}

fn try_process_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    let task_layout = task::layout();
    if !is_group_dead(ctx, tgid, tid, task_layout)? {
        return Some(());
    }
    shutting::forget(tgid);
    if scope::current_out_of_scope() {
        return Some(());
    }
    let mut record = ProcessExitRecord {
        header: header(kind::PROCESS_EXIT),
        tgid,
        tid,
        // SAFETY: no arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        ..Default::default()
    };
    match task_layout {
        Some(layout) => read_status(&mut record, layout),
        None => record.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
    // In a scoped run, the exits that get here come from the scope or from a cgroup
    // userspace has not seen yet, which it rescans for and shuts out in the kernel: it
    // should hear of those at once. Scoped runs send few records, so waking costs little.
    if SETTINGS.load().scope_filtered != 0 {
        submit_now(record);
    } else {
        submit(record);
    }
    Some(())
}

/// Whether the current thread is the last of its group to exit.
fn is_group_dead(
    ctx: &TracePointContext,
    tgid: u32,
    tid: u32,
    task_layout: Option<TaskLayout>,
) -> Option<bool> {
    let offset = PROCESS_EXIT_LAYOUT.load().group_dead;
    if offset != FIELD_ABSENT {
        // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
        let group_dead: u8 = unsafe { ctx.read_at(offset as usize).ok()? };
        return Some(group_dead != 0);
    }
    // Older kernels: `signal->live` reached 0 in do_exit() before the tracepoint. Two
    // threads exiting at once may both see 0; userspace drops the duplicate by identity.
    Some(match task_layout {
        Some(layout) => {
            let signal = task::read::<u64>(task::current(), layout.task_signal).unwrap_or(0);
            task::read::<i32>(signal, layout.signal_live) == Some(0)
        }
        None => tid == tgid,
    })
}

fn read_status(record: &mut ProcessExitRecord, layout: TaskLayout) {
    let current = task::current();
    let leader = task::read::<u64>(current, layout.task_group_leader).unwrap_or(current);
    let signal = task::read::<u64>(current, layout.task_signal).unwrap_or(0);
    let Some(signal_flags) = task::read::<u32>(signal, layout.signal_flags) else {
        return;
    };
    let status = if signal_flags & SIGNAL_GROUP_EXIT != 0 {
        task::read::<i32>(signal, layout.signal_group_exit_code)
    } else {
        task::read::<i32>(leader, layout.task_exit_code)
    };
    if let Some(status) = status {
        record.wait_status = status as u32;
        record.flags |= exit_flags::WAIT_STATUS_EXACT;
    }
    let parent = task::read::<u64>(leader, layout.task_real_parent).unwrap_or(0);
    if let (Some(ppid), Some(start_time)) = (
        task::read::<u32>(parent, layout.task_tgid),
        task::read::<u64>(leader, layout.task_start_time),
    ) {
        record.ppid = ppid;
        record.start_time_ns = start_time;
        record.flags |= exit_flags::PARENT_KNOWN;
    }
    record.comm = task::read::<[u8; COMM_LEN]>(leader, layout.task_comm)
        .unwrap_or_else(|| bpf_get_current_comm().unwrap_or([0; COMM_LEN]));
    read_children(record, current, layout);
}

/// The exiting task's children, before exit_notify() reparents them (so that a child a
/// dying wrapper never signalled can still be tied to it). At group_dead the last thread
/// holds every child of the group: find_new_reaper() moved the others' to it.
/// `children` is a list_head of the children's `sibling` list_heads. At most
/// EXIT_CHILDREN are read: a longer walk costs the verifier more than it is worth.
fn read_children(record: &mut ProcessExitRecord, task: u64, layout: TaskLayout) {
    let head = task + layout.task_children as u64;
    let mut node = task::read::<u64>(head, 0).unwrap_or(head);
    let mut count = 0u32;
    for slot in record.children.iter_mut() {
        if node == head || node == 0 {
            break;
        }
        let child = node - layout.task_sibling as u64;
        *slot = task::read::<u32>(child, layout.task_tgid).unwrap_or(0);
        count += 1;
        node = task::read::<u64>(node, 0).unwrap_or(head);
    }
    record.child_count = count;
}
