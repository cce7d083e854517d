//! Deploys: the shutdowns of one service close together in time, the instances that
//! replaced them, and the gap in between. Pure.
use std::collections::BTreeSet;

use crate::{
    event::{DeployReport, Finding, FindingCode, Severity, Verdict},
    shutdown::{ProcessShutdown, port_of},
};

/// A deploy being watched.
#[derive(Debug)]
pub struct Deploy {
    pub service: String,
    /// The stopped processes' command, and the ports they listened on (for services
    /// named by command and ports: a replacement listens on one of them).
    comm: String,
    ports: BTreeSet<u16>,
    started_ns: u64,
    started_time: String,
    /// Last termination signal in the service: the window closes a deploy-window later.
    last_termination_ns: u64,
    /// pids told to stop whose shutdown report is not out yet.
    pending: BTreeSet<u32>,
    stopped: Vec<ProcessShutdown>,
    /// Processes that began listening in the service during the deploy: (pid, when).
    replacements: Vec<(u32, u64)>,
    ended: Option<(u64, String)>,
}

impl Deploy {
    pub fn new(service: &str, first: &ProcessShutdown, mono_ns: u64, time: &str) -> Self {
        Self {
            service: service.to_string(),
            comm: first.comm.clone(),
            ports: first.ports().into_iter().collect(),
            started_ns: mono_ns,
            started_time: time.to_string(),
            last_termination_ns: mono_ns,
            pending: BTreeSet::new(),
            stopped: Vec::new(),
            replacements: Vec::new(),
            ended: None,
        }
    }

    /// Another process of the service was told to stop.
    pub fn termination(&mut self, pid: u32, ports: &[u16], mono_ns: u64) {
        self.last_termination_ns = self.last_termination_ns.max(mono_ns);
        self.pending.insert(pid);
        self.ports.extend(ports);
    }

    /// `pid` turned out to belong to another service's deploy (a worker whose master
    /// was told to stop after it).
    pub fn forget(&mut self, pid: u32) {
        self.pending.remove(&pid);
    }

    /// Nothing left in it: no process waiting for its report, none reported.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.stopped.is_empty()
    }

    pub fn window_end(&self, window_ns: u64) -> u64 {
        self.last_termination_ns + window_ns
    }

    /// A process in the service began listening on `local`.
    pub fn listener_opened(
        &mut self,
        pid: u32,
        service: &str,
        comm: &str,
        local: &str,
        mono_ns: u64,
    ) {
        if self.pending.contains(&pid) || self.stopped.iter().any(|s| s.pid == pid) {
            return;
        }
        let same_service = if self.service.starts_with("comm:") {
            comm == self.comm && port_of(local).is_some_and(|p| self.ports.contains(&p))
        } else {
            service == self.service
        };
        if same_service && mono_ns >= self.started_ns {
            self.replacements.push((pid, mono_ns));
        }
    }

    /// A stopped process's report is out.
    pub fn shutdown_reported(&mut self, shutdown: ProcessShutdown) {
        self.pending.remove(&shutdown.pid);
        self.ended = match (self.ended.take(), &shutdown.exit, shutdown.exit_ns) {
            (Some((ns, time)), _, Some(exit_ns)) if ns >= exit_ns => Some((ns, time)),
            (_, Some(exit), Some(exit_ns)) => Some((exit_ns, exit.time.clone())),
            (ended, _, _) => ended,
        };
        self.stopped.push(shutdown);
    }

    /// Ready once the window has closed and every shutdown report is out.
    pub fn is_done(&self, now_ns: u64, window_ns: u64) -> bool {
        self.pending.is_empty() && now_ns > self.window_end(window_ns)
    }

    /// The deploy's verdict is its worst instance's, and `dropped` when clients were
    /// refused after an instance exited: the platform still routed to it, which is the
    /// deploy's failure even when each process stopped well. Its findings are its
    /// instances', each code once (an error if it was one anywhere), with refusals an
    /// error here.
    pub fn report(&self) -> DeployReport {
        let mut findings: Vec<Finding> = Vec::new();
        for shutdown in &self.stopped {
            for mut finding in shutdown.findings() {
                if finding.code == FindingCode::RefusedAfterExit {
                    finding.severity = Severity::Error;
                }
                match findings.iter_mut().find(|f| f.code == finding.code) {
                    Some(seen) if finding.severity == Severity::Error => {
                        seen.severity = Severity::Error
                    }
                    Some(_) => {}
                    None => findings.push(finding),
                }
            }
        }
        let refused_after_exit: u32 = self.stopped.iter().map(|s| s.refused_after_exit).sum();
        let worst = self
            .stopped
            .iter()
            .map(ProcessShutdown::verdict)
            .max()
            .unwrap_or(Verdict::Clean);
        let verdict = if refused_after_exit > 0 {
            worst.max(Verdict::Dropped)
        } else {
            worst
        };
        let dropped_connections = self
            .stopped
            .iter()
            .map(ProcessShutdown::dropped_connections)
            .sum();
        let mut started_pids: Vec<u32> = self.replacements.iter().map(|(pid, _)| *pid).collect();
        started_pids.dedup();
        DeployReport {
            service: self.service.clone(),
            started: self.started_time.clone(),
            ended: self
                .ended
                .as_ref()
                .map_or_else(|| self.started_time.clone(), |(_, time)| time.clone()),
            stopped: self.stopped.iter().map(|s| s.pid).collect(),
            started_pids,
            listener_gap_ms: self.listener_gap_ms(),
            dropped_connections,
            refused_after_exit,
            verdict,
            findings,
        }
    }

    /// From the moment no stopped instance listened any more to the first replacement
    /// listening (0 when the replacement listened first); null without both.
    fn listener_gap_ms(&self) -> Option<u64> {
        let closed = self
            .stopped
            .iter()
            .filter(|s| !s.listening_at_signal.is_empty())
            .map(|s| s.listeners_closed_ns.or(s.exit_ns))
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .max()?;
        let opened = self.replacements.iter().map(|(_, ns)| *ns).min()?;
        Some(opened.saturating_sub(closed) / 1_000_000)
    }
}
