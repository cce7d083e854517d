//! `syscalls:sys_enter_exit_group`: the code a process asked to exit with. Attached only
//! when BTF is missing, so that userspace can infer exit statuses it cannot read.
//!
//! Tracepoint record: `int __syscall_nr; int error_code;` (the argument is a long).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use observer_common::{ExitGroupCallRecord, kind};

use crate::{
    emit::{header, submit},
    globals::EXIT_GROUP_LAYOUT,
};

#[tracepoint]
pub fn exit_group_call(ctx: TracePointContext) -> u32 {
    let _ = try_exit_group_call(&ctx);
    0
}

fn try_exit_group_call(ctx: &TracePointContext) -> Option<()> {
    let layout = EXIT_GROUP_LAYOUT.load();
    // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
    let code: u64 = unsafe { ctx.read_at(layout.error_code as usize).ok()? };
    let pid_tgid = bpf_get_current_pid_tgid();
    submit(ExitGroupCallRecord {
        header: header(kind::EXIT_GROUP_CALL),
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        code: code as i32,
        _pad: 0,
    });
    Some(())
}
