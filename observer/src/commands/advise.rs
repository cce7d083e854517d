//! `observer advise LOG…`: the grace period and pre-stop delay each service needs, from
//! the stops observer saw. Pure but for reading the logs: the logs are replayed through
//! the correlator (as `observer report` does), and each service's shutdown reports give
//! how long it drained and how long the platform kept routing to it after the stop
//! began (its routing lag). A pre-stop delay longer than the lag lets the load balancer
//! deregister an instance before it is told to stop; a grace period longer than the
//! delay plus the slowest drain lets it finish.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    commands::cli::AdviseArgs,
    event::{Event, FindingCode, ShutdownReport, Verdict},
    pipeline::replay::reports_of,
};

/// `observer advise LOG…`: replays the logs and prints each service's advice (or, with
/// `--json`, one `advice` object per line).
pub fn run(args: &AdviseArgs) -> Result<()> {
    let mut reports = Vec::new();
    let mut workloads = std::collections::BTreeSet::new();
    for file in &args.files {
        let log = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        for line in reports_of(&log, args.reports.config()) {
            match line.event {
                Event::Shutdown(report) => reports.push(*report),
                Event::Deploy(deploy) => {
                    workloads.insert(deploy.service);
                }
                _ => {}
            }
        }
    }
    // Advice is for workloads, whose stops make deploys; a shell's job has none.
    reports.retain(|r| workloads.contains(&r.service));
    let advice = advise(&reports, args.reports.after_exit.as_millis() as u64);
    if advice.is_empty() {
        eprintln!("observer: no stops in these logs: nothing to advise");
    }
    for advice in &advice {
        if args.json {
            let mut value = serde_json::to_value(advice)?;
            value["type"] = "advice".into();
            println!("{value}");
        } else {
            println!("{}\n", render(advice));
        }
    }
    Ok(())
}

/// Fewer stops than this, and the advice says the evidence is thin.
const ENOUGH_STOPS: usize = 3;
/// A routing lag that rose at every one of this many stops may have no bound.
const GROWTH_STOPS: usize = 5;
/// Headroom over what was measured: a share of it, and a floor.
const HEADROOM: f64 = 0.5;
const MIN_HEADROOM_MS: u64 = 1_000;

/// What one stop tells about timing.
#[derive(Clone, Debug)]
struct Stop {
    time: String,
    pid: u32,
    /// Signal to exit, for a process that exited by itself.
    drain_ms: Option<u64>,
    /// SIGKILLed after its grace period: its drain took at least this long.
    killed_after_ms: Option<u64>,
    routing_lag_ms: Option<u64>,
    /// Clients were still refused at the end of the window observer counts them in.
    refused_until_window_end: bool,
    /// It died of a signal before it had stopped, or cut requests: timing cannot help.
    broken_handler: bool,
    /// Its only problems were traffic that kept coming and the grace period.
    timing_only: bool,
}

impl Stop {
    fn of(report: &ShutdownReport, after_exit_ms: u64) -> Self {
        let codes: Vec<FindingCode> = report.findings.iter().map(|f| f.code).collect();
        let killed = report.verdict == Verdict::Killed && report.sigterm.is_some();
        let broken_handler = codes.iter().any(|c| {
            matches!(
                c,
                FindingCode::NoSigtermHandler
                    | FindingCode::SignalIgnoredByPid1
                    | FindingCode::HandlerNeverRan
            )
        });
        // RSTs with no request cut are clients that arrived as it stopped listening
        // (its backlog reset): routing, which a delay fixes.
        let timing_codes = [
            FindingCode::ResetsSent,
            FindingCode::AcceptedAfterSignal,
            FindingCode::RefusedAfterExit,
            FindingCode::SigkillAfterGrace,
            FindingCode::KeepaliveOpenAtExit,
        ];
        Self {
            time: report.sigterm.as_ref().map_or_else(
                || {
                    report
                        .exit
                        .as_ref()
                        .map_or_else(String::new, |e| e.time.clone())
                },
                |t| t.time.clone(),
            ),
            pid: report.pid,
            drain_ms: report.drain_ms.filter(|_| !killed),
            killed_after_ms: report
                .sigkill
                .as_ref()
                .and_then(|k| k.after_sigterm_ms)
                .filter(|_| killed),
            routing_lag_ms: report.routing_lag_ms,
            refused_until_window_end: report
                .last_refused_after_exit_ms
                .is_some_and(|ms| ms + MIN_HEADROOM_MS >= after_exit_ms),
            broken_handler,
            timing_only: !broken_handler
                && report.in_flight_at_exit == 0
                && codes.iter().all(|c| timing_codes.contains(c)),
        }
    }
}

/// Median, 95th percentile and maximum of a set of durations (ms).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Spread {
    pub median_ms: u64,
    pub p95_ms: u64,
    pub max_ms: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Option<Self> {
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (!values.is_empty()).then(|| Self {
            median_ms: at(0.5),
            p95_ms: at(0.95),
            max_ms: at(1.0),
        })
    }
}

/// The advice for one service: what was measured, what to set, and its limits.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Advice {
    pub service: String,
    pub stops: usize,
    pub drain: Option<Spread>,
    pub routing_lag: Option<Spread>,
    /// Stops SIGKILLed after their grace period (their drain is only known to be longer).
    pub killed_after_grace: usize,
    /// A delay before the stop signal (Kubernetes `preStop` sleep, or deregistering from
    /// the load balancer first) that covers the slowest routing lag seen.
    pub pre_stop_s: u64,
    /// The time to allow after the stop signal: the slowest drain (or kill) with
    /// headroom (`docker stop -t`, compose `stop_grace_period`).
    pub drain_budget_s: u64,
    /// The whole grace period, pre-stop delay included (Kubernetes
    /// `terminationGracePeriodSeconds`, systemd `TimeoutStopSec` when the delay is an
    /// `ExecStop=` sleep).
    pub grace_period_s: u64,
    /// Stops these settings would have made clean (time of the signal, pid).
    pub saved: Vec<(String, u32)>,
    /// What the numbers cannot fix, or do not know.
    pub limits: Vec<String>,
}

/// Advice per service, from every shutdown report; `after_exit_ms` is the window
/// `watch` counted refused clients in (`--after-exit`).
pub fn advise(reports: &[ShutdownReport], after_exit_ms: u64) -> Vec<Advice> {
    let mut by_service: BTreeMap<&str, Vec<Stop>> = BTreeMap::new();
    for report in reports {
        by_service
            .entry(report.service.as_str())
            .or_default()
            .push(Stop::of(report, after_exit_ms));
    }
    by_service
        .into_iter()
        .map(|(service, stops)| advice_for(service, &stops))
        .collect()
}

fn advice_for(service: &str, stops: &[Stop]) -> Advice {
    let drain = Spread::of(stops.iter().filter_map(|s| s.drain_ms).collect());
    let routing_lag = Spread::of(stops.iter().filter_map(|s| s.routing_lag_ms).collect());
    let slowest_end = stops
        .iter()
        .filter_map(|s| s.drain_ms.max(s.killed_after_ms))
        .max()
        .unwrap_or(0);
    let pre_stop_s = routing_lag.map_or(0, |lag| with_headroom(lag.max_ms));
    let drain_budget_s = with_headroom(slowest_end);
    let killed_after_grace = stops.iter().filter(|s| s.killed_after_ms.is_some()).count();
    let saved = stops
        .iter()
        .filter(|s| s.timing_only && s.killed_after_ms.is_none())
        .filter(|s| s.routing_lag_ms.is_some() && !s.refused_until_window_end)
        .map(|s| (s.time.clone(), s.pid))
        .collect();
    Advice {
        service: service.to_string(),
        stops: stops.len(),
        drain,
        routing_lag,
        killed_after_grace,
        pre_stop_s,
        drain_budget_s,
        grace_period_s: pre_stop_s + drain_budget_s,
        saved,
        limits: limits(stops, killed_after_grace),
    }
}

/// `ms` with headroom, in whole seconds, rounded up.
fn with_headroom(ms: u64) -> u64 {
    let padded = ms + ((ms as f64 * HEADROOM) as u64).max(MIN_HEADROOM_MS);
    padded.div_ceil(1_000)
}

fn limits(stops: &[Stop], killed_after_grace: usize) -> Vec<String> {
    let mut limits = Vec::new();
    if stops.len() < ENOUGH_STOPS {
        limits.push(format!(
            "only {} stops seen: too little evidence; watch a few more deploys",
            stops.len()
        ));
    }
    if stops.iter().any(|s| s.refused_until_window_end) {
        limits.push(
            "clients were still refused when observer stopped counting (--after-exit): the \
             instance was never deregistered from its load balancer or service; that is a \
             readiness or deregistration bug, which no delay fixes"
                .to_string(),
        );
    }
    let lags: Vec<u64> = stops.iter().filter_map(|s| s.routing_lag_ms).collect();
    // Rising at every one of several stops, to at least twice where it began.
    let rising = lags.len() >= GROWTH_STOPS
        && lags.windows(2).all(|w| w[1] > w[0])
        && lags.last() >= lags.first().map(|first| first * 2).as_ref();
    if rising {
        limits.push(
            "the routing lag grew with every stop: it may have no bound; check how \
             instances are deregistered before trusting a fixed delay"
                .to_string(),
        );
    }
    if stops.iter().any(|s| s.broken_handler) {
        limits.push(
            "some stops died of their signal or never ran their handler: no delay or grace \
             period helps those; fix the SIGTERM handling first (see their findings)"
                .to_string(),
        );
    }
    if killed_after_grace > 0 {
        limits.push(format!(
            "{killed_after_grace} stops were SIGKILLed after their grace period: their drains \
             took longer than the grace period they had, so the budget above is a floor"
        ));
    }
    limits
}

/// The advice as an engineer reads it, with the names of the settings.
pub fn render(advice: &Advice) -> String {
    let spread = |s: Option<Spread>| {
        s.map_or("not seen".to_string(), |s| {
            format!(
                "median {} ms, p95 {} ms, max {} ms",
                s.median_ms, s.p95_ms, s.max_ms
            )
        })
    };
    let mut lines = vec![
        format!("{}  ({} stops)", advice.service, advice.stops),
        format!("  drain (signal → exit)        {}", spread(advice.drain)),
        format!(
            "  routing lag (signal → last client routed to it)  {}",
            spread(advice.routing_lag)
        ),
        format!(
            "  pre-stop delay  {} s   Kubernetes: lifecycle.preStop sleep {}; else \
             deregister from the load balancer {} s before the stop signal",
            advice.pre_stop_s, advice.pre_stop_s, advice.pre_stop_s
        ),
        format!(
            "  after the signal  {} s   docker stop -t {} / compose stop_grace_period: {}s",
            advice.drain_budget_s, advice.drain_budget_s, advice.drain_budget_s
        ),
        format!(
            "  grace period  {} s   Kubernetes: terminationGracePeriodSeconds: {}; systemd: \
             TimeoutStopSec={} (with the delay as an ExecStop= sleep)",
            advice.grace_period_s, advice.grace_period_s, advice.grace_period_s
        ),
        format!(
            "  would have been clean with these settings: {} of {} stops{}",
            advice.saved.len(),
            advice.stops,
            if advice.saved.is_empty() {
                String::new()
            } else {
                let pids: Vec<String> = advice
                    .saved
                    .iter()
                    .take(10)
                    .map(|(time, pid)| format!("{pid} at {time}"))
                    .collect();
                format!(" ({})", pids.join(", "))
            }
        ),
    ];
    lines.extend(advice.limits.iter().map(|limit| format!("  ! {limit}")));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Finding, ProcessRef, Severity, SigkillInfo, SignalResult, SigtermInfo};

    fn stop(
        pid: u32,
        drain: u64,
        lag: Option<u64>,
        refused_after_exit: Option<u64>,
    ) -> ShutdownReport {
        let mut report: ShutdownReport =
            serde_json::from_str(r#"{"pid":1,"comm":"app","cgroup":null,"unit":null,"container":null,"sigterm":null,"sigkill":null,"sigkill_first":false,"exit":null,"drain_ms":null,"listener_closed_ms":null,"accepted_after_signal":0,"open_at_exit":[],"resets_sent":0,"refused_after_exit":0,"verdict":"clean","findings":[],"complete":true}"#)
                .unwrap();
        report.pid = pid;
        report.service = "unit:app.service".into();
        report.drain_ms = Some(drain);
        report.routing_lag_ms = lag;
        report.last_refused_after_exit_ms = refused_after_exit;
        report.sigterm = Some(SigtermInfo {
            time: format!("t{pid}"),
            sig_name: "SIGTERM".into(),
            from: ProcessRef::new(1, "systemd"),
            result: SignalResult::Delivered,
            handler: None,
            disposition: None,
            blocked: false,
        });
        if refused_after_exit.is_some() {
            report.verdict = Verdict::Clean;
            report.findings.push(Finding {
                code: FindingCode::RefusedAfterExit,
                severity: Severity::Warning,
                message: "m".into(),
            });
        }
        report
    }

    #[test]
    fn the_delay_covers_the_slowest_routing_lag_and_the_grace_period_the_slowest_drain() {
        let reports = [
            stop(1, 200, Some(900), Some(600)),
            stop(2, 300, Some(1_800), Some(1_400)),
            stop(3, 250, Some(1_200), Some(900)),
        ];
        let advice = advise(&reports, 5_000);
        assert_eq!(advice.len(), 1);
        let advice = &advice[0];
        assert_eq!(advice.routing_lag.unwrap().max_ms, 1_800);
        assert_eq!(advice.drain.unwrap().max_ms, 300);
        assert!(advice.pre_stop_s * 1_000 >= 1_800, "{advice:?}");
        assert!(advice.drain_budget_s * 1_000 >= 300);
        assert_eq!(
            advice.grace_period_s,
            advice.pre_stop_s + advice.drain_budget_s
        );
        assert_eq!(advice.saved.len(), 3);
        assert!(advice.limits.is_empty(), "{:?}", advice.limits);
    }

    #[test]
    fn says_what_no_number_can_fix() {
        let mut killed = stop(4, 0, None, None);
        killed.verdict = Verdict::Killed;
        killed.sigkill = Some(SigkillInfo {
            time: "t".into(),
            from: ProcessRef::new(1, "systemd"),
            after_sigterm_ms: Some(10_000),
        });
        let reports = [stop(1, 200, Some(5_000), Some(4_800)), killed];
        let advice = &advise(&reports, 5_000)[0];
        let limits = advice.limits.join("\n");
        assert!(limits.contains("too little evidence"), "{limits}");
        assert!(limits.contains("never deregistered"), "{limits}");
        assert!(
            limits.contains("SIGKILLed after their grace period"),
            "{limits}"
        );
        assert!(
            advice.drain_budget_s >= 10,
            "the kill is a floor: {advice:?}"
        );
        assert!(
            advice.saved.is_empty(),
            "a never-deregistered stop is not saved"
        );
    }
}
