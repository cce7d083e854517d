//! `signal_generate`: a signal was generated for a task. Runs in the sender's context (or
//! in whatever context the kernel generated it from, e.g. a timer). Fires for every
//! signal on the host, so the signal number is checked first.
//!
//! Two attachments, one logic (`on_generate`):
//! - `signal_generate`, a raw tracepoint: `TP_PROTO(int sig, struct kernel_siginfo *info,
//!   struct task_struct *task, int group, int result)`. The target task itself gives its
//!   exact thread group and whether it is a namespace's init; needs BTF offsets.
//! - `signal_gen_tp`, the classic tracepoint, for kernels without BTF. Record on 6.18
//!   (offsets come from the `format` file, never from here):
//!   ```text
//!   int sig; int errno; int code; char comm[16]; pid_t pid; int group; int result;
//!   ```
//!   `pid` and `comm` are the target *thread's*; its thread group is known only when a
//!   thread signals itself, else userspace resolves it from /proc.
//!
//! `group` is 1 for kill(), 0 for tgkill().
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use observer_common::{
    COMM_LEN, SI_KERNEL, SI_USER, SIG_DFL, SIG_IGN, SIGNAL_UNKILLABLE, SignalGenerateLayout,
    SignalGenerateRecord, TaskLayout, kind, signal_bit, target_flags,
};

use crate::{
    emit::{header, submit_now},
    globals::{SETTINGS, SIGNAL_GENERATE_LAYOUT, field},
    shutting, task,
};

/// The signal's target as one attachment sees it.
struct Target {
    tid: u32,
    /// 0 when unknown.
    tgid: u32,
    comm: [u8; COMM_LEN],
    flags: u32,
    /// Its cgroup v2 id; 0 when unknown.
    cgroup_id: u64,
}

/// What one `signal_generate` call offers, however the program is attached.
trait Generation {
    fn sig(&self) -> Option<i32>;
    fn si_code(&self) -> Option<i32>;
    fn group(&self) -> Option<i32>;
    fn result(&self) -> Option<i32>;
    fn target(&self) -> Option<Target>;
}

struct RawArgs<'a> {
    ctx: &'a RawTracePointContext,
    task: TaskLayout,
}

/// `SEND_SIG_NOINFO` and `SEND_SIG_PRIV`: `info` values that are markers, not pointers
/// (include/linux/sched/signal.h). The tracepoint stores SI_USER and SI_KERNEL for them.
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;

impl Generation for RawArgs<'_> {
    #[inline(always)]
    fn sig(&self) -> Option<i32> {
        Some(self.ctx.arg(0))
    }
    #[inline(always)]
    fn si_code(&self) -> Option<i32> {
        match self.ctx.arg::<u64>(1) {
            SEND_SIG_NOINFO => Some(SI_USER),
            SEND_SIG_PRIV => Some(SI_KERNEL),
            info => task::read(info, self.task.siginfo_code),
        }
    }
    #[inline(always)]
    fn group(&self) -> Option<i32> {
        Some(self.ctx.arg(3))
    }
    #[inline(always)]
    fn result(&self) -> Option<i32> {
        Some(self.ctx.arg(4))
    }
    #[inline(always)]
    fn target(&self) -> Option<Target> {
        let target: u64 = self.ctx.arg(2);
        let signal = task::read::<u64>(target, self.task.task_signal)?;
        let unkillable = task::read::<u32>(signal, self.task.signal_flags)
            .is_some_and(|flags| flags & SIGNAL_UNKILLABLE != 0);
        Some(Target {
            tid: task::read(target, self.task.task_pid)?,
            tgid: task::read(target, self.task.task_tgid)?,
            comm: task::read(target, self.task.task_comm)?,
            cgroup_id: self.cgroup_id(target),
            flags: target_flags::TASK_READ
                | if unkillable {
                    target_flags::NAMESPACE_INIT
                } else {
                    0
                },
        })
    }
}

impl RawArgs<'_> {
    /// `task->cgroups->dfl_cgrp->kn->id`: the target's cgroup v2 id, read here because
    /// a target that the signal ends is often gone before userspace reads /proc.
    #[inline(always)]
    fn cgroup_id(&self, target: u64) -> u64 {
        if self.task.task_cgroups == 0 {
            return 0;
        }
        task::read::<u64>(target, self.task.task_cgroups)
            .and_then(|css_set| task::read::<u64>(css_set, self.task.css_set_dfl_cgrp))
            .and_then(|cgroup| task::read::<u64>(cgroup, self.task.cgroup_kn))
            .and_then(|kn| task::read::<u64>(kn, self.task.kernfs_node_id))
            .unwrap_or(0)
    }

    /// The target's disposition for `sig` and whether it blocks it, as
    /// [`target_flags`] bits: read at generation, because a signal the kernel drops
    /// (SIG_IGN, a namespace init without a handler) is never delivered, and one taken
    /// by signalfd or sigwaitinfo() never reaches `signal_deliver`. `sig` is 1..=64
    /// (checked by the caller against the signal masks).
    #[inline(always)]
    fn disposition(&self, sig: i32) -> u32 {
        let target: u64 = self.ctx.arg(2);
        let index = (sig as u32).wrapping_sub(1) & 63;
        let Some(sighand) = task::read::<u64>(target, self.task.task_sighand) else {
            return 0;
        };
        let action = self.task.sighand_action + index * self.task.k_sigaction_size;
        let Some(handler) = task::read::<u64>(sighand, action + self.task.k_sigaction_handler)
        else {
            return 0;
        };
        let mut flags = target_flags::DISPOSITION_READ
            | match handler {
                SIG_DFL => 0,
                SIG_IGN => target_flags::HANDLER_IGNORE,
                _ => target_flags::HANDLER_CUSTOM,
            };
        let bit = 1u64 << index;
        let blocked = task::read::<u64>(target, self.task.task_blocked).unwrap_or(0)
            | task::read::<u64>(target, self.task.task_real_blocked).unwrap_or(0);
        if blocked & bit != 0 {
            flags |= target_flags::BLOCKED;
        }
        flags
    }
}

struct ClassicRecord<'a> {
    ctx: &'a TracePointContext,
    layout: SignalGenerateLayout,
}

impl ClassicRecord<'_> {
    #[inline(always)]
    fn field<T>(&self, offset: u32) -> Option<T> {
        // SAFETY: offsets from this kernel's format file; read_at uses
        // bpf_probe_read_kernel, which fails cleanly on a bad address.
        unsafe { self.ctx.read_at(offset as usize) }.ok()
    }
}

impl Generation for ClassicRecord<'_> {
    #[inline(always)]
    fn sig(&self) -> Option<i32> {
        self.field(self.layout.sig)
    }
    #[inline(always)]
    fn si_code(&self) -> Option<i32> {
        self.field(self.layout.code)
    }
    #[inline(always)]
    fn group(&self) -> Option<i32> {
        self.field(self.layout.group)
    }
    #[inline(always)]
    fn result(&self) -> Option<i32> {
        self.field(self.layout.result)
    }
    #[inline(always)]
    fn target(&self) -> Option<Target> {
        let tid: u32 = self.field(self.layout.pid)?;
        let pid_tgid = bpf_get_current_pid_tgid();
        // A thread signalling itself (raise, faults) is in the sender's group.
        let tgid = if tid == pid_tgid as u32 {
            (pid_tgid >> 32) as u32
        } else {
            0
        };
        Some(Target {
            tid,
            tgid,
            comm: self.field(self.layout.comm)?,
            flags: 0,
            cgroup_id: 0,
        })
    }
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> u32 {
    // Most signals (SIGCHLD) are in no mask: checked before the layout is copied.
    // Attached only when BTF gave the task layout.
    if wanted(ctx.arg(0))
        && let Some(task) = task::layout()
    {
        let args = RawArgs { ctx: &ctx, task };
        on_generate(&args, |sig| args.disposition(sig));
    }
    0
}

#[tracepoint]
pub fn signal_gen_tp(ctx: TracePointContext) -> u32 {
    let offset = field!(SIGNAL_GENERATE_LAYOUT.sig) as usize;
    // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
    let sig = unsafe { ctx.read_at::<i32>(offset) };
    if !sig.is_ok_and(wanted) {
        return 0;
    }
    // The classic record names the target thread only by pid: no disposition.
    on_generate(
        &ClassicRecord {
            ctx: &ctx,
            layout: SIGNAL_GENERATE_LAYOUT.load(),
        },
        |_| 0,
    );
    0
}

/// Whether `sig` is reported or terminating: three `.rodata` fields, no copy.
#[inline(always)]
fn wanted(sig: i32) -> bool {
    (field!(SETTINGS.signal_mask)
        | field!(SETTINGS.fatal_default_mask)
        | field!(SETTINGS.termination_mask))
        & signal_bit(sig)
        != 0
}

/// `disposition` gives extra [`target_flags`] for a reported signal.
#[inline(always)]
fn on_generate(generation: &impl Generation, disposition: impl Fn(i32) -> u32) -> Option<()> {
    let sig = generation.sig()?;
    let bit = signal_bit(sig);
    let reported = (field!(SETTINGS.signal_mask) | field!(SETTINGS.fatal_default_mask)) & bit != 0;
    let terminating = field!(SETTINGS.termination_mask) & bit != 0;
    if !reported && !terminating {
        return None;
    }
    let target = generation.target()?;
    let result = generation.result()?;
    if result == 0 && terminating {
        // kill() names a process by its leader's id, so an unresolved target is its tgid.
        shutting::mark(if target.tgid != 0 {
            target.tgid
        } else {
            target.tid
        });
    }
    if !reported {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (sender_ppid, sender_parent_comm) = task::current_parent();
    submit_now(SignalGenerateRecord {
        header: header(kind::SIGNAL_GENERATE),
        sig,
        si_code: generation.si_code()?,
        result,
        group: generation.group()? as u32,
        target_tid: target.tid,
        target_tgid: target.tgid,
        sender_tgid: (pid_tgid >> 32) as u32,
        sender_tid: pid_tgid as u32,
        target_comm: target.comm,
        sender_comm: task::current_process().1,
        target_flags: target.flags | disposition(sig),
        sender_ppid,
        target_cgroup_id: target.cgroup_id,
        sender_parent_comm,
    });
    Some(())
}
