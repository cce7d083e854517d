//! `--pid` / `--comm` / `--port` / `--unit` / `--container` / `--cgroup`: which events to
//! show. Each event names a subject process (a signal's target, a delivery's receiver,
//! an exit's process, a socket's owner or former owner), TCP events a local port, and
//! signals, exits and listeners a cgroup; `lost` always passes. Events that carry no
//! port (or no cgroup) pass for the processes seen with a chosen one.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
};

use crate::{
    event::{Event, ProcessRef},
    host::identity,
};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// Processes seen holding a chosen port: their signals and exits are shown too.
    pids_on_ports: HashSet<u32>,
    /// observer's own process: its stop (SIGINT/SIGTERM) is not an event to report.
    own_pid: Option<u32>,
    pub scope: Scope,
    /// Processes seen in a chosen unit, container or cgroup.
    pids_in_scope: HashSet<u32>,
    /// With `--comm`: signals to processes whose command did not match yet, held in
    /// case it does later (a process told to stop just before it exec'd the chosen
    /// program still had its parent's command), and written before that event.
    held: HashMap<u32, Vec<(u64, Event)>>,
    held_order: VecDeque<u32>,
}

/// Processes whose signals are held at once, and signals held per process.
const HELD_PROCESSES: usize = 1024;
const HELD_PER_PROCESS: usize = 8;

/// `--unit`, `--container`, `--cgroup`: processes chosen by who they are.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub units: Vec<String>,
    /// Full ids or prefixes (the 12-hex short form).
    pub containers: Vec<String>,
    /// A cgroup and everything below it.
    pub cgroups: Vec<String>,
}

impl Scope {
    fn is_empty(&self) -> bool {
        self.units.is_empty() && self.containers.is_empty() && self.cgroups.is_empty()
    }

    fn contains(&self, cgroup: &str) -> bool {
        let unit = identity::unit(cgroup);
        let container = identity::container(cgroup);
        let below = |root: &str| {
            let root = root.trim_end_matches('/');
            cgroup == root || cgroup.starts_with(&format!("{root}/")) || root.is_empty()
        };
        self.units
            .iter()
            .any(|u| unit.as_deref() == Some(u.as_str()))
            || self.containers.iter().any(|c| {
                container
                    .as_deref()
                    .is_some_and(|id| id.starts_with(c.as_str()))
            })
            || self.cgroups.iter().any(|c| below(c))
    }
}

/// What an event is about.
struct Subject<'a> {
    processes: Vec<(u32, &'a str)>,
    local_port: Option<u16>,
    cgroup: Option<&'a str>,
}

fn subject(event: &Event) -> Option<Subject<'_>> {
    let port = |local: &str| local.parse::<SocketAddr>().ok().map(|a| a.port());
    fn one(pid: u32, comm: &str) -> Vec<(u32, &str)> {
        vec![(pid, comm)]
    }
    fn reference(p: &ProcessRef) -> (u32, &str) {
        (p.pid, p.comm.as_str())
    }
    Some(match event {
        Event::Signal(e) => Subject {
            processes: one(e.target.pid, &e.target.comm),
            local_port: None,
            cgroup: e.target.cgroup.as_deref(),
        },
        Event::SignalDelivered(e) => Subject {
            processes: one(e.target.pid, &e.target.comm),
            local_port: None,
            cgroup: e.target.cgroup.as_deref(),
        },
        Event::Exit(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: None,
            cgroup: e.cgroup.as_deref(),
        },
        Event::TcpReset(e) => {
            let owner = e.pid.zip(e.comm.as_deref());
            Subject {
                processes: owner
                    .into_iter()
                    .chain(e.former_owner.as_ref().map(reference))
                    .collect(),
                local_port: port(&e.local),
                cgroup: None,
            }
        }
        Event::TcpCloseAtExit(e) | Event::TcpCloseInFlight(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
            cgroup: None,
        },
        Event::TcpListen(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
            cgroup: e.cgroup.as_deref(),
        },
        Event::TcpAccept(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
            cgroup: None,
        },
        // Lost events concern everyone; reports derive from lines that passed already.
        Event::Lost(_) | Event::TcpRefused(_) | Event::Shutdown(_) | Event::Deploy(_) => {
            return None;
        }
    })
}

impl Filter {
    pub fn new(pids: Vec<u32>, comms: Vec<String>, ports: Vec<u16>) -> Self {
        Self {
            pids,
            comms,
            ports,
            pids_on_ports: HashSet::new(),
            own_pid: None,
            scope: Scope::default(),
            pids_in_scope: HashSet::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
        }
    }

    /// Only processes in these units, containers or cgroups.
    pub fn within(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Whether `--unit/--container/--cgroup` leave out every process in `cgroup`.
    pub fn scope_excludes(&self, cgroup: &str) -> bool {
        !self.scope.is_empty() && !self.scope.contains(cgroup)
    }

    pub fn is_scoped(&self) -> bool {
        !self.scope.is_empty()
    }

    /// Leaves out events about process `pid` (observer itself).
    pub fn excluding(mut self, pid: u32) -> Self {
        self.own_pid = Some(pid);
        self
    }

    /// True when the event concerns a chosen process or port. Values of one flag are
    /// alternatives; different flags must all match.
    /// The events to write for `event`, in order: none, or it after the signals held for
    /// its process (see `held`).
    pub fn admit(&mut self, mono_ns: u64, event: Event) -> Vec<(u64, Event)> {
        if self.matches(&event) {
            let mut out = self.release(&event);
            out.push((mono_ns, event));
            return out;
        }
        self.hold(mono_ns, event);
        Vec::new()
    }

    fn hold(&mut self, mono_ns: u64, event: Event) {
        let pid = match &event {
            Event::Signal(e) => e.target.pid,
            Event::SignalDelivered(e) => e.target.pid,
            Event::Exit(e) => {
                // It ended without ever matching: forget what was held for it.
                self.held.remove(&e.pid);
                return;
            }
            _ => return,
        };
        let other_criteria =
            self.ports.is_empty() && self.scope.is_empty() && self.own_pid != Some(pid);
        if self.comms.is_empty() || !other_criteria {
            return;
        }
        if !self.held.contains_key(&pid) {
            self.held_order.push_back(pid);
        }
        let held = self.held.entry(pid).or_default();
        if held.len() < HELD_PER_PROCESS {
            held.push((mono_ns, event));
        }
        // The order may name processes already released: bounded all the same.
        while self.held.len() > HELD_PROCESSES || self.held_order.len() > 4 * HELD_PROCESSES {
            let Some(oldest) = self.held_order.pop_front() else {
                break;
            };
            self.held.remove(&oldest);
        }
    }

    fn release(&mut self, event: &Event) -> Vec<(u64, Event)> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let Some(subject) = subject(event) else {
            return Vec::new();
        };
        subject
            .processes
            .iter()
            .filter_map(|(pid, _)| self.held.remove(pid))
            .flatten()
            .collect()
    }

    pub fn matches(&mut self, event: &Event) -> bool {
        let Some(subject) = subject(event) else {
            return true;
        };
        if self
            .own_pid
            .is_some_and(|own| subject.processes.iter().any(|(pid, _)| *pid == own))
        {
            return false;
        }
        let by_pid = self.pids.is_empty()
            || subject
                .processes
                .iter()
                .any(|(pid, _)| self.pids.contains(pid));
        let by_comm = self.comms.is_empty()
            || subject
                .processes
                .iter()
                .any(|(_, comm)| self.comms.iter().any(|c| c == comm));
        let ports = &self.ports;
        let by_port = ports.is_empty()
            || follows(
                &mut self.pids_on_ports,
                subject.local_port.map(|port| ports.contains(&port)),
                &subject.processes,
            );
        let scope = &self.scope;
        let by_scope = scope.is_empty()
            || follows(
                &mut self.pids_in_scope,
                subject.cgroup.map(|cgroup| scope.contains(cgroup)),
                &subject.processes,
            );
        by_pid && by_comm && by_port && by_scope
    }
}

/// For a filter on a property only some events carry (a port, a cgroup): an event that
/// carries it passes if it matches (`chosen`: Some(true)), and its processes are
/// remembered; an event without it passes if one of its processes was seen matching.
fn follows(seen: &mut HashSet<u32>, chosen: Option<bool>, processes: &[(u32, &str)]) -> bool {
    match chosen {
        Some(true) => {
            seen.extend(processes.iter().map(|(pid, _)| *pid));
            true
        }
        Some(false) => false,
        None => processes.iter().any(|(pid, _)| seen.contains(pid)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        Direction, ExitEvent, ListenAction, LostEvent, StatusSource, TcpListenEvent, TcpResetEvent,
    };

    fn exit(pid: u32, comm: &str) -> Event {
        Event::Exit(ExitEvent {
            pid,
            tid: pid,
            ppid: None,
            comm: comm.into(),
            cgroup: None,
            code: Some(0),
            signal: None,
            core_dumped: false,
            status: Some(0),
            status_source: StatusSource::Kernel,
            children: Vec::new(),
        })
    }

    fn listen(pid: u32, port: u16) -> Event {
        Event::TcpListen(TcpListenEvent {
            action: ListenAction::Open,
            pid,
            comm: "srv".into(),
            local: format!("127.0.0.1:{port}"),
            cgroup: None,
        })
    }

    #[test]
    fn flags_combine_as_documented() {
        let mut all = Filter::default();
        assert!(all.matches(&exit(1, "a")));
        let mut pids = Filter::new(vec![1, 2], vec![], vec![]);
        assert!(pids.matches(&exit(2, "x")) && !pids.matches(&exit(3, "x")));
        let mut both = Filter::new(vec![1], vec!["nginx".into(), "node".into()], vec![]);
        assert!(both.matches(&exit(1, "node")));
        assert!(!both.matches(&exit(1, "sh")));
        assert!(!both.matches(&exit(2, "node")));
        assert!(both.matches(&Event::Lost(LostEvent { count: 3 })));
    }

    /// `--comm app`: SIGTERM reached pid 5 while it was still `sh` (just before it
    /// exec'd `app`); its exit as `app` brings the signal with it.
    #[test]
    fn a_signal_before_exec_follows_the_process_into_the_comm_filter() {
        let mut filter = Filter {
            comms: vec!["app".into()],
            ..Default::default()
        };
        let signal = Event::Signal(crate::event::SignalEvent {
            sig: 15,
            sig_name: "SIGTERM".into(),
            sender: ProcessRef::new(1, "init"),
            target: crate::event::ThreadRef::thread(5, 5, "sh".into()),
            group: true,
            si_code: 0,
            origin: crate::event::Origin::User,
            result: crate::event::SignalResult::Delivered,
            disposition: None,
            blocked: None,
        });
        assert!(filter.admit(10, signal).is_empty(), "held, not written");
        let written = filter.admit(20, exit(5, "app"));
        let kinds: Vec<(u64, &str)> = written.iter().map(|(at, e)| (*at, e.type_name())).collect();
        assert_eq!(kinds, [(10, "signal"), (20, "exit")]);
        // A process that never became `app` takes its held signals with it.
        let other = Event::Signal(match &written[0].1 {
            Event::Signal(s) => crate::event::SignalEvent {
                target: crate::event::ThreadRef::thread(6, 6, "sh".into()),
                ..s.clone()
            },
            _ => unreachable!(),
        });
        assert!(filter.admit(30, other).is_empty());
        assert!(filter.admit(40, exit(6, "sh")).is_empty());
        assert!(filter.held.is_empty());
    }

    #[test]
    fn port_filter_follows_the_processes_on_the_port() {
        let mut filter = Filter::new(vec![], vec![], vec![8080]);
        assert!(!filter.matches(&exit(7, "srv")), "unknown process");
        assert!(!filter.matches(&listen(7, 9090)));
        assert!(filter.matches(&listen(7, 8080)));
        assert!(filter.matches(&exit(7, "srv")), "it listened on 8080");
        let refused = Event::TcpReset(TcpResetEvent {
            direction: Direction::Sent,
            reason: Some("NO_SOCKET".into()),
            local: "127.0.0.1:8080".into(),
            remote: "127.0.0.1:5000".into(),
            state: "CLOSE".into(),
            pid: None,
            comm: None,
            former_owner: Some(ProcessRef {
                pid: 7,
                comm: "srv".into(),
                via: Vec::new(),
            }),
            role: None,
        });
        assert!(filter.matches(&refused));
        assert!(
            Filter::new(vec![7], vec![], vec![]).matches(&refused),
            "former owner counts"
        );
        let unit = Scope {
            units: vec!["app.service".into()],
            ..Default::default()
        };
        let mut by_unit = Filter::default().within(unit);
        let mut in_unit = exit(7, "srv");
        if let Event::Exit(e) = &mut in_unit {
            e.cgroup = Some("/system.slice/app.service".into());
        }
        assert!(by_unit.matches(&in_unit));
        assert!(
            !by_unit.matches(&exit(8, "srv")),
            "no cgroup, never seen in the unit"
        );
        assert!(
            by_unit.matches(&refused),
            "former owner 7 was seen in the unit"
        );
        let mut not_self = Filter::default().excluding(7);
        assert!(!not_self.matches(&refused) && !not_self.matches(&exit(7, "observer")));
        assert!(not_self.matches(&exit(8, "x")));
    }
}
