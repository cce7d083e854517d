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
pub fn exit_group_enter(ctx: TracePointContext) -> u32 {
    let layout = EXIT_GROUP_LAYOUT.load();
    // SAFETY: offset from the format file; bpf_probe_read_kernel underneath.
    let Ok(code) = (unsafe { ctx.read_at::<u64>(layout.error_code as usize) }) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    submit(ExitGroupCallRecord {
        header: header(kind::EXIT_GROUP_CALL),
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        code: code as i32,
        _pad: 0,
    });
    0
}
