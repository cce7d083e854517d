//! The terminal format of reports: what an engineer reads during an incident. A shutdown
//! is a short timeline (first signal → listener closed → SIGKILL → exit, in ms from the
//! first signal), then the evidence, the verdict and each finding with its fix.
use crate::{
    event::{
        ContainerInfo, DeployReport, Finding, Handler, ProcessRef, Severity, ShutdownReport,
        SignalResult, Verdict,
    },
    host::clock,
    host::signals,
    output::style::{self, HumanFormat},
};

/// Continuation lines line up under the event detail column.
const INDENT: &str = "                   ";

pub fn verdict_label(format: &HumanFormat, verdict: Verdict) -> String {
    let (color, text) = match verdict {
        Verdict::Clean => (style::GREEN, "CLEAN"),
        Verdict::Dropped => (style::YELLOW, "DROPPED"),
        Verdict::Killed => (style::BOLD_RED, "KILLED"),
    };
    format.paint(color, text)
}

/// A signal's sender, with who ran it when the kernel or /proc named its parent:
/// `runc[4503] via containerd-shim[3991]`.
fn sender(from: &ProcessRef) -> String {
    match from.via.first() {
        Some(parent) => format!(
            "{}[{}] via {}[{}]",
            from.comm, from.pid, parent.comm, parent.pid
        ),
        None => format!("{}[{}]", from.comm, from.pid),
    }
}

/// `container shop_web_1 (compose shop/web)`, `container app (pod shop/web-7d4b9c8f6-x2x7z)`.
fn container_name(info: &ContainerInfo) -> Option<String> {
    let name = info.name.as_ref().or(info.pod_container.as_ref())?;
    let workload = match (&info.compose_project, &info.compose_service) {
        (Some(project), Some(service)) => format!(" (compose {project}/{service})"),
        _ => match (&info.pod_namespace, &info.pod_name) {
            (Some(namespace), Some(pod)) => format!(" (pod {namespace}/{pod})"),
            _ => String::new(),
        },
    };
    Some(format!("  container {name}{workload}"))
}

pub fn shutdown(
    format: &HumanFormat,
    report: &ShutdownReport,
    container: Option<&ContainerInfo>,
) -> String {
    let named = container.and_then(container_name);
    let identity = match (&report.unit, &report.container, &report.cgroup) {
        (Some(unit), _, _) => format!("  unit {unit}"),
        (None, Some(_), _) if named.is_some() => named.unwrap_or_default(),
        (None, Some(container), _) => {
            let pod = report
                .pod
                .as_ref()
                .map(|uid| format!(" (pod {uid})"))
                .unwrap_or_default();
            format!("  container {}{pod}", &container[..12.min(container.len())])
        }
        (None, None, Some(cgroup)) if cgroup != "/" => format!("  cgroup {cgroup}"),
        _ => String::new(),
    };
    let incomplete = if report.complete {
        ""
    } else {
        "  (incomplete: events were lost)"
    };
    let mut lines = vec![format!(
        "{}[{}]{identity}  {}{incomplete}",
        report.comm,
        report.pid,
        verdict_label(format, report.verdict)
    )];
    let mut timeline = signal_steps(report);
    if let Some(ms) = report.listener_closed_ms {
        timeline.push((ms, "last listener closed".to_string()));
    }
    if let Some(exit) = &report.exit {
        let how = match (exit.code, exit.signal, &exit.convention) {
            (Some(code), _, Some(convention)) => {
                format!("exit {code} ({convention}: stopped by that signal, by convention)")
            }
            (Some(code), _, None) => format!("exit {code}"),
            (None, Some(sig), _) => format!("killed by {}", signals::name(sig)),
            _ => "exit (status unknown)".to_string(),
        };
        let status = exit
            .status
            .map(|s| format!(" (status {s})"))
            .unwrap_or_default();
        timeline.push((report.drain_ms.unwrap_or(0), format!("{how}{status}")));
    } else {
        timeline.push((u64::MAX, "still running when observer stopped".to_string()));
    }
    timeline.sort_by_key(|(offset, _)| *offset);
    for (offset, what) in timeline {
        let at = if offset == u64::MAX {
            "".to_string()
        } else {
            format!("+{offset} ms")
        };
        lines.push(format!("{INDENT}{at:>10}  {what}"));
    }
    // Logs from before the counts list every connection.
    let open = report
        .open_at_exit_total
        .max(report.open_at_exit.len() as u32);
    let closed_in_flight = match report.closed_in_flight {
        0 => String::new(),
        cut => format!(" · requests cut by its own closes {cut}"),
    };
    lines.push(format!(
        "{INDENT}accepted after signal {} · open at exit {open} (requests cut {}, idle {}){closed_in_flight} · RSTs sent {} · refused after exit {}",
        report.accepted_after_signal,
        report.in_flight_at_exit,
        report.idle_at_exit,
        report.resets_sent,
        report.refused_after_exit
    ));
    lines.extend(finding_lines(format, &report.findings));
    lines.join("\n")
}

pub fn deploy(format: &HumanFormat, report: &DeployReport) -> String {
    let started: Vec<String> = report.started_pids.iter().map(u32::to_string).collect();
    let stopped: Vec<String> = report.stopped.iter().map(u32::to_string).collect();
    let gap = report
        .listener_gap_ms
        .map_or("no replacement listened".to_string(), |ms| {
            format!("listener gap {ms} ms")
        });
    let mut lines = vec![
        format!(
            "{}  {}",
            report.service,
            verdict_label(format, report.verdict)
        ),
        format!(
            "{INDENT}stopped {} → started {} · {gap} · dropped connections {} (refused after exit {})",
            if stopped.is_empty() {
                "-".to_string()
            } else {
                stopped.join(", ")
            },
            if started.is_empty() {
                "-".to_string()
            } else {
                started.join(", ")
            },
            report.dropped_connections,
            report.refused_after_exit
        ),
    ];
    lines.extend(finding_lines(format, &report.findings));
    lines.join("\n")
}

/// The signals of the stop, in ms from the first: who sent each and what became of it.
/// Reports from logs older than the timeline show their first signal and SIGKILL.
fn signal_steps(report: &ShutdownReport) -> Vec<(u64, String)> {
    let first = report
        .signals
        .first()
        .and_then(|s| clock::parse_rfc3339(&s.time));
    let blocked = report.sigterm.as_ref().is_some_and(|t| t.blocked);
    let mut steps: Vec<(u64, String)> = report
        .signals
        .iter()
        .map(|step| {
            let offset = first
                .zip(clock::parse_rfc3339(&step.time))
                .map_or(0, |(first, at)| ((at - first).max(0) / 1_000_000) as u64);
            let what = fate(step.result, step.handler, blocked);
            let from = if step.reraised {
                "re-raised by itself".to_string()
            } else {
                format!("from {}", sender(&step.from))
            };
            (offset, format!("{} {from}: {what}", step.sig_name))
        })
        .collect();
    if steps.is_empty() {
        if let Some(term) = &report.sigterm {
            let what = fate(term.result, term.handler, term.blocked);
            let from = sender(&term.from);
            steps.push((0, format!("{} from {from}: {what}", term.sig_name)));
        }
        if let Some(kill) = &report.sigkill {
            let from = format!("{}[{}]", kill.from.comm, kill.from.pid);
            steps.push((
                kill.after_sigterm_ms.unwrap_or(0),
                format!("SIGKILL from {from}"),
            ));
        }
    }
    steps
}

/// What became of a signal, as a timeline says it.
fn fate(result: SignalResult, handler: Option<Handler>, blocked: bool) -> &'static str {
    match (result, handler) {
        (SignalResult::Ignored, _) => "dropped by the kernel (ignored)",
        (_, Some(Handler::Custom)) => "handler runs",
        (_, Some(Handler::Default)) => "default action (no handler)",
        (_, Some(Handler::Ignore)) => "ignored by the process",
        (_, None) if blocked => "blocked: taken with signalfd or sigwaitinfo",
        (_, None) => "not delivered",
    }
}

/// `✗ CODE message` for an error, `! CODE message` for a warning, one line a finding.
fn finding_lines<'a>(
    format: &'a HumanFormat,
    findings: &'a [Finding],
) -> impl Iterator<Item = String> + 'a {
    findings.iter().map(move |finding| {
        let (mark, color) = match finding.severity {
            Severity::Error => ("✗", style::RED),
            Severity::Warning => ("!", style::YELLOW),
        };
        let code = format.paint(color, &finding.code.name());
        format!("{INDENT}{mark} {code} {}", finding.message)
    })
}
