//! `sched_process_exit`: a thread is exiting; fires in the exiting thread's context,
//! after do_exit() stored `task->exit_code`. Only the last thread of a group (the whole
//! process) is reported; every other thread returns at once.
//!
//! Two attachments, one logic (`on_exit`):
//! - `process_exit`, a BTF-typed raw tracepoint (`tp_btf`): `TP_PROTO(struct task_struct
//!   *p, bool group_dead)` on 6.16+, `TP_PROTO(struct task_struct *p)` before. The kernel
//!   builds no record, and `p` (the exiting task) is typed for the verifier, so its
//!   members, its leader's, its parent's and its `signal_struct`'s are plain loads at BTF
//!   offsets (`.rodata` constants, checked at load time). Needs the kernel's own BTF.
//! - `process_exit_tp`, the classic tracepoint, without it. Record on 6.18:
//!   ```text
//!   char comm[16]; pid_t pid; int prio; bool group_dead;
//!   ```
//!   (`group_dead` is missing on older kernels), and helper reads at offsets from a BTF
//!   file when there is one.
//!
//! Whether the second argument exists is the format file's `group_dead`: the kernel added
//! both in one change. Without it, the group is dead when `signal->live` reached 0 in
//! do_exit() before the tracepoint; two threads exiting at once may both see 0, and
//! userspace drops the duplicate by identity.
//!
//! The status is computed as wait_task_zombie() does for the parent's waitpid():
//! `signal->flags & SIGNAL_GROUP_EXIT ? signal->group_exit_code : leader->exit_code`.
use core::mem::offset_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{
    COMM_LEN, ExitFacts, FIELD_ABSENT, ProcessExitRecord, SIGNAL_GROUP_EXIT, StagedExit,
    exit_flags, kind,
};

use crate::{
    emit::{self, header, submit, submit_now},
    exit_stage,
    globals::{PROCESS_EXIT_LAYOUT, SETTINGS, TASK_LAYOUT, field},
    scope, shutting, task,
};

/// How one attachment reads `task_struct` and `signal_struct` members: plain loads
/// through typed pointers, or helper reads.
trait Members {
    /// A `T` at `base + offset`; `None` when a helper read fails.
    fn get<T: Copy>(&self, base: u64, offset: u32) -> Option<T>;
}

/// Plain loads: `base` is `p` or a pointer member loaded through it.
struct Loads;

impl Members for Loads {
    #[inline(always)]
    fn get<T: Copy>(&self, base: u64, offset: u32) -> Option<T> {
        // SAFETY: typed pointers (the tracepoint's `p` and members loaded through it).
        Some(unsafe { task::load(base, offset) })
    }
}

/// bpf_probe_read_kernel, from any address.
struct HelperReads;

impl Members for HelperReads {
    #[inline(always)]
    fn get<T: Copy>(&self, base: u64, offset: u32) -> Option<T> {
        task::read(base, offset)
    }
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(ctx: BtfTracePointContext) -> u32 {
    // Attached only with the kernel's own BTF, which the check lets the verifier see.
    if !task::typed() {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let group_dead = if field!(PROCESS_EXIT_LAYOUT.group_dead) != FIELD_ABSENT {
        // 6.16+: `bool group_dead`, the second argument (a load-time constant branch: the
        // verifier never sees this access on kernels whose tracepoint has one argument).
        ctx.arg::<u64>(1) as u8 != 0
    } else {
        signal_live_is_zero(&Loads, task)
    };
    if group_dead {
        let (tgid_offset, pid_offset) =
            (field!(TASK_LAYOUT.task_tgid), field!(TASK_LAYOUT.task_pid));
        // SAFETY: a typed pointer.
        let (tgid, tid) = unsafe {
            (
                task::load::<u32>(task, tgid_offset),
                task::load::<u32>(task, pid_offset),
            )
        };
        let _ = on_exit(&Loads, task, tgid, tid);
    }
    0
}

#[tracepoint]
pub fn process_exit_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let known = field!(TASK_LAYOUT.known) != 0;
    let offset = field!(PROCESS_EXIT_LAYOUT.group_dead);
    let group_dead = if offset != FIELD_ABSENT {
        // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
        unsafe { ctx.read_at::<u8>(offset as usize) }.is_ok_and(|dead| dead != 0)
    } else if known {
        signal_live_is_zero(&HelperReads, task::current())
    } else {
        tid == tgid
    };
    if !group_dead {
        return 0;
    }
    if known {
        let _ = on_exit(&HelperReads, task::current(), tgid, tid);
    } else {
        // No offsets: the current thread's comm, and no status.
        report(ProcessExitRecord {
            header: header(kind::PROCESS_EXIT),
            facts: ExitFacts {
                tgid,
                tid,
                // SAFETY: no arguments.
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    0
}

#[inline(always)]
fn signal_live_is_zero(members: &impl Members, task: u64) -> bool {
    members
        .get::<u64>(task, field!(TASK_LAYOUT.task_signal))
        .and_then(|signal| members.get::<i32>(signal, field!(TASK_LAYOUT.signal_live)))
        == Some(0)
}

/// The last thread of `tgid` exits: `task` is it, read through `members`.
#[inline(always)]
fn on_exit(members: &impl Members, task: u64, tgid: u32, tid: u32) -> Option<()> {
    // Only a process some termination signal reached is in the map: most exits skip
    // the delete (a locked LRU operation) for a lookup.
    let shutting = shutting::is_shutting_down(tgid);
    if shutting {
        shutting::forget(tgid);
    }
    if scope::current_out_of_scope() {
        return Some(());
    }
    let leader = members
        .get::<u64>(task, field!(TASK_LAYOUT.task_group_leader))
        .unwrap_or(task);
    let signal = members.get::<u64>(task, field!(TASK_LAYOUT.task_signal))?;
    let status = wait_status(members, signal, leader);
    let parent = parent_and_start(members, leader);
    let mut flags = 0;
    if status.is_some() {
        flags |= exit_flags::WAIT_STATUS_EXACT;
    }
    if parent.is_some() {
        flags |= exit_flags::PARENT_KNOWN;
    }
    let (ppid, start_time_ns) = parent.unwrap_or((0, 0));
    let facts = ExitFacts {
        tgid,
        tid,
        ppid,
        wait_status: status.unwrap_or(0),
        flags,
        _pad: 0,
        // SAFETY: no arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        start_time_ns,
        comm: leader_comm(members, leader),
    };
    // The children serve the correlation of a stop (a wrapper that never forwarded the
    // signal to them, a pre-fork server's workers): only for processes that got a
    // termination signal, or that a signal ended. Those exits, and those of a scoped run
    // (which wakes userspace), take the ring buffer; the rest this CPU's stage.
    let with_children = shutting || status.is_some_and(|status| status & 0x7f != 0);
    if !with_children
        && !wakes_at_once()
        && let Some(mut slot) = exit_stage::take_slot()
    {
        slot.write(stamped(facts));
        slot.publish();
        return Some(());
    }
    let exit = stamped(facts);
    let mut entry = emit::reserve::<ProcessExitRecord>()?;
    let record = entry.as_mut_ptr();
    // SAFETY: the entry is this program's until sent; every byte is written here.
    unsafe {
        write_whole(record, &exit);
        if with_children {
            read_children(&mut *record, task);
        }
    }
    emit::send(entry, wakes_at_once());
    Some(())
}

/// `facts` with the time, read after every load the facts need and before any store
/// (only a ring record's children walk reads after it).
/// bpf_ktime_get_ns() reads the TSC after an `lfence` (rdtsc_ordered()), which waits
/// for every load before it: the first such wait on this tracepoint absorbs what the
/// exit path still has in flight, about 300 ns in an exit storm on a 2-core VM (an
/// empty program calling it alone, beside one that does not; on sys_enter it costs 40).
/// Read last, the wait covers this program's own loads too instead of adding to them.
#[inline(always)]
fn stamped(facts: ExitFacts) -> StagedExit {
    StagedExit {
        // SAFETY: no arguments.
        mono_ns: unsafe { bpf_ktime_get_ns() },
        facts,
    }
}

/// Writes `exit` as a whole record at `record`, with no children, part by part:
/// `..Default::default()` or a zeroed array becomes a byte-by-byte memset subprogram
/// (80 iterations), and a record built on the stack a 112-byte copy.
///
/// # Safety
/// `record` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn write_whole(record: *mut ProcessExitRecord, exit: &StagedExit) {
    // SAFETY: as the caller promises.
    unsafe {
        (&raw mut (*record).header).write(emit::header_at(kind::PROCESS_EXIT, exit.mono_ns));
        (&raw mut (*record).facts).write(exit.facts);
        zero_children(record);
    }
}

/// Zeroes `children`, `child_count` and the padding after them: five u64 stores (40
/// bytes at offset 72), volatile so that LLVM does not merge them back into a memset.
///
/// # Safety
/// `record` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn zero_children(record: *mut ProcessExitRecord) {
    const WORDS: usize =
        (size_of::<ProcessExitRecord>() - offset_of!(ProcessExitRecord, children)) / 8;
    const _: () = assert!(offset_of!(ProcessExitRecord, children) % 8 == 0 && WORDS == 5);
    // SAFETY: within the record, aligned (asserted above).
    unsafe {
        let words = (&raw mut (*record).children).cast::<u64>();
        for word in 0..WORDS {
            core::ptr::write_volatile(words.add(word), 0);
        }
    }
}

/// What the parent's waitpid() will see, as wait_task_zombie() computes it.
#[inline(always)]
fn wait_status(members: &impl Members, signal: u64, leader: u64) -> Option<u32> {
    let signal_flags = members.get::<u32>(signal, field!(TASK_LAYOUT.signal_flags))?;
    let status = if signal_flags & SIGNAL_GROUP_EXIT != 0 {
        members.get::<i32>(signal, field!(TASK_LAYOUT.signal_group_exit_code))
    } else {
        members.get::<i32>(leader, field!(TASK_LAYOUT.task_exit_code))
    };
    status.map(|status| status as u32)
}

/// The parent's tgid and the leader's start time (with the tgid, an identity that
/// survives pid reuse).
#[inline(always)]
fn parent_and_start(members: &impl Members, leader: u64) -> Option<(u32, u64)> {
    let parent = members.get::<u64>(leader, field!(TASK_LAYOUT.task_real_parent))?;
    Some((
        members.get::<u32>(parent, field!(TASK_LAYOUT.task_tgid))?,
        members.get::<u64>(leader, field!(TASK_LAYOUT.task_start_time))?,
    ))
}

/// The leader's comm (what `ps` shows), or the exiting thread's.
#[inline(always)]
fn leader_comm(members: &impl Members, leader: u64) -> [u8; COMM_LEN] {
    let comm_offset = field!(TASK_LAYOUT.task_comm);
    // Two u64s are sixteen bytes: as loads, two instructions.
    match (
        members.get::<u64>(leader, comm_offset),
        members.get::<u64>(leader, comm_offset + 8),
    ) {
        // SAFETY: [u64; 2] and [u8; 16] have the same size.
        (Some(low), Some(high)) => unsafe {
            core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>([low, high])
        },
        _ => bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

/// In a scoped run, the exits that get here come from the scope or from a cgroup
/// userspace has not seen yet, which it rescans for and shuts out in the kernel: it
/// should hear of those at once. Scoped runs send few records, so waking costs little.
#[inline(always)]
fn wakes_at_once() -> bool {
    field!(SETTINGS.scope_filtered) != 0
}

#[inline(always)]
fn report(record: ProcessExitRecord) {
    if wakes_at_once() {
        submit_now(record);
    } else {
        submit(record);
    }
}

/// The exiting task's children, before exit_notify() reparents them (so that a child a
/// dying wrapper never signalled can still be tied to it). At group_dead the last thread
/// holds every child of the group: find_new_reaper() moved the others' to it.
/// `children` is a list_head of the children's `sibling` list_heads, walked with helper
/// reads (a `list_head` pointer minus an offset is no typed pointer). At most
/// EXIT_CHILDREN are read: a longer walk costs the verifier more than it is worth.
fn read_children(record: &mut ProcessExitRecord, task: u64) {
    let (children, sibling, tgid) = (
        field!(TASK_LAYOUT.task_children),
        field!(TASK_LAYOUT.task_sibling),
        field!(TASK_LAYOUT.task_tgid),
    );
    let head = task + children as u64;
    let mut node = task::read::<u64>(head, 0).unwrap_or(head);
    let mut count = 0u32;
    for slot in record.children.iter_mut() {
        if node == head || node == 0 {
            break;
        }
        let child = node - sibling as u64;
        *slot = task::read::<u32>(child, tgid).unwrap_or(0);
        count += 1;
        node = task::read::<u64>(node, 0).unwrap_or(head);
    }
    record.child_count = count;
}
