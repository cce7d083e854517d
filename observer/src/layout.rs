//! What the kernel programs need to know about this kernel: tracepoint field offsets
//! (tracefs `format` files) and struct member offsets (vmlinux BTF).
use std::path::Path;

use anyhow::Result;
use observer_common::{
    ExitGroupLayout, FIELD_ABSENT, ProcessExitLayout, SignalDeliverLayout, SignalGenerateLayout,
    TaskLayout, TgkillLayout,
};

use crate::{btf::Btf, tracefs};

pub struct KernelLayout {
    pub signal_generate: SignalGenerateLayout,
    pub signal_deliver: SignalDeliverLayout,
    pub process_exit: ProcessExitLayout,
    /// None when syscall tracepoints are missing (CONFIG_FTRACE_SYSCALLS=n).
    pub tgkill: Option<TgkillLayout>,
    pub exit_group: Option<ExitGroupLayout>,
    pub task: TaskLayout,
    /// Why BTF offsets are unknown, when they are.
    pub btf_problem: Option<String>,
}

impl KernelLayout {
    pub fn read(events: &Path, btf_path: &Path) -> Result<Self> {
        let format = tracefs::read_format(events, "signal", "signal_generate")?;
        let tp = "signal:signal_generate";
        let signal_generate = SignalGenerateLayout {
            sig: format.offset(tp, "sig", &[4])?,
            code: format.offset(tp, "code", &[4])?,
            comm: format.offset(tp, "comm", &[16])?,
            pid: format.offset(tp, "pid", &[4])?,
            group: format.offset(tp, "group", &[4])?,
            result: format.offset(tp, "result", &[4])?,
        };
        let format = tracefs::read_format(events, "signal", "signal_deliver")?;
        let tp = "signal:signal_deliver";
        let signal_deliver = SignalDeliverLayout {
            sig: format.offset(tp, "sig", &[4])?,
            code: format.offset(tp, "code", &[4])?,
            sa_handler: format.offset(tp, "sa_handler", &[8])?,
            sa_flags: format.offset(tp, "sa_flags", &[8])?,
        };
        let format = tracefs::read_format(events, "sched", "sched_process_exit")?;
        let process_exit = ProcessExitLayout {
            group_dead: format.optional_offset("group_dead").unwrap_or(FIELD_ABSENT),
        };
        let tgkill = tracefs::read_format(events, "syscalls", "sys_enter_tgkill")
            .and_then(|format| {
                let tp = "syscalls:sys_enter_tgkill";
                Ok(TgkillLayout {
                    tgid: format.offset(tp, "tgid", &[8])?,
                    pid: format.offset(tp, "pid", &[8])?,
                    sig: format.offset(tp, "sig", &[8])?,
                })
            })
            .ok();
        let exit_group = tracefs::read_format(events, "syscalls", "sys_enter_exit_group")
            .and_then(|format| {
                let tp = "syscalls:sys_enter_exit_group";
                Ok(ExitGroupLayout {
                    error_code: format.offset(tp, "error_code", &[8])?,
                })
            })
            .ok();
        let (task, btf_problem) = match Btf::from_file(btf_path).and_then(|btf| task_layout(&btf)) {
            Ok(task) => (task, None),
            Err(error) => (TaskLayout::default(), Some(format!("{error:#}"))),
        };
        Ok(Self {
            signal_generate,
            signal_deliver,
            process_exit,
            tgkill,
            exit_group,
            task,
            btf_problem,
        })
    }
}

fn task_layout(btf: &Btf) -> Result<TaskLayout> {
    let task = |member| btf.member_offset("task_struct", member);
    let signal = |member| btf.member_offset("signal_struct", member);
    Ok(TaskLayout {
        known: 1,
        task_exit_code: task("exit_code")?,
        task_tgid: task("tgid")?,
        task_comm: task("comm")?,
        task_start_time: task("start_time")?,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_signal: task("signal")?,
        signal_flags: signal("flags")?,
        signal_group_exit_code: signal("group_exit_code")?,
        signal_live: signal("live")?,
        _pad: 0,
    })
}
