//! Refused connections, counted instead of written one by one. A port nobody listens on
//! answers every SYN with an RST (`tcp_v4_send_reset()` with no socket: reason
//! NO_SOCKET), and a client on this host sees it in `connect()` (tcp_receive_reset in
//! SYN_SENT): a client hammering a closed port makes two `tcp_reset` lines per attempt,
//! most of a log. Instead, each refusing endpoint gets one `tcp_refused` line per
//! interval with exact counts.
//!
//! Every refusal still reaches the correlator one by one (the pipeline's job), so
//! `refused_after_exit` stays exact. For a replayed log to count the same, a tally holds
//! refusals counted for one report only (a new tally starts when that changes) and is
//! written before that report is; the line names the report in `counted_for`.
use std::collections::HashMap;

use crate::event::{
    Direction, Event, ProcessRef, RefusedClient, TcpRefusedEvent, TcpResetEvent, port_of,
};

/// Endpoints tallied at once; refusals of further endpoints go to the `*` tally, so a
/// scan of many addresses stays a few lines.
const MAX_ENDPOINTS: usize = 1024;
/// Client processes listed per line (the rest counted in `clients_total`).
const MAX_CLIENTS_LISTED: usize = 8;
/// Client processes counted per tally; more are only counted in `clients_total`.
const MAX_CLIENTS_COUNTED: usize = 256;
/// The endpoint that stands for every endpoint past `MAX_ENDPOINTS`.
const OVERFLOW_ENDPOINT: &str = "*";

/// Refusals of one endpoint since `first_ns`, all counted for the same report.
struct Tally {
    first_ns: u64,
    last_ns: u64,
    sent: u64,
    received: u64,
    former_owner: Option<ProcessRef>,
    counted_for: Option<u32>,
    clients: HashMap<u32, RefusedClient>,
    clients_total: u32,
}

impl Tally {
    fn new(first_ns: u64) -> Self {
        Self {
            first_ns,
            last_ns: first_ns,
            sent: 0,
            received: 0,
            former_owner: None,
            counted_for: None,
            clients: HashMap::new(),
            clients_total: 0,
        }
    }

    /// Counts `reset`; a sent one also says which report it counted for.
    fn add(&mut self, mono_ns: u64, reset: &TcpResetEvent, counted_for: Option<Option<u32>>) {
        self.last_ns = self.last_ns.max(mono_ns);
        if let Some(counted_for) = counted_for {
            self.counted_for = counted_for;
        }
        match reset.direction {
            Direction::Sent => self.sent += 1,
            Direction::Received => {
                self.received += 1;
                if let (Some(pid), Some(comm)) = (reset.pid, &reset.comm) {
                    self.count_client(pid, comm);
                }
            }
        }
        if reset.former_owner.is_some() {
            self.former_owner.clone_from(&reset.former_owner);
        }
    }

    fn count_client(&mut self, pid: u32, comm: &str) {
        if let Some(client) = self.clients.get_mut(&pid) {
            client.refused += 1;
            return;
        }
        self.clients_total += 1;
        if self.clients.len() < MAX_CLIENTS_COUNTED {
            let comm = comm.to_string();
            self.clients.insert(
                pid,
                RefusedClient {
                    pid,
                    comm,
                    refused: 1,
                },
            );
        }
    }

    fn into_event(self, endpoint: String, interval_ns: u64) -> (u64, Event) {
        let mut clients: Vec<RefusedClient> = self.clients.into_values().collect();
        clients.sort_by(|a, b| b.refused.cmp(&a.refused).then(a.pid.cmp(&b.pid)));
        clients.truncate(MAX_CLIENTS_LISTED);
        let port = port_of(&endpoint).unwrap_or(0);
        let event = TcpRefusedEvent {
            refused: endpoint,
            port,
            sent: self.sent,
            received: self.received,
            last_mono_ns: self.last_ns,
            interval_ms: interval_ns / 1_000_000,
            former_owner: self.former_owner,
            counted_for: self.counted_for,
            clients,
            clients_total: self.clients_total,
        };
        (self.first_ns, Event::TcpRefused(event))
    }
}

/// The open tallies, by refusing endpoint.
pub struct Refusals {
    interval_ns: u64,
    open: HashMap<String, Tally>,
}

impl Refusals {
    pub fn new(interval_ns: u64) -> Self {
        Self {
            interval_ns,
            open: HashMap::new(),
        }
    }

    /// Counts `reset` (a refusal: see [`TcpResetEvent::refused_endpoint`]) at `mono_ns`,
    /// counted for `counted_for`'s report. Returns the line of the endpoint's tally
    /// when that tally had to close first (it counted for another report).
    pub fn add(
        &mut self,
        mono_ns: u64,
        reset: &TcpResetEvent,
        counted_for: Option<u32>,
    ) -> Option<(u64, Event)> {
        let endpoint = reset.refused_endpoint()?;
        let endpoint = if self.open.len() >= MAX_ENDPOINTS && !self.open.contains_key(endpoint) {
            OVERFLOW_ENDPOINT
        } else {
            endpoint
        };
        // Only a sent refusal can count for a report (the clients' side never does).
        let sent = reset.direction == Direction::Sent;
        let joins = |tally: &Tally| !sent || tally.sent == 0 || tally.counted_for == counted_for;
        // The common case, a storm on one endpoint: no allocation.
        if let Some(tally) = self.open.get_mut(endpoint)
            && joins(tally)
        {
            tally.add(mono_ns, reset, sent.then_some(counted_for));
            return None;
        }
        let closed = self
            .open
            .remove_entry(endpoint)
            .map(|(key, tally)| tally.into_event(key, self.interval_ns));
        let mut tally = Tally::new(mono_ns);
        tally.add(mono_ns, reset, sent.then_some(counted_for));
        self.open.insert(endpoint.to_string(), tally);
        closed
    }

    /// The lines of the tallies whose interval has passed by `now_ns`, oldest first.
    pub fn due(&mut self, now_ns: u64) -> Vec<(u64, Event)> {
        let interval = self.interval_ns;
        self.close(|tally| tally.first_ns.saturating_add(interval) <= now_ns)
    }

    /// The lines of the tallies counted for some report: written before any report is.
    pub fn counted(&mut self) -> Vec<(u64, Event)> {
        self.close(|tally| tally.counted_for.is_some())
    }

    /// Whether a tally counted for some report is open.
    pub fn any_counted(&self) -> bool {
        self.open.values().any(|tally| tally.counted_for.is_some())
    }

    /// The lines of every open tally.
    pub fn all(&mut self) -> Vec<(u64, Event)> {
        self.close(|_| true)
    }

    fn close(&mut self, closes: impl Fn(&Tally) -> bool) -> Vec<(u64, Event)> {
        if self.open.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = self
            .open
            .iter()
            .filter(|(_, tally)| closes(tally))
            .map(|(key, _)| key.clone())
            .collect();
        let mut lines: Vec<(u64, Event)> = keys
            .into_iter()
            .filter_map(|key| self.open.remove_entry(&key))
            .map(|(key, tally)| tally.into_event(key, self.interval_ns))
            .collect();
        lines.sort_by_key(|(first_ns, _)| *first_ns);
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn sent(port: u16, former: Option<u32>) -> TcpResetEvent {
        TcpResetEvent {
            direction: Direction::Sent,
            reason: Some("NO_SOCKET".into()),
            local: format!("127.0.0.1:{port}"),
            remote: "127.0.0.1:40000".into(),
            state: "CLOSE".into(),
            pid: None,
            comm: None,
            former_owner: former.map(|pid| ProcessRef::new(pid, "server")),
            role: None,
        }
    }

    fn received(port: u16, client: u32) -> TcpResetEvent {
        TcpResetEvent {
            direction: Direction::Received,
            reason: None,
            local: "127.0.0.1:40000".into(),
            remote: format!("127.0.0.1:{port}"),
            state: "SYN_SENT".into(),
            pid: Some(client),
            comm: Some("curl".into()),
            former_owner: None,
            role: None,
        }
    }

    fn refused(line: &(u64, Event)) -> &TcpRefusedEvent {
        match &line.1 {
            Event::TcpRefused(e) => e,
            other => panic!("not a tcp_refused: {other:?}"),
        }
    }

    #[test]
    fn only_refusals_are_counted() {
        let mut refusals = Refusals::new(SECOND);
        let mut reset_on_a_connection = sent(80, None);
        reset_on_a_connection.reason = Some("NOT_SPECIFIED".into());
        let mut received_established = received(80, 7);
        received_established.state = "ESTABLISHED".into();
        for reset in [reset_on_a_connection, received_established] {
            assert!(reset.refused_endpoint().is_none());
            assert!(refusals.add(1, &reset, None).is_none());
        }
        assert!(refusals.all().is_empty());
    }

    #[test]
    fn one_line_per_endpoint_per_interval_with_exact_counts() {
        let mut refusals = Refusals::new(SECOND);
        for i in 0..1000 {
            assert!(refusals.add(10 + i, &sent(80, Some(5)), None).is_none());
            assert!(
                refusals
                    .add(11 + i, &received(80, 7 + (i as u32 % 3)), None)
                    .is_none()
            );
        }
        refusals.add(20, &sent(81, None), None);
        assert!(
            refusals.due(SECOND + 9).is_empty(),
            "the interval is not over"
        );
        let lines = refusals.due(SECOND + 20);
        assert_eq!(lines.len(), 2);
        let first = refused(&lines[0]);
        assert_eq!(lines[0].0, 10);
        assert_eq!((first.refused.as_str(), first.port), ("127.0.0.1:80", 80));
        assert_eq!(
            (first.sent, first.received, first.last_mono_ns),
            (1000, 1000, 1010)
        );
        assert_eq!(first.former_owner.as_ref().map(|o| o.pid), Some(5));
        assert_eq!(first.clients.len(), 3);
        assert_eq!(first.clients_total, 3);
        assert_eq!(first.clients[0].refused, 334, "most refused first");
        assert_eq!(refused(&lines[1]).sent, 1);
        assert!(refusals.all().is_empty());
    }

    #[test]
    fn a_tally_holds_refusals_counted_for_one_report() {
        let mut refusals = Refusals::new(SECOND);
        assert!(refusals.add(1, &sent(80, Some(5)), Some(5)).is_none());
        assert!(
            refusals.add(2, &received(80, 7), None).is_none(),
            "the client's side"
        );
        assert!(refusals.add(2, &sent(80, Some(5)), Some(5)).is_none());
        assert!(refusals.any_counted());
        // The report's window ended: the next refusal counts for nobody.
        let closed = refusals.add(3, &sent(80, Some(5)), None).expect("closed");
        assert_eq!(
            (refused(&closed).sent, refused(&closed).counted_for),
            (2, Some(5))
        );
        assert!(!refusals.any_counted());
        assert!(refusals.counted().is_empty());
        let rest = refusals.all();
        assert_eq!(
            (refused(&rest[0]).sent, refused(&rest[0]).counted_for),
            (1, None)
        );
    }

    #[test]
    fn endpoints_and_clients_stay_bounded() {
        let mut refusals = Refusals::new(SECOND);
        for port in 0..(MAX_ENDPOINTS as u16 + 10) {
            refusals.add(1, &received(port, u32::from(port)), None);
        }
        let lines = refusals.all();
        assert_eq!(lines.len(), MAX_ENDPOINTS + 1);
        let overflow = lines
            .iter()
            .map(refused)
            .find(|e| e.refused == OVERFLOW_ENDPOINT)
            .expect("the overflow tally");
        assert_eq!((overflow.received, overflow.port), (10, 0));
        for client in 0..1000 {
            refusals.add(1, &received(80, client), None);
        }
        let line = refusals.all();
        let many = refused(&line[0]);
        assert_eq!(
            (many.clients.len(), many.clients_total),
            (MAX_CLIENTS_LISTED, 1000)
        );
    }
}
