//! Deploys: the shutdowns of one service close together in time, the instances that
//! replaced them, and the gap in between. Pure.
use std::collections::BTreeSet;

use crate::{
    event::{DeployReport, Finding, FindingCode, Severity, ShutdownReport, Verdict, port_of},
    reports::shutdown::ProcessShutdown,
};

/// Pids a deploy report lists, of those stopped and of those started; the rest are
/// counted (`stopped_total`, `started_total`), so the line stays small.
pub const LISTED_PIDS: usize = 256;
/// A deploy takes no more instances than this, nor terminations after it has run this
/// long: a busy service's stops are written in bounded pieces, not one that never ends
/// (under steady churn the deploy window never closes).
pub const MAX_INSTANCES: u32 = 1_000;
pub const MAX_DURATION_NS: u64 = 10 * 60 * 1_000_000_000;

/// A deploy being watched: what its stopped instances add up to (counts, the worst
/// verdict, each finding code once), never the instances themselves, so its memory is
/// bounded whatever the service does.
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
    /// Processes told to stop so far (reported or not).
    terminations: u32,
    /// pids told to stop whose shutdown report is not out yet.
    pending: BTreeSet<u32>,
    stopped: PidList,
    worst: Verdict,
    dropped_connections: u32,
    refused_after_exit: u32,
    drain_ms_max: Option<u64>,
    routing_lag_ms: Option<u64>,
    findings: Vec<Finding>,
    /// When the last instance that listened stopped listening; `None` inside once one
    /// such instance's moment is unknown.
    listeners_gone_ns: Option<Option<u64>>,
    /// Processes that began listening in the service during the deploy.
    started: PidList,
    first_replacement_ns: Option<u64>,
    ended: Option<(u64, String)>,
}

/// Pids, the first [`LISTED_PIDS`] listed and all of them counted.
#[derive(Debug, Default)]
struct PidList {
    listed: Vec<u32>,
    total: u32,
}

impl PidList {
    fn push(&mut self, pid: u32) {
        if self.listed.last() == Some(&pid) {
            return;
        }
        self.total += 1;
        if self.listed.len() < LISTED_PIDS {
            self.listed.push(pid);
        }
    }

    fn contains(&self, pid: u32) -> bool {
        self.listed.contains(&pid)
    }
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
            terminations: 0,
            pending: BTreeSet::new(),
            stopped: PidList::default(),
            worst: Verdict::Clean,
            dropped_connections: 0,
            refused_after_exit: 0,
            drain_ms_max: None,
            routing_lag_ms: None,
            findings: Vec::new(),
            listeners_gone_ns: None,
            started: PidList::default(),
            first_replacement_ns: None,
            ended: None,
        }
    }

    /// Whether a termination at `mono_ns` still belongs to this deploy: within the
    /// window of the last one, and the deploy neither full nor too old.
    pub fn accepts(&self, mono_ns: u64, window_ns: u64) -> bool {
        mono_ns <= self.window_end(window_ns)
            && self.terminations < MAX_INSTANCES
            && mono_ns.saturating_sub(self.started_ns) < MAX_DURATION_NS
    }

    /// Another process of the service was told to stop.
    pub fn termination(&mut self, pid: u32, ports: &[u16], mono_ns: u64) {
        self.last_termination_ns = self.last_termination_ns.max(mono_ns);
        if self.pending.insert(pid) {
            self.terminations += 1;
        }
        self.ports.extend(ports);
    }

    /// `pid` turned out to belong to another service's deploy (a worker whose master
    /// was told to stop after it).
    pub fn forget(&mut self, pid: u32) {
        if self.pending.remove(&pid) {
            self.terminations -= 1;
        }
    }

    /// Whether `pid` was told to stop in it and its report is not out yet.
    pub fn awaits(&self, pid: u32) -> bool {
        self.pending.contains(&pid)
    }

    /// Nothing left in it: no process waiting for its report, none reported.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.stopped.total == 0
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
        if self.pending.contains(&pid) || self.stopped.contains(pid) {
            return;
        }
        let same_service = if self.service.starts_with("comm:") {
            comm == self.comm && port_of(local).is_some_and(|p| self.ports.contains(&p))
        } else {
            service == self.service
        };
        if same_service && mono_ns >= self.started_ns {
            self.started.push(pid);
            self.first_replacement_ns.get_or_insert(mono_ns);
        }
    }

    /// A stopped process's report is out: what it adds to the deploy (`report` is the
    /// one just written for `shutdown`, its findings and verdict computed once).
    pub fn shutdown_reported(&mut self, shutdown: &ProcessShutdown, report: &ShutdownReport) {
        self.pending.remove(&shutdown.pid);
        self.ended = match (self.ended.take(), &shutdown.exit, shutdown.exit_ns) {
            (Some((ns, time)), _, Some(exit_ns)) if ns >= exit_ns => Some((ns, time)),
            (_, Some(exit), Some(exit_ns)) => Some((exit_ns, exit.time.clone())),
            (ended, _, _) => ended,
        };
        self.stopped.push(shutdown.pid);
        self.worst = self.worst.max(report.verdict);
        self.dropped_connections += shutdown.dropped_connections();
        self.refused_after_exit += shutdown.refused_after_exit;
        self.drain_ms_max = self.drain_ms_max.max(report.drain_ms);
        self.routing_lag_ms = self.routing_lag_ms.max(report.routing_lag_ms);
        for finding in &report.findings {
            self.add_finding(finding.clone());
        }
        if !shutdown.listening_at_signal.is_empty() {
            let gone = shutdown.listeners_closed_ns.or(shutdown.exit_ns);
            self.listeners_gone_ns = Some(match (self.listeners_gone_ns, gone) {
                (Some(Some(seen)), Some(gone)) => Some(seen.max(gone)),
                (None, gone) => gone,
                _ => None,
            });
        }
    }

    /// Each code once, an error if it was one anywhere; refusals are the deploy's error.
    fn add_finding(&mut self, mut finding: Finding) {
        if finding.code == FindingCode::RefusedAfterExit {
            finding.severity = Severity::Error;
        }
        match self.findings.iter_mut().find(|f| f.code == finding.code) {
            Some(seen) if finding.severity == Severity::Error => seen.severity = Severity::Error,
            Some(_) => {}
            None => self.findings.push(finding),
        }
    }

    /// Ready once the window has closed (or the deploy is full, or too old) and every
    /// shutdown report is out.
    pub fn is_done(&self, now_ns: u64, window_ns: u64) -> bool {
        self.pending.is_empty() && !self.accepts(now_ns, window_ns)
    }

    /// The deploy's verdict is its worst instance's, and `dropped` when clients were
    /// refused after an instance exited: the platform still routed to it, which is the
    /// deploy's failure even when each process stopped well.
    pub fn report(&self) -> DeployReport {
        let verdict = if self.refused_after_exit > 0 {
            self.worst.max(Verdict::Dropped)
        } else {
            self.worst
        };
        DeployReport {
            service: self.service.clone(),
            started: self.started_time.clone(),
            ended: self
                .ended
                .as_ref()
                .map_or_else(|| self.started_time.clone(), |(_, time)| time.clone()),
            stopped: self.stopped.listed.clone(),
            stopped_total: self.stopped.total,
            started_pids: self.started.listed.clone(),
            started_total: self.started.total,
            listener_gap_ms: self.listener_gap_ms(),
            dropped_connections: self.dropped_connections,
            refused_after_exit: self.refused_after_exit,
            drain_ms_max: self.drain_ms_max,
            routing_lag_ms: self.routing_lag_ms,
            verdict,
            findings: self.findings.clone(),
        }
    }

    /// From the moment no stopped instance listened any more to the first replacement
    /// listening (0 when the replacement listened first); null without both.
    fn listener_gap_ms(&self) -> Option<u64> {
        let closed = self.listeners_gone_ns??;
        let opened = self.first_replacement_ns?;
        Some(opened.saturating_sub(closed) / 1_000_000)
    }
}
