//! `observer check`: can `watch` work here, and how well? One line per requirement and
//! per kernel program (loaded and attached for real, then detached), each failing line
//! with its fix. Exit status 1 when `watch` could not run.

use anyhow::Result;
use observer_common::Settings;

use crate::{btf::Btf, layout::KernelLayout, loader, object, preflight, tracefs};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// watch runs, with less.
    Degraded,
    /// watch cannot run.
    Fail,
}

struct Row {
    level: Level,
    what: String,
    detail: String,
}

/// The tracepoint fields observer reads, per tracepoint (optional ones end with `?`).
const FIELDS: [(&str, &str, &[&str]); 8] = [
    (
        "signal",
        "signal_generate",
        &["sig", "code", "comm", "pid", "group", "result"],
    ),
    (
        "signal",
        "signal_deliver",
        &["sig", "code", "sa_handler", "sa_flags"],
    ),
    (
        "sched",
        "sched_process_exit",
        &["comm", "pid", "group_dead?"],
    ),
    ("syscalls", "sys_enter_exit_group", &["error_code"]),
    (
        "sock",
        "inet_sock_set_state",
        &[
            "skaddr", "oldstate", "newstate", "protocol", "sport", "family",
        ],
    ),
    (
        "tcp",
        "tcp_send_reset",
        &["skaddr", "state", "reason?", "saddr", "daddr"],
    ),
    (
        "tcp",
        "tcp_receive_reset",
        &["skaddr", "sport", "dport", "family", "saddr", "daddr"],
    ),
    ("syscalls", "sys_exit_accept4", &["ret"]),
];

pub fn run() -> Result<bool> {
    let mut rows = Vec::new();
    let mut add = |level, what: &str, detail: String| {
        rows.push(Row {
            level,
            what: what.to_string(),
            detail,
        })
    };

    let version = preflight::kernel_version();
    match &version {
        Ok(v) => match preflight::check_kernel(*v) {
            Ok(()) => add(
                Level::Ok,
                "kernel",
                format!("{}.{} (BPF ring buffer: yes)", v.0, v.1),
            ),
            Err(e) => add(Level::Fail, "kernel", format!("{e}")),
        },
        Err(e) => add(Level::Fail, "kernel", format!("{e:#}")),
    }
    let privileged = preflight::check_privileges();
    match &privileged {
        Ok(()) => add(
            Level::Ok,
            "privileges",
            "can load tracing programs".to_string(),
        ),
        Err(e) => add(Level::Fail, "privileges", format!("{e:#}")),
    }
    let btf_path = crate::layout::btf_path();
    match Btf::from_file(&btf_path).and_then(|btf| btf.member_offset("task_struct", "exit_code")) {
        Ok(offset) => add(
            Level::Ok,
            "BTF",
            format!("{} (task_struct.exit_code at {offset})", btf_path.display()),
        ),
        Err(e) => add(
            Level::Degraded,
            "BTF",
            format!(
                "{e:#}: exit statuses would be inferred, no core dumps, parent pids or \
                 accepted-connection owners; fix: a kernel with CONFIG_DEBUG_INFO_BTF=y"
            ),
        ),
    }
    let events = tracefs::ensure_mounted();
    match &events {
        Ok(path) => add(Level::Ok, "tracefs", path.display().to_string()),
        Err(e) => add(Level::Fail, "tracefs", format!("{e:#}")),
    }
    match crate::procfs::cgroup2_mount() {
        Some(mount) => add(Level::Ok, "cgroup v2", mount.display().to_string()),
        None => add(
            Level::Degraded,
            "cgroup v2",
            "not mounted: no cgroup, unit or container in events; fix: mount cgroup2".to_string(),
        ),
    }

    if let Ok(events) = &events {
        for (category, name, fields) in FIELDS {
            let what = format!("{category}:{name}");
            match tracefs::read_format(events, category, name) {
                Ok(format) => {
                    let mut missing_required = false;
                    let mut degraded: Vec<&str> = Vec::new();
                    let found: Vec<String> = fields
                        .iter()
                        .map(|field| {
                            let (field, optional) = match field.strip_suffix('?') {
                                Some(field) => (field, true),
                                None => (*field, false),
                            };
                            match format.fields.get(field) {
                                Some(f) => format!("{field}@{}", f.offset),
                                None if optional => {
                                    degraded.extend(crate::layout::missing_field_consequence(
                                        name, field,
                                    ));
                                    format!("{field}:absent")
                                }
                                None => {
                                    missing_required = true;
                                    format!("{field}:MISSING")
                                }
                            }
                        })
                        .collect();
                    let level = if missing_required || !degraded.is_empty() {
                        Level::Degraded
                    } else {
                        Level::Ok
                    };
                    let mut detail = if found.is_empty() {
                        "present".to_string()
                    } else {
                        found.join(" ")
                    };
                    for consequence in degraded {
                        detail.push_str(&format!("; {consequence}"));
                    }
                    add(level, &what, detail);
                }
                Err(e) => add(Level::Degraded, &what, format!("{e:#}")),
            }
        }
    }

    if let (Ok(events), Ok(()), Ok(object)) = (&events, &privileged, object::bytes()) {
        match KernelLayout::read(events, &btf_path) {
            Ok(layout) => {
                let settings = Settings::default();
                for (program, result) in loader::try_each(object, &layout, settings) {
                    match result {
                        Ok(tracepoints) => {
                            add(Level::Ok, program, format!("attached to {tracepoints}"))
                        }
                        Err(e) => {
                            // The signal and exit programs are what watch is for.
                            let core = matches!(
                                program,
                                "signal_generate" | "signal_deliver" | "process_exit"
                            );
                            let level = if core { Level::Fail } else { Level::Degraded };
                            add(level, program, format!("{e:#}"))
                        }
                    }
                }
            }
            Err(e) => add(Level::Fail, "tracepoints", format!("{e:#}")),
        }
    } else if let Err(e) = object::bytes() {
        add(Level::Fail, "programs", format!("{e:#}"));
    }

    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for row in &rows {
        let mark = match row.level {
            Level::Ok => "ok  ",
            Level::Degraded => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{mark}  {:<width$}  {}", row.what, row.detail);
    }
    let works = rows.iter().all(|r| r.level != Level::Fail);
    println!(
        "\n{}",
        if works {
            "observer watch can run here."
        } else {
            "observer watch cannot run here: fix the FAIL lines."
        }
    );
    Ok(works)
}
