//! The sockets a process still held when it exited, kept in bounded memory: exact counts
//! (by role, by activity, by state) and the first few connections listed. A server
//! killed with 10,000 connections open gives 10,000 raw `tcp_close_at_exit` events, but
//! one report line of bounded size. Pure.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use observer_common::tcp_state;

use crate::event::{Activity, OpenConnection, Role};

/// Connections a report lists; the rest are counted.
pub const LISTED: usize = 64;
/// Remotes of requests cut (at exit, or by the process's own close while stopping)
/// remembered to tell the RST their close sends (unread data) from RSTs to other
/// clients: that RST follows its close at once.
const RECENT_CUTS: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct ClosedAtExit {
    listed: Vec<OpenConnection>,
    total: u32,
    inbound_in_flight: u32,
    inbound_idle: u32,
    /// Inbound, with no word from the kernel on their traffic (no BTF).
    inbound_unknown: u32,
    /// Inbound ones whose client had already closed its side (CLOSE_WAIT): ended by the
    /// client, neither cut nor left open (a session's backend exiting on it).
    inbound_peer_closed: u32,
    outbound: u32,
    /// Of those, the ones whose peer had already closed (CLOSE_WAIT): a proxy's
    /// connection to a backend that died first, not a pool left open.
    outbound_peer_closed: u32,
    /// Listener addresses (a process has few).
    listeners: BTreeSet<String>,
    by_state: BTreeMap<String, u32>,
    recent_cuts: VecDeque<String>,
}

impl ClosedAtExit {
    pub fn add(&mut self, connection: OpenConnection) {
        self.total += 1;
        *self.by_state.entry(connection.state.clone()).or_default() += 1;
        let peer_closed = connection.state == tcp_state::name(tcp_state::CLOSE_WAIT);
        match (connection.role, connection.activity) {
            (Role::Listener, _) => {
                self.listeners.insert(connection.local.clone());
            }
            (Role::Outbound, _) => {
                self.outbound += 1;
                if peer_closed {
                    self.outbound_peer_closed += 1;
                }
            }
            (Role::Inbound, _) if peer_closed => self.inbound_peer_closed += 1,
            (Role::Inbound, Some(Activity::Idle)) => self.inbound_idle += 1,
            (Role::Inbound, Some(Activity::InFlight)) => {
                self.inbound_in_flight += 1;
                self.remember_cut(&connection.remote);
            }
            (Role::Inbound, None) => {
                self.inbound_unknown += 1;
                self.remember_cut(&connection.remote);
            }
        }
        if self.listed.len() < LISTED {
            self.listed.push(connection);
        }
    }

    /// A request of `remote` was cut by a close (see [`RECENT_CUTS`]).
    pub fn remember_cut(&mut self, remote: &str) {
        if self.recent_cuts.len() == RECENT_CUTS {
            self.recent_cuts.pop_front();
        }
        self.recent_cuts.push_back(remote.to_string());
    }

    /// Whether the request of `remote` was just cut (its RST is the same loss).
    pub fn cut(&self, remote: &str) -> bool {
        self.recent_cuts.iter().any(|r| r == remote)
    }

    /// Inbound connections with a request in flight; those of unknown traffic count as
    /// in flight unless `stopped_accepting` (the program had closed its listener and
    /// waited: they were idle).
    pub fn in_flight(&self, stopped_accepting: bool) -> u32 {
        self.inbound_in_flight
            + if stopped_accepting {
                0
            } else {
                self.inbound_unknown
            }
    }

    pub fn idle(&self, stopped_accepting: bool) -> u32 {
        self.inbound_idle
            + if stopped_accepting {
                self.inbound_unknown
            } else {
                0
            }
    }

    /// Every inbound connection closed at exit, its client's own closes included.
    pub fn inbound(&self) -> u32 {
        self.left_open() + self.inbound_peer_closed
    }

    /// Inbound connections the process still held open for their clients at exit.
    pub fn left_open(&self) -> u32 {
        self.inbound_in_flight + self.inbound_idle + self.inbound_unknown
    }

    /// Outbound connections still open at exit whose peer had not closed them.
    pub fn outbound(&self) -> u32 {
        self.outbound - self.outbound_peer_closed
    }

    pub fn listener(&self, local: &str) -> bool {
        self.listeners.contains(local)
    }

    pub fn listeners(&self) -> impl Iterator<Item = &String> {
        self.listeners.iter()
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn listed(&self) -> &[OpenConnection] {
        &self.listed
    }

    /// Counts by role (`inbound`, `outbound`, `listener`) and by state, for the report.
    pub fn by_role(&self) -> BTreeMap<String, u32> {
        [
            ("inbound", self.inbound()),
            ("outbound", self.outbound),
            ("listener", self.listeners.len() as u32),
        ]
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(role, count)| (role.to_string(), count))
        .collect()
    }

    pub fn by_state(&self) -> BTreeMap<String, u32> {
        self.by_state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(port: u16, role: Role, activity: Option<Activity>) -> OpenConnection {
        OpenConnection {
            local: "127.0.0.1:80".into(),
            remote: format!("127.0.0.1:{port}"),
            state: "ESTABLISHED".into(),
            role,
            activity,
        }
    }

    #[test]
    fn ten_thousand_connections_are_counted_exactly_and_listed_briefly() {
        let mut closed = ClosedAtExit::default();
        for port in 0..10_000u16 {
            let activity = if port % 4 == 0 {
                Activity::InFlight
            } else {
                Activity::Idle
            };
            closed.add(connection(port, Role::Inbound, Some(activity)));
        }
        closed.add(connection(1, Role::Outbound, None));
        assert_eq!((closed.total(), closed.listed().len()), (10_001, LISTED));
        assert_eq!(
            (closed.in_flight(false), closed.idle(false)),
            (2_500, 7_500)
        );
        assert_eq!(closed.by_state()["ESTABLISHED"], 10_001);
        assert_eq!(closed.by_role()["outbound"], 1);
        assert!(closed.cut("127.0.0.1:9996"), "a recent cut");
        assert!(!closed.cut("127.0.0.1:4"), "long forgotten");
    }

    #[test]
    fn an_outbound_connection_its_peer_closed_first_is_not_left_open() {
        let mut closed = ClosedAtExit::default();
        let mut dead_backend = connection(1, Role::Outbound, None);
        dead_backend.state = "CLOSE_WAIT".into();
        closed.add(dead_backend);
        closed.add(connection(2, Role::Outbound, None));
        assert_eq!(closed.outbound(), 1);
        assert_eq!(closed.by_role()["outbound"], 2);
    }

    #[test]
    fn an_inbound_connection_its_client_closed_first_is_neither_cut_nor_left_open() {
        let mut closed = ClosedAtExit::default();
        let mut ended_session = connection(1, Role::Inbound, Some(Activity::Idle));
        ended_session.state = "CLOSE_WAIT".into();
        closed.add(ended_session);
        closed.add(connection(2, Role::Inbound, Some(Activity::Idle)));
        assert_eq!((closed.in_flight(false), closed.idle(false)), (0, 1));
        assert_eq!((closed.left_open(), closed.by_role()["inbound"]), (1, 2));
    }

    #[test]
    fn unknown_traffic_counts_by_what_the_program_did() {
        let mut closed = ClosedAtExit::default();
        closed.add(connection(1, Role::Inbound, None));
        assert_eq!((closed.in_flight(false), closed.idle(false)), (1, 0));
        assert_eq!((closed.in_flight(true), closed.idle(true)), (0, 1));
    }
}
