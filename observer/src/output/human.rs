//! The terminal format: one aligned line per event, coloured on a TTY.
use crate::{
    event::{
        Activity, DeliveredEvent, Direction, Event, ExitEvent, Handler, Line, ListenAction, Origin,
        Role, SignalEvent, SignalResult, TcpAcceptEvent, TcpCloseAtExitEvent, TcpListenEvent,
        TcpRefusedEvent, TcpResetEvent, ThreadRef,
    },
    host::signals,
    output::{
        human_report,
        style::{BOLD_RED, DIM, GREEN, HumanFormat, MAGENTA, RED, YELLOW},
    },
};

impl HumanFormat {
    fn signal_name(&self, sig: i32) -> String {
        let color = match sig {
            signals::SIGKILL => BOLD_RED,
            signals::SIGTERM | signals::SIGINT | signals::SIGQUIT | signals::SIGHUP => YELLOW,
            _ => MAGENTA,
        };
        self.paint(color, &format!("{:<8}", signals::name(sig)))
    }

    /// A line of its own in `line`'s place (at its time), such as a fold's note.
    pub fn render_note(&self, line: &Line, note: &str) -> String {
        let clock = line.time.get(11..26).unwrap_or(&line.time);
        format!("{}  {:<9}  {note}", self.paint(DIM, clock), "…")
    }

    pub fn render(&self, line: &Line) -> String {
        // "2026-11-24T21:03:06.123456789Z" → "21:03:06.123456"
        let clock = line.time.get(11..26).unwrap_or(&line.time);
        let (label, detail) = match &line.event {
            Event::Signal(e) => ("signal", self.signal(e)),
            Event::SignalDelivered(e) => ("delivered", self.delivered(e)),
            Event::Exit(e) => ("exit", self.exit(e)),
            Event::TcpReset(e) => ("reset", self.reset(e)),
            Event::TcpRefused(e) => ("refused", self.refused(e)),
            Event::TcpCloseAtExit(e) => ("open@exit", self.close_at_exit(e)),
            Event::TcpCloseInFlight(e) => ("cut", self.close_in_flight(e)),
            Event::TcpListen(e) => ("listen", listen(e)),
            Event::TcpAccept(e) => ("accept", self.accept(e)),
            Event::Shutdown(report) => (
                "SHUTDOWN",
                human_report::shutdown(self, report, line.container_info.as_ref()),
            ),
            Event::Deploy(report) => ("DEPLOY", human_report::deploy(self, report)),
            Event::Lost(e) => (
                "lost",
                self.paint(
                    BOLD_RED,
                    &format!("{} events dropped: ring buffer full", e.count),
                ),
            ),
        };
        format!("{}  {:<9}  {detail}", self.paint(DIM, clock), label)
    }

    fn signal(&self, e: &SignalEvent) -> String {
        let result = match e.result {
            SignalResult::Delivered => String::new(),
            other => {
                let name = serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                format!("  {}", self.paint(MAGENTA, &name))
            }
        };
        let command = if e.target.cmdline.is_empty() {
            String::new()
        } else {
            let text = e.target.cmdline.join(" ");
            let cut: String = text.chars().take(60).collect();
            let more = if cut.len() < text.len() { "…" } else { "" };
            format!("  [{cut}{more}]")
        };
        let origin = match e.origin {
            Origin::Kernel => "  (kernel)",
            Origin::Tkill if !e.group => "  (to thread)",
            _ => "",
        };
        format!(
            "{} {}[{}] → {}{result}{origin}{command}",
            self.signal_name(e.sig),
            e.sender.comm,
            e.sender.pid,
            thread(&e.target),
        )
    }

    fn delivered(&self, e: &DeliveredEvent) -> String {
        let handler = match e.handler {
            Handler::Default => "default action",
            Handler::Ignore => "ignored",
            Handler::Custom => "handler runs",
        };
        format!(
            "{} {}  {handler}",
            self.signal_name(e.sig),
            thread(&e.target)
        )
    }

    fn exit(&self, e: &ExitEvent) -> String {
        let how = match (e.code, e.signal) {
            (Some(code), _) => {
                let text = format!("exit {code}");
                self.paint(if code == 0 { GREEN } else { RED }, &text)
            }
            (None, Some(sig)) => {
                let core = if e.core_dumped { ", core dumped" } else { "" };
                self.paint(RED, &format!("killed by {}{core}", signals::name(sig)))
            }
            (None, None) => "status unknown".to_string(),
        };
        let status = e
            .status
            .map(|s| format!(" (status {s})"))
            .unwrap_or_default();
        let ppid = e.ppid.map(|p| format!("  ppid {p}")).unwrap_or_default();
        format!("{}[{}]  {how}{status}{ppid}", e.comm, e.pid)
    }

    fn reset(&self, e: &TcpResetEvent) -> String {
        let (verb, arrow) = match e.direction {
            Direction::Sent => ("sent", "→"),
            Direction::Received => ("received", "←"),
        };
        let owner = match (&e.pid, &e.comm, &e.former_owner) {
            (Some(pid), Some(comm), _) => format!("{comm}[{pid}]"),
            (_, _, Some(former)) => {
                format!("no owner (was {}[{}])", former.comm, former.pid)
            }
            _ => "no owner".to_string(),
        };
        let reason = e.reason.as_deref().unwrap_or("-");
        format!(
            "{owner}  {verb} RST {}  {} {arrow} {}  {}",
            self.paint(RED, reason),
            e.local,
            e.remote,
            e.state
        )
    }

    /// `127.0.0.1:8080  refused 20000 (sent 20000 RSTs, 20000 connects failed)
    /// (was nginx[123])  clients: wrk[77] 20000`.
    fn refused(&self, e: &TcpRefusedEvent) -> String {
        let mut text = format!(
            "{}  {} (sent {} RSTs, {} connects failed)",
            e.refused,
            self.paint(RED, &format!("refused {}", e.sent.max(e.received))),
            e.sent,
            e.received
        );
        if let Some(former) = &e.former_owner {
            text += &format!("  (was {}[{}])", former.comm, former.pid);
        }
        if !e.clients.is_empty() {
            let clients: Vec<String> = e
                .clients
                .iter()
                .map(|c| format!("{}[{}] {}", c.comm, c.pid, c.refused))
                .collect();
            text += &format!("  clients: {}", clients.join(", "));
            let unlisted = e.clients_total as usize - e.clients.len();
            if unlisted > 0 {
                text += &format!(" and {unlisted} more");
            }
        }
        text
    }

    fn close_at_exit(&self, e: &TcpCloseAtExitEvent) -> String {
        let role = match e.role {
            Role::Inbound => "inbound",
            Role::Outbound => "outbound",
            Role::Listener => "listener",
        };
        let activity = match e.activity {
            Some(Activity::InFlight) => {
                format!("  {}", self.paint(RED, "request in flight"))
            }
            Some(Activity::Idle) => "  idle".to_string(),
            None => String::new(),
        };
        format!(
            "{}[{}]  {role} {} ↔ {}  {}{activity}  {}",
            e.comm,
            e.pid,
            e.local,
            e.remote,
            e.state,
            self.paint(YELLOW, "closed by the kernel at exit")
        )
    }

    fn close_in_flight(&self, e: &TcpCloseAtExitEvent) -> String {
        format!(
            "{}[{}]  inbound {} ↔ {}  {}  {}",
            e.comm,
            e.pid,
            e.local,
            e.remote,
            e.state,
            self.paint(RED, "closed by it with a request in flight")
        )
    }

    fn accept(&self, e: &TcpAcceptEvent) -> String {
        format!(
            "{}[{}]  accepted {} ← {}  {}",
            e.comm,
            e.pid,
            e.local,
            e.remote,
            self.paint(YELLOW, "after its termination signal")
        )
    }
}

fn listen(e: &TcpListenEvent) -> String {
    let action = match e.action {
        ListenAction::Open => "listens on",
        ListenAction::Close => "stopped listening on",
    };
    format!("{}[{}]  {action} {}", e.comm, e.pid, e.local)
}

fn thread(target: &ThreadRef) -> String {
    if target.pid == target.tid {
        format!("{}[{}]", target.comm, target.pid)
    } else {
        format!("{}[{}/{}]", target.comm, target.pid, target.tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExitEvent, LostEvent, ProcessRef, SignalEvent, StatusSource};

    fn line(event: Event) -> Line {
        Line {
            v: 1,
            event,
            time: "2026-11-24T21:03:06.123456789Z".into(),
            mono_ns: 1,
            host: "h".into(),
            container_info: None,
        }
    }

    #[test]
    fn renders_aligned_plain_lines() {
        let plain = HumanFormat { color: false };
        let signal = line(Event::Signal(SignalEvent {
            sig: 15,
            sig_name: "SIGTERM".into(),
            sender: ProcessRef {
                pid: 1,
                comm: "systemd".into(),
                via: Vec::new(),
            },
            target: ThreadRef::thread(1234, 1235, "node".into()),
            group: false,
            si_code: -6,
            origin: Origin::Tkill,
            result: SignalResult::Ignored,
            disposition: None,
            blocked: None,
        }));
        assert_eq!(
            plain.render(&signal),
            "21:03:06.123456  signal     SIGTERM  systemd[1] → node[1234/1235]  IGNORED  (to thread)"
        );
        let exit = line(Event::Exit(ExitEvent {
            pid: 1234,
            tid: 1234,
            ppid: Some(1),
            comm: "node".into(),
            cgroup: None,
            code: None,
            signal: Some(11),
            core_dumped: true,
            status: Some(139),
            status_source: StatusSource::Kernel,
            children: Vec::new(),
        }));
        assert_eq!(
            plain.render(&exit),
            "21:03:06.123456  exit       node[1234]  killed by SIGSEGV, core dumped (status 139)  ppid 1"
        );
        let lost = line(Event::Lost(LostEvent { count: 17 }));
        assert!(
            plain
                .render(&lost)
                .ends_with("lost       17 events dropped: ring buffer full")
        );
    }

    #[test]
    fn colours_only_when_asked() {
        let lost = line(Event::Lost(LostEvent { count: 1 }));
        assert!(HumanFormat { color: true }.render(&lost).contains(BOLD_RED));
        assert!(!HumanFormat { color: false }.render(&lost).contains('\x1b'));
    }
}
