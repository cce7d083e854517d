//! TCP records → events: addresses and states as text, socket roles, and which process
//! last listened on a port (so that an RST from a port nobody holds any more — a client
//! refused by a dead instance — names the process that used to serve it).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
};

use observer_common::{
    AF_INET, SocketOwner, TcpAcceptRecord, TcpEndpoints, TcpResetRecord, TcpStateRecord,
    reset_flags, role, tcp_flags, tcp_state,
};

use crate::{
    bounded::BoundedMap,
    event::{
        Activity, Direction, Event, ListenAction, ProcessRef, Role, TcpAcceptEvent,
        TcpCloseAtExitEvent, TcpListenEvent, TcpResetEvent, port_of,
    },
    pipeline::decode::comm,
};

/// Ports remembered for processes whose listeners closed.
const FORMER_LISTENERS: usize = 65_536;

/// Linux's default `ip_local_port_range`, the ports connect() picks local ports from.
const DEFAULT_EPHEMERAL_PORTS: RangeInclusive<u16> = 32_768..=60_999;

struct Listener {
    local: String,
    comm: String,
}

pub struct TcpTracker {
    /// `enum sk_rst_reason` names, from BTF.
    rst_reasons: HashMap<u32, String>,
    /// Local port → listening processes (several may share a port, e.g. forked workers)
    /// and the address each listens on.
    listeners: HashMap<u16, HashMap<u32, Listener>>,
    /// Local port → the process whose listener there closed last.
    former_listeners: BoundedMap<u16, ProcessRef>,
    /// The ports connect() picks local ports from (see `role`).
    ephemeral_ports: RangeInclusive<u16>,
}

impl TcpTracker {
    pub fn new(rst_reasons: HashMap<u32, String>) -> Self {
        Self {
            rst_reasons,
            listeners: HashMap::new(),
            former_listeners: BoundedMap::new(FORMER_LISTENERS),
            ephemeral_ports: DEFAULT_EPHEMERAL_PORTS,
        }
    }

    /// The host's range of ports connect() picks from; None keeps Linux's default.
    pub fn with_ephemeral_ports(mut self, ports: Option<RangeInclusive<u16>>) -> Self {
        if let Some(ports) = ports {
            self.ephemeral_ports = ports;
        }
        self
    }

    pub fn state_change(&mut self, r: &TcpStateRecord) -> Option<Event> {
        let (local, remote) = endpoints(&r.endpoints);
        let port = r.endpoints.local_port;
        let owner = owner_ref(&r.owner);
        let old_state = i32::from(r.old_state);
        if i32::from(r.new_state) == tcp_state::LISTEN {
            let listener = Listener {
                local: local.clone(),
                comm: owner.comm.clone(),
            };
            self.listeners
                .entry(port)
                .or_default()
                .insert(owner.pid, listener);
            self.former_listeners.remove(&port);
            return Some(Event::TcpListen(TcpListenEvent {
                action: ListenAction::Open,
                pid: owner.pid,
                comm: owner.comm,
                local,
                cgroup: None,
            }));
        }
        if old_state == tcp_state::LISTEN {
            self.listener_closed(port, &local, &owner);
        }
        if r.flags & (tcp_flags::CLOSED_AT_EXIT | tcp_flags::CLOSED_IN_FLIGHT) != 0 {
            let role = self.role(&r.owner, old_state, port);
            let known = r.flags & tcp_flags::TRAFFIC_KNOWN != 0 && role != Role::Listener;
            let close = TcpCloseAtExitEvent {
                pid: owner.pid,
                comm: owner.comm,
                local,
                remote,
                state: tcp_state::name(old_state).to_string(),
                role,
                activity: known.then(|| activity(r, role)),
                unread_bytes: known.then_some(r.unread_bytes),
                unsent_bytes: known.then_some(r.unsent_bytes),
            };
            return if r.flags & tcp_flags::CLOSED_AT_EXIT != 0 {
                Some(Event::TcpCloseAtExit(close))
            } else {
                // Only a client's: a connection it made itself (inferred here when the
                // kernel did not see it made) is the kernel program's to leave out.
                let cut = role == Role::Inbound && close.activity == Some(Activity::InFlight);
                cut.then_some(Event::TcpCloseInFlight(close))
            };
        }
        (old_state == tcp_state::LISTEN).then_some(Event::TcpListen(TcpListenEvent {
            action: ListenAction::Close,
            pid: owner.pid,
            comm: owner.comm,
            local,
            cgroup: None,
        }))
    }

    /// Listeners /proc shows `pid` holding: opened before observer started, so never seen
    /// opening. Known from now on as if they had been; one already known stays as it is.
    pub fn learn_listeners(&mut self, pid: u32, comm: &str, local_addrs: &[String]) {
        for local in local_addrs {
            let Some(port) = port_of(local) else {
                continue;
            };
            self.listeners
                .entry(port)
                .or_default()
                .entry(pid)
                .or_insert_with(|| Listener {
                    local: local.clone(),
                    comm: comm.to_string(),
                });
        }
    }

    /// The addresses `pid` listens on, seen opening or learnt from /proc, still open.
    pub fn listening_of(&self, pid: u32) -> impl Iterator<Item = &String> {
        self.listeners
            .values()
            .filter_map(move |pids| pids.get(&pid).map(|listener| &listener.local))
    }

    /// A listening socket on `local` closed, in `owner`'s context. Every process seen
    /// holding that address held this socket (a pre-fork master's listener, inherited
    /// by its workers, closes once, in whichever held it last), except with
    /// SO_REUSEPORT, where each has its own: those are forgotten too, a loss only for
    /// the owner of an RST on a socket nobody traced.
    fn listener_closed(&mut self, port: u16, local: &str, owner: &ProcessRef) {
        if let Some(pids) = self.listeners.get_mut(&port) {
            pids.retain(|&pid, listener| pid != owner.pid && listener.local != local);
            if pids.is_empty() {
                self.listeners.remove(&port);
            }
        }
        self.former_listeners.insert(port, owner.clone());
    }

    /// A socket's role: as learnt in the kernel, else from its state and ports. A
    /// connection on a port some process listens on (or last listened on) was accepted
    /// there, whoever holds it now: pre-fork workers accept on their master's listener.
    /// Else a local port connect() never picks (outside `ip_local_port_range`) was bound
    /// on purpose, to listen: a server's connection, accepted before observer started
    /// on a listener it never saw (a worker that dies of the signal before /proc is
    /// read, and closes that listener after its connections).
    fn role(&self, owner: &SocketOwner, old_state: i32, port: u16) -> Role {
        if let Some(known) = kernel_role(owner) {
            known
        } else if old_state == tcp_state::LISTEN {
            Role::Listener
        } else if self.listeners.contains_key(&port)
            || self.former_listeners.get(&port).is_some()
            || !self.ephemeral_ports.contains(&port)
        {
            Role::Inbound
        } else {
            Role::Outbound
        }
    }

    pub fn reset(&mut self, r: &TcpResetRecord) -> Event {
        let (local, remote) = endpoints(&r.endpoints);
        let has_socket = r.flags & reset_flags::HAS_SOCKET != 0;
        let port = r.endpoints.local_port;
        // A socket nobody traced, on a port whose listener has closed: a connection
        // still queued on that listener, which the kernel resets as it closes it
        // (inet_csk_listen_stop()), or one accepted from it. Either is that listener's.
        let owner = if r.owner.tgid != 0 {
            Some(owner_ref(&r.owner))
        } else if has_socket {
            self.sole_listener(port).or_else(|| {
                (!self.listeners.contains_key(&port))
                    .then(|| self.former_listeners.get(&port).cloned())
                    .flatten()
            })
        } else {
            None
        };
        let former_owner = if owner.is_none() && !has_socket {
            self.former_listeners
                .get(&port)
                .filter(|_| !self.listeners.contains_key(&port))
                .cloned()
        } else {
            None
        };
        let state = if r.flags & reset_flags::STATE_KNOWN != 0 && r.state != 0 {
            tcp_state::name(i32::from(r.state)).to_string()
        } else if has_socket {
            "UNKNOWN".to_string()
        } else {
            // No socket holds the port: RFC 793's fictional CLOSED state.
            "CLOSE".to_string()
        };
        Event::TcpReset(TcpResetEvent {
            direction: if r.flags & reset_flags::RECEIVED != 0 {
                Direction::Received
            } else {
                Direction::Sent
            },
            reason: (r.flags & reset_flags::REASON_KNOWN != 0).then(|| self.reason_name(r.reason)),
            local,
            remote,
            state,
            pid: owner.as_ref().map(|o| o.pid),
            comm: owner.map(|o| o.comm),
            former_owner,
            role: kernel_role(&r.owner),
        })
    }

    /// The one process listening on `port`: the owner of an inbound socket whose accept()
    /// the kernel side did not trace (accepts are traced only while some process is
    /// shutting down, and not before observer started). None when several listen there.
    fn sole_listener(&self, port: u16) -> Option<ProcessRef> {
        let pids = self.listeners.get(&port)?;
        let mut listeners = pids.iter();
        match (listeners.next(), listeners.next()) {
            (Some((&pid, listener)), None) => Some(ProcessRef {
                pid,
                comm: listener.comm.clone(),
                via: Vec::new(),
            }),
            _ => None,
        }
    }

    fn reason_name(&self, reason: u32) -> String {
        self.rst_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }

    pub fn accept(&mut self, r: &TcpAcceptRecord) -> Event {
        let (local, remote) = endpoints(&r.endpoints);
        let owner = owner_ref(&r.owner);
        Event::TcpAccept(TcpAcceptEvent {
            pid: owner.pid,
            comm: owner.comm,
            local,
            remote,
        })
    }
}

/// The role the kernel learnt for a socket (at listen(), connect() or a traced accept());
/// None when it did not see the socket made.
fn kernel_role(owner: &SocketOwner) -> Option<Role> {
    match owner.role {
        _ if owner.tgid == 0 => None,
        role::LISTENER => Some(Role::Listener),
        role::INBOUND => Some(Role::Inbound),
        role::OUTBOUND => Some(Role::Outbound),
        _ => None,
    }
}

/// Whether a connection closed at exit was idle or carried work: for an inbound one, a
/// request unread or unanswered (the client spoke last and nothing of ours is on its
/// way: an answer written but not yet acknowledged still reaches it, before the FIN);
/// for an outbound one, an answer unread or a request of ours not yet acknowledged. A
/// peer that already closed its side (CLOSE_WAIT) waits for nothing.
fn activity(r: &TcpStateRecord, role: Role) -> Activity {
    let unanswered = r.flags & tcp_flags::PEER_SENT_DATA != 0
        && r.flags & tcp_flags::PEER_SPOKE_LAST != 0
        && r.unsent_bytes == 0;
    let mid_answer = r.unsent_bytes > 0 && r.flags & tcp_flags::STILL_WRITING != 0;
    let in_flight = match role {
        _ if i32::from(r.old_state) == tcp_state::CLOSE_WAIT => false,
        Role::Inbound => r.unread_bytes > 0 || unanswered || mid_answer,
        _ => r.unread_bytes > 0 || r.unsent_bytes > 0,
    };
    if in_flight {
        Activity::InFlight
    } else {
        Activity::Idle
    }
}

fn owner_ref(owner: &SocketOwner) -> ProcessRef {
    ProcessRef {
        pid: owner.tgid,
        comm: comm(&owner.comm),
        via: Vec::new(),
    }
}

/// (local, remote) as `addr:port`, IPv6 in brackets.
pub fn endpoints(e: &TcpEndpoints) -> (String, String) {
    let ip = |bytes: &[u8; 16]| -> IpAddr {
        if e.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        }
    };
    (
        SocketAddr::new(ip(&e.local_addr), e.local_port).to_string(),
        SocketAddr::new(ip(&e.remote_addr), e.remote_port).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use observer_common::{COMM_LEN, RecordHeader, kind};

    use super::*;

    fn owner(tgid: u32, role: u8, name: &str) -> SocketOwner {
        let mut comm = [0u8; COMM_LEN];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        SocketOwner {
            tgid,
            role,
            _pad: [0; 3],
            comm,
        }
    }

    fn v4(local_port: u16, remote_port: u16) -> TcpEndpoints {
        let mut e = TcpEndpoints {
            family: AF_INET,
            local_port,
            remote_port,
            ..Default::default()
        };
        e.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        e
    }

    fn state(owner: SocketOwner, old: i32, new: i32, flags: u8, port: u16) -> TcpStateRecord {
        TcpStateRecord {
            header: RecordHeader {
                kind: kind::TCP_STATE,
                cpu: 0,
                mono_ns: 1,
            },
            endpoints: v4(port, if old == 10 || new == 10 { 0 } else { 50_000 }),
            owner,
            old_state: old as u8,
            new_state: new as u8,
            flags,
            _pad: [0; 5],
            unread_bytes: 0,
            unsent_bytes: 0,
        }
    }

    #[test]
    fn remembers_each_listeners_address_until_it_closes() {
        let mut tracker = TcpTracker::new(HashMap::new());
        let listener = owner(42, role::LISTENER, "server");
        tracker.state_change(&state(
            listener,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            0,
            8080,
        ));
        tracker.state_change(&state(
            listener,
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            0,
            9090,
        ));
        let mut open: Vec<&String> = tracker.listening_of(42).collect();
        open.sort();
        assert_eq!(open, ["127.0.0.1:8080", "127.0.0.1:9090"]);
        assert_eq!(tracker.listening_of(43).count(), 0);
        tracker.state_change(&state(
            listener,
            tcp_state::LISTEN,
            tcp_state::CLOSE,
            0,
            8080,
        ));
        let open: Vec<&String> = tracker.listening_of(42).collect();
        assert_eq!(open, ["127.0.0.1:9090"]);
    }

    fn refused(port: u16) -> TcpResetRecord {
        TcpResetRecord {
            header: RecordHeader {
                kind: kind::TCP_RESET,
                cpu: 0,
                mono_ns: 1,
            },
            endpoints: v4(port, 40_000),
            owner: SocketOwner::default(),
            reason: 1,
            state: 0,
            flags: reset_flags::REASON_KNOWN | reset_flags::STATE_KNOWN,
            _pad: [0; 2],
        }
    }

    /// An RST received on a socket of `port` whose owner the kernel did not know.
    fn received_on_socket(port: u16) -> TcpResetRecord {
        TcpResetRecord {
            flags: reset_flags::RECEIVED | reset_flags::HAS_SOCKET,
            ..refused(port)
        }
    }

    #[test]
    fn an_rst_on_an_untraced_inbound_socket_names_the_sole_listener_of_its_port() {
        let mut tracker = TcpTracker::new(HashMap::new());
        let pid_of = |tracker: &mut TcpTracker, port| match tracker.reset(&received_on_socket(port))
        {
            Event::TcpReset(reset) => reset.pid.zip(reset.comm),
            other => panic!("{other:?}"),
        };
        let listen = |tracker: &mut TcpTracker, pid| {
            tracker.state_change(&state(
                owner(pid, role::LISTENER, "server"),
                tcp_state::CLOSE,
                tcp_state::LISTEN,
                0,
                8080,
            ))
        };
        assert_eq!(pid_of(&mut tracker, 8080), None, "nobody listens");
        listen(&mut tracker, 42);
        assert_eq!(pid_of(&mut tracker, 8080), Some((42, "server".to_string())));
        assert_eq!(pid_of(&mut tracker, 9090), None, "another port");
        listen(&mut tracker, 43);
        assert_eq!(pid_of(&mut tracker, 8080), None, "two listeners: no guess");
        // No socket (a refused connect): never a listener's, whoever listens.
        let Event::TcpReset(refused) = tracker.reset(&refused(8080)) else {
            panic!("expected a reset");
        };
        assert_eq!(refused.pid, None);
    }

    #[test]
    fn listeners_learnt_from_proc_name_untraced_inbound_resets_and_keep_what_was_seen() {
        let mut tracker = TcpTracker::new(HashMap::new());
        tracker.state_change(&state(
            owner(42, role::LISTENER, "seen"),
            tcp_state::CLOSE,
            tcp_state::LISTEN,
            0,
            8080,
        ));
        let from_proc = ["127.0.0.1:8080".to_string(), "[::]:9090".to_string()];
        tracker.learn_listeners(42, "from-proc", &from_proc);
        for (port, comm) in [(8080, "seen"), (9090, "from-proc")] {
            let Event::TcpReset(reset) = tracker.reset(&received_on_socket(port)) else {
                panic!("expected a reset");
            };
            assert_eq!((reset.pid, reset.comm.as_deref()), (Some(42), Some(comm)));
        }
        let mut open: Vec<&String> = tracker.listening_of(42).collect();
        open.sort();
        assert_eq!(open, ["127.0.0.1:8080", "[::]:9090"]);
    }

    #[test]
    fn formats_v4_and_v6_endpoints() {
        assert_eq!(
            endpoints(&v4(80, 5)),
            ("127.0.0.1:80".into(), "127.0.0.2:5".into())
        );
        let mut e = TcpEndpoints {
            family: 10,
            local_port: 443,
            remote_port: 1,
            ..Default::default()
        };
        e.local_addr[15] = 1;
        assert_eq!(endpoints(&e).0, "[::1]:443");
    }

    #[test]
    fn a_refused_connect_after_exit_names_the_former_listener() {
        let reasons = HashMap::from([(1, "NO_SOCKET".to_string())]);
        let mut tracker = TcpTracker::new(reasons);
        let server = owner(100, role::LISTENER, "node");
        tracker.state_change(&state(server, 7, 10, 0, 8080));
        // While it listens, an RST on its port is not attributed to a former owner.
        let Event::TcpReset(live) = tracker.reset(&refused(8080)) else {
            unreachable!()
        };
        assert_eq!(live.former_owner, None);
        let closed = tracker.state_change(&state(server, 10, 7, tcp_flags::CLOSED_AT_EXIT, 8080));
        let Some(Event::TcpCloseAtExit(close)) = closed else {
            panic!("{closed:?}")
        };
        assert_eq!(
            (close.role, close.state.as_str()),
            (Role::Listener, "LISTEN")
        );
        let Event::TcpReset(reset) = tracker.reset(&refused(8080)) else {
            unreachable!()
        };
        assert_eq!(reset.pid, None);
        assert_eq!(reset.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(reset.state, "CLOSE");
        assert_eq!(reset.local, "127.0.0.1:8080");
        assert_eq!(
            reset.former_owner,
            Some(ProcessRef {
                pid: 100,
                comm: "node".into(),
                via: Vec::new(),
            })
        );
        // A new listener on the port ends the attribution.
        tracker.state_change(&state(owner(200, role::LISTENER, "node"), 7, 10, 0, 8080));
        let Event::TcpReset(again) = tracker.reset(&refused(8080)) else {
            unreachable!()
        };
        assert_eq!(again.former_owner, None);
    }

    #[test]
    fn roles_at_exit_come_from_the_kernel_or_the_ports() {
        let mut tracker = TcpTracker::new(HashMap::new());
        tracker.state_change(&state(owner(100, role::LISTENER, "srv"), 7, 10, 0, 9000));
        let at_exit = tcp_flags::CLOSED_AT_EXIT;
        let cases = [
            (owner(100, role::INBOUND, "srv"), 9000, Role::Inbound),
            (owner(100, role::OUTBOUND, "srv"), 41000, Role::Outbound),
            // Sockets opened before observer started: inferred from the listening port.
            (owner(100, role::UNKNOWN, "srv"), 9000, Role::Inbound),
            (owner(100, role::UNKNOWN, "srv"), 41000, Role::Outbound),
            // A pre-fork worker's connection, accepted on its master's listener.
            (owner(101, role::UNKNOWN, "worker"), 9000, Role::Inbound),
            // On a port outside the ephemeral range, bound to listen: accepted on a
            // listener never seen (HAProxy's worker dies of SIGTERM before /proc is
            // read, and closes its listener after its connections).
            (owner(102, role::UNKNOWN, "haproxy"), 18091, Role::Inbound),
        ];
        for (owner, port, expected) in cases {
            let event = tracker.state_change(&state(owner, 1, 4, at_exit, port));
            let Some(Event::TcpCloseAtExit(close)) = event else {
                panic!("{event:?}")
            };
            assert_eq!(
                (close.role, close.state.as_str()),
                (expected, "ESTABLISHED")
            );
        }
        // A listener closed by its program (not at exit) is a tcp_listen close.
        let closed =
            tracker.state_change(&state(owner(100, role::LISTENER, "srv"), 10, 7, 0, 9000));
        assert!(matches!(
            closed,
            Some(Event::TcpListen(TcpListenEvent {
                action: ListenAction::Close,
                ..
            }))
        ));
        // Other transitions are not reported.
        assert!(
            tracker
                .state_change(&state(owner(5, 0, "x"), 1, 8, 0, 1))
                .is_none()
        );
    }

    #[test]
    fn a_closing_listeners_backlog_resets_are_that_listeners() {
        let mut tracker = TcpTracker::new(HashMap::new());
        let server = owner(100, role::LISTENER, "srv");
        tracker.state_change(&state(server, tcp_state::CLOSE, tcp_state::LISTEN, 0, 9000));
        tracker.state_change(&state(server, tcp_state::LISTEN, tcp_state::CLOSE, 0, 9000));
        // inet_csk_listen_stop() resets the queued connections it never accepted.
        let queued = TcpResetRecord {
            flags: reset_flags::HAS_SOCKET,
            ..refused(9000)
        };
        let Event::TcpReset(reset) = tracker.reset(&queued) else {
            panic!("expected a reset");
        };
        assert_eq!((reset.pid, reset.former_owner), (Some(100), None));
    }

    /// A stopping process's own close of a client's unanswered request is a cut; the
    /// kernel sends such closes of connections whose role it did not learn, and those
    /// that turn out to be outbound here are left out.
    #[test]
    fn closes_in_flight_are_of_clients_only() {
        let mut tracker = TcpTracker::new(HashMap::new());
        tracker.state_change(&state(owner(100, role::LISTENER, "srv"), 7, 10, 0, 9000));
        let cut = tcp_flags::CLOSED_IN_FLIGHT
            | tcp_flags::TRAFFIC_KNOWN
            | tcp_flags::PEER_SENT_DATA
            | tcp_flags::PEER_SPOKE_LAST;
        let unknown = owner(100, role::UNKNOWN, "srv");
        let event = tracker.state_change(&state(unknown, 1, 4, cut, 9000));
        let Some(Event::TcpCloseInFlight(close)) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            (close.role, close.activity),
            (Role::Inbound, Some(Activity::InFlight))
        );
        assert_eq!(
            tracker.state_change(&state(unknown, 1, 4, cut, 41_000)),
            None
        );
    }

    #[test]
    fn connections_closed_at_exit_are_idle_or_carry_work() {
        let mut tracker = TcpTracker::new(HashMap::new());
        tracker.state_change(&state(owner(100, role::LISTENER, "srv"), 7, 10, 0, 9000));
        let known = tcp_flags::CLOSED_AT_EXIT | tcp_flags::TRAFFIC_KNOWN;
        let spoke = tcp_flags::PEER_SENT_DATA | tcp_flags::PEER_SPOKE_LAST;
        let inbound = owner(100, role::INBOUND, "srv");
        let cases = [
            (
                "never asked",
                known,
                0,
                0,
                tcp_state::ESTABLISHED,
                Activity::Idle,
            ),
            (
                "answered",
                known | tcp_flags::PEER_SENT_DATA,
                0,
                0,
                1,
                Activity::Idle,
            ),
            ("unanswered", known | spoke, 0, 0, 1, Activity::InFlight),
            (
                "unread request",
                known | tcp_flags::PEER_SENT_DATA,
                40,
                0,
                1,
                Activity::InFlight,
            ),
            (
                "answer on its way",
                known | spoke,
                0,
                120,
                1,
                Activity::Idle,
            ),
            (
                "a download cut while the process still wrote",
                known | tcp_flags::PEER_SENT_DATA | tcp_flags::STILL_WRITING,
                0,
                2_000_000,
                1,
                Activity::InFlight,
            ),
            (
                "client gone",
                known | spoke,
                0,
                0,
                tcp_state::CLOSE_WAIT,
                Activity::Idle,
            ),
        ];
        for (name, flags, unread, unsent, old_state, expected) in cases {
            let mut record = state(inbound, old_state, tcp_state::FIN_WAIT1, flags, 9000);
            record.unread_bytes = unread;
            record.unsent_bytes = unsent;
            let Some(Event::TcpCloseAtExit(close)) = tracker.state_change(&record) else {
                panic!("{name}")
            };
            assert_eq!(close.activity, Some(expected), "{name}");
        }
        let unknown = state(inbound, 1, 4, tcp_flags::CLOSED_AT_EXIT, 9000);
        let Some(Event::TcpCloseAtExit(close)) = tracker.state_change(&unknown) else {
            panic!("no traffic read")
        };
        assert_eq!((close.activity, close.unread_bytes), (None, None));
    }

    #[test]
    fn reasons_and_states_are_named() {
        let mut tracker = TcpTracker::new(HashMap::from([(11, "TCP_ABORT_ON_CLOSE".into())]));
        let mut r = refused(1);
        r.owner = owner(7, role::INBOUND, "app");
        r.reason = 11;
        r.state = 1;
        r.flags |= reset_flags::HAS_SOCKET;
        let Event::TcpReset(reset) = tracker.reset(&r) else {
            unreachable!()
        };
        assert_eq!((reset.pid, reset.comm.as_deref()), (Some(7), Some("app")));
        assert_eq!(
            (reset.reason.as_deref(), reset.state.as_str()),
            (Some("TCP_ABORT_ON_CLOSE"), "ESTABLISHED")
        );
        r.reason = 99;
        r.flags |= reset_flags::RECEIVED;
        let Event::TcpReset(unknown) = tracker.reset(&r) else {
            unreachable!()
        };
        assert_eq!(
            (unknown.reason.as_deref(), unknown.direction),
            (Some("REASON_99"), Direction::Received)
        );
    }
}
