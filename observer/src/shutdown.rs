//! One process's shutdown, accumulated from its events, and the report with its verdict
//! and findings. Pure.
use std::collections::BTreeSet;

use crate::{
    event::{
        ExitInfo, Finding, FindingCode, Handler, OpenConnection, Role, ShutdownReport, SigkillInfo,
        SignalResult, SigtermInfo, Verdict,
    },
    identity, signals,
};

/// What is known of one process from its first termination signal (or its death by
/// one) until its report is due.
#[derive(Clone, Debug)]
pub struct ProcessShutdown {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    /// The service a deploy groups it under, fixed at its first termination signal.
    pub service: String,
    /// CLOCK_MONOTONIC of its first termination signal (SIGKILL included).
    pub first_signal_ns: Option<u64>,
    pub sigterm: Option<SigtermInfo>,
    pub sigterm_ns: Option<u64>,
    /// PID 1 of its PID namespace, as its first termination signal's target.
    pub namespace_init: bool,
    pub sigkill: Option<SigkillInfo>,
    pub sigkill_ns: Option<u64>,
    pub sigkill_by_kernel: bool,
    pub exit: Option<ExitInfo>,
    pub exit_ns: Option<u64>,
    /// Listening sockets it held when its first termination signal came.
    pub listening_at_signal: BTreeSet<String>,
    /// Listening sockets still open.
    pub listening: BTreeSet<String>,
    /// When its last listener closed after the signal, and whether it closed it itself.
    pub listeners_closed_ns: Option<u64>,
    pub listener_closed_by_program: bool,
    pub accepted_after_signal: u32,
    pub open_at_exit: Vec<OpenConnection>,
    pub resets_sent: u32,
    pub refused_after_exit: u32,
    /// Children that died after its signal without a termination signal of their own.
    pub unsignalled_children: Vec<u32>,
    /// Its children when its first termination signal came.
    pub children_at_signal: Vec<u32>,
    /// False when events were lost while it was being watched.
    pub complete: bool,
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
            cgroup,
            first_signal_ns: None,
            sigterm: None,
            sigterm_ns: None,
            namespace_init: false,
            sigkill: None,
            sigkill_ns: None,
            sigkill_by_kernel: false,
            exit: None,
            exit_ns: None,
            listening_at_signal: listening.clone(),
            listening,
            listeners_closed_ns: None,
            listener_closed_by_program: false,
            accepted_after_signal: 0,
            open_at_exit: Vec::new(),
            resets_sent: 0,
            refused_after_exit: 0,
            unsignalled_children: Vec::new(),
            children_at_signal: Vec::new(),
            complete: true,
        }
    }

    /// Ports it listened on when told to stop.
    pub fn ports(&self) -> Vec<u16> {
        self.listening_at_signal
            .iter()
            .filter_map(|l| port_of(l))
            .collect()
    }

    /// A reload signal turned out not to be the shutdown, which starts now: what was
    /// counted since the reload is forgotten.
    pub fn restart_at_signal(&mut self) {
        self.sigterm = None;
        self.sigterm_ns = None;
        self.first_signal_ns = None;
        self.accepted_after_signal = 0;
        self.resets_sent = 0;
        self.listening_at_signal = self.listening.clone();
    }

    /// A listener of its closed at `mono_ns`.
    pub fn listener_closed(&mut self, local: &str, mono_ns: u64, by_program: bool) {
        if self.listening.remove(local) && self.listening.is_empty() {
            if self.first_signal_ns.is_some_and(|signal| mono_ns >= signal) {
                self.listeners_closed_ns = Some(mono_ns);
            }
            self.listener_closed_by_program = by_program;
        }
    }

    fn since_signal_ms(&self, mono_ns: Option<u64>) -> Option<u64> {
        Some(mono_ns?.saturating_sub(self.first_signal_ns?) / 1_000_000)
    }

    /// SIGKILL came while it still ran.
    fn sigkill_first(&self) -> bool {
        match (self.sigkill_ns, self.exit_ns) {
            (Some(kill), Some(exit)) => kill <= exit,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Connections (not listeners) it still held when it exited.
    pub fn connections_open_at_exit(&self) -> impl Iterator<Item = &OpenConnection> {
        self.open_at_exit
            .iter()
            .filter(|c| c.role != Role::Listener)
    }

    pub fn verdict(&self) -> Verdict {
        let exit = self.exit.as_ref();
        if exit.and_then(|e| e.signal) == Some(signals::SIGKILL) {
            Verdict::Killed
        } else if exit.is_some_and(|e| e.code.is_some())
            && self.connections_open_at_exit().next().is_none()
            && self.resets_sent == 0
        {
            Verdict::Clean
        } else {
            Verdict::Dropped
        }
    }

    pub fn report(&self) -> ShutdownReport {
        let mut sigkill = self.sigkill.clone();
        if let Some(kill) = &mut sigkill {
            kill.after_sigterm_ms = self
                .sigterm_ns
                .zip(self.sigkill_ns)
                .map(|(term, kill)| kill.saturating_sub(term) / 1_000_000);
        }
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
            sigkill_first: self.sigkill_first(),
            exit: self.exit.clone(),
            drain_ms: self.since_signal_ms(self.exit_ns),
            listener_closed_ms: self.since_signal_ms(self.listeners_closed_ns),
            accepted_after_signal: self.accepted_after_signal,
            open_at_exit: self.open_at_exit.clone(),
            resets_sent: self.resets_sent,
            refused_after_exit: self.refused_after_exit,
            verdict: self.verdict(),
            findings: self.findings(),
            complete: self.complete,
        }
    }

    pub fn findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut add = |code, message: String| findings.push(Finding { code, message });
        let comm = &self.comm;
        let term_name = self
            .sigterm
            .as_ref()
            .map_or("SIGTERM", |t| t.sig_name.as_str());
        let died_of = self.exit.as_ref().and_then(|e| e.signal);
        let ms = |ns: Option<u64>| self.since_signal_ms(ns).unwrap_or(0);

        if let Some(term) = &self.sigterm {
            if term.result == SignalResult::Ignored && self.namespace_init {
                add(
                    FindingCode::SignalIgnoredByPid1,
                    format!(
                        "{term_name} reached `{comm}` as PID 1 of its namespace, which has no \
                         handler, so the kernel dropped it: use exec form or an init such as tini"
                    ),
                );
            }
            if term.handler == Some(Handler::Default)
                && died_of.is_some_and(|sig| signals::name(sig) == term.sig_name)
            {
                add(
                    FindingCode::NoSigtermHandler,
                    format!(
                        "`{comm}` died of {term_name}'s default action: it has no handler, so \
                         work in flight was cut off; handle {term_name} (stop accepting, drain, \
                         then exit)"
                    ),
                );
            }
        }
        if !self.unsignalled_children.is_empty() {
            let pids: Vec<String> = self
                .unsignalled_children
                .iter()
                .map(u32::to_string)
                .collect();
            add(
                FindingCode::SignalNotForwarded,
                format!(
                    "`{comm}` got {term_name} but its children ({}) never did: run the app with \
                     exec so it gets signals itself, or use an init that forwards them (tini, \
                     docker --init)",
                    pids.join(", ")
                ),
            );
        }
        if self.sigkill_first() {
            let from = self.sigkill.as_ref().map(|k| &k.from);
            let sender = from.map_or("?".to_string(), |p| format!("{}[{}]", p.comm, p.pid));
            if self.sigkill_by_kernel {
                add(
                    FindingCode::KilledByKernel,
                    format!(
                        "the kernel killed `{comm}` (SIGKILL from {sender}: the OOM killer, or \
                         its PID namespace's init exiting): check memory limits and what runs \
                         as PID 1"
                    ),
                );
            } else if self.sigterm.is_some() {
                let after = ms(self.sigkill_ns);
                let ignored = if self
                    .sigterm
                    .as_ref()
                    .is_some_and(|t| t.result == SignalResult::Ignored)
                {
                    format!(" ({term_name} was ignored)")
                } else {
                    String::new()
                };
                add(
                    FindingCode::SigkillAfterGrace,
                    format!(
                        "`{comm}` was still running {after} ms after {term_name}{ignored} and was \
                         SIGKILLed by {sender}: finish draining within the grace period, or \
                         raise it"
                    ),
                );
                let handled = self
                    .sigterm
                    .as_ref()
                    .is_some_and(|t| t.handler == Some(Handler::Custom));
                // Listeners the kernel closed at exit (after SIGKILL) do not count.
                let closed_before_kill = self
                    .listeners_closed_ns
                    .zip(self.sigkill_ns)
                    .is_some_and(|(closed, kill)| closed < kill);
                if handled && !self.listening_at_signal.is_empty() && !closed_before_kill {
                    add(
                        FindingCode::HandlerNeverRan,
                        format!(
                            "{term_name} was delivered to `{comm}`'s handler, yet no listener \
                             closed and it did not exit in {after} ms: its event loop was likely \
                             blocked; keep the loop responsive or handle signals on another thread"
                        ),
                    );
                }
            } else {
                add(
                    FindingCode::SigkillWithoutSigterm,
                    format!(
                        "`{comm}` was SIGKILLed by {sender} without a SIGTERM first: stop it with \
                         SIGTERM and a grace period so it can drain"
                    ),
                );
            }
        }
        let keepalive = self.listener_closed_by_program && self.listeners_closed_ns.is_some();
        let (idle, other): (Vec<&OpenConnection>, Vec<&OpenConnection>) = self
            .connections_open_at_exit()
            .partition(|c| keepalive && c.role == Role::Inbound);
        if !idle.is_empty() {
            add(
                FindingCode::KeepaliveOpenAtExit,
                format!(
                    "{} inbound connections were still open when `{comm}` exited, after it had \
                     closed its listener: close idle keep-alive connections on shutdown (e.g. \
                     server.closeIdleConnections(), a short keepAliveTimeout)",
                    idle.len()
                ),
            );
        }
        if !other.is_empty() {
            add(
                FindingCode::ConnectionsOpenAtExit,
                format!(
                    "{} connections were still open when `{comm}` exited and were cut: drain \
                     in-flight requests and close connections before exiting",
                    other.len()
                ),
            );
        }
        if self.accepted_after_signal > 0 {
            add(
                FindingCode::AcceptedAfterSignal,
                format!(
                    "`{comm}` accepted {} connections after {term_name}: fail readiness and stop \
                     accepting first, so the load balancer stops sending it traffic",
                    self.accepted_after_signal
                ),
            );
        }
        if self.open_at_exit.iter().any(|c| c.role == Role::Listener) {
            add(
                FindingCode::ListenerNotClosed,
                format!(
                    "`{comm}` kept listening until it exited: close the listening socket as soon \
                     as {term_name} arrives"
                ),
            );
        }
        if self.resets_sent > 0 {
            add(
                FindingCode::ResetsSent,
                format!(
                    "`{comm}` sent {} RSTs while shutting down, so clients saw connection resets: \
                     finish requests and close connections gracefully",
                    self.resets_sent
                ),
            );
        }
        if self.refused_after_exit > 0 {
            let ports: Vec<String> = self.ports().iter().map(u16::to_string).collect();
            add(
                FindingCode::RefusedAfterExit,
                format!(
                    "{} clients were refused on port {} after `{comm}` exited: traffic was \
                     still routed to it; deregister it from the load balancer before stopping",
                    self.refused_after_exit,
                    ports.join(",")
                ),
            );
        }
        if let Some(code) = self.exit.as_ref().and_then(|e| e.code)
            && code != 0
            && self.sigterm.is_some()
        {
            add(
                FindingCode::ExitNonzeroAfterSigterm,
                format!(
                    "`{comm}` exited with code {code} {} ms after {term_name} (e.g. a timeout \
                     fallback fired): find what kept the drain from finishing",
                    ms(self.exit_ns)
                ),
            );
        }
        findings
    }
}

pub fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}
