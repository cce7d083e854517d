//! Values userspace sets at load time (`EbpfLoader::override_global`). They live in
//! `.rodata`, so the verifier sees them as constants.
use aya_ebpf::Global;
use observer_common::{
    ExitGroupLayout, ProcessExitLayout, Settings, SignalDeliverLayout, SignalGenerateLayout,
    TaskLayout, TgkillLayout,
};

#[unsafe(no_mangle)]
pub static SETTINGS: Global<Settings> = Global::new(Settings {
    signal_mask: 0,
    fatal_default_mask: 0,
});

#[unsafe(no_mangle)]
pub static SIGNAL_GENERATE_LAYOUT: Global<SignalGenerateLayout> =
    Global::new(SignalGenerateLayout {
        sig: 0,
        code: 0,
        comm: 0,
        pid: 0,
        group: 0,
        result: 0,
    });

#[unsafe(no_mangle)]
pub static SIGNAL_DELIVER_LAYOUT: Global<SignalDeliverLayout> = Global::new(SignalDeliverLayout {
    sig: 0,
    code: 0,
    sa_handler: 0,
    sa_flags: 0,
});

#[unsafe(no_mangle)]
pub static PROCESS_EXIT_LAYOUT: Global<ProcessExitLayout> =
    Global::new(ProcessExitLayout { group_dead: 0 });

#[unsafe(no_mangle)]
pub static TGKILL_LAYOUT: Global<TgkillLayout> = Global::new(TgkillLayout {
    tgid: 0,
    pid: 0,
    sig: 0,
});

#[unsafe(no_mangle)]
pub static EXIT_GROUP_LAYOUT: Global<ExitGroupLayout> =
    Global::new(ExitGroupLayout { error_code: 0 });

#[unsafe(no_mangle)]
pub static TASK_LAYOUT: Global<TaskLayout> = Global::new(TaskLayout {
    known: 0,
    task_exit_code: 0,
    task_tgid: 0,
    task_comm: 0,
    task_start_time: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_signal: 0,
    signal_flags: 0,
    signal_group_exit_code: 0,
    signal_live: 0,
    _pad: 0,
});
