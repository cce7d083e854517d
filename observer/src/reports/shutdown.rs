//! One process's shutdown, accumulated from its events, and the report with its verdict
//! and findings. Pure. The model (docs/verdicts.md): the verdict follows from what the
//! kernel saw happen to clients and to the process, never from program names:
//! - `killed`: SIGKILL ended it;
//! - `dropped`: clients lost work (a request cut at exit, an RST), or it died of a
//!   signal before it had stopped (no handler; a runtime's handler re-raising at once);
//! - `clean`: otherwise, however it exited.
//!
//! Every finding that explains a `dropped` or `killed` verdict is an error; the others
//! are warnings. The verdict is computed from the findings, so the two cannot disagree.
use std::collections::BTreeSet;

use crate::{
    event::{
        ContainerInfo, ExitInfo, Finding, FindingCode, Handler, ProcessRef, Severity,
        ShutdownReport, SigkillInfo, SignalResult, SignalStep, SigtermInfo, Verdict, port_of,
    },
    host::containers,
    host::identity,
    host::signals,
    reports::at_exit::ClosedAtExit,
};

/// Children a finding names; the rest are counted.
const MENTIONED_PIDS: usize = 10;
/// Children remembered as killed without a signal of their own.
const REMEMBERED_CHILDREN: usize = 1024;
/// Signals kept in a report's timeline.
pub const TIMELINE_SIGNALS: usize = 16;
/// A re-raise this soon after its handler ran, by a process with no listener of its own
/// to close, is a runtime's default handler (Node's re-raises from inside the C signal
/// handler, within microseconds), not an application that stopped first.
const RUNTIME_RERAISE_NS: u64 = 5_000_000;
/// A nonzero exit this long after the signal, with connections still open, ended a
/// drain that did not finish (a timeout fallback, which waits hundreds of ms or
/// seconds); one within it is a process told to quit at once (a worker by its master).
const FALLBACK_EXIT_NS: u64 = 250_000_000;

/// A parent's termination signal, as a worker's stop sees it.
#[derive(Clone, Debug)]
pub struct ParentSignal {
    pub parent: ProcessRef,
    pub sig_name: String,
    pub mono_ns: u64,
}

/// What is known of one process from its first termination signal (or its death by
/// one) until its report is due.
#[derive(Clone, Debug)]
pub struct ProcessShutdown {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    /// The service a deploy groups it under, fixed at its first termination signal (or
    /// its parent's, for a worker stopped with its master).
    pub service: String,
    /// An instance of a workload, whose stop belongs in a deploy ([`identity::is_workload`]).
    pub workload: bool,
    /// CLOCK_MONOTONIC of its first termination signal (SIGKILL included).
    pub first_signal_ns: Option<u64>,
    pub sigterm: Option<SigtermInfo>,
    pub sigterm_sig: Option<i32>,
    pub sigterm_ns: Option<u64>,
    /// Every signal of the stop (bounded), with when it came.
    pub steps: Vec<(u64, SignalStep)>,
    /// When a termination signal first reached a handler of its own.
    pub handled_ns: Option<u64>,
    /// PID 1 of its PID namespace, as its first termination signal's target.
    pub namespace_init: bool,
    pub sigkill: Option<SigkillInfo>,
    pub sigkill_ns: Option<u64>,
    pub sigkill_by_kernel: bool,
    /// The namespace init whose exit made the kernel SIGKILL it.
    pub killed_with_namespace: Option<ProcessRef>,
    pub exit: Option<ExitInfo>,
    pub exit_ns: Option<u64>,
    /// Listening sockets it held when its first termination signal came.
    pub listening_at_signal: BTreeSet<String>,
    /// Of those, the ones another process held too (inherited from a master, or handed
    /// to workers): closing its own descriptor changes nothing the kernel reports.
    pub shared_listeners: BTreeSet<String>,
    /// Listening sockets still open.
    pub listening: BTreeSet<String>,
    /// When its program closed its last listener after the signal.
    pub listeners_closed_ns: Option<u64>,
    pub listener_closed_by_program: bool,
    pub accepted_after_signal: u32,
    /// When it accepted its last connection after the signal, and when the last client
    /// was refused on its ports after it exited: how long traffic kept coming.
    pub last_accept_ns: Option<u64>,
    pub last_refused_ns: Option<u64>,
    /// What the kernel closed as it exited (counted; the first few listed).
    pub at_exit: ClosedAtExit,
    pub resets_sent: u32,
    /// RSTs sent on connections other than requests cut at exit (whose RST for unread
    /// data is the same lost client).
    pub resets_on_other_connections: u32,
    /// Inbound connections it closed itself after its signal with a request in flight.
    pub closed_in_flight: u32,
    pub refused_after_exit: u32,
    /// Children that died of a signal after its signal without a termination signal of
    /// their own.
    pub unsignalled_children: Vec<u32>,
    /// Children that exited by themselves after its signal: it tells its children to
    /// stop some way observer cannot see (nginx's channel, Node cluster's IPC).
    pub children_stopped_by_themselves: u32,
    /// Its children at its signal that got a termination signal of their own (every
    /// process of a group signalled at once): they stop by themselves, it waits.
    pub children_signalled: u32,
    /// It sent a signal to another process after its own first termination signal: its
    /// handler ran (a master signalling its workers).
    pub signalled_others: bool,
    /// Its parent's termination signal, when its parent was told to stop before it (a
    /// pre-fork worker): its stop began then.
    pub parent_told: Option<ParentSignal>,
    /// Its children when its first termination signal came.
    pub children_at_signal: Vec<u32>,
    /// False when events were lost while it was being watched.
    pub complete: bool,
    /// Its container, as its runtime recorded it.
    pub container_info: Option<ContainerInfo>,
}

impl ProcessShutdown {
    pub fn new(pid: u32, comm: &str, cgroup: Option<String>, listening: BTreeSet<String>) -> Self {
        let ports: Vec<u16> = listening.iter().filter_map(|l| port_of(l)).collect();
        Self {
            pid,
            comm: comm.to_string(),
            exe: None,
            cmdline: Vec::new(),
            service: identity::service(cgroup.as_deref(), comm, &ports),
            workload: identity::is_workload(cgroup.as_deref(), &ports),
            cgroup,
            first_signal_ns: None,
            sigterm: None,
            sigterm_sig: None,
            sigterm_ns: None,
            steps: Vec::new(),
            handled_ns: None,
            namespace_init: false,
            sigkill: None,
            sigkill_ns: None,
            sigkill_by_kernel: false,
            killed_with_namespace: None,
            exit: None,
            exit_ns: None,
            listening_at_signal: listening.clone(),
            shared_listeners: BTreeSet::new(),
            listening,
            listeners_closed_ns: None,
            listener_closed_by_program: false,
            accepted_after_signal: 0,
            last_accept_ns: None,
            last_refused_ns: None,
            at_exit: ClosedAtExit::default(),
            resets_sent: 0,
            resets_on_other_connections: 0,
            closed_in_flight: 0,
            refused_after_exit: 0,
            unsignalled_children: Vec::new(),
            children_stopped_by_themselves: 0,
            children_signalled: 0,
            signalled_others: false,
            parent_told: None,
            children_at_signal: Vec::new(),
            complete: true,
            container_info: None,
        }
    }

    /// It runs in a container: its service is the container's workload, when its
    /// runtime's metadata names one (a recreated container keeps its service).
    pub fn set_container(&mut self, info: ContainerInfo) {
        if let Some(service) = containers::service(&info) {
            self.service = service;
        }
        self.container_info = Some(info);
    }

    /// A child died of a signal after its signal, without one of its own.
    pub fn child_killed_unsignalled(&mut self, pid: u32) {
        if self.unsignalled_children.len() < REMEMBERED_CHILDREN {
            self.unsignalled_children.push(pid);
        }
    }

    /// Ports it listened on when told to stop.
    pub fn ports(&self) -> Vec<u16> {
        self.listening_at_signal
            .iter()
            .filter_map(|l| port_of(l))
            .collect()
    }

    /// Listeners it held when told to stop that no other process held.
    fn own_listeners(&self) -> impl Iterator<Item = &String> {
        self.listening_at_signal.difference(&self.shared_listeners)
    }

    /// A reload signal turned out not to be the shutdown, which starts now: what was
    /// counted since the reload is forgotten.
    pub fn restart_at_signal(&mut self) {
        self.sigterm = None;
        self.sigterm_sig = None;
        self.sigterm_ns = None;
        self.handled_ns = None;
        self.first_signal_ns = None;
        self.accepted_after_signal = 0;
        self.resets_sent = 0;
        self.resets_on_other_connections = 0;
        self.closed_in_flight = 0;
        self.listening_at_signal = self.listening.clone();
    }

    /// Its program closed a listener of its at `mono_ns`.
    pub fn listener_closed(&mut self, local: &str, mono_ns: u64) {
        if self.listening.remove(local) && self.listening.is_empty() {
            if self.first_signal_ns.is_some_and(|signal| mono_ns >= signal) {
                self.listeners_closed_ns = Some(mono_ns);
            }
            self.listener_closed_by_program = true;
        }
    }

    /// The kernel closed a listener of its as it exited: not a close by the program.
    pub fn listener_closed_at_exit(&mut self, local: &str) {
        self.listening.remove(local);
    }

    /// Records a signal of the stop; `reraised` when the process sent it to itself after
    /// its own handler ran.
    pub fn add_step(&mut self, mono_ns: u64, step: SignalStep) {
        if self.steps.len() < TIMELINE_SIGNALS {
            self.steps.push((mono_ns, step));
        }
    }

    /// A signal was dequeued: fills in the handler of the first step of that signal
    /// still without one.
    pub fn delivered(&mut self, sig: i32, handler: Handler, mono_ns: u64) {
        if let Some((_, step)) = self
            .steps
            .iter_mut()
            .find(|(_, s)| s.sig == sig && s.handler.is_none())
        {
            step.handler = Some(handler);
        }
        let stops = signals::TERMINATION_SIGNALS.contains(&sig) || self.sigterm_sig == Some(sig);
        if handler == Handler::Custom && stops && self.handled_ns.is_none() {
            self.handled_ns = Some(mono_ns);
        }
    }

    /// How long after its stop began traffic was still routed to it: its last accept
    /// after the signal, or its last refused client after the exit, whichever is later.
    pub fn routing_lag_ms(&self) -> Option<u64> {
        let last = self.last_accept_ns.max(self.last_refused_ns)?;
        self.since_signal_ms(Some(last))
    }

    fn since_signal_ms(&self, mono_ns: Option<u64>) -> Option<u64> {
        Some(mono_ns?.saturating_sub(self.first_signal_ns?) / 1_000_000)
    }

    fn died_of(&self) -> Option<i32> {
        self.exit.as_ref().and_then(|e| e.signal)
    }

    /// SIGKILL came while it still ran, and ended it.
    fn sigkill_first(&self) -> bool {
        match &self.exit {
            Some(exit) => exit.signal == Some(signals::SIGKILL),
            None => self.sigkill.is_some(),
        }
    }

    /// Whether it had stopped accepting before it exited: closed its listener itself.
    fn stopped_accepting(&self) -> bool {
        self.listener_closed_by_program && self.listeners_closed_ns.is_some()
    }

    /// Inbound connections cut at exit with a request in flight. Without the kernel's
    /// word on a connection's traffic, one left open by a server that had closed its
    /// listener counts as idle (it stopped accepting and waited), any other in flight.
    pub fn in_flight_at_exit(&self) -> u32 {
        self.at_exit.in_flight(self.stopped_accepting())
    }

    pub fn idle_at_exit(&self) -> u32 {
        self.at_exit.idle(self.stopped_accepting())
    }

    /// Clients it dropped: requests cut at exit or by its own closes, other connections
    /// reset, clients refused after it exited.
    pub fn dropped_connections(&self) -> u32 {
        self.in_flight_at_exit()
            + self.closed_in_flight
            + self.resets_on_other_connections
            + self.refused_after_exit
    }

    pub fn verdict(&self) -> Verdict {
        verdict_of(self.died_of(), &self.findings())
    }

    pub fn report(&self) -> ShutdownReport {
        let mut sigkill = self.sigkill.clone();
        if let Some(kill) = &mut sigkill {
            kill.after_sigterm_ms = self
                .sigterm_ns
                .zip(self.sigkill_ns)
                .map(|(term, kill)| kill.saturating_sub(term) / 1_000_000);
        }
        let findings = self.findings();
        ShutdownReport {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            cmdline: self.cmdline.clone(),
            cgroup: self.cgroup.clone(),
            unit: self.cgroup.as_deref().and_then(identity::unit),
            container: self.cgroup.as_deref().and_then(identity::container),
            pod: self.cgroup.as_deref().and_then(identity::pod),
            sigterm: self.sigterm.clone(),
            sigkill,
            signals: self.steps.iter().map(|(_, step)| step.clone()).collect(),
            sigkill_first: self.sigkill_first(),
            exit: self.exit.clone(),
            drain_ms: self.since_signal_ms(self.exit_ns),
            listener_closed_ms: self.since_signal_ms(self.listeners_closed_ns),
            accepted_after_signal: self.accepted_after_signal,
            service: self.service.clone(),
            last_accepted_after_signal_ms: self.since_signal_ms(self.last_accept_ns),
            last_refused_after_exit_ms: self
                .last_refused_ns
                .zip(self.exit_ns)
                .map(|(refused, exit)| refused.saturating_sub(exit) / 1_000_000),
            routing_lag_ms: self.routing_lag_ms(),
            open_at_exit: self.at_exit.listed().to_vec(),
            open_at_exit_total: self.at_exit.total(),
            open_at_exit_by_role: self.at_exit.by_role(),
            open_at_exit_by_state: self.at_exit.by_state(),
            in_flight_at_exit: self.in_flight_at_exit(),
            idle_at_exit: self.idle_at_exit(),
            resets_sent: self.resets_sent,
            closed_in_flight: self.closed_in_flight,
            refused_after_exit: self.refused_after_exit,
            verdict: verdict_of(self.died_of(), &findings),
            findings,
            complete: self.complete,
        }
    }

    pub fn findings(&self) -> Vec<Finding> {
        let checks: [fn(&Self) -> Option<Finding>; 17] = [
            Self::signal_ignored_by_pid1,
            Self::no_sigterm_handler,
            Self::killed_by_repeated_signal,
            Self::signal_not_forwarded,
            Self::killed_by_kernel,
            Self::sigkill_without_sigterm,
            Self::sigkill_after_grace,
            Self::handler_never_ran,
            Self::requests_cut_at_exit,
            Self::requests_cut_by_its_closes,
            Self::keepalive_open_at_exit,
            Self::outbound_open_at_exit,
            Self::accepted_after_signal,
            Self::listener_not_closed,
            Self::resets_sent,
            Self::refused_after_exit,
            Self::exit_nonzero_after_sigterm,
        ];
        let mut findings: Vec<Finding> = checks.iter().filter_map(|check| check(self)).collect();
        // Killed with no SIGKILL seen (e.g. `--signals` left it out): still say so.
        if self.died_of() == Some(signals::SIGKILL)
            && !findings.iter().any(|f| f.severity == Severity::Error)
        {
            findings.push(error(
                FindingCode::SigkillWithoutSigterm,
                format!(
                    "`{}` was killed by SIGKILL from a sender observer did not see: stop it \
                     with SIGTERM and a grace period so it can drain",
                    self.comm
                ),
            ));
        }
        findings
    }

    fn term_name(&self) -> &str {
        self.sigterm
            .as_ref()
            .map_or("SIGTERM", |t| t.sig_name.as_str())
    }

    fn ms_after_signal(&self, mono_ns: Option<u64>) -> u64 {
        self.since_signal_ms(mono_ns).unwrap_or(0)
    }

    /// The kernel dropped the signal because the process is its namespace's init with no
    /// handler: at generation (`ignored`), or, when the init blocked it then, at delivery
    /// (the default action of a signal to an init is nothing).
    fn signal_ignored_by_pid1(&self) -> Option<Finding> {
        let term = self.sigterm.as_ref()?;
        let died_of_it = self.died_of().is_some() && self.died_of() == self.sigterm_sig;
        let dropped = term.result == SignalResult::Ignored
            || (term.handler == Some(Handler::Default) && !died_of_it);
        (dropped && self.namespace_init).then(|| {
            let disposition = match term.disposition {
                Some(Handler::Ignore) => "ignores it (SIG_IGN)",
                _ => "has no handler for it",
            };
            error(
                FindingCode::SignalIgnoredByPid1,
                format!(
                    "{} reached `{}` as PID 1 of its namespace, which {disposition}, so the \
                     kernel dropped it: use exec form or an init such as tini",
                    self.term_name(),
                    self.comm
                ),
            )
        })
    }

    /// The step of the signal that ended it, if a termination signal (not SIGKILL) did.
    fn fatal_step(&self) -> Option<&(u64, SignalStep)> {
        let sig = self.died_of().filter(|&sig| sig != signals::SIGKILL)?;
        self.steps.iter().rev().find(|(_, step)| step.sig == sig)
    }

    /// It died of a signal before it had stopped: the default action, or a handler that
    /// re-raised the signal without stopping first (a listener of its own still open, or,
    /// with none, within [`RUNTIME_RERAISE_NS`] of the handler running).
    fn no_sigterm_handler(&self) -> Option<Finding> {
        let (at, step) = self.fatal_step()?;
        let comm = &self.comm;
        let name = &step.sig_name;
        if !step.reraised {
            let default = step.handler == Some(Handler::Default)
                || (step.handler.is_none()
                    && self.disposition_of(step.sig) == Some(Handler::Default));
            // A handler of its own took that signal before: KILLED_BY_REPEATED_SIGNAL.
            let handled_before = self.handled_step_before(*at, step.sig).is_some();
            return (default && !handled_before).then(|| {
                error(
                    FindingCode::NoSigtermHandler,
                    format!(
                        "`{comm}` died of {name}'s default action: it has no handler, so work in \
                         flight was cut off; handle {name} (stop accepting, drain, then exit){}",
                        self.parent_stopping_too()
                    ),
                )
            });
        }
        let handled = self.handled_ns.unwrap_or(*at);
        let after = at.saturating_sub(handled);
        let still_listening = self.kept_own_listener();
        let has_own = self.own_listeners().next().is_some();
        let stopped_first = if has_own {
            !still_listening
        } else {
            after >= RUNTIME_RERAISE_NS
        };
        (!stopped_first).then(|| {
            error(
                FindingCode::NoSigtermHandler,
                format!(
                    "`{comm}` re-raised {name} on itself {} ms after its handler ran{}: that is \
                     a runtime's default handler (Node's, for one), not the application \
                     stopping; handle {name} in the application (stop accepting, drain, then \
                     exit){}",
                    after / 1_000_000,
                    if still_listening {
                        ", still listening"
                    } else {
                        ""
                    },
                    self.parent_stopping_too()
                ),
            )
        })
    }

    /// Advice for a worker the platform signalled itself while its parent, told to stop
    /// in the same stop, stops its workers (a service manager signalling the whole
    /// group); empty otherwise.
    fn parent_stopping_too(&self) -> String {
        let first_sender = self.sigterm.as_ref().map(|term| term.from.pid);
        match &self.parent_told {
            Some(told) if first_sender.is_some_and(|sender| sender != told.parent.pid) => format!(
                ", or signal only the main process: its parent `{}`[{}] got {} in the same \
                 stop and stops its workers itself (systemd: KillMode=mixed)",
                told.parent.comm, told.parent.pid, told.sig_name
            ),
            _ => String::new(),
        }
    }

    /// An earlier delivery of `sig`, before `at`, that ran a handler of its own.
    fn handled_step_before(&self, at: u64, sig: i32) -> Option<&(u64, SignalStep)> {
        self.steps.iter().find(|(when, step)| {
            *when < at && step.sig == sig && step.handler == Some(Handler::Custom)
        })
    }

    /// Its handler took the signal, then the same signal came again (from another
    /// sender, or the same one repeating) and found no handler: a one-shot handler, or a
    /// runtime that restores the default action as it exits (Python's does), so the
    /// repeat killed it. A service manager signalling every process of the group while
    /// the main process stops its workers too sends each worker two. An error when it
    /// cut requests in flight; otherwise nothing was lost, but the repeat killed it
    /// instead of letting it exit (and a busier moment would cut work).
    fn killed_by_repeated_signal(&self) -> Option<Finding> {
        let (at, fatal) = self.fatal_step()?;
        if fatal.handler != Some(Handler::Default) || fatal.reraised {
            return None;
        }
        let (handled_at, handled) = self.handled_step_before(*at, fatal.sig)?;
        let (name, comm) = (&fatal.sig_name, &self.comm);
        let sender = |step: &SignalStep| format!("{}[{}]", step.from.comm, step.from.pid);
        let (first, second) = (sender(handled), sender(fatal));
        let advice = if handled.from.pid == fatal.from.pid {
            format!("{first} sent it twice: send {name} once and wait out the grace period")
        } else {
            "more than one process signals it (a service manager signalling the whole \
             group while its parent stops its workers too): signal only the main process \
             and let it stop its workers (systemd: KillMode=mixed)"
                .to_string()
        };
        let cut = self.in_flight_at_exit();
        let message = format!(
            "`{comm}`'s handler took {name} from {first}, then a second {name} from {second} \
             {} ms later found none (a one-shot handler, or a runtime restoring the default \
             as it exits) and killed it{}; {advice}",
            at.saturating_sub(*handled_at) / 1_000_000,
            if cut > 0 {
                format!(" with {cut} requests in flight")
            } else {
                String::new()
            }
        );
        Some(if cut > 0 {
            error(FindingCode::KilledByRepeatedSignal, message)
        } else {
            warning(FindingCode::KilledByRepeatedSignal, message)
        })
    }

    /// A listener of its own was open until it died: never closed by the program.
    fn kept_own_listener(&self) -> bool {
        self.own_listeners()
            .any(|l| self.listening.contains(l) || self.at_exit.listener(l))
    }

    fn disposition_of(&self, sig: i32) -> Option<Handler> {
        let term = self.sigterm.as_ref()?;
        (self.sigterm_sig == Some(sig))
            .then_some(term.disposition)
            .flatten()
    }

    /// Children killed without a termination signal of their own, by a parent that
    /// could not have told them: it ran no handler of its own for the signal (a shell
    /// that died of it, an init that dropped it). A parent whose handler ran may tell
    /// its children over a channel the kernel does not show (nginx, Node cluster's
    /// IPC), as one whose children exited by themselves, or that signalled them, did.
    fn signal_not_forwarded(&self) -> Option<Finding> {
        let tells_children = self.children_stopped_by_themselves > 0
            || self.signalled_others
            || self.handled_ns.is_some();
        if self.unsignalled_children.is_empty() || tells_children {
            return None;
        }
        let mut pids: Vec<String> = self
            .unsignalled_children
            .iter()
            .take(MENTIONED_PIDS)
            .map(u32::to_string)
            .collect();
        let more = self
            .unsignalled_children
            .len()
            .saturating_sub(MENTIONED_PIDS);
        if more > 0 {
            pids.push(format!("and {more} more"));
        }
        Some(error(
            FindingCode::SignalNotForwarded,
            format!(
                "`{}` got {} but its children ({}) never did and were killed: run the app with \
                 exec so it gets signals itself, or use an init that forwards them (tini, \
                 docker --init)",
                self.comm,
                self.term_name(),
                pids.join(", ")
            ),
        ))
    }

    fn sender(&self) -> String {
        self.sigkill.as_ref().map_or("?".to_string(), |k| {
            format!("{}[{}]", k.from.comm, k.from.pid)
        })
    }

    fn killed_by_kernel(&self) -> Option<Finding> {
        (self.sigkill_first() && self.sigkill_by_kernel && self.killed_with_namespace.is_none())
            .then(|| {
                error(
                    FindingCode::KilledByKernel,
                    format!(
                        "the kernel killed `{}` (SIGKILL from {}, e.g. the OOM killer): check \
                         memory limits",
                        self.comm,
                        self.sender()
                    ),
                )
            })
    }

    fn sigkill_without_sigterm(&self) -> Option<Finding> {
        if !self.sigkill_first() || self.sigkill.is_none() || self.sigterm.is_some() {
            return None;
        }
        let comm = &self.comm;
        if let Some(init) = &self.killed_with_namespace {
            return Some(error(
                FindingCode::SigkillWithoutSigterm,
                format!(
                    "`{comm}` was SIGKILLed by the kernel without a SIGTERM when its PID \
                     namespace's init `{}`[{}] exited: make the init forward SIGTERM and wait \
                     for its children (tini, docker --init), or exec the app as PID 1",
                    init.comm, init.pid
                ),
            ));
        }
        if self.sigkill_by_kernel || self.parent_told.is_some() {
            return None;
        }
        Some(error(
            FindingCode::SigkillWithoutSigterm,
            format!(
                "`{comm}` was SIGKILLed by {} without a SIGTERM first: stop it with SIGTERM and \
                 a grace period so it can drain",
                self.sender()
            ),
        ))
    }

    fn sigkill_after_grace(&self) -> Option<Finding> {
        if !self.sigkill_first() || self.sigkill_by_kernel {
            return None;
        }
        if self.sigterm.is_none() {
            return self.sigkill_after_parents_grace();
        }
        let ignored = if self
            .sigterm
            .as_ref()
            .is_some_and(|t| t.result == SignalResult::Ignored)
        {
            format!(" ({} was ignored)", self.term_name())
        } else {
            String::new()
        };
        Some(error(
            FindingCode::SigkillAfterGrace,
            format!(
                "`{}` was still running {} ms after {}{ignored} and was SIGKILLed by {}: finish \
                 draining within the grace period, or raise it",
                self.comm,
                self.ms_after_signal(self.sigkill_ns),
                self.term_name(),
                self.sender()
            ),
        ))
    }

    /// A worker told to stop by its master (its parent got the signal, it got none of
    /// its own), still running when SIGKILL came.
    fn sigkill_after_parents_grace(&self) -> Option<Finding> {
        let told = self.parent_told.as_ref()?;
        let after = self
            .sigkill_ns
            .map_or(0, |kill| kill.saturating_sub(told.mono_ns) / 1_000_000);
        Some(error(
            FindingCode::SigkillAfterGrace,
            format!(
                "`{}` was still running {after} ms after its parent `{}`[{}] got {} and was \
                 SIGKILLed by {}: its parent's stop did not finish within the grace period; \
                 finish draining in time, or raise it",
                self.comm,
                told.parent.comm,
                told.parent.pid,
                told.sig_name,
                self.sender()
            ),
        ))
    }

    /// A handler took the signal, yet the process did nothing the kernel could see until
    /// SIGKILL: a listener of its own stayed open and no request was in flight to keep
    /// it busy (a worker busy with a long request, or holding an inherited listener,
    /// proves nothing of its handler).
    fn handler_never_ran(&self) -> Option<Finding> {
        let handled = self
            .sigterm
            .as_ref()
            .is_some_and(|t| t.handler == Some(Handler::Custom));
        if !handled || self.sigkill_after_grace().is_none() || self.signalled_others {
            return None;
        }
        let closed_before_kill = self
            .listeners_closed_ns
            .zip(self.sigkill_ns)
            .is_some_and(|(closed, kill)| closed < kill);
        let own_listener_open = self.own_listeners().next().is_some() && !closed_before_kill;
        let busy = self.in_flight_at_exit() > 0
            || self.children_stopped_by_themselves > 0
            || self.children_signalled > 0;
        (own_listener_open && !busy).then(|| {
            error(
                FindingCode::HandlerNeverRan,
                format!(
                    "{} was delivered to `{}`'s handler, yet it kept its listener open, served \
                     no request and did not exit in {} ms: its event loop was likely blocked; \
                     keep the loop responsive or handle signals on another thread",
                    self.term_name(),
                    self.comm,
                    self.ms_after_signal(self.sigkill_ns)
                ),
            )
        })
    }

    fn requests_cut_at_exit(&self) -> Option<Finding> {
        let cut = self.in_flight_at_exit();
        (cut > 0).then(|| {
            error(
                FindingCode::ConnectionsOpenAtExit,
                format!(
                    "{cut} inbound connections with a request in flight were cut when `{}` \
                     exited: drain in-flight requests before exiting",
                    self.comm
                ),
            )
        })
    }

    fn requests_cut_by_its_closes(&self) -> Option<Finding> {
        let cut = self.closed_in_flight;
        (cut > 0).then(|| {
            error(
                FindingCode::ConnectionsClosedInFlight,
                format!(
                    "`{}` closed {cut} inbound connections itself while shutting down with a \
                     request in flight (the client had asked and had no answer, or the answer \
                     was still being written): let in-flight requests finish before closing \
                     their connections",
                    self.comm
                ),
            )
        })
    }

    fn keepalive_open_at_exit(&self) -> Option<Finding> {
        let idle = self.idle_at_exit();
        (idle > 0).then(|| {
            warning(
                FindingCode::KeepaliveOpenAtExit,
                format!(
                    "{idle} idle inbound connections were still open when `{}` exited (their \
                     clients had their answers and got a FIN; one sending its next request then \
                     would fail): close idle keep-alive connections on shutdown (e.g. \
                     server.closeIdleConnections(), a short keepAliveTimeout)",
                    self.comm
                ),
            )
        })
    }

    fn outbound_open_at_exit(&self) -> Option<Finding> {
        let outbound = self.at_exit.outbound();
        (outbound > 0).then(|| {
            warning(
                FindingCode::OutboundOpenAtExit,
                format!(
                    "{outbound} outbound connections (to databases, caches, other services) were \
                     still open when `{}` exited: close client pools on shutdown",
                    self.comm
                ),
            )
        })
    }

    fn accepted_after_signal(&self) -> Option<Finding> {
        (self.accepted_after_signal > 0).then(|| {
            warning(
                FindingCode::AcceptedAfterSignal,
                format!(
                    "`{}` accepted {} connections after {}: fail readiness and stop accepting \
                     first, so the load balancer stops sending it traffic",
                    self.comm,
                    self.accepted_after_signal,
                    self.term_name()
                ),
            )
        })
    }

    fn listener_not_closed(&self) -> Option<Finding> {
        let kept = self
            .at_exit
            .listeners()
            .any(|local| !self.shared_listeners.contains(local));
        (kept && self.sigterm.is_some()).then(|| {
            warning(
                FindingCode::ListenerNotClosed,
                format!(
                    "`{}` kept listening until it exited: close the listening socket as soon as \
                     {} arrives",
                    self.comm,
                    self.term_name()
                ),
            )
        })
    }

    fn resets_sent(&self) -> Option<Finding> {
        (self.resets_sent > 0).then(|| {
            error(
                FindingCode::ResetsSent,
                format!(
                    "`{}` sent {} RSTs while shutting down, so clients saw connection resets \
                     (unread requests, or connections still queued on a listener it closed): \
                     finish requests and close connections gracefully",
                    self.comm, self.resets_sent
                ),
            )
        })
    }

    fn refused_after_exit(&self) -> Option<Finding> {
        (self.refused_after_exit > 0).then(|| {
            let ports: Vec<String> = self.ports().iter().map(u16::to_string).collect();
            warning(
                FindingCode::RefusedAfterExit,
                format!(
                    "{} clients were refused on port {} after `{}` exited: traffic was still \
                     routed to it; deregister it from the load balancer before stopping",
                    self.refused_after_exit,
                    ports.join(","),
                    self.comm
                ),
            )
        })
    }

    /// A nonzero exit that ended a drain which had not finished: connections still open,
    /// a second or more after the signal (a timeout fallback). 128+N after signal N is
    /// a convention, and a quick nonzero exit (a worker told by its master) is by design.
    fn exit_nonzero_after_sigterm(&self) -> Option<Finding> {
        let exit = self.exit.as_ref()?;
        let code = exit.code.filter(|&code| code != 0)?;
        self.sigterm.as_ref()?;
        let late = self
            .exit_ns
            .zip(self.first_signal_ns)
            .is_some_and(|(exit, signal)| exit.saturating_sub(signal) >= FALLBACK_EXIT_NS);
        let unfinished = self.at_exit.left_open() > 0;
        (exit.convention.is_none() && late && unfinished).then(|| {
            error(
                FindingCode::ExitNonzeroAfterSigterm,
                format!(
                    "`{}` exited with code {code} {} ms after {} with connections still open (a \
                     timeout fallback fired): find what kept the drain from finishing",
                    self.comm,
                    self.ms_after_signal(self.exit_ns),
                    self.term_name()
                ),
            )
        })
    }
}

fn error(code: FindingCode, message: String) -> Finding {
    Finding {
        code,
        severity: Severity::Error,
        message,
    }
}

fn warning(code: FindingCode, message: String) -> Finding {
    Finding {
        code,
        severity: Severity::Warning,
        message,
    }
}

/// `killed` when SIGKILL ended it; `dropped` when any finding is an error; else `clean`.
pub fn verdict_of(died_of: Option<i32>, findings: &[Finding]) -> Verdict {
    if died_of == Some(signals::SIGKILL) {
        Verdict::Killed
    } else if findings.iter().any(|f| f.severity == Severity::Error) {
        Verdict::Dropped
    } else {
        Verdict::Clean
    }
}

/// `128+SIGTERM` for code 143 after a SIGTERM: the status inits and JVMs give by
/// convention for "stopped by that signal".
pub fn exit_convention(code: Option<i32>, signals_received: &[i32]) -> Option<String> {
    let sig = code? - 128;
    signals_received
        .contains(&sig)
        .then(|| format!("128+{}", signals::name(sig)))
}
