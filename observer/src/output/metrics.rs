//! Prometheus metrics from the lines observer writes: what an SRE alerts on (shutdowns by
//! verdict, SIGKILLs after the grace period, drain time, connections cut at exit, lost
//! events), rendered in the text exposition format. Pure: fed the same lines as the sink.
//!
//! The `service` label is the systemd unit, else a container's workload
//! (`compose:shop/web`, `k8s:shop/web`), or else the process's command: never a pid,
//! container id or cgroup path, whose values never repeat and would grow Prometheus's
//! series without bound. Past `MAX_SERVICES` distinct values, the rest count as "other".
use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{
    bounded::BoundedMap,
    event::{ContainerInfo, Event, FindingCode, Line, ShutdownReport, Verdict},
    host::containers,
};

/// Metrics shared between the pipeline (which updates them) and the HTTP endpoint.
pub type SharedMetrics = Arc<Mutex<Metrics>>;

pub fn lock(shared: &SharedMetrics) -> MutexGuard<'_, Metrics> {
    // A panic elsewhere while holding the lock leaves the counts usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const MAX_SERVICES: usize = 500;
const OTHER_SERVICE: &str = "other";
/// Services of recent shutdowns by pid, to label the deploy reports that name them.
const REMEMBERED_PIDS: usize = 4096;

/// Drain (signal to exit) buckets, seconds: a fast drain up to a long grace period.
const DRAIN_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];
/// Connections still open at exit.
const OPEN_BUCKETS: [f64; 7] = [0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0];

const VERDICTS: [Verdict; 3] = [Verdict::Clean, Verdict::Dropped, Verdict::Killed];

pub struct Metrics {
    /// Records read from the kernel, before any userspace filtering.
    kernel_records: u64,
    events: BTreeMap<&'static str, u64>,
    lost: u64,
    services: BTreeMap<String, ServiceMetrics>,
    service_of_pid: BoundedMap<u32, String>,
}

#[derive(Default)]
struct ServiceMetrics {
    shutdowns: [u64; 3],
    deploys: [u64; 3],
    sigkills_after_grace: u64,
    refused_after_exit: u64,
    resets_sent: u64,
    findings: BTreeMap<FindingCode, u64>,
    drain_seconds: Histogram,
    /// Signal to the last client routed to it (`observer advise`'s routing lag).
    routing_lag_seconds: Histogram,
    open_at_exit: Histogram,
}

#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative); rendering accumulates.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        self.counts.resize(bounds.len(), 0);
        if let Some(bucket) = bounds.iter().position(|&bound| value <= bound) {
            self.counts[bucket] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

impl Metrics {
    pub fn shared() -> SharedMetrics {
        Arc::new(Mutex::new(Self {
            kernel_records: 0,
            events: BTreeMap::new(),
            lost: 0,
            services: BTreeMap::new(),
            service_of_pid: BoundedMap::new(REMEMBERED_PIDS),
        }))
    }

    pub fn kernel_record_read(&mut self) {
        self.kernel_records += 1;
    }

    /// Counts one written line.
    pub fn observe(&mut self, line: &Line) {
        *self.events.entry(line.event.type_name()).or_default() += 1;
        match &line.event {
            Event::Lost(lost) => self.lost += lost.count,
            Event::Shutdown(report) => self.shutdown(report, line.container_info.as_ref()),
            Event::Deploy(deploy) => {
                let service = deploy
                    .stopped
                    .iter()
                    .find_map(|pid| self.service_of_pid.get(pid).cloned())
                    .unwrap_or_else(|| OTHER_SERVICE.to_string());
                self.service(&service).deploys[verdict_index(deploy.verdict)] += 1;
            }
            _ => {}
        }
    }

    fn shutdown(&mut self, report: &ShutdownReport, container: Option<&ContainerInfo>) {
        // A container's workload (compose:shop/web, k8s:shop/web): bounded, never its id.
        let service = report
            .unit
            .clone()
            .or_else(|| container.and_then(containers::service))
            .unwrap_or_else(|| report.comm.clone());
        let metrics = self.service(&service);
        metrics.shutdowns[verdict_index(report.verdict)] += 1;
        if report
            .sigkill
            .as_ref()
            .is_some_and(|kill| kill.after_sigterm_ms.is_some())
        {
            metrics.sigkills_after_grace += 1;
        }
        metrics.refused_after_exit += u64::from(report.refused_after_exit);
        metrics.resets_sent += u64::from(report.resets_sent);
        for finding in &report.findings {
            *metrics.findings.entry(finding.code).or_default() += 1;
        }
        if let Some(drain_ms) = report.drain_ms {
            metrics
                .drain_seconds
                .observe(&DRAIN_BUCKETS, drain_ms as f64 / 1000.0);
        }
        if let Some(lag_ms) = report.routing_lag_ms {
            metrics
                .routing_lag_seconds
                .observe(&DRAIN_BUCKETS, lag_ms as f64 / 1000.0);
        }
        if report.exit.is_some() {
            metrics.open_at_exit.observe(
                &OPEN_BUCKETS,
                f64::from(
                    report
                        .open_at_exit_total
                        .max(report.open_at_exit.len() as u32),
                ),
            );
        }
        self.service_of_pid.insert(report.pid, service);
    }

    fn service(&mut self, name: &str) -> &mut ServiceMetrics {
        let name = if self.services.contains_key(name) || self.services.len() < MAX_SERVICES {
            name
        } else {
            OTHER_SERVICE
        };
        self.services.entry(name.to_string()).or_default()
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_records(&mut out);
        self.render_verdicts(&mut out);
        self.render_findings(&mut out);
        self.render_histograms(&mut out);
        out
    }

    /// Counts of records and events.
    fn render_records(&self, out: &mut String) {
        family(
            out,
            "observer_kernel_records_total",
            "counter",
            "Records read from the kernel's ring buffer, before filtering in userspace.",
        );
        sample(
            out,
            "observer_kernel_records_total",
            &[],
            self.kernel_records,
        );
        family(
            out,
            "observer_events_total",
            "counter",
            "Events written, by type.",
        );
        for (kind, count) in &self.events {
            sample(out, "observer_events_total", &[("type", kind)], *count);
        }
        family(
            out,
            "observer_lost_events_total",
            "counter",
            "Kernel records dropped because the ring buffer was full.",
        );
        sample(out, "observer_lost_events_total", &[], self.lost);
    }

    /// Shutdowns and deploys by verdict, and the per-service counters.
    fn render_verdicts(&self, out: &mut String) {
        family(
            out,
            "observer_shutdowns_total",
            "counter",
            "Processes that were told to stop (or killed) and exited, by verdict.",
        );
        self.per_verdict(out, "observer_shutdowns_total", |m| &m.shutdowns);
        family(
            out,
            "observer_deploys_total",
            "counter",
            "Deploy reports (the shutdowns of one service close together), by verdict.",
        );
        self.per_verdict(out, "observer_deploys_total", |m| &m.deploys);
        self.per_service(
            out,
            "observer_sigkills_after_grace_total",
            "Processes SIGKILLed after a termination signal: the grace period ran out.",
            |m| m.sigkills_after_grace,
        );
        self.per_service(
            out,
            "observer_refused_after_exit_total",
            "Connection attempts refused on a stopped process's ports after it exited.",
            |m| m.refused_after_exit,
        );
        self.per_service(
            out,
            "observer_resets_sent_total",
            "TCP resets sent by processes while they shut down.",
            |m| m.resets_sent,
        );
    }

    /// Findings by service and code.
    fn render_findings(&self, out: &mut String) {
        family(
            out,
            "observer_findings_total",
            "counter",
            "Findings in shutdown reports, by code.",
        );
        for (service, metrics) in &self.services {
            for (code, count) in &metrics.findings {
                let code = code.name();
                let labels = [("service", service.as_str()), ("code", code.as_str())];
                sample(out, "observer_findings_total", &labels, *count);
            }
        }
    }

    /// Drain times and connections open at exit.
    fn render_histograms(&self, out: &mut String) {
        family(
            out,
            "observer_shutdown_drain_seconds",
            "histogram",
            "Time from the first termination signal to exit.",
        );
        for (service, metrics) in &self.services {
            let name = "observer_shutdown_drain_seconds";
            histogram(out, name, service, &DRAIN_BUCKETS, &metrics.drain_seconds);
        }
        family(
            out,
            "observer_shutdown_routing_lag_seconds",
            "histogram",
            "Time from the first termination signal to the last client still routed to the \
             process (accepted after the signal, or refused after its exit).",
        );
        for (service, metrics) in &self.services {
            let name = "observer_shutdown_routing_lag_seconds";
            let lag = &metrics.routing_lag_seconds;
            histogram(out, name, service, &DRAIN_BUCKETS, lag);
        }
        family(
            out,
            "observer_shutdown_open_connections",
            "histogram",
            "TCP connections still open when a process exited.",
        );
        for (service, metrics) in &self.services {
            let name = "observer_shutdown_open_connections";
            histogram(out, name, service, &OPEN_BUCKETS, &metrics.open_at_exit);
        }
    }

    fn per_verdict(&self, out: &mut String, name: &str, counts: fn(&ServiceMetrics) -> &[u64; 3]) {
        for (service, metrics) in &self.services {
            for (verdict, count) in VERDICTS.iter().zip(counts(metrics)) {
                let verdict = verdict_name(*verdict);
                let labels = [("service", service.as_str()), ("verdict", verdict)];
                sample(out, name, &labels, *count);
            }
        }
    }

    fn per_service(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        count: fn(&ServiceMetrics) -> u64,
    ) {
        family(out, name, "counter", help);
        for (service, metrics) in &self.services {
            sample(out, name, &[("service", service)], count(metrics));
        }
    }
}

fn verdict_index(verdict: Verdict) -> usize {
    VERDICTS
        .iter()
        .position(|&v| v == verdict)
        .expect("every verdict is listed")
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Clean => "clean",
        Verdict::Dropped => "dropped",
        Verdict::Killed => "killed",
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        let labels: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        let _ = write!(out, "{{{}}}", labels.join(","));
    }
    let _ = writeln!(out, " {value}");
}

fn histogram(out: &mut String, name: &str, service: &str, bounds: &[f64], h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (index, bound) in bounds.iter().enumerate() {
        cumulative += h.counts.get(index).copied().unwrap_or(0);
        let le = bound.to_string();
        sample(
            out,
            &bucket,
            &[("service", service), ("le", &le)],
            cumulative,
        );
    }
    sample(
        out,
        &bucket,
        &[("service", service), ("le", "+Inf")],
        h.count,
    );
    sample(out, &format!("{name}_sum"), &[("service", service)], h.sum);
    sample(
        out,
        &format!("{name}_count"),
        &[("service", service)],
        h.count,
    );
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{
            DeployReport, ExitInfo, Finding, LostEvent, OpenConnection, ProcessRef, Role,
            SCHEMA_VERSION, SigkillInfo,
        },
        reports::shutdown::ProcessShutdown,
    };

    fn line(event: Event) -> Line {
        Line {
            v: SCHEMA_VERSION,
            event,
            time: "2026-11-24T00:00:00Z".into(),
            mono_ns: 1,
            host: "h".into(),
            container_info: None,
        }
    }

    fn killed_after_grace(pid: u32) -> ShutdownReport {
        let cgroup = Some("/system.slice/app.service".to_string());
        let mut report = ProcessShutdown::new(pid, "python3", cgroup, Default::default()).report();
        report.unit = Some("app.service".into());
        report.verdict = Verdict::Killed;
        report.drain_ms = Some(30_000);
        report.routing_lag_ms = Some(1_500);
        report.sigkill = Some(SigkillInfo {
            time: "t".into(),
            from: ProcessRef {
                pid: 1,
                comm: "systemd".into(),
                via: Vec::new(),
            },
            after_sigterm_ms: Some(30_000),
        });
        report.exit = Some(ExitInfo {
            time: "t".into(),
            code: None,
            signal: Some(9),
            status: Some(137),
            core_dumped: false,
            convention: None,
        });
        report.open_at_exit = vec![
            OpenConnection {
                local: "127.0.0.1:8080".into(),
                remote: "127.0.0.1:40000".into(),
                state: "ESTABLISHED".into(),
                role: Role::Inbound,
                activity: None,
            };
            3
        ];
        report.refused_after_exit = 7;
        report.findings = vec![Finding {
            code: FindingCode::SigkillAfterGrace,
            severity: Default::default(),
            message: "m".into(),
        }];
        report
    }

    #[test]
    fn counts_shutdowns_deploys_and_losses_per_service() {
        let shared = Metrics::shared();
        let mut metrics = shared.lock().unwrap();
        metrics.observe(&line(Event::Shutdown(Box::new(killed_after_grace(10)))));
        metrics.observe(&line(Event::Lost(LostEvent { count: 5 })));
        metrics.observe(&line(Event::Deploy(DeployReport {
            service: "unit:app.service".into(),
            started: "t".into(),
            ended: "t".into(),
            stopped: vec![10],
            stopped_total: 1,
            started_pids: vec![],
            started_total: 0,
            refused_after_exit: 0,
            drain_ms_max: None,
            routing_lag_ms: None,
            listener_gap_ms: None,
            dropped_connections: 3,
            verdict: Verdict::Killed,
            findings: vec![],
        })));
        let text = metrics.render();
        for expected in [
            r#"observer_events_total{type="shutdown"} 1"#,
            r#"observer_events_total{type="lost"} 1"#,
            "observer_lost_events_total 5",
            r#"observer_shutdowns_total{service="app.service",verdict="killed"} 1"#,
            r#"observer_shutdowns_total{service="app.service",verdict="clean"} 0"#,
            r#"observer_deploys_total{service="app.service",verdict="killed"} 1"#,
            r#"observer_sigkills_after_grace_total{service="app.service"} 1"#,
            r#"observer_refused_after_exit_total{service="app.service"} 7"#,
            r#"observer_findings_total{service="app.service",code="SIGKILL_AFTER_GRACE"} 1"#,
            r#"observer_shutdown_drain_seconds_bucket{service="app.service",le="20"} 0"#,
            r#"observer_shutdown_drain_seconds_bucket{service="app.service",le="30"} 1"#,
            r#"observer_shutdown_drain_seconds_sum{service="app.service"} 30"#,
            r#"observer_shutdown_routing_lag_seconds_bucket{service="app.service",le="1"} 0"#,
            r#"observer_shutdown_routing_lag_seconds_bucket{service="app.service",le="2.5"} 1"#,
            r#"observer_shutdown_open_connections_bucket{service="app.service",le="1"} 0"#,
            r#"observer_shutdown_open_connections_bucket{service="app.service",le="5"} 1"#,
            r#"observer_shutdown_open_connections_count{service="app.service"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "missing {expected:?} in\n{text}"
            );
        }
    }

    #[test]
    fn bounds_the_service_label_and_escapes_it() {
        let shared = Metrics::shared();
        let mut metrics = shared.lock().unwrap();
        for pid in 0..(MAX_SERVICES as u32 + 20) {
            let mut report = killed_after_grace(pid);
            report.unit = None;
            report.comm = format!("svc\"{pid}");
            metrics.observe(&line(Event::Shutdown(Box::new(report))));
        }
        assert_eq!(metrics.services.len(), MAX_SERVICES + 1);
        let text = metrics.render();
        assert!(text.contains(r#"observer_shutdowns_total{service="other",verdict="killed"} 20"#));
        assert!(text.contains(r#"observer_shutdowns_total{service="svc\"0",verdict="killed"} 1"#));
    }
}
