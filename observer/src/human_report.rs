//! The terminal format of reports: what an engineer reads during an incident. A shutdown
//! is a short timeline (first signal → listener closed → SIGKILL → exit, in ms from the
//! first signal), then the evidence, the verdict and each finding with its fix.
use crate::{
    event::{DeployReport, Finding, Handler, ShutdownReport, SignalResult, Verdict},
    human::HumanFormat,
    signals,
};

/// Continuation lines line up under the event detail column.
const INDENT: &str = "                   ";

pub fn verdict_label(format: &HumanFormat, verdict: Verdict) -> String {
    let (color, text) = match verdict {
        Verdict::Clean => (crate::human::GREEN, "CLEAN"),
        Verdict::Dropped => (crate::human::YELLOW, "DROPPED"),
        Verdict::Killed => (crate::human::BOLD_RED, "KILLED"),
    };
    format.paint(color, text)
}

pub fn shutdown(format: &HumanFormat, report: &ShutdownReport) -> String {
    let identity = match (&report.unit, &report.container, &report.cgroup) {
        (Some(unit), _, _) => format!("  unit {unit}"),
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
    let mut timeline: Vec<(u64, String)> = Vec::new();
    let term_offset = match (&report.sigterm, &report.sigkill) {
        (Some(_), _) => Some(0),
        _ => None,
    };
    if let (Some(term), Some(offset)) = (&report.sigterm, term_offset) {
        let what = match (term.result, term.handler) {
            (SignalResult::Ignored, _) => "dropped by the kernel (ignored)".to_string(),
            (_, Some(Handler::Custom)) => "handler runs".to_string(),
            (_, Some(Handler::Default)) => "default action (no handler)".to_string(),
            (_, Some(Handler::Ignore)) => "ignored by the process".to_string(),
            (_, None) => "never delivered".to_string(),
        };
        timeline.push((
            offset,
            format!(
                "{} from {}[{}]: {what}",
                term.sig_name, term.from.comm, term.from.pid
            ),
        ));
    }
    if let Some(ms) = report.listener_closed_ms {
        timeline.push((ms, "last listener closed".to_string()));
    }
    if let Some(kill) = &report.sigkill {
        let offset = kill.after_sigterm_ms.unwrap_or(0);
        timeline.push((
            offset,
            format!("SIGKILL from {}[{}]", kill.from.comm, kill.from.pid),
        ));
    }
    if let Some(exit) = &report.exit {
        let how = match (exit.code, exit.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by {}", signals::name(sig)),
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
    let open = report.open_at_exit.len();
    lines.push(format!(
        "{INDENT}accepted after signal {} · open at exit {open} · RSTs sent {} · refused after exit {}",
        report.accepted_after_signal, report.resets_sent, report.refused_after_exit
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
            "{INDENT}stopped {} → started {} · {gap} · dropped connections {}",
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
            report.dropped_connections
        ),
    ];
    lines.extend(finding_lines(format, &report.findings));
    lines.join("\n")
}

/// `✗ CODE message`, one line a finding.
fn finding_lines<'a>(
    format: &'a HumanFormat,
    findings: &'a [Finding],
) -> impl Iterator<Item = String> + 'a {
    findings.iter().map(move |finding| {
        let code = format.paint(crate::human::RED, &finding.code.name());
        format!("{INDENT}✗ {code} {}", finding.message)
    })
}
