//! Raw event lines in, `shutdown` and `deploy` report lines out. Pure: it sees exactly the
//! lines observer writes, so `observer report LOG` reproduces live reports byte for byte.
//!
//! Time is the events' own (CLOCK_MONOTONIC `mono_ns`). A process's report covers the
//! events up to its exit plus `--after-exit`; it is written once a later event (or, live,
//! the clock) is past that deadline by [`SLACK_NS`], which absorbs events from different
//! CPUs arriving slightly out of order. When the input ends, pending reports are written
//! with what was seen.
use std::collections::BTreeSet;

use crate::{
    bounded::BoundedMap,
    clock,
    deploy::Deploy,
    event::{
        Event, ExitInfo, Line, ListenAction, OpenConnection, ProcessRef, SCHEMA_VERSION,
        SigkillInfo, SignalResult, SigtermInfo,
    },
    identity,
    shutdown::{ProcessShutdown, port_of},
    signals,
};

/// How long past a deadline a report waits for stragglers.
pub const SLACK_NS: u64 = 1_000_000_000;

/// Processes whose listeners are tracked at once.
const TRACKED_LISTENERS: usize = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// After a process exits, how long to keep counting clients refused on its ports.
    pub after_exit_ns: u64,
    /// A deploy ends this long after the last termination signal in its service.
    pub deploy_window_ns: u64,
}

/// A process's listening sockets, whether or not it is shutting down.
struct Listening {
    sockets: BTreeSet<String>,
}

pub struct Correlator {
    config: Config,
    /// `time` − `mono_ns` of the latest line: turns report deadlines into wall time.
    wall_offset_ns: i128,
    host: String,
    latest_ns: u64,
    listening: BoundedMap<u32, Listening>,
    /// Told to stop, not exited yet.
    live: BoundedMap<u32, ProcessShutdown>,
    /// Exited, waiting for their deadline.
    exited: Vec<(u64, ProcessShutdown)>,
    /// Children that exited after their parent's termination signal without one of
    /// their own (workers told to stop by their master): child pid → parent pid. Their
    /// connections and RSTs at exit count in the parent's report.
    adopted: BoundedMap<u32, u32>,
    deploys: Vec<Deploy>,
    out: Vec<Line>,
}

impl Correlator {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            wall_offset_ns: 0,
            host: String::new(),
            latest_ns: 0,
            listening: BoundedMap::new(TRACKED_LISTENERS),
            live: BoundedMap::new(TRACKED_LISTENERS),
            exited: Vec::new(),
            adopted: BoundedMap::new(TRACKED_LISTENERS),
            deploys: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Takes in one line; returns the reports that became due before it.
    pub fn observe(&mut self, line: &Line) -> Vec<Line> {
        if matches!(line.event, Event::Shutdown(_) | Event::Deploy(_)) {
            return Vec::new();
        }
        if let Some(unix_ns) = clock::parse_rfc3339(&line.time) {
            self.wall_offset_ns = unix_ns - line.mono_ns as i128;
        }
        self.host.clone_from(&line.host);
        self.latest_ns = self.latest_ns.max(line.mono_ns);
        self.release(line.mono_ns.saturating_sub(SLACK_NS));
        self.apply(line);
        std::mem::take(&mut self.out)
    }

    /// The clock reached `now_ns` (live only): reports now due.
    pub fn advance(&mut self, now_ns: u64) -> Vec<Line> {
        self.release(now_ns.saturating_sub(SLACK_NS));
        std::mem::take(&mut self.out)
    }

    /// Whether a process told to stop less than `window_ns` before `now_ns` still runs:
    /// meanwhile, the programs that only shutdowns need stay attached.
    pub fn shutdown_under_way(&self, now_ns: u64, window_ns: u64) -> bool {
        self.live.values().any(|shutdown| {
            shutdown
                .first_signal_ns
                .is_some_and(|at| now_ns.saturating_sub(at) < window_ns)
        })
    }

    /// The input ended: every pending report, with what was seen.
    pub fn finish(&mut self) -> Vec<Line> {
        self.release(u64::MAX);
        let mut still_running: Vec<ProcessShutdown> = self.live.drain().collect();
        still_running.sort_by_key(|s| (s.first_signal_ns, s.pid));
        for shutdown in still_running {
            self.report_shutdown(self.latest_ns, shutdown);
        }
        let deploys = std::mem::take(&mut self.deploys);
        for deploy in deploys {
            self.push(self.latest_ns, Event::Deploy(deploy.report()));
        }
        std::mem::take(&mut self.out)
    }

    fn release(&mut self, until_ns: u64) {
        self.exited.sort_by_key(|(deadline, s)| (*deadline, s.pid));
        while self
            .exited
            .first()
            .is_some_and(|(deadline, _)| *deadline < until_ns)
        {
            let (deadline, shutdown) = self.exited.remove(0);
            self.report_shutdown(deadline, shutdown);
        }
        let window = self.config.deploy_window_ns;
        let (done, open): (Vec<Deploy>, Vec<Deploy>) = std::mem::take(&mut self.deploys)
            .into_iter()
            .partition(|d| d.is_done(until_ns, window));
        self.deploys = open;
        for deploy in done {
            self.push(deploy.window_end(window), Event::Deploy(deploy.report()));
        }
    }

    fn report_shutdown(&mut self, mono_ns: u64, shutdown: ProcessShutdown) {
        self.push(mono_ns, Event::Shutdown(Box::new(shutdown.report())));
        if let Some(deploy) = self
            .deploys
            .iter_mut()
            .find(|d| d.service == shutdown.service)
        {
            deploy.shutdown_reported(shutdown);
        }
    }

    fn push(&mut self, mono_ns: u64, event: Event) {
        self.out.push(Line {
            v: SCHEMA_VERSION,
            event,
            time: clock::rfc3339(mono_ns as i128 + self.wall_offset_ns),
            mono_ns,
            host: self.host.clone(),
        });
    }

    /// The record of `pid` that an event at `mono_ns` belongs to: the live one, else the
    /// latest exited one whose window is still open; for an adopted child, its parent's.
    fn record(&mut self, pid: u32, mono_ns: u64) -> Option<&mut ProcessShutdown> {
        let pid = match self.live.get(&pid) {
            Some(_) => return self.live.get_mut(&pid),
            None if !self.exited.iter().any(|(_, s)| s.pid == pid) => {
                self.adopted.get(&pid).copied().unwrap_or(pid)
            }
            None => pid,
        };
        if self.live.get(&pid).is_some() {
            return self.live.get_mut(&pid);
        }
        self.exited
            .iter_mut()
            .rev()
            .find(|(deadline, s)| s.pid == pid && mono_ns <= *deadline)
            .map(|(_, s)| s)
    }

    /// The record of the process that was told to stop before child `pid` exited at
    /// `mono_ns`: its parent at exit, or the one it was a child of when told (a child
    /// reparented since, e.g. when a wrapping shell died).
    fn parent_record(
        &mut self,
        pid: u32,
        ppid: Option<u32>,
        mono_ns: u64,
    ) -> Option<&mut ProcessShutdown> {
        let told = |s: &ProcessShutdown| s.sigterm_ns.is_some_and(|term| term <= mono_ns);
        let by_ppid = ppid.filter(|&ppid| self.record(ppid, mono_ns).is_some_and(|p| told(p)));
        let parent = by_ppid.or_else(|| {
            let live = self.live.values();
            let exited = self
                .exited
                .iter()
                .filter(|(deadline, _)| mono_ns <= *deadline)
                .map(|(_, s)| s);
            live.chain(exited)
                .find(|s| told(s) && s.children_at_signal.contains(&pid))
                .map(|s| s.pid)
        })?;
        self.record(parent, mono_ns)
    }

    fn apply(&mut self, line: &Line) {
        let (mono, time) = (line.mono_ns, line.time.as_str());
        match &line.event {
            Event::Signal(e) if signals::TERMINATION_SIGNALS.contains(&e.sig) => {
                let pid = e.target.pid;
                if self.live.get(&pid).is_none() {
                    let mut listening = self
                        .listening
                        .get(&pid)
                        .map(|l| l.sockets.clone())
                        .unwrap_or_default();
                    listening.extend(e.target.listening.iter().cloned());
                    let shutdown = ProcessShutdown::new(
                        pid,
                        &e.target.comm,
                        e.target.cgroup.clone(),
                        listening,
                    );
                    self.live.insert(pid, shutdown);
                }
                let shutdown = self.live.get_mut(&pid).expect("inserted above");
                // A SIGHUP its handler took, then SIGTERM/INT/QUIT: the SIGHUP was a reload
                // (nginx, many daemons); the shutdown starts now.
                let reloaded = shutdown.sigterm.as_ref().is_some_and(|t| {
                    t.sig_name == "SIGHUP" && t.handler == Some(crate::event::Handler::Custom)
                }) && e.sig != signals::SIGHUP
                    && e.sig != signals::SIGKILL;
                if reloaded {
                    shutdown.restart_at_signal();
                }
                if shutdown.first_signal_ns.is_none() {
                    shutdown.first_signal_ns = Some(mono);
                    shutdown.namespace_init = e.target.ns_pid == Some(1);
                    shutdown.children_at_signal.clone_from(&e.target.children);
                    shutdown.exe.clone_from(&e.target.exe);
                    shutdown.cmdline.clone_from(&e.target.cmdline);
                    let (service, ports) = (shutdown.service.clone(), shutdown.ports());
                    let window = self.config.deploy_window_ns;
                    let open = self
                        .deploys
                        .iter_mut()
                        .find(|d| d.service == service && mono <= d.window_end(window));
                    let deploy = match open {
                        Some(deploy) => deploy,
                        None => {
                            let shutdown = self.live.get(&pid).expect("inserted above");
                            self.deploys
                                .push(Deploy::new(&service, shutdown, mono, time));
                            self.deploys.last_mut().expect("just pushed")
                        }
                    };
                    deploy.termination(pid, &ports, mono);
                }
                let shutdown = self.live.get_mut(&pid).expect("inserted above");
                let from = e.sender.clone();
                if e.sig == signals::SIGKILL {
                    if shutdown.sigkill.is_none() {
                        shutdown.sigkill = Some(SigkillInfo {
                            time: time.to_string(),
                            from,
                            after_sigterm_ms: None,
                        });
                        shutdown.sigkill_ns = Some(mono);
                        shutdown.sigkill_by_kernel = e.origin == crate::event::Origin::Kernel;
                    }
                } else if shutdown.sigterm.is_none() {
                    shutdown.sigterm = Some(SigtermInfo {
                        time: time.to_string(),
                        sig_name: e.sig_name.clone(),
                        from,
                        result: e.result,
                        handler: None,
                    });
                    shutdown.sigterm_ns = Some(mono);
                }
            }
            Event::SignalDelivered(e) => {
                if let Some(shutdown) = self.live.get_mut(&e.target.pid)
                    && let Some(term) = &mut shutdown.sigterm
                    && term.sig_name == e.sig_name
                    && term.handler.is_none()
                {
                    term.handler = Some(e.handler);
                    if term.result != SignalResult::Delivered {
                        term.result = SignalResult::Delivered;
                    }
                }
            }
            Event::Exit(e) => {
                self.listening.remove(&e.pid);
                let died_of_termination = e
                    .signal
                    .is_some_and(|sig| signals::TERMINATION_SIGNALS.contains(&sig));
                let shutdown = match self.live.remove(&e.pid) {
                    Some(shutdown) => Some(shutdown),
                    None if died_of_termination => Some(ProcessShutdown::new(
                        e.pid,
                        &e.comm,
                        e.cgroup.clone(),
                        BTreeSet::new(),
                    )),
                    None => None,
                };
                let got_termination = shutdown.as_ref().is_some_and(|s| s.sigterm.is_some());
                if !got_termination && let Some(parent) = self.parent_record(e.pid, e.ppid, mono) {
                    // Killed without being told (e.g. by its namespace's init dying): the
                    // parent did not forward the signal. Exited by itself: it was told
                    // some other way (nginx's channel), and is part of the parent's stop.
                    if e.signal.is_some() {
                        parent.unsignalled_children.push(e.pid);
                    }
                    if shutdown.is_none() {
                        let parent = parent.pid;
                        self.adopted.insert(e.pid, parent);
                    }
                }
                if let Some(mut shutdown) = shutdown {
                    // The exit's cgroup comes from the kernel's cgroup id: it fills in a
                    // cgroup that /proc no longer had when the signal was enriched.
                    if shutdown.cgroup.is_none() {
                        shutdown.cgroup.clone_from(&e.cgroup);
                    }
                    for child in &e.children {
                        if !shutdown.children_at_signal.contains(child) {
                            shutdown.children_at_signal.push(*child);
                        }
                    }
                    shutdown.exit = Some(ExitInfo {
                        time: time.to_string(),
                        code: e.code,
                        signal: e.signal,
                        status: e.status,
                        core_dumped: e.core_dumped,
                    });
                    shutdown.exit_ns = Some(mono);
                    self.exited
                        .push((mono + self.config.after_exit_ns, shutdown));
                }
            }
            Event::TcpListen(e) => match e.action {
                ListenAction::Open => {
                    let entry = match self.listening.get_mut(&e.pid) {
                        Some(entry) => entry,
                        None => {
                            let empty = Listening {
                                sockets: BTreeSet::new(),
                            };
                            self.listening.insert(e.pid, empty);
                            self.listening.get_mut(&e.pid).expect("just inserted")
                        }
                    };
                    entry.sockets.insert(e.local.clone());
                    let ports: Vec<u16> = port_of(&e.local).into_iter().collect();
                    let service = identity::service(e.cgroup.as_deref(), &e.comm, &ports);
                    for deploy in &mut self.deploys {
                        deploy.listener_opened(e.pid, &service, &e.comm, &e.local, mono);
                    }
                }
                ListenAction::Close => {
                    if let Some(entry) = self.listening.get_mut(&e.pid) {
                        entry.sockets.remove(&e.local);
                    }
                    if let Some(shutdown) = self.record(e.pid, mono) {
                        shutdown.listener_closed(&e.local, mono, true);
                    }
                }
            },
            Event::TcpCloseAtExit(e) => {
                // A worker's sockets count for its master (adoption, in `record`).
                if let Some(shutdown) = self.record(e.pid, mono) {
                    shutdown.open_at_exit.push(OpenConnection {
                        local: e.local.clone(),
                        remote: e.remote.clone(),
                        state: e.state.clone(),
                        role: e.role,
                    });
                    if e.role == crate::event::Role::Listener {
                        shutdown.listener_closed(&e.local, mono, false);
                    }
                }
            }
            Event::TcpAccept(e) => {
                if let Some(shutdown) = self.record(e.pid, mono)
                    && shutdown
                        .first_signal_ns
                        .is_some_and(|signal| signal <= mono)
                {
                    shutdown.accepted_after_signal += 1;
                }
            }
            Event::TcpReset(e) if e.direction == crate::event::Direction::Sent => {
                if let Some(pid) = e.pid {
                    if let Some(shutdown) = self.record(pid, mono)
                        && shutdown
                            .first_signal_ns
                            .is_some_and(|signal| signal <= mono)
                    {
                        shutdown.resets_sent += 1;
                    }
                } else if let Some(ProcessRef { pid, .. }) = &e.former_owner {
                    // A client refused on a port its last listener (or that one's master)
                    // left when it exited.
                    if let Some(shutdown) = self.record(*pid, mono)
                        && shutdown.exit_ns.is_some_and(|exit| exit <= mono)
                    {
                        shutdown.refused_after_exit += 1;
                    }
                } else if e.reason.as_deref() == Some("NO_SOCKET") {
                    // No listener was seen closing (it opened before observer started): the
                    // exited processes that listened on the port, in their window.
                    let port = port_of(&e.local);
                    for (deadline, shutdown) in &mut self.exited {
                        let listened = port.is_some_and(|p| shutdown.ports().contains(&p));
                        let exited = shutdown.exit_ns.is_some_and(|exit| exit <= mono);
                        if listened && exited && mono <= *deadline {
                            shutdown.refused_after_exit += 1;
                        }
                    }
                }
            }
            Event::Lost(_) => {
                for shutdown in self.live.values_mut() {
                    shutdown.complete = false;
                }
                for (_, shutdown) in &mut self.exited {
                    shutdown.complete = false;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        DeliveredEvent, Direction, ExitEvent, FindingCode, FindingCode::*, Handler, LostEvent,
        Origin, Role, ShutdownReport, SignalEvent, StatusSource, TcpAcceptEvent,
        TcpCloseAtExitEvent, TcpListenEvent, TcpResetEvent, ThreadRef, Verdict,
    };

    const MS: u64 = 1_000_000;
    const SUPERVISOR: u32 = 10;
    const UNIT: &str = "/system.slice/app.service";

    fn line(at_ms: u64, event: Event) -> Line {
        let mono_ns = 1_000_000 * MS + at_ms * MS;
        Line {
            v: SCHEMA_VERSION,
            event,
            time: clock::rfc3339(mono_ns as i128 + 1_700_000_000_000_000_000),
            mono_ns,
            host: "h".into(),
        }
    }

    fn signal_with(
        at: u64,
        pid: u32,
        sig: i32,
        result: SignalResult,
        origin: Origin,
        ns_pid: Option<u32>,
        sender: u32,
    ) -> Line {
        line(
            at,
            Event::Signal(SignalEvent {
                sig,
                sig_name: signals::name(sig),
                sender: ProcessRef {
                    pid: sender,
                    comm: "supervisord".into(),
                },
                target: ThreadRef {
                    pid,
                    tid: pid,
                    comm: "app".into(),
                    cgroup: Some(UNIT.into()),
                    ns_pid,
                    listening: Vec::new(),
                    children: Vec::new(),
                    exe: None,
                    cmdline: Vec::new(),
                },
                group: true,
                si_code: 0,
                origin,
                result,
            }),
        )
    }

    fn term(at: u64, pid: u32) -> Line {
        signal_with(
            at,
            pid,
            15,
            SignalResult::Delivered,
            Origin::User,
            Some(pid),
            SUPERVISOR,
        )
    }

    fn kill(at: u64, pid: u32) -> Line {
        signal_with(
            at,
            pid,
            9,
            SignalResult::Delivered,
            Origin::User,
            Some(pid),
            SUPERVISOR,
        )
    }

    fn delivered(at: u64, pid: u32, sig: i32, handler: Handler) -> Line {
        line(
            at,
            Event::SignalDelivered(DeliveredEvent {
                sig,
                sig_name: signals::name(sig),
                target: ThreadRef::thread(pid, pid, "app".into()),
                handler,
            }),
        )
    }

    fn exit(at: u64, pid: u32, ppid: u32, code: Option<i32>, signal: Option<i32>) -> Line {
        line(
            at,
            Event::Exit(ExitEvent {
                pid,
                tid: pid,
                ppid: Some(ppid),
                comm: "app".into(),
                cgroup: Some(UNIT.into()),
                code,
                signal,
                core_dumped: false,
                status: code.or(signal.map(|s| 128 + s)),
                status_source: StatusSource::Kernel,
                children: Vec::new(),
            }),
        )
    }

    fn listen(at: u64, pid: u32, action: ListenAction) -> Line {
        line(
            at,
            Event::TcpListen(TcpListenEvent {
                action,
                pid,
                comm: "app".into(),
                local: "127.0.0.1:8080".into(),
                cgroup: Some(UNIT.into()),
            }),
        )
    }

    fn at_exit(at: u64, pid: u32, role: Role, remote_port: u16) -> Line {
        let (remote, state) = match role {
            Role::Listener => ("0.0.0.0:0".to_string(), "LISTEN"),
            _ => (format!("127.0.0.1:{remote_port}"), "ESTABLISHED"),
        };
        line(
            at,
            Event::TcpCloseAtExit(TcpCloseAtExitEvent {
                pid,
                comm: "app".into(),
                local: "127.0.0.1:8080".into(),
                remote,
                state: state.into(),
                role,
            }),
        )
    }

    fn accept(at: u64, pid: u32) -> Line {
        line(
            at,
            Event::TcpAccept(TcpAcceptEvent {
                pid,
                comm: "app".into(),
                local: "127.0.0.1:8080".into(),
                remote: format!("127.0.0.1:{}", 40_000 + at),
            }),
        )
    }

    fn reset(at: u64, pid: Option<u32>, former: Option<u32>) -> Line {
        line(
            at,
            Event::TcpReset(TcpResetEvent {
                direction: Direction::Sent,
                reason: Some(
                    if pid.is_some() {
                        "TCP_ABORT_ON_CLOSE"
                    } else {
                        "NO_SOCKET"
                    }
                    .into(),
                ),
                local: "127.0.0.1:8080".into(),
                remote: "127.0.0.1:50000".into(),
                state: "CLOSE".into(),
                pid,
                comm: pid.map(|_| "app".to_string()),
                former_owner: former.map(|pid| ProcessRef {
                    pid,
                    comm: "app".into(),
                }),
            }),
        )
    }

    fn config() -> Config {
        Config {
            after_exit_ns: 5_000 * MS,
            deploy_window_ns: 30_000 * MS,
        }
    }

    /// Every report the lines give, with the input ended.
    fn run(lines: &[Line]) -> Vec<Line> {
        let mut correlator = Correlator::new(config());
        let mut out: Vec<Line> = lines.iter().flat_map(|l| correlator.observe(l)).collect();
        out.extend(correlator.finish());
        out
    }

    #[test]
    fn a_shutdown_is_under_way_from_the_signal_until_the_exit_or_the_window() {
        let window = 1000 * MS;
        let mut correlator = Correlator::new(config());
        let at = |ms: u64| line(ms, Event::Lost(LostEvent { count: 0 })).mono_ns;
        assert!(!correlator.shutdown_under_way(at(0), window));
        correlator.observe(&term(100, P));
        assert!(correlator.shutdown_under_way(at(100), window));
        assert!(correlator.shutdown_under_way(at(1099), window));
        assert!(
            !correlator.shutdown_under_way(at(1100), window),
            "window over"
        );
        correlator.observe(&exit(500, P, SUPERVISOR, Some(0), None));
        assert!(!correlator.shutdown_under_way(at(500), window), "exited");
    }

    fn shutdowns(lines: &[Line]) -> Vec<ShutdownReport> {
        run(lines)
            .into_iter()
            .filter_map(|l| match l.event {
                Event::Shutdown(report) => Some(*report),
                _ => None,
            })
            .collect()
    }

    fn only(lines: &[Line]) -> ShutdownReport {
        let mut reports = shutdowns(lines);
        assert_eq!(reports.len(), 1, "{reports:#?}");
        reports.remove(0)
    }

    fn codes(report: &ShutdownReport) -> Vec<FindingCode> {
        report.findings.iter().map(|f| f.code).collect()
    }

    const P: u32 = 100;

    #[test]
    fn each_bad_shutdown_gets_its_verdict_and_findings() {
        use ListenAction::{Close, Open};
        let ignored = |at, ns_pid| {
            signal_with(
                at,
                P,
                15,
                SignalResult::Ignored,
                Origin::User,
                ns_pid,
                SUPERVISOR,
            )
        };
        let cases: Vec<(&str, Vec<Line>, Verdict, Vec<FindingCode>)> = vec![
            (
                "no handler",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Default),
                    exit(1, P, 1, None, Some(15)),
                ],
                Verdict::Dropped,
                vec![NoSigtermHandler],
            ),
            (
                "SIGTERM ignored, SIGKILL after the grace period",
                vec![
                    ignored(0, Some(7)),
                    kill(10_000, P),
                    exit(10_001, P, 1, None, Some(9)),
                ],
                Verdict::Killed,
                vec![SigkillAfterGrace],
            ),
            (
                "handler whose event loop is blocked",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    kill(10_100, P),
                    exit(10_101, P, 1, None, Some(9)),
                    at_exit(10_101, P, Role::Listener, 0),
                ],
                Verdict::Killed,
                vec![SigkillAfterGrace, HandlerNeverRan, ListenerNotClosed],
            ),
            (
                "idle keep-alive connections, then the timeout fallback",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    listen(105, P, Close),
                    exit(10_100, P, 1, Some(1), None),
                    at_exit(10_100, P, Role::Inbound, 5001),
                    at_exit(10_100, P, Role::Inbound, 5002),
                ],
                Verdict::Dropped,
                vec![KeepaliveOpenAtExit, ExitNonzeroAfterSigterm],
            ),
            (
                "accepting after the signal",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    accept(150, P),
                    accept(160, P),
                    accept(170, P),
                    listen(200, P, Close),
                    exit(300, P, 1, Some(0), None),
                ],
                Verdict::Clean,
                vec![AcceptedAfterSignal],
            ),
            (
                "resets sent while shutting down",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    reset(5, Some(P), None),
                    reset(6, Some(P), None),
                    exit(10, P, 1, Some(0), None),
                ],
                Verdict::Dropped,
                vec![ResetsSent],
            ),
            (
                "connections cut by the exit",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    exit(10, P, 1, Some(0), None),
                    at_exit(10, P, Role::Outbound, 5432),
                ],
                Verdict::Dropped,
                vec![ConnectionsOpenAtExit],
            ),
            (
                "SIGKILL without SIGTERM",
                vec![kill(0, P), exit(1, P, 1, None, Some(9))],
                Verdict::Killed,
                vec![SigkillWithoutSigterm],
            ),
            (
                "the OOM killer",
                vec![
                    signal_with(0, P, 9, SignalResult::Delivered, Origin::Kernel, None, 0),
                    exit(1, P, 1, None, Some(9)),
                ],
                Verdict::Killed,
                vec![KilledByKernel],
            ),
            (
                "a clean drain",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    listen(102, P, Close),
                    exit(150, P, 1, Some(0), None),
                ],
                Verdict::Clean,
                vec![],
            ),
        ];
        for (name, lines, verdict, expected) in cases {
            let report = only(&lines);
            assert_eq!(
                (report.verdict, codes(&report)),
                (verdict, expected),
                "{name}: {report:#?}"
            );
            assert!(
                report
                    .findings
                    .iter()
                    .all(|f| f.message.contains("`app`") || f.message.contains("clients")),
                "{name}"
            );
            assert!(report.complete, "{name}");
        }
    }

    #[test]
    fn a_clean_drain_has_its_timeline() {
        let report = only(&[
            listen(0, P, ListenAction::Open),
            term(100, P),
            delivered(100, P, 15, Handler::Custom),
            listen(102, P, ListenAction::Close),
            exit(150, P, 1, Some(0), None),
        ]);
        let term = report.sigterm.as_ref().unwrap();
        assert_eq!(
            (term.sig_name.as_str(), term.handler, term.from.pid),
            ("SIGTERM", Some(Handler::Custom), SUPERVISOR)
        );
        assert_eq!(
            (report.drain_ms, report.listener_closed_ms),
            (Some(50), Some(2))
        );
        assert_eq!(
            (report.sigkill.is_none(), report.sigkill_first),
            (true, false)
        );
        assert_eq!(report.exit.as_ref().unwrap().code, Some(0));
        assert_eq!(
            (report.unit.as_deref(), report.container),
            (Some("app.service"), None)
        );
    }

    #[test]
    fn pid1_of_a_namespace_that_drops_sigterm_and_takes_its_child_down() {
        let child = 101;
        let ignored = signal_with(
            0,
            P,
            15,
            SignalResult::Ignored,
            Origin::User,
            Some(1),
            SUPERVISOR,
        );
        let reports = shutdowns(&[
            ignored,
            kill(10_000, P),
            signal_with(
                10_000,
                child,
                9,
                SignalResult::Delivered,
                Origin::Kernel,
                Some(2),
                P,
            ),
            exit(10_001, child, P, None, Some(9)),
            exit(10_002, P, 1, None, Some(9)),
        ]);
        assert_eq!(reports.len(), 2, "{reports:#?}");
        let (sleeper, init) = (&reports[0], &reports[1]);
        assert_eq!(codes(sleeper), vec![KilledByKernel]);
        assert_eq!(
            codes(init),
            vec![SignalIgnoredByPid1, SignalNotForwarded, SigkillAfterGrace]
        );
        assert!(
            init.findings[0].message.contains("tini"),
            "{}",
            init.findings[0].message
        );
        assert!(init.findings[1].message.contains("101"));
        let kill = init.sigkill.as_ref().unwrap();
        assert_eq!(
            (kill.after_sigterm_ms, init.sigkill_first),
            (Some(10_000), true)
        );
    }

    #[test]
    fn clients_refused_within_the_after_exit_window_are_counted() {
        let report = only(&[
            listen(0, P, ListenAction::Open),
            term(100, P),
            delivered(100, P, 15, Handler::Default),
            exit(101, P, 1, None, Some(15)),
            at_exit(101, P, Role::Listener, 0),
            reset(200, None, Some(P)),
            reset(4_000, None, Some(P)),
            reset(5_200, None, Some(P)), // after the 5 s window
            reset(300, None, Some(999)), // someone else's port
        ]);
        assert_eq!(report.refused_after_exit, 2);
        assert_eq!(
            codes(&report),
            vec![NoSigtermHandler, ListenerNotClosed, RefusedAfterExit]
        );
        assert!(
            report.findings[2].message.contains("port 8080"),
            "{}",
            report.findings[2].message
        );
        assert_eq!(report.listener_closed_ms, Some(1));
    }

    #[test]
    fn a_forking_server_is_one_shutdown_with_its_workers() {
        // nginx: the process that opened the listener forked the master and exited; the
        // master's listener is known from /proc at its SIGTERM. Workers are told over a
        // channel, exit by themselves, and drop their connections at exit.
        let (master, worker) = (200, 201);
        let mut stop = term(1_000, master);
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.listening = vec!["127.0.0.1:8080".into()];
        }
        let lines = [
            listen(0, 199, ListenAction::Open),
            exit(1, 199, 1, Some(0), None),
            stop,
            delivered(1_000, master, 15, Handler::Custom),
            exit(1_010, worker, master, Some(0), None),
            at_exit(1_010, worker, Role::Inbound, 7001),
            at_exit(1_010, worker, Role::Inbound, 7002),
            reset(1_010, Some(worker), None),
            at_exit(1_020, master, Role::Listener, 0),
            exit(1_020, master, 1, Some(0), None),
            reset(1_500, None, Some(worker)),
            reset(1_600, None, None),
        ];
        let reports = shutdowns(&lines);
        assert_eq!(
            reports.len(),
            1,
            "only the master was told to stop: {reports:#?}"
        );
        let report = &reports[0];
        assert_eq!(report.pid, master);
        assert_eq!(
            report.open_at_exit.len(),
            3,
            "the worker's two connections and the master's listener: {report:#?}"
        );
        assert_eq!((report.resets_sent, report.refused_after_exit), (1, 2));
        assert_eq!(report.listener_closed_ms, Some(20));
        assert_eq!(
            codes(report),
            vec![
                ConnectionsOpenAtExit,
                ListenerNotClosed,
                ResetsSent,
                RefusedAfterExit
            ],
            "no SIGNAL_NOT_FORWARDED: the worker exited by itself"
        );
    }

    #[test]
    fn a_reload_is_not_the_start_of_the_shutdown() {
        let mut reload = signal_with(
            0,
            P,
            1,
            SignalResult::Delivered,
            Origin::User,
            Some(P),
            SUPERVISOR,
        );
        if let Event::Signal(signal) = &mut reload.event {
            signal.sig_name = "SIGHUP".into();
        }
        let report = only(&[
            reload,
            delivered(0, P, 1, Handler::Custom),
            accept(100, P),
            term(5_000, P),
            delivered(5_000, P, 15, Handler::Custom),
            exit(5_040, P, 1, Some(0), None),
        ]);
        assert_eq!(
            report.sigterm.as_ref().map(|t| t.sig_name.as_str()),
            Some("SIGTERM")
        );
        assert_eq!(
            (report.drain_ms, report.accepted_after_signal),
            (Some(40), 0)
        );
        assert_eq!(report.verdict, Verdict::Clean);
    }

    #[test]
    fn lost_events_make_reports_incomplete() {
        let report = only(&[
            term(0, P),
            line(5, Event::Lost(LostEvent { count: 3 })),
            exit(10, P, 1, Some(0), None),
        ]);
        assert!(!report.complete);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let reports = shutdowns(&[
            term(0, P),
            delivered(0, P, 15, Handler::Custom),
            exit(10, P, 1, Some(0), None),
            kill(2_000, P),
            exit(2_001, P, 1, None, Some(9)),
        ]);
        assert_eq!(reports.len(), 2, "{reports:#?}");
        assert_eq!(
            (reports[0].verdict, reports[1].verdict),
            (Verdict::Clean, Verdict::Killed)
        );
        assert!(reports[1].sigterm.is_none());
    }

    #[test]
    fn processes_never_told_to_stop_get_no_report() {
        assert!(
            shutdowns(&[
                exit(0, P, 1, Some(0), None),
                exit(1, 101, 1, None, Some(11))
            ])
            .is_empty()
        );
    }

    #[test]
    fn reports_wait_for_their_deadline_plus_slack() {
        let mut correlator = Correlator::new(config());
        for l in [term(0, P), exit(10, P, 1, Some(0), None)] {
            assert!(correlator.observe(&l).is_empty());
        }
        // Deadline: exit + 5 s = 5010 ms; written once time passes it by the slack.
        assert!(
            correlator
                .observe(&exit(5_500, 555, 1, Some(0), None))
                .is_empty()
        );
        let start = 1_000_000 * MS;
        assert!(correlator.advance(start + 6_000 * MS).is_empty());
        let due = correlator.advance(start + 6_011 * MS);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].mono_ns, start + 5_010 * MS);
        assert_eq!(
            clock::parse_rfc3339(&due[0].time),
            Some(due[0].mono_ns as i128 + 1_700_000_000_000_000_000)
        );
    }

    #[test]
    fn a_deploy_pairs_stopped_instances_with_their_replacement() {
        let new = 300;
        let lines = [
            listen(0, P, ListenAction::Open),
            listen(0, 101, ListenAction::Open),
            term(1_000, P),
            term(1_000, 101),
            delivered(1_000, P, 15, Handler::Custom),
            delivered(1_000, 101, 15, Handler::Default),
            listen(1_010, P, ListenAction::Close),
            exit(1_020, P, 1, Some(0), None),
            exit(1_030, 101, 1, None, Some(15)),
            at_exit(1_030, 101, Role::Listener, 0),
            at_exit(1_030, 101, Role::Inbound, 6000),
            listen(1_880, new, ListenAction::Open),
        ];
        let out = run(&lines);
        let deploys: Vec<_> = out
            .iter()
            .filter_map(|l| match &l.event {
                Event::Deploy(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(deploys.len(), 1, "{out:#?}");
        let deploy = deploys[0];
        assert_eq!(deploy.service, "unit:app.service");
        assert_eq!(
            (deploy.stopped.clone(), deploy.started_pids.clone()),
            (vec![P, 101], vec![new])
        );
        assert_eq!(deploy.listener_gap_ms, Some(850));
        assert_eq!(
            (deploy.dropped_connections, deploy.verdict),
            (1, Verdict::Dropped)
        );
        let deploy_codes: Vec<_> = deploy.findings.iter().map(|f| f.code).collect();
        assert_eq!(
            deploy_codes,
            vec![NoSigtermHandler, ConnectionsOpenAtExit, ListenerNotClosed]
        );
        // The deploy comes after both shutdown reports.
        assert_eq!(out.last().map(|l| l.event.type_name()), Some("deploy"));
    }

    #[test]
    fn replaying_the_written_lines_gives_the_same_reports() {
        let lines = [
            listen(0, P, ListenAction::Open),
            term(100, P),
            delivered(100, P, 15, Handler::Custom),
            accept(120, P),
            listen(130, P, ListenAction::Close),
            exit(200, P, 1, Some(0), None),
            kill(9_000, 101),
            exit(9_001, 101, 1, None, Some(9)),
            exit(20_000, 5, 1, Some(0), None),
        ];
        // Live: the clock advances between events; replay: only the events.
        let mut live = Correlator::new(config());
        let mut live_out = Vec::new();
        for l in &lines {
            live_out.extend(live.advance(l.mono_ns - 1));
            live_out.extend(live.observe(l));
        }
        live_out.extend(live.finish());
        let json = |out: &[Line]| out.iter().map(Line::to_json).collect::<Vec<_>>();
        assert_eq!(json(&live_out), json(&run(&lines)));
        // Both processes are in app.service within the deploy window: one deploy.
        assert_eq!(live_out.len(), 3, "two shutdowns and their deploy");
    }
}
