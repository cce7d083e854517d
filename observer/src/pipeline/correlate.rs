//! Raw event lines in, `shutdown` and `deploy` report lines out. Pure: it sees exactly the
//! lines observer writes, so `observer report LOG` reproduces live reports byte for byte.
//!
//! Time is the events' own (CLOCK_MONOTONIC `mono_ns`). A process's report covers the
//! events up to its exit plus `--after-exit`, and the closes of its sockets that its exit
//! makes within [`EXIT_CLOSING_NS`]; it is written once a later event (or, live, the
//! clock) is past both by [`SLACK_NS`], which absorbs events from different CPUs
//! arriving slightly out of order. When the input ends, pending reports are written
//! with what was seen.
use std::collections::BTreeSet;

use crate::{
    bounded::BoundedMap,
    event::{
        ContainerInfo, DeliveredEvent, Direction, Event, ExitEvent, ExitInfo, Handler, Line,
        ListenAction, OpenConnection, Origin, ProcessRef, Role, SCHEMA_VERSION, SigkillInfo,
        SignalEvent, SignalResult, SignalStep, SigtermInfo, TcpCloseAtExitEvent, TcpListenEvent,
        TcpRefusedEvent, TcpResetEvent, port_of,
    },
    host::clock,
    host::containers,
    host::identity,
    host::signals,
    reports::deploy::Deploy,
    reports::shutdown::{ParentSignal, ProcessShutdown, exit_convention},
};

/// How long past a deadline a report waits for stragglers.
pub const SLACK_NS: u64 = 1_000_000_000;

/// How long after its exit a process's sockets may still be closing. The kernel runs
/// exit_mm() (a large address space takes long to unmap) between sched_process_exit and
/// exit_files(), and an exiting task can wait for a CPU in between: up to 2.75 s
/// measured for 3,000 servers stopped at once on a busy 2-CPU host. The closes at exit
/// and the resets they send count in the report when they come within this, whatever
/// `--after-exit` is, and the report waits for it.
pub const EXIT_CLOSING_NS: u64 = 5_000_000_000;

/// Processes whose listeners are tracked at once.
const TRACKED_LISTENERS: usize = 65_536;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// After a process exits, how long to keep counting clients refused on its ports.
    pub after_exit_ns: u64,
    /// A deploy ends this long after the last termination signal in its service.
    pub deploy_window_ns: u64,
}

/// Listener closes remembered per process after a signal outside the termination set.
const MAX_REMEMBERED_CLOSES: usize = 64;

/// A signal outside the termination set, remembered until its target exits.
struct OtherSignal {
    mono_ns: u64,
    event: SignalEvent,
    step: SignalStep,
    /// Listeners its target held then, and those its program closed since (when).
    listening: BTreeSet<String>,
    closed: Vec<(String, u64)>,
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
    /// Exited, waiting for their deadline (exit + `--after-exit`) and their sockets'
    /// closes (see [`held_until`]).
    exited: Vec<(u64, ProcessShutdown)>,
    /// Children that exited after their parent's termination signal without one of
    /// their own (workers told to stop by their master), and children whose stop joined
    /// their parent's: child pid → parent pid. What comes for them once no report of
    /// their own counts it (connections and RSTs at exit, clients refused on a port the
    /// kernel last saw them accept on) counts in the parent's report.
    adopted: BoundedMap<u32, u32>,
    /// The latest signal outside the termination set each process got, with its step:
    /// if the process exits soon after, that signal stopped it.
    other_signals: BoundedMap<u32, OtherSignal>,
    deploys: Vec<Deploy>,
    out: Vec<Line>,
    /// The container of the process the line being applied is about.
    line_container: Option<ContainerInfo>,
    /// The process whose report counted the refusal the line being applied is (if so).
    refusal_counted_for: Option<u32>,
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
            other_signals: BoundedMap::new(TRACKED_LISTENERS),
            deploys: Vec::new(),
            out: Vec::new(),
            line_container: None,
            refusal_counted_for: None,
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

    /// The process whose report counted the refusal (a `tcp_reset` with no socket) just
    /// observed; None if none did, or the line was no refusal.
    pub fn refusal_counted_for(&self) -> Option<u32> {
        self.refusal_counted_for
    }

    /// Whether a line at `now_ns` (or the clock reaching it) makes a shutdown report due.
    pub fn reports_due(&self, now_ns: u64) -> bool {
        let until = now_ns.saturating_sub(SLACK_NS);
        self.exited
            .iter()
            .any(|(deadline, s)| held_until(*deadline, s) < until)
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
        self.exited
            .sort_by_key(|(deadline, s)| (held_until(*deadline, s), s.pid));
        while self
            .exited
            .first()
            .is_some_and(|(deadline, s)| held_until(*deadline, s) < until_ns)
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
        let report = shutdown.report();
        if let Some(deploy) = self.deploys.iter_mut().find(|d| d.awaits(shutdown.pid)) {
            deploy.shutdown_reported(&shutdown, &report);
        }
        let container = shutdown.container_info;
        self.push_about(mono_ns, Event::Shutdown(Box::new(report)), container);
    }

    fn push(&mut self, mono_ns: u64, event: Event) {
        self.push_about(mono_ns, event, None);
    }

    fn push_about(&mut self, mono_ns: u64, event: Event, container_info: Option<ContainerInfo>) {
        self.out.push(Line {
            v: SCHEMA_VERSION,
            event,
            time: clock::rfc3339(mono_ns as i128 + self.wall_offset_ns),
            mono_ns,
            host: self.host.clone(),
            container_info,
        });
    }

    /// The record of `pid` that an event at `mono_ns` belongs to: the live one, else the
    /// latest exited one whose window is still open; for an adopted child, its parent's.
    fn record(&mut self, pid: u32, mono_ns: u64) -> Option<&mut ProcessShutdown> {
        self.record_within(pid, mono_ns, |deadline, _| deadline)
    }

    /// Like [`Self::record`], for what `pid`'s exit itself does (its sockets closing, the
    /// resets that sends): counted while its sockets may still be closing.
    fn record_of_exit(&mut self, pid: u32, mono_ns: u64) -> Option<&mut ProcessShutdown> {
        self.record_within(pid, mono_ns, held_until)
    }

    /// The record of `pid` (or its adopter) live, or exited with `mono_ns` at most
    /// `until(deadline, record)`.
    fn record_within(
        &mut self,
        pid: u32,
        mono_ns: u64,
        until: impl Fn(u64, &ProcessShutdown) -> u64,
    ) -> Option<&mut ProcessShutdown> {
        let pid = match self.live.get(&pid) {
            Some(_) => return self.live.get_mut(&pid),
            None if !self.exited.iter().any(|(_, s)| s.pid == pid) => {
                self.adopted.get(&pid).copied().unwrap_or(pid)
            }
            None => pid,
        };
        self.live_or_exited(pid, |deadline, s| mono_ns <= until(deadline, s))
    }

    /// The live record of `pid`, else its latest exited one for which `open(deadline,
    /// record)` holds.
    fn live_or_exited(
        &mut self,
        pid: u32,
        open: impl Fn(u64, &ProcessShutdown) -> bool,
    ) -> Option<&mut ProcessShutdown> {
        if self.live.contains(&pid) {
            return self.live.get_mut(&pid);
        }
        self.exited
            .iter_mut()
            .rev()
            .find(|(deadline, s)| s.pid == pid && open(*deadline, s))
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
        self.line_container.clone_from(&line.container_info);
        self.refusal_counted_for = None;
        match &line.event {
            Event::Signal(e) if starts_a_stop(e.sig, line.container_info.as_ref()) => {
                self.on_termination_signal(e, mono, time)
            }
            Event::Signal(e) => self.on_other_signal(e, mono, time),
            Event::SignalDelivered(e) => self.on_delivered(e, mono),
            Event::Exit(e) => self.on_exit(e, mono, time),
            Event::TcpListen(e) => self.on_listen(e, mono),
            Event::TcpCloseAtExit(e) => self.on_close_at_exit(e, mono),
            Event::TcpCloseInFlight(e) => self.on_close_in_flight(e, mono),
            Event::TcpAccept(e) => {
                if let Some(shutdown) = self.record(e.pid, mono)
                    && shutdown
                        .first_signal_ns
                        .is_some_and(|signal| signal <= mono)
                {
                    shutdown.accepted_after_signal += 1;
                    shutdown.last_accept_ns = Some(mono);
                }
            }
            Event::TcpReset(e) if e.direction == Direction::Sent => self.on_reset_sent(e, mono),
            Event::TcpRefused(e) => self.on_refusals(e, mono),
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

    /// A termination signal: the process's record (new at its first), its timeline, and
    /// its deploy.
    fn on_termination_signal(&mut self, e: &SignalEvent, mono: u64, time: &str) {
        let pid = e.target.pid;
        if !self.live.contains(&pid) {
            let shutdown = self.new_record(e);
            self.live.insert(pid, shutdown);
        }
        let Some(shutdown) = self.live.get_mut(&pid) else {
            return;
        };
        // A SIGHUP its handler took, then SIGTERM/INT/QUIT: the SIGHUP was a reload
        // (nginx, many daemons); the shutdown starts now.
        let reloaded = shutdown.sigterm_sig == Some(signals::SIGHUP)
            && shutdown.handled_ns.is_some()
            && e.sig != signals::SIGHUP
            && e.sig != signals::SIGKILL;
        if reloaded {
            shutdown.restart_at_signal();
        }
        shutdown.add_step(mono, step(e, time, shutdown.handled_ns.is_some()));
        let first = shutdown.first_signal_ns.is_none();
        if first {
            shutdown.first_signal_ns = Some(mono);
            shutdown.namespace_init = e.target.ns_pid == Some(1);
            shutdown.children_at_signal.clone_from(&e.target.children);
            shutdown.exe.clone_from(&e.target.exe);
            shutdown.cmdline.clone_from(&e.target.cmdline);
        }
        if e.sig == signals::SIGKILL {
            if shutdown.sigkill.is_none() {
                shutdown.sigkill = Some(SigkillInfo {
                    time: time.to_string(),
                    from: e.sender.clone(),
                    after_sigterm_ms: None,
                });
                shutdown.sigkill_ns = Some(mono);
                shutdown.sigkill_by_kernel = e.origin == Origin::Kernel;
            }
        } else if shutdown.sigterm.is_none() {
            shutdown.sigterm = Some(SigtermInfo {
                time: time.to_string(),
                sig_name: e.sig_name.clone(),
                from: e.sender.clone(),
                result: e.result,
                handler: None,
                disposition: e.disposition,
                blocked: e.blocked == Some(true),
            });
            shutdown.sigterm_sig = Some(e.sig);
            shutdown.sigterm_ns = Some(mono);
        }
        if e.sig == signals::SIGKILL && e.origin == Origin::Kernel {
            self.note_namespace_teardown(pid, &e.sender, mono);
        }
        // A signal the process sent itself is no evidence of its handler; one the kernel
        // sent on its behalf (a dying namespace init's SIGKILLs) neither.
        if e.sender.pid != pid
            && e.origin != Origin::Kernel
            && let Some(sender) = self.live.get_mut(&e.sender.pid)
            && sender.first_signal_ns.is_some_and(|at| at <= mono)
        {
            sender.signalled_others = true;
        }
        if first {
            self.join_deploy(pid, &e.target.children, mono, time);
        }
    }

    /// A new record for the target of `e`, with the listeners it held: seen opening, or
    /// in /proc at the signal. Those its parent or a child of its holds too (a pre-fork
    /// master's listener, inherited by its workers) are marked shared, in both records.
    fn new_record(&mut self, e: &SignalEvent) -> ProcessShutdown {
        let pid = e.target.pid;
        let mut listening = self
            .listening
            .get(&pid)
            .map(|l| l.sockets.clone())
            .unwrap_or_default();
        listening.extend(e.target.listening.iter().cloned());
        let mut shutdown =
            ProcessShutdown::new(pid, &e.target.comm, e.target.cgroup.clone(), listening);
        if let Some(info) = &self.line_container {
            shutdown.set_container(info.clone());
        }
        let children = &e.target.children;
        for other in self.records_mut() {
            let related = other.children_at_signal.contains(&pid) || children.contains(&other.pid);
            if other.pid == pid || !related {
                continue;
            }
            // A child with a termination signal of its own stops by itself; its parent
            // waits for it (a service manager signalling the whole group).
            if children.contains(&other.pid) {
                shutdown.children_signalled += 1;
            } else {
                other.children_signalled += 1;
            }
            let shared: Vec<String> = other
                .listening_at_signal
                .intersection(&shutdown.listening_at_signal)
                .cloned()
                .collect();
            other.shared_listeners.extend(shared.iter().cloned());
            shutdown.shared_listeners.extend(shared);
        }
        shutdown
    }

    fn records_mut(&mut self) -> impl Iterator<Item = &mut ProcessShutdown> {
        self.live
            .values_mut()
            .chain(self.exited.iter_mut().map(|(_, s)| s))
    }

    /// The kernel SIGKILLed `pid` from `sender`: if that is a namespace's init being
    /// told to stop, its exit is tearing the namespace down (zap_pid_ns_processes()).
    fn note_namespace_teardown(&mut self, pid: u32, sender: &ProcessRef, mono: u64) {
        if sender.pid == pid {
            return;
        }
        let init = self
            .record(sender.pid, mono)
            .is_some_and(|s| s.namespace_init);
        if init && let Some(shutdown) = self.live.get_mut(&pid) {
            shutdown.killed_with_namespace = Some(sender.clone());
        }
    }

    /// A process's first termination signal puts it in a deploy: its parent's, when its
    /// parent is being stopped too (a pre-fork master's workers), else its service's.
    /// Its own children already in another deploy move to its deploy.
    fn join_deploy(&mut self, pid: u32, children: &[u32], mono: u64, time: &str) {
        if let Some((service, workload, told)) = self.told_parent(pid, None, mono) {
            self.follow_parent(pid, &service, workload, told);
        }
        let Some(shutdown) = self.live.get_mut(&pid) else {
            return;
        };
        if !shutdown.workload {
            return;
        }
        let (service, ports) = (shutdown.service.clone(), shutdown.ports());
        self.deploy_for(&service, pid, mono, time)
            .termination(pid, &ports, mono);
        for &child in children {
            let moved = self
                .live
                .get_mut(&child)
                .filter(|c| c.service != service)
                .map(|c| {
                    c.workload = true;
                    std::mem::replace(&mut c.service, service.clone())
                });
            if moved.is_some() {
                self.leave_deploys(child);
                self.deploy_for(&service, pid, mono, time)
                    .termination(child, &[], mono);
            }
        }
    }

    /// A process told to stop exits with `ppid` (the kernel's fact) as its parent, and
    /// that parent was told first, but its record does not know: /proc was read for the
    /// parent's signal after this child was gone, so it was missing from the parent's
    /// children (a pre-fork worker its master stopped at once). It joins its parent's
    /// deploy now, as its signal would have; leaving it under a service of its own
    /// (its command without the listener it shared) would split the deploy.
    fn join_parent_at_exit(&mut self, pid: u32, ppid: u32) {
        let Some((first_ns, time)) = self.live.get(&pid).and_then(|s| {
            let first = s.first_signal_ns.filter(|_| s.parent_told.is_none())?;
            Some((first, s.steps.first()?.1.time.clone()))
        }) else {
            return;
        };
        let Some((service, workload, told)) = self.told_parent(pid, Some(ppid), first_ns) else {
            return;
        };
        self.leave_deploys(pid);
        let Some(shutdown) = self.follow_parent(pid, &service, workload, told) else {
            return;
        };
        if workload {
            let ports = shutdown.ports();
            self.deploy_for(&service, pid, first_ns, &time)
                .termination(pid, &ports, first_ns);
        }
    }

    /// The live `pid` stops as part of its parent's stop: under the parent's service,
    /// told by it, and adopted by it for what comes once its own report is written.
    fn follow_parent(
        &mut self,
        pid: u32,
        service: &str,
        workload: bool,
        told: ParentSignal,
    ) -> Option<&mut ProcessShutdown> {
        let shutdown = self.live.get_mut(&pid)?;
        shutdown.service = service.to_string();
        shutdown.workload = workload;
        self.adopted.insert(pid, told.parent.pid);
        shutdown.parent_told = Some(told);
        Some(shutdown)
    }

    /// `pid` turned out to belong to another deploy: it leaves the ones it was in, and
    /// a deploy left with nothing goes.
    fn leave_deploys(&mut self, pid: u32) {
        self.deploys.iter_mut().for_each(|d| d.forget(pid));
        self.deploys.retain(|d| !d.is_empty());
    }

    /// The parent of `pid` told to stop by `mono`: the one whose children at its signal
    /// list `pid`, or `ppid` when known and told within a deploy window of `mono`,
    /// before or after (a supervisor that took a SIGHUP as a reload an hour ago did not
    /// start this stop; a service manager signalling the whole group reaches the
    /// workers before their master). Its service, whether that is a workload, and its
    /// signal.
    fn told_parent(
        &mut self,
        pid: u32,
        ppid: Option<u32>,
        mono: u64,
    ) -> Option<(String, bool, ParentSignal)> {
        let window = self.config.deploy_window_ns;
        self.records_mut()
            .find(|s| {
                let Some(at) = s.first_signal_ns else {
                    return false;
                };
                s.pid != pid
                    && ((at <= mono && s.children_at_signal.contains(&pid))
                        || (Some(s.pid) == ppid && at.abs_diff(mono) <= window))
            })
            .map(|s| {
                let told = ParentSignal {
                    parent: ProcessRef {
                        pid: s.pid,
                        comm: s.comm.clone(),
                        via: Vec::new(),
                    },
                    sig_name: s
                        .sigterm
                        .as_ref()
                        .map_or_else(|| "SIGKILL".to_string(), |t| t.sig_name.clone()),
                    mono_ns: s.first_signal_ns.unwrap_or(mono),
                };
                (s.service.clone(), s.workload, told)
            })
    }

    /// The open deploy of `service`, or a new one started by `pid`'s signal.
    fn deploy_for(&mut self, service: &str, pid: u32, mono: u64, time: &str) -> &mut Deploy {
        let window = self.config.deploy_window_ns;
        let open = self
            .deploys
            .iter()
            .position(|d| d.service == service && d.accepts(mono, window));
        let index = match open {
            Some(index) => index,
            None => {
                let first = self.pending_record(pid).map_or_else(
                    || ProcessShutdown::new(pid, "", None, BTreeSet::new()),
                    |s| s.clone(),
                );
                self.deploys.push(Deploy::new(service, &first, mono, time));
                self.deploys.len() - 1
            }
        };
        &mut self.deploys[index]
    }

    /// A signal outside the termination set (one `--signals` asked for, e.g. SIGUSR1 or
    /// SIGWINCH): part of a stop under way, or remembered in case the process exits.
    fn on_other_signal(&mut self, e: &SignalEvent, mono: u64, time: &str) {
        let pid = e.target.pid;
        if let Some(shutdown) = self.live.get_mut(&pid) {
            let reraised = shutdown.handled_ns.is_some();
            shutdown.add_step(mono, step(e, time, reraised));
        } else {
            let listening = self
                .listening
                .get(&pid)
                .map(|l| l.sockets.clone())
                .unwrap_or_default();
            let other = OtherSignal {
                mono_ns: mono,
                event: e.clone(),
                step: step(e, time, false),
                listening,
                closed: Vec::new(),
            };
            self.other_signals.insert(pid, other);
        }
    }

    fn on_delivered(&mut self, e: &DeliveredEvent, mono: u64) {
        let pid = e.target.pid;
        if let Some(shutdown) = self.live.get_mut(&pid) {
            shutdown.delivered(e.sig, e.handler, mono);
            if let Some(term) = &mut shutdown.sigterm
                && shutdown.sigterm_sig == Some(e.sig)
                && term.handler.is_none()
            {
                term.handler = Some(e.handler);
                term.result = SignalResult::Delivered;
            }
        } else if let Some(other) = self.other_signals.get_mut(&pid)
            && other.step.sig == e.sig
            && other.step.handler.is_none()
        {
            other.step.handler = Some(e.handler);
        }
    }

    fn on_exit(&mut self, e: &ExitEvent, mono: u64, time: &str) {
        self.listening.remove(&e.pid);
        if let Some(ppid) = e.ppid {
            self.join_parent_at_exit(e.pid, ppid);
        }
        let died_of_termination = e
            .signal
            .is_some_and(|sig| starts_a_stop(sig, self.line_container.as_ref()));
        let shutdown = match self.live.remove(&e.pid) {
            Some(shutdown) => Some(shutdown),
            None => self.stopped_by_other_signal(e, mono).or_else(|| {
                died_of_termination.then(|| {
                    ProcessShutdown::new(e.pid, &e.comm, e.cgroup.clone(), BTreeSet::new())
                })
            }),
        };
        self.other_signals.remove(&e.pid);
        let got_termination = shutdown.as_ref().is_some_and(|s| s.sigterm.is_some());
        if !got_termination && let Some(parent) = self.parent_record(e.pid, e.ppid, mono) {
            // Killed without being told (e.g. by its namespace's init dying): the
            // parent did not forward the signal. Exited by itself: it was told some
            // other way (nginx's channel), and is part of the parent's stop.
            if e.signal.is_some() {
                parent.child_killed_unsignalled(e.pid);
            } else {
                parent.children_stopped_by_themselves += 1;
            }
            if shutdown.is_none() {
                let parent = parent.pid;
                self.adopted.insert(e.pid, parent);
            }
        }
        let Some(mut shutdown) = shutdown else {
            return;
        };
        // The exit's cgroup comes from the kernel's cgroup id: it fills in a cgroup that
        // /proc no longer had when the signal was enriched.
        if shutdown.cgroup.is_none() {
            shutdown.cgroup.clone_from(&e.cgroup);
        }
        if shutdown.container_info.is_none() {
            shutdown.container_info.clone_from(&self.line_container);
        }
        for child in &e.children {
            if !shutdown.children_at_signal.contains(child) {
                shutdown.children_at_signal.push(*child);
            }
        }
        let received: Vec<i32> = shutdown.steps.iter().map(|(_, s)| s.sig).collect();
        shutdown.exit = Some(ExitInfo {
            time: time.to_string(),
            code: e.code,
            signal: e.signal,
            status: e.status,
            core_dumped: e.core_dumped,
            convention: exit_convention(e.code, &received),
        });
        shutdown.exit_ns = Some(mono);
        self.exited
            .push((mono + self.config.after_exit_ns, shutdown));
    }

    /// A process with no termination signal exits within a deploy window of another
    /// signal observer reports: that signal stopped it (SIGUSR1, SIGWINCH soft stops).
    fn stopped_by_other_signal(&mut self, e: &ExitEvent, mono: u64) -> Option<ProcessShutdown> {
        let OtherSignal {
            mono_ns: at,
            event: mut signal,
            step,
            listening,
            closed,
        } = self.other_signals.remove(&e.pid)?;
        if mono.saturating_sub(at) > self.config.deploy_window_ns {
            return None;
        }
        signal.target.listening.extend(listening);
        let mut shutdown = self.new_record(&signal);
        shutdown.first_signal_ns = Some(at);
        for (local, closed_ns) in &closed {
            shutdown.listener_closed(local, *closed_ns);
        }
        shutdown
            .children_at_signal
            .clone_from(&signal.target.children);
        shutdown.exe.clone_from(&signal.target.exe);
        shutdown.cmdline.clone_from(&signal.target.cmdline);
        shutdown.sigterm = Some(SigtermInfo {
            time: step.time.clone(),
            sig_name: step.sig_name.clone(),
            from: step.from.clone(),
            result: if step.handler.is_some() {
                SignalResult::Delivered
            } else {
                step.result
            },
            handler: step.handler,
            disposition: signal.disposition,
            blocked: signal.blocked == Some(true),
        });
        shutdown.sigterm_sig = Some(step.sig);
        shutdown.sigterm_ns = Some(at);
        if step.handler == Some(Handler::Custom) {
            shutdown.handled_ns = Some(at);
        }
        let signal_time = step.time.clone();
        shutdown.add_step(at, step);
        self.live.insert(e.pid, shutdown);
        let children = signal.target.children.clone();
        self.join_deploy(e.pid, &children, at, &signal_time);
        self.live.remove(&e.pid)
    }

    fn on_listen(&mut self, e: &TcpListenEvent, mono: u64) {
        match e.action {
            ListenAction::Open => {
                if !self.listening.contains(&e.pid) {
                    let empty = Listening {
                        sockets: BTreeSet::new(),
                    };
                    self.listening.insert(e.pid, empty);
                }
                if let Some(entry) = self.listening.get_mut(&e.pid) {
                    entry.sockets.insert(e.local.clone());
                }
                let ports: Vec<u16> = port_of(&e.local).into_iter().collect();
                let service = self
                    .line_container
                    .as_ref()
                    .and_then(containers::service)
                    .unwrap_or_else(|| identity::service(e.cgroup.as_deref(), &e.comm, &ports));
                for deploy in &mut self.deploys {
                    deploy.listener_opened(e.pid, &service, &e.comm, &e.local, mono);
                }
            }
            ListenAction::Close => {
                if let Some(entry) = self.listening.get_mut(&e.pid) {
                    entry.sockets.remove(&e.local);
                }
                if let Some(other) = self.other_signals.get_mut(&e.pid)
                    && other.closed.len() < MAX_REMEMBERED_CLOSES
                {
                    other.closed.push((e.local.clone(), mono));
                }
                let closer = self.record(e.pid, mono).map(|s| s.pid);
                // The socket is gone for every process of the tree that held it: its
                // last holder closed it.
                for shutdown in self.records_mut() {
                    if Some(shutdown.pid) == closer || shutdown.shared_listeners.contains(&e.local)
                    {
                        shutdown.listener_closed(&e.local, mono);
                    }
                }
            }
        }
    }

    fn on_close_at_exit(&mut self, e: &TcpCloseAtExitEvent, mono: u64) {
        // A worker's sockets count for its master (adoption, in `record`).
        let Some(shutdown) = self.record_of_exit(e.pid, mono) else {
            return;
        };
        shutdown.at_exit.add(OpenConnection {
            local: e.local.clone(),
            remote: e.remote.clone(),
            state: e.state.clone(),
            role: e.role,
            activity: e.activity,
        });
        if e.role == Role::Listener {
            shutdown.listener_closed_at_exit(&e.local);
            let (pid, server_unknown) = (shutdown.pid, !shutdown.workload);
            for other in self.records_mut() {
                if other.shared_listeners.contains(&e.local) {
                    other.listener_closed_at_exit(&e.local);
                }
            }
            if server_unknown {
                self.listened_after_all(pid, &e.local);
            }
        }
    }

    /// `pid`, not known to listen when told to stop (gone before /proc was read, its
    /// listener opened before observer started: HAProxy's worker in a hard stop), closed
    /// a listener as it exited: it was a server. Its stop, and that of the parent that
    /// told it, join the deploy they would have joined had the listener been seen.
    fn listened_after_all(&mut self, pid: u32, local: &str) {
        let ports: Vec<u16> = port_of(local).into_iter().collect();
        let Some(told_by) = self.pending_record(pid).map(|s| s.parent_told.clone()) else {
            return;
        };
        let root = told_by.map_or(pid, |told| told.parent.pid);
        let Some(service) = self
            .pending_record(root)
            .map(|s| identity::service(s.cgroup.as_deref(), &s.comm, &ports))
        else {
            return;
        };
        for member in BTreeSet::from([root, pid]) {
            let Some(record) = self.pending_record(member) else {
                continue;
            };
            let Some((first_ns, time)) = record
                .first_signal_ns
                .zip(record.steps.first().map(|(_, step)| step.time.clone()))
            else {
                continue;
            };
            record.workload = true;
            record.service.clone_from(&service);
            let listened = if member == pid { &ports[..] } else { &[] };
            self.deploy_for(&service, root, first_ns, &time)
                .termination(member, listened, first_ns);
        }
    }

    /// The record of `pid` whose report is not written yet: live, else the latest exited.
    fn pending_record(&mut self, pid: u32) -> Option<&mut ProcessShutdown> {
        self.live_or_exited(pid, |_, _| true)
    }

    /// A process shutting down closed a client's connection with a request in flight.
    fn on_close_in_flight(&mut self, e: &TcpCloseAtExitEvent, mono: u64) {
        // A worker's count for its master (adoption, in `record`).
        if let Some(shutdown) = self.record(e.pid, mono)
            && shutdown
                .first_signal_ns
                .is_some_and(|signal| signal <= mono)
        {
            shutdown.closed_in_flight += 1;
            shutdown.at_exit.remember_cut(&e.remote);
        }
    }

    fn on_reset_sent(&mut self, e: &TcpResetEvent, mono: u64) {
        if let Some(pid) = e.pid {
            // HAProxy aborts its connection to a backend (SO_LINGER 0) whenever it is
            // done with it, stopping or not: that RST reaches no client.
            if e.role == Some(Role::Outbound) {
                return;
            }
            if let Some(shutdown) = self.record_of_exit(pid, mono)
                && shutdown
                    .first_signal_ns
                    .is_some_and(|signal| signal <= mono)
            {
                shutdown.resets_sent += 1;
                // A request cut at exit with unread data is reset as it is closed: the
                // same lost client, counted once.
                let cut = shutdown.at_exit.cut(&e.remote);
                if !cut {
                    shutdown.resets_on_other_connections += 1;
                }
            }
            return;
        }
        // A client refused on a port its last listener (or that one's master) left
        // when it exited; else (no listener was seen closing: it opened before observer
        // started) the process that listened on the port and exited last, in its window.
        // Each refused client counts once, for one process.
        let target = match &e.former_owner {
            Some(former) => self.refusal_owner(former.pid, mono),
            None if e.reason.as_deref() == Some("NO_SOCKET") => {
                port_of(&e.local).and_then(|port| self.last_exited_listener(port, mono))
            }
            None => None,
        };
        if let Some(pid) = target
            && let Some(shutdown) = self.record(pid, mono)
        {
            shutdown.refused_after_exit += 1;
            shutdown.last_refused_ns = Some(mono);
            self.refusal_counted_for = Some(pid);
        }
    }

    /// The process a refusal on a port `pid` listened on counts for: `pid`, exited by
    /// `mono` and within its window; else its adopter (the parent that told it to
    /// stop), likewise: the kernel may name a pre-fork worker, the last to accept
    /// there, that exited long before its master closed the port.
    fn refusal_owner(&mut self, pid: u32, mono: u64) -> Option<u32> {
        self.exited_within_window(pid, mono).or_else(|| {
            let parent = *self.adopted.get(&pid)?;
            self.exited_within_window(parent, mono)
        })
    }

    /// The record counting what happens to `pid` at `mono`, if it had exited by then.
    fn exited_within_window(&mut self, pid: u32, mono: u64) -> Option<u32> {
        self.record(pid, mono)
            .filter(|s| s.exit_ns.is_some_and(|exit| exit <= mono))
            .map(|s| s.pid)
    }

    /// Refusals counted in a `tcp_refused` line, from a saved log (live, the pipeline
    /// shows the correlator each refusal instead): the line names the report they count
    /// for, decided when each was seen.
    fn on_refusals(&mut self, e: &TcpRefusedEvent, mono: u64) {
        if let Some(pid) = e.counted_for
            && let Some(shutdown) = self.record(pid, mono)
        {
            let sent = u32::try_from(e.sent).unwrap_or(u32::MAX);
            shutdown.refused_after_exit = shutdown.refused_after_exit.saturating_add(sent);
            shutdown.last_refused_ns = shutdown.last_refused_ns.max(Some(e.last_mono_ns));
        }
    }

    /// The process that listened on `port` when told to stop and exited last before
    /// `mono`, its report still open.
    fn last_exited_listener(&self, port: u16, mono: u64) -> Option<u32> {
        self.exited
            .iter()
            .filter(|(deadline, s)| {
                mono <= *deadline
                    && s.ports().contains(&port)
                    && s.exit_ns.is_some_and(|exit| exit <= mono)
            })
            .max_by_key(|(_, s)| s.exit_ns)
            .map(|(_, s)| s.pid)
    }
}

/// Whether `sig` starts a process's stop: a termination signal, or the stop signal of the
/// container it runs in (`docker stop` sends HAProxy's image SIGUSR1).
fn starts_a_stop(sig: i32, container: Option<&ContainerInfo>) -> bool {
    signals::TERMINATION_SIGNALS.contains(&sig)
        || container
            .and_then(|c| c.stop_signal.as_deref())
            .is_some_and(|stop| stop == signals::name(sig))
}

/// When an exited process's report may be written: past its deadline, and past the time
/// its sockets may still be closing ([`EXIT_CLOSING_NS`]).
fn held_until(deadline: u64, shutdown: &ProcessShutdown) -> u64 {
    let closing = shutdown
        .exit_ns
        .map_or(0, |exit| exit.saturating_add(EXIT_CLOSING_NS));
    deadline.max(closing)
}

/// A signal as a step of a stop's timeline; `after_own_handler` when the target had
/// already run a handler of its own for a termination signal (a re-raise, if it sent
/// this one to itself).
fn step(e: &SignalEvent, time: &str, after_own_handler: bool) -> SignalStep {
    SignalStep {
        time: time.to_string(),
        sig: e.sig,
        sig_name: e.sig_name.clone(),
        from: e.sender.clone(),
        result: e.result,
        handler: None,
        reraised: after_own_handler && e.sender.pid == e.target.pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        Activity, DeliveredEvent, Direction, ExitEvent, FindingCode, FindingCode::*, Handler,
        LostEvent, Origin, Role, Severity, ShutdownReport, SignalEvent, StatusSource,
        TcpAcceptEvent, TcpCloseAtExitEvent, TcpListenEvent, TcpRefusedEvent, TcpResetEvent,
        ThreadRef, Verdict,
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
            container_info: None,
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
                    via: Vec::new(),
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
                disposition: None,
                blocked: None,
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

    /// `sig` from `sender`'s kill() to `pid`, outside any PID namespace of its own.
    fn signal_from(at: u64, pid: u32, sig: i32, sender: u32) -> Line {
        signal_with(
            at,
            pid,
            sig,
            SignalResult::Delivered,
            Origin::User,
            None,
            sender,
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
                activity: None,
                unread_bytes: None,
                unsent_bytes: None,
            }),
        )
    }

    fn at_exit_with(at: u64, pid: u32, remote_port: u16, activity: Activity) -> Line {
        let mut line = at_exit(at, pid, Role::Inbound, remote_port);
        if let Event::TcpCloseAtExit(close) = &mut line.event {
            close.activity = Some(activity);
        }
        line
    }

    /// `pid` sends `sig` to itself (raise()).
    fn self_signal(at: u64, pid: u32, sig: i32) -> Line {
        let mut line = signal_with(
            at,
            pid,
            sig,
            SignalResult::Delivered,
            Origin::Tkill,
            None,
            pid,
        );
        if let Event::Signal(signal) = &mut line.event {
            signal.sender.comm = "app".into();
        }
        line
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

    /// `pid`, stopping, closes a client's connection whose request had no answer.
    fn close_in_flight(at: u64, pid: u32, remote_port: u16) -> Line {
        let mut line = at_exit_with(at, pid, remote_port, Activity::InFlight);
        if let Event::TcpCloseAtExit(close) = line.event {
            line.event = Event::TcpCloseInFlight(close);
        }
        line
    }

    /// `pid` resets a connection it made (the kernel saw its connect()).
    fn outbound_reset(at: u64, pid: u32) -> Line {
        let mut line = reset(at, Some(pid), None);
        if let Event::TcpReset(reset) = &mut line.event {
            reset.role = Some(Role::Outbound);
        }
        line
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
                    via: Vec::new(),
                }),
                role: None,
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

    /// The one deploy in `out`.
    fn the_deploy(out: &[Line]) -> &crate::event::DeployReport {
        let deploys: Vec<_> = out
            .iter()
            .filter_map(|l| match &l.event {
                Event::Deploy(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(deploys.len(), 1, "{out:#?}");
        deploys[0]
    }

    fn only(lines: &[Line]) -> ShutdownReport {
        let mut reports = shutdowns(lines);
        assert_eq!(reports.len(), 1, "{reports:#?}");
        reports.remove(0)
    }

    /// The report on `pid` among `reports`.
    fn report_of(reports: &[ShutdownReport], pid: u32) -> &ShutdownReport {
        reports.iter().find(|r| r.pid == pid).unwrap()
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
                "a client's request cut by the process's own close, and the RST it sent",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    close_in_flight(1_000, P, 50_000),
                    reset(1_000, Some(P), None),
                    exit(1_010, P, 1, Some(0), None),
                ],
                Verdict::Dropped,
                vec![ConnectionsClosedInFlight, ResetsSent],
            ),
            (
                "a proxy aborting its connection to a backend: no client reset",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    outbound_reset(5, P),
                    exit(10, P, 1, Some(0), None),
                ],
                Verdict::Clean,
                vec![],
            ),
            (
                "connections cut by the exit (no word from the kernel on their traffic)",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    exit(10, P, 1, Some(0), None),
                    at_exit(10, P, Role::Inbound, 5432),
                ],
                Verdict::Dropped,
                vec![ConnectionsOpenAtExit],
            ),
            (
                "a request in flight cut, an idle connection closed",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    listen(105, P, Close),
                    exit(200, P, 1, Some(0), None),
                    at_exit_with(200, P, 5001, Activity::InFlight),
                    at_exit_with(200, P, 5002, Activity::Idle),
                ],
                Verdict::Dropped,
                vec![ConnectionsOpenAtExit, KeepaliveOpenAtExit],
            ),
            (
                "only idle connections closed at exit: every client had its answer",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    exit(200, P, 1, Some(0), None),
                    at_exit_with(200, P, 5002, Activity::Idle),
                ],
                Verdict::Clean,
                vec![KeepaliveOpenAtExit],
            ),
            (
                "an outbound pool left open",
                vec![
                    term(0, P),
                    delivered(0, P, 15, Handler::Custom),
                    exit(10, P, 1, Some(0), None),
                    at_exit(10, P, Role::Outbound, 5432),
                ],
                Verdict::Clean,
                vec![OutboundOpenAtExit],
            ),
            (
                "drained, then re-raised SIGTERM on itself (uvicorn)",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    listen(150, P, Close),
                    self_signal(900, P, 15),
                    delivered(900, P, 15, Handler::Default),
                    exit(901, P, 1, None, Some(15)),
                ],
                Verdict::Clean,
                vec![],
            ),
            (
                "a runtime's handler re-raising at once, still listening (Node)",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    self_signal(100, P, 15),
                    delivered(100, P, 15, Handler::Default),
                    exit(101, P, 1, None, Some(15)),
                    at_exit(101, P, Role::Listener, 0),
                ],
                Verdict::Dropped,
                vec![NoSigtermHandler, ListenerNotClosed],
            ),
            (
                "a runtime's handler re-raising at once, nothing to close",
                vec![
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    self_signal(100, P, 15),
                    delivered(100, P, 15, Handler::Default),
                    exit(101, P, 1, None, Some(15)),
                ],
                Verdict::Dropped,
                vec![NoSigtermHandler],
            ),
            (
                "128+SIGTERM after the shutdown hooks (a JVM)",
                vec![
                    listen(0, P, Open),
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    listen(150, P, Close),
                    exit(2_500, P, 1, Some(143), None),
                ],
                Verdict::Clean,
                vec![],
            ),
            (
                "a worker exiting 1 at once when told by its master",
                vec![
                    term(100, P),
                    delivered(100, P, 15, Handler::Custom),
                    exit(105, P, 1, Some(1), None),
                    at_exit(105, P, Role::Inbound, 5001),
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
        assert_eq!(codes(sleeper), vec![SigkillWithoutSigterm]);
        assert!(
            sleeper.findings[0]
                .message
                .contains("namespace's init `supervisord`[100]"),
            "{}",
            sleeper.findings[0].message
        );
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
        assert_eq!(
            report.listener_closed_ms, None,
            "the kernel closed it at exit: the program never did"
        );
    }

    #[test]
    fn refusals_are_told_to_the_pipeline_and_counted_from_a_saved_logs_tallies() {
        let mut correlator = Correlator::new(config());
        let at = |ms: u64| line(ms, Event::Lost(LostEvent { count: 0 })).mono_ns;
        for l in [
            listen(0, P, ListenAction::Open),
            term(100, P),
            exit(101, P, 1, None, Some(15)),
        ] {
            correlator.observe(&l);
        }
        correlator.observe(&reset(200, None, Some(P)));
        assert_eq!(correlator.refusal_counted_for(), Some(P));
        correlator.observe(&reset(300, None, Some(999)));
        assert_eq!(
            correlator.refusal_counted_for(),
            None,
            "someone else's port"
        );
        assert!(!correlator.reports_due(at(5_000)), "its window is open");
        assert!(correlator.reports_due(at(7_000)));

        // A saved log: the tallies name the report their sent refusals count for.
        let tally = |at: u64, counted_for: Option<u32>, sent: u64| {
            line(
                at,
                Event::TcpRefused(TcpRefusedEvent {
                    refused: "127.0.0.1:8080".into(),
                    port: 8080,
                    sent,
                    received: sent,
                    last_mono_ns: line(at + 900, Event::Lost(LostEvent { count: 0 })).mono_ns,
                    interval_ms: 1_000,
                    former_owner: Some(ProcessRef::new(P, "app")),
                    counted_for,
                    clients: Vec::new(),
                    clients_total: 0,
                }),
            )
        };
        let report = only(&[
            listen(0, P, ListenAction::Open),
            term(100, P),
            exit(101, P, 1, None, Some(15)),
            tally(200, Some(P), 7),
            tally(1_200, None, 5),
        ]);
        assert_eq!(report.refused_after_exit, 7);
        assert_eq!(report.last_refused_after_exit_ms, Some(999));
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
        assert_eq!(
            report.listener_closed_ms, None,
            "the kernel closed the listener at exit, not the program"
        );
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

    /// A service manager signals every process of the group at once (systemd's
    /// KillMode=control-group), the workers first: `sig` from SUPERVISOR to two workers
    /// (`quick`, `slow`) and their master, whose handler runs. `worker_listening` is
    /// what /proc showed each worker holding at its signal, `worker_handler` what the
    /// signal found in them.
    fn group_stop(
        sig: i32,
        worker_listening: Vec<String>,
        worker_handler: Handler,
    ) -> (u32, u32, u32, Vec<Line>) {
        let (master, quick, slow) = (300, 301, 302);
        let target = |mut line: Line, listening: Vec<String>, children: Vec<u32>| {
            if let Event::Signal(signal) = &mut line.event {
                signal.target.listening = listening;
                signal.target.children = children;
            }
            line
        };
        let from = signal_from;
        let lines = vec![
            target(
                from(1_000, quick, sig, SUPERVISOR),
                worker_listening.clone(),
                vec![],
            ),
            target(from(1_000, slow, sig, SUPERVISOR), worker_listening, vec![]),
            // kill(-PGID) reaches the master last.
            target(
                from(1_001, master, sig, SUPERVISOR),
                vec!["127.0.0.1:8080".into()],
                vec![quick, slow],
            ),
            delivered(1_000, quick, sig, worker_handler),
            delivered(1_000, slow, sig, worker_handler),
            delivered(1_001, master, sig, Handler::Custom),
        ];
        (master, quick, slow, lines)
    }

    /// gunicorn under a group stop: an idle worker's handler runs, then its master's
    /// SIGTERM finds Python's default restored as it exits and kills it (status 143);
    /// nothing was cut, so no NO_SIGTERM_HANDLER and no `dropped`.
    #[test]
    fn a_repeated_signal_that_kills_a_worker_after_its_handler_ran_is_named_not_dropped() {
        let (master, quick, slow, mut lines) =
            group_stop(15, vec!["127.0.0.1:8080".into()], Handler::Custom);
        let from_master = |at, pid| signal_from(at, pid, 15, master);
        lines.extend([
            from_master(1_005, quick),
            delivered(1_005, quick, 15, Handler::Default),
            exit(1_005, quick, master, None, Some(15)),
            from_master(1_005, slow),
            delivered(1_005, slow, 15, Handler::Custom),
            exit(3_000, slow, master, Some(0), None),
            exit(3_100, master, 1, Some(0), None),
        ]);
        let reports = shutdowns(&lines);
        let by_pid = |pid| report_of(&reports, pid);
        let killed = by_pid(quick);
        assert_eq!(
            (killed.verdict, codes(killed)),
            (Verdict::Clean, vec![KilledByRepeatedSignal])
        );
        let finding = &killed.findings[0];
        assert_eq!(finding.severity, Severity::Warning);
        assert!(
            finding
                .message
                .contains("from supervisord[10], then a second SIGTERM from supervisord[300]"),
            "{}",
            finding.message
        );
        for pid in [slow, master] {
            assert_eq!(
                (by_pid(pid).verdict, codes(by_pid(pid))),
                (Verdict::Clean, vec![])
            );
        }
        assert_eq!(the_deploy(&run(&lines)).verdict, Verdict::Clean);

        // The same repeat while a request was in flight cut it: an error, with the cut.
        let mut busy = lines.clone();
        let exit_at = busy
            .iter()
            .position(|l| matches!(&l.event, Event::Exit(e) if e.pid == quick))
            .unwrap();
        busy.insert(exit_at + 1, at_exit(1_005, quick, Role::Inbound, 5001));
        let reports = shutdowns(&busy);
        let cut = report_of(&reports, quick);
        assert_eq!(
            (cut.verdict, codes(cut)),
            (
                Verdict::Dropped,
                vec![KilledByRepeatedSignal, ConnectionsOpenAtExit]
            )
        );
        assert_eq!(cut.findings[0].severity, Severity::Error);
    }

    /// Node's cluster under a group stop: the workers have no handler of their own (the
    /// primary disconnects them) and die of the manager's SIGTERM at once, one with a
    /// request in flight. NO_SIGTERM_HANDLER says the other way out too: signal only
    /// the main process.
    #[test]
    fn a_worker_without_a_handler_killed_by_a_group_stop_is_told_of_its_parent() {
        let (master, quick, slow, mut lines) = group_stop(15, vec![], Handler::Default);
        lines.extend([
            exit(1_001, quick, master, None, Some(15)),
            exit(1_001, slow, master, None, Some(15)),
            at_exit(1_001, slow, Role::Inbound, 5001),
            exit(1_020, master, 1, Some(0), None),
        ]);
        let reports = shutdowns(&lines);
        let cut = report_of(&reports, slow);
        assert_eq!(
            (cut.verdict, codes(cut)),
            (
                Verdict::Dropped,
                vec![NoSigtermHandler, ConnectionsOpenAtExit]
            )
        );
        assert!(
            cut.findings[0]
                .message
                .contains("or signal only the main process: its parent `app`[300] got SIGTERM"),
            "{}",
            cut.findings[0].message
        );
    }

    /// nginx under a group stop with SIGQUIT: the workers close their copies of the
    /// listener at once (so /proc shows them none), one drains a download past the
    /// grace period; the master holds the listener and waits for its workers. The
    /// master's handler ran: no HANDLER_NEVER_RAN, though it held a listener no worker
    /// was seen holding.
    #[test]
    fn a_master_waiting_for_workers_signalled_by_the_group_stop_ran_its_handler() {
        let (master, quick, slow, mut lines) = group_stop(3, vec![], Handler::Custom);
        lines.extend([
            exit(1_010, quick, master, Some(0), None),
            kill(11_000, slow),
            exit(11_000, slow, master, None, Some(9)),
            kill(11_000, master),
            exit(11_001, master, 1, None, Some(9)),
            at_exit(11_001, master, Role::Listener, 0),
            // The kernel names the worker that accepted there last as the port's owner.
            reset(11_200, None, Some(quick)),
        ]);
        let reports = shutdowns(&lines);
        let head = report_of(&reports, master);
        assert_eq!(
            (head.verdict, codes(head)),
            (
                Verdict::Killed,
                vec![SigkillAfterGrace, ListenerNotClosed, RefusedAfterExit]
            )
        );
        assert_eq!(head.refused_after_exit, 1);
        let out = run(&lines);
        let deploy = the_deploy(&out);
        let mut stopped = deploy.stopped.clone();
        stopped.sort();
        assert_eq!(
            stopped,
            vec![master, quick, slow],
            "one deploy: {deploy:#?}"
        );
    }

    /// gunicorn: the master gets SIGTERM and signals its workers; one exits at once, one
    /// is busy with a request past the graceful timeout and is SIGKILLed by the master;
    /// all three held the master's listener; clients are refused after the master exits.
    #[test]
    fn a_pre_fork_master_and_its_workers_are_one_deploy_judged_by_outcomes() {
        let (master, idle_worker, busy_worker) = (200, 201, 202);
        let with = |mut line: Line, children: Vec<u32>| {
            if let Event::Signal(signal) = &mut line.event {
                signal.target.listening = vec!["127.0.0.1:8080".into()];
                signal.target.children = children;
            }
            line
        };
        let from_master = |at, pid, sig| with(signal_from(at, pid, sig, master), vec![]);
        let lines = [
            with(term(1_000, master), vec![idle_worker, busy_worker]),
            delivered(1_000, master, 15, Handler::Custom),
            from_master(1_001, idle_worker, 15),
            from_master(1_001, busy_worker, 15),
            delivered(1_001, idle_worker, 15, Handler::Custom),
            delivered(1_001, busy_worker, 15, Handler::Custom),
            exit(1_050, idle_worker, master, Some(0), None),
            from_master(3_000, busy_worker, 9),
            exit(3_001, busy_worker, master, None, Some(9)),
            at_exit_with(3_001, busy_worker, 7001, Activity::InFlight),
            exit(3_100, master, 1, Some(0), None),
            reset(3_200, None, None),
            reset(3_300, None, None),
        ];
        let out = run(&lines);
        let reports = shutdowns(&lines);
        let by_pid = |pid| report_of(&reports, pid);
        let busy = by_pid(busy_worker);
        assert_eq!(
            (busy.verdict, codes(busy)),
            (
                Verdict::Killed,
                vec![SigkillAfterGrace, ConnectionsOpenAtExit]
            ),
            "busy with a request: no HANDLER_NEVER_RAN"
        );
        let head = by_pid(master);
        assert_eq!(
            (head.verdict, codes(head)),
            (Verdict::Clean, vec![RefusedAfterExit])
        );
        let refused: u32 = reports.iter().map(|r| r.refused_after_exit).sum();
        assert_eq!(refused, 2, "each refused client once: {reports:#?}");
        assert_eq!(by_pid(idle_worker).verdict, Verdict::Clean);
        let deploy = the_deploy(&out);
        let mut stopped = deploy.stopped.clone();
        stopped.sort();
        assert_eq!(stopped, vec![master, idle_worker, busy_worker]);
        assert_eq!(
            (
                deploy.dropped_connections,
                deploy.refused_after_exit,
                deploy.verdict
            ),
            (3, 2, Verdict::Killed)
        );
    }

    /// `line` about a process in no unit or cgroup of its own (its service is its command).
    fn outside_units(mut line: Line) -> Line {
        match &mut line.event {
            Event::Signal(signal) => signal.target.cgroup = None,
            Event::Exit(exit) => exit.cgroup = None,
            _ => {}
        }
        line
    }

    /// gunicorn's master stops a worker at once; /proc is read for both signals after
    /// the worker is gone, so the master's children miss it and the worker's listeners
    /// are unknown. Its exit's parent (the kernel's) puts it in its master's deploy.
    #[test]
    fn a_worker_missing_from_its_masters_children_joins_its_deploy_at_exit() {
        let (master, listed, missed) = (400, 401, 402);
        let mut stop = outside_units(term(1_000, master));
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.listening = vec!["127.0.0.1:8080".into()];
            signal.target.children = vec![listed];
        }
        let from_master = |at, pid| {
            outside_units(signal_with(
                at,
                pid,
                15,
                SignalResult::Delivered,
                Origin::User,
                None,
                master,
            ))
        };
        let lines = [
            stop,
            delivered(1_000, master, 15, Handler::Custom),
            from_master(1_001, listed),
            from_master(1_001, missed),
            outside_units(exit(1_050, listed, master, Some(0), None)),
            outside_units(exit(1_099, missed, master, Some(0), None)),
            outside_units(exit(1_200, master, 1, Some(0), None)),
        ];
        let out = run(&lines);
        let reports = shutdowns(&lines);
        let worker = report_of(&reports, missed);
        let head = report_of(&reports, master);
        assert_eq!(worker.service, head.service, "{worker:#?}");
        let mut stopped = the_deploy(&out).stopped.clone();
        stopped.sort();
        assert_eq!(stopped, vec![master, listed, missed]);
    }

    /// observer started after the server: the master holds no listener, the worker dies
    /// before /proc is read, and its listener is only seen closing at its exit. Both
    /// stops are still the server's deploy.
    #[test]
    fn a_listener_first_seen_at_exit_makes_the_stop_a_deploy() {
        let (master, worker) = (500, 501);
        let mut stop = outside_units(term(1_000, master));
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.children = vec![worker];
        }
        let lines = [
            stop,
            delivered(1_000, master, 15, Handler::Custom),
            outside_units(signal_with(
                1_001,
                worker,
                15,
                SignalResult::Delivered,
                Origin::User,
                None,
                master,
            )),
            outside_units(exit(1_005, worker, master, Some(0), None)),
            at_exit(1_006, worker, Role::Listener, 0),
            outside_units(exit(1_010, master, 1, Some(0), None)),
        ];
        let out = run(&lines);
        let deploy = the_deploy(&out);
        assert_eq!(deploy.service, "comm:app:8080");
        let mut stopped = deploy.stopped.clone();
        stopped.sort();
        assert_eq!(stopped, vec![master, worker]);
        let reports = shutdowns(&lines);
        assert!(
            reports.iter().all(|r| r.service == deploy.service),
            "{reports:#?}"
        );
    }

    /// A supervisor took a SIGHUP (a reload) long before it stopped a child it started
    /// since: the child's own stop, not part of a stop of its parent.
    #[test]
    fn a_child_stopped_long_after_its_parents_reload_keeps_its_own_service() {
        let (supervisor, child) = (500, 501);
        let mut reload = signal_with(
            1_000,
            supervisor,
            1,
            SignalResult::Delivered,
            Origin::User,
            None,
            1,
        );
        if let Event::Signal(signal) = &mut reload.event {
            signal.target.cgroup = None;
            signal.target.listening = vec!["127.0.0.1:8080".into()];
        }
        let mut stop = signal_with(
            100_000,
            child,
            15,
            SignalResult::Delivered,
            Origin::User,
            None,
            supervisor,
        );
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.cgroup = None;
        }
        let mut exited = exit(100_010, child, supervisor, Some(0), None);
        if let Event::Exit(exit) = &mut exited.event {
            exit.cgroup = None;
        }
        let lines = [
            reload,
            delivered(1_000, supervisor, 1, Handler::Custom),
            stop,
            exited,
        ];
        let reports = shutdowns(&lines);
        let report = report_of(&reports, child);
        assert_eq!(report.service, "comm:app", "{report:#?}");
    }

    /// nginx: workers told over a channel; after the grace period the platform SIGKILLs
    /// the process group: a busy worker dies without a signal of its own from its master.
    #[test]
    fn a_worker_killed_after_its_masters_grace_period_was_told_through_its_master() {
        let (master, worker, other) = (300, 301, 302);
        let mut stop = term(1_000, master);
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.children = vec![worker, other];
        }
        let lines = [
            stop,
            delivered(1_000, master, 15, Handler::Custom),
            exit(1_200, other, master, Some(0), None),
            kill(11_000, master),
            kill(11_000, worker),
            exit(11_001, worker, master, None, Some(9)),
            exit(11_002, master, 1, None, Some(9)),
        ];
        let reports = shutdowns(&lines);
        let by_pid = |pid| report_of(&reports, pid);
        let busy = by_pid(worker);
        assert_eq!(codes(busy), vec![SigkillAfterGrace]);
        assert!(
            busy.findings[0]
                .message
                .contains("parent `app`[300] got SIGTERM"),
            "{}",
            busy.findings[0].message
        );
        assert_eq!(
            codes(by_pid(master)),
            vec![SigkillAfterGrace],
            "a worker exited by itself: the master tells its workers"
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

    /// A process's sockets close after its exit event, seconds later for a large or a
    /// starved one: they count, and its report waits for them, however short
    /// `--after-exit` is.
    #[test]
    fn closes_at_exit_count_however_short_the_after_exit_window() {
        let config = Config {
            after_exit_ns: 0,
            ..config()
        };
        let mut correlator = Correlator::new(config);
        let lines = [
            term(0, P),
            exit(10, P, 1, None, Some(libc::SIGTERM)),
            at_exit(11, P, Role::Inbound, 50_001),
            at_exit(2_760, P, Role::Listener, 0),
            at_exit(5_011, P, Role::Inbound, 50_002),
        ];
        for l in &lines {
            assert!(correlator.observe(l).is_empty(), "not due before {l:?}");
        }
        let start = 1_000_000 * MS;
        assert!(correlator.advance(start + 6_010 * MS).is_empty());
        let due = correlator.advance(start + 6_011 * MS);
        let Some(Event::Shutdown(report)) = due.first().map(|l| &l.event) else {
            panic!("one report due: {due:?}");
        };
        assert_eq!(due[0].mono_ns, start + 10 * MS, "its time is its deadline");
        let closed: Vec<&str> = report
            .open_at_exit
            .iter()
            .map(|c| c.remote.as_str())
            .collect();
        assert_eq!(
            closed,
            ["127.0.0.1:50001", "0.0.0.0:0"],
            "not the one 5 s late"
        );
    }

    /// Steady churn in one service: a termination every 100 ms for 30 minutes never
    /// leaves a 30 s window, yet deploys are written in bounded pieces.
    #[test]
    fn a_service_under_endless_churn_gets_bounded_deploys() {
        let mut correlator = Correlator::new(config());
        let mut deploys = Vec::new();
        let mut pid = 1_000;
        for at in (0..1_800_000).step_by(100) {
            pid += 1;
            for line in [term(at, pid), exit(at + 1, pid, 1, Some(0), None)] {
                deploys.extend(correlator.observe(&line).into_iter().filter_map(
                    |l| match l.event {
                        Event::Deploy(d) => Some(d),
                        _ => None,
                    },
                ));
            }
        }
        assert!(deploys.len() >= 17, "{} deploys", deploys.len());
        for deploy in &deploys {
            assert!(
                deploy.stopped_total <= crate::reports::deploy::MAX_INSTANCES,
                "{deploy:?}"
            );
            assert!(deploy.stopped.len() <= crate::reports::deploy::LISTED_PIDS);
            let line = serde_json::to_string(deploy).unwrap();
            assert!(line.len() < 8_192, "{} bytes", line.len());
        }
        let stopped: u32 = deploys.iter().map(|d| d.stopped_total).sum();
        assert!(stopped >= 17_000, "every stop is in some deploy: {stopped}");
    }

    /// A shell's job with no unit, container or listener: its report, but no deploy.
    #[test]
    fn a_process_that_is_no_workload_gets_no_deploy() {
        let mut stop = term(0, P);
        if let Event::Signal(signal) = &mut stop.event {
            signal.target.cgroup = Some("/user.slice/user-0.slice/session-3.scope".into());
        }
        let out = run(&[stop, exit(5, P, 1, Some(0), None)]);
        let types: Vec<&str> = out.iter().map(|l| l.event.type_name()).collect();
        assert_eq!(types, ["shutdown"]);
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
        let deploy = the_deploy(&out);
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
