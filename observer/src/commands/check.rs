//! `observer check`: can `watch` work here, and how well? One line per requirement and
//! per kernel program (loaded and attached for real, then detached), each failing line
//! with its fix. Exit status 1 when `watch` could not run.

use std::path::Path;

use anyhow::Result;
use observer_common::Settings;

use crate::{
    kernel::btf::Btf,
    kernel::layout::KernelLayout,
    kernel::loader,
    kernel::object,
    kernel::preflight,
    kernel::tracefs,
    kernel::tracepoints::{self, FieldState, Tracepoint, Without},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

/// The rows `check` prints.
#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn add(&mut self, level: Level, what: &str, detail: String) {
        self.0.push(Row {
            level,
            what: what.to_string(),
            detail,
        })
    }
}

pub fn run() -> Result<bool> {
    let mut rows = Rows::default();
    let privileged = host_rows(&mut rows);
    let events = tracefs::ensure_mounted();
    match &events {
        Ok(path) => rows.add(Level::Ok, "tracefs", path.display().to_string()),
        Err(e) => rows.add(Level::Fail, "tracefs", format!("{e:#}")),
    }
    match crate::host::procfs::cgroup2_mount() {
        Some(mount) => rows.add(Level::Ok, "cgroup v2", mount.display().to_string()),
        None => rows.add(
            Level::Degraded,
            "cgroup v2",
            "not mounted: no cgroup, unit or container in events; fix: mount cgroup2".to_string(),
        ),
    }
    if let Ok(events) = &events {
        for tracepoint in tracepoints::ALL {
            let (level, detail) = tracepoint_row(
                tracepoint,
                tracefs::read_format(events, tracepoint.category, tracepoint.name),
            );
            rows.add(level, &tracepoint.path(), detail);
        }
    }
    match (&events, privileged, object::bytes()) {
        (Ok(events), true, Ok(object)) => program_rows(&mut rows, events, object),
        (_, _, Err(e)) => rows.add(Level::Fail, "programs", format!("{e:#}")),
        _ => {}
    }
    Ok(print(&rows.0))
}

/// The kernel, privileges and BTF; returns whether observer may load programs.
fn host_rows(rows: &mut Rows) -> bool {
    match preflight::kernel_version() {
        Ok(v) => match preflight::check_kernel(v) {
            Ok(()) => rows.add(
                Level::Ok,
                "kernel",
                format!("{}.{} (BPF ring buffer: yes)", v.0, v.1),
            ),
            Err(e) => rows.add(Level::Fail, "kernel", format!("{e}")),
        },
        Err(e) => rows.add(Level::Fail, "kernel", format!("{e:#}")),
    }
    let privileged = preflight::check_privileges();
    match &privileged {
        Ok(()) => rows.add(
            Level::Ok,
            "privileges",
            "can load tracing programs".to_string(),
        ),
        Err(e) => rows.add(Level::Fail, "privileges", format!("{e:#}")),
    }
    let btf_path = crate::kernel::layout::btf_path();
    match Btf::from_file(&btf_path).and_then(|btf| btf.member_offset("task_struct", "exit_code")) {
        Ok(offset) => rows.add(
            Level::Ok,
            "BTF",
            format!("{} (task_struct.exit_code at {offset})", btf_path.display()),
        ),
        Err(e) => rows.add(
            Level::Degraded,
            "BTF",
            format!(
                "{e:#}: exit statuses would be inferred, no core dumps, parent pids or \
                 accepted-connection owners; fix: a kernel with CONFIG_DEBUG_INFO_BTF=y"
            ),
        ),
    }
    privileged.is_ok()
}

/// One tracepoint against the table: `field@offset` for each field read, and what
/// `watch` does without what this kernel lacks, as `watch` would do it.
fn tracepoint_row(tracepoint: &Tracepoint, format: Result<tracefs::Format>) -> (Level, String) {
    let lacking = match tracepoint.without {
        Without::Refuses => Level::Fail,
        Without::Loses(_) => Level::Degraded,
    };
    let loss = match tracepoint.without {
        Without::Refuses => "observer watch cannot run",
        Without::Loses(loss) => loss,
    };
    let format = match format {
        Ok(format) => format,
        Err(e) => return (lacking, format!("{e:#}: {loss}")),
    };
    let mut level = Level::Ok;
    let mut consequences = Vec::new();
    let mut found = Vec::new();
    for (spec, state) in tracepoint.states(&format) {
        match state {
            FieldState::Present { offset, .. } => found.push(format!("{}@{offset}", spec.name)),
            FieldState::Unused => {}
            FieldState::Absent(without) => {
                level = level.max(Level::Degraded);
                found.push(format!("{}:absent", spec.name));
                consequences.push(without);
            }
            FieldState::Missing => {
                level = level.max(lacking);
                found.push(format!("{}:MISSING", spec.name));
                consequences.push(loss);
            }
            FieldState::WrongSize(size) => {
                level = level.max(lacking);
                found.push(format!(
                    "{}:size {size}, expected {:?}",
                    spec.name, spec.sizes
                ));
                consequences.push(loss);
            }
        }
    }
    consequences.dedup();
    let mut detail = found.join(" ");
    for consequence in consequences {
        detail.push_str(&format!("; {consequence}"));
    }
    (level, detail)
}

/// Each program this kernel gets, loaded and attached for real, then detached.
fn program_rows(rows: &mut Rows, events: &Path, object: &[u8]) {
    let layout = match KernelLayout::read(events, &crate::kernel::layout::btf_path()) {
        Ok(layout) => layout,
        Err(e) => return rows.add(Level::Fail, "tracepoints", format!("{e:#}")),
    };
    for tried in loader::try_each(object, &layout, Settings::default()) {
        match tried.attached {
            Ok(tracepoints) => rows.add(
                Level::Ok,
                tried.program,
                format!("attached to {tracepoints}"),
            ),
            // `watch` loads and attaches every program this kernel gets, and refuses to
            // start if one fails (a tracepoint it can do without is not asked for).
            Err(e) => rows.add(Level::Fail, tried.program, format!("{e:#}")),
        }
    }
}

/// Prints the rows and the verdict; returns whether `watch` can run.
fn print(rows: &[Row]) -> bool {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for row in rows {
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
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, tracepoint: &Tracepoint) -> (Level, String) {
        let events = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats")
            .join(version)
            .join("events");
        tracepoint_row(
            tracepoint,
            tracefs::read_format(&events, tracepoint.category, tracepoint.name),
        )
    }

    #[test]
    fn check_warns_about_what_each_kernel_lacks_and_nothing_else() {
        for version in ["6.1", "6.12", "6.18"] {
            for tracepoint in tracepoints::ALL {
                let (level, detail) = row(version, tracepoint);
                let lacks = match (version, tracepoint.name) {
                    ("6.1" | "6.12", "sched_process_exit") => Some("group_dead:absent"),
                    ("6.1", "tcp_send_reset") => Some("reason:absent"),
                    _ => None,
                };
                match lacks {
                    Some(absent) => {
                        assert!(
                            level == Level::Degraded && detail.contains(absent),
                            "{version} {detail}"
                        )
                    }
                    None => assert!(
                        level == Level::Ok,
                        "{version} {}: {detail}",
                        tracepoint.name
                    ),
                }
            }
        }
        // The fields watch reads, not others: sched_process_exit's comm and pid are not.
        assert_eq!(
            row("6.18", &tracepoints::SCHED_PROCESS_EXIT).1,
            "group_dead@32"
        );
        let (_, detail) = row("6.18", &tracepoints::INET_SOCK_SET_STATE);
        assert!(
            detail.contains("dport@") && detail.contains("daddr_v6@"),
            "{detail}"
        );
    }

    #[test]
    fn a_required_field_missing_fails_as_watch_would() {
        let text = "format:\n\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n";
        let (level, detail) = row_of(&tracepoints::SIGNAL_DELIVER, text);
        assert!(
            level == Level::Fail && detail.contains("code:MISSING"),
            "{detail}"
        );
        let (level, detail) = row_of(&tracepoints::TCP_RECEIVE_RESET, text);
        assert!(
            level == Level::Degraded && detail.contains("no TCP events"),
            "{detail}"
        );
        let resized = "format:\n\tfield:int sig;\toffset:8;\tsize:8;\tsigned:1;\n";
        let (level, detail) = row_of(&tracepoints::SIGNAL_DELIVER, resized);
        assert!(
            level == Level::Fail && detail.contains("sig:size 8"),
            "{detail}"
        );
    }

    fn row_of(tracepoint: &Tracepoint, format: &str) -> (Level, String) {
        tracepoint_row(tracepoint, Ok(tracefs::Format::parse(format)))
    }
}
