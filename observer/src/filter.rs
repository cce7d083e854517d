//! `--pid` / `--comm` / `--port`: which events to show. Each event names a subject
//! process (a signal's target, a delivery's receiver, an exit's process, a socket's
//! owner or former owner) and TCP events a local port; `lost` always passes.
use std::{collections::HashSet, net::SocketAddr};

use crate::event::{Event, ProcessRef};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    /// Processes seen holding a chosen port: their signals and exits are shown too.
    pids_on_ports: HashSet<u32>,
    /// observer's own process: its stop (SIGINT/SIGTERM) is not an event to report.
    own_pid: Option<u32>,
}

/// What an event is about.
struct Subject<'a> {
    processes: Vec<(u32, &'a str)>,
    local_port: Option<u16>,
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
        },
        Event::SignalDelivered(e) => Subject {
            processes: one(e.target.pid, &e.target.comm),
            local_port: None,
        },
        Event::Exit(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: None,
        },
        Event::TcpReset(e) => {
            let owner = e.pid.zip(e.comm.as_deref());
            Subject {
                processes: owner
                    .into_iter()
                    .chain(e.former_owner.as_ref().map(reference))
                    .collect(),
                local_port: port(&e.local),
            }
        }
        Event::TcpCloseAtExit(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
        },
        Event::TcpListen(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
        },
        Event::TcpAccept(e) => Subject {
            processes: one(e.pid, &e.comm),
            local_port: port(&e.local),
        },
        // Lost events concern everyone; reports derive from lines that passed already.
        Event::Lost(_) | Event::Shutdown(_) | Event::Deploy(_) => return None,
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
        }
    }

    /// Leaves out events about process `pid` (observer itself).
    pub fn excluding(mut self, pid: u32) -> Self {
        self.own_pid = Some(pid);
        self
    }

    /// True when the event concerns a chosen process or port. Values of one flag are
    /// alternatives; different flags must all match.
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
        let by_port = self.ports.is_empty()
            || match subject.local_port {
                Some(port) if self.ports.contains(&port) => {
                    self.pids_on_ports
                        .extend(subject.processes.iter().map(|(pid, _)| *pid));
                    true
                }
                Some(_) => false,
                None => subject
                    .processes
                    .iter()
                    .any(|(pid, _)| self.pids_on_ports.contains(pid)),
            };
        by_pid && by_comm && by_port
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
            }),
        });
        assert!(filter.matches(&refused));
        assert!(
            Filter::new(vec![7], vec![], vec![]).matches(&refused),
            "former owner counts"
        );
        let mut not_self = Filter::default().excluding(7);
        assert!(!not_self.matches(&refused) && !not_self.matches(&exit(7, "observer")));
        assert!(not_self.matches(&exit(8, "x")));
    }
}
