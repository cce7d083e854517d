//! Exits the kernel staged per CPU instead of sending them through the ring buffer, put
//! back among the ring's records by time. Pure.
//!
//! The session reads the stages at the start of each drain, and again whenever a ring
//! record is later than its last read: an exit is published before anything its CPU
//! does after it (an exiting task's sockets close after its exit record is written),
//! so every exit earlier than that record is in the stages by then. Exits read are
//! handed out before the first ring record later than them.
use std::collections::VecDeque;

use crate::pipeline::decode::Record;

#[derive(Default)]
pub struct StagedExits(VecDeque<Record>);

impl StagedExits {
    /// Adds the exits of one read of the stages, in any order.
    pub fn add(&mut self, exits: impl IntoIterator<Item = Record>) {
        let before = self.0.len();
        self.0.extend(exits);
        if self.0.len() == before {
            return;
        }
        // Each CPU's are in order already; a stable sort merges the CPUs and the reads.
        self.0
            .make_contiguous()
            .sort_by_key(|exit| exit.header().mono_ns);
    }

    /// The next staged exit to handle before a ring record of time `at`.
    pub fn next_before(&mut self, at: u64) -> Option<Record> {
        if self.0.front()?.header().mono_ns <= at {
            self.0.pop_front()
        } else {
            None
        }
    }

    /// The exits left once the ring is empty, oldest first.
    pub fn rest(self) -> impl Iterator<Item = Record> {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{ProcessExitRecord, RecordHeader, TcpStateRecord};

    fn exit(mono_ns: u64, cpu: u32) -> Record {
        Record::ProcessExit(ProcessExitRecord {
            header: RecordHeader {
                cpu,
                mono_ns,
                ..RecordHeader::default()
            },
            ..ProcessExitRecord::default()
        })
    }

    fn ring_record(mono_ns: u64) -> Record {
        Record::TcpState(TcpStateRecord {
            header: RecordHeader {
                mono_ns,
                ..RecordHeader::default()
            },
            ..TcpStateRecord::default()
        })
    }

    /// The order the session hands records to the pipeline in.
    fn merged(ring: &[u64], staged_exits: Vec<Record>) -> Vec<(&'static str, u64)> {
        let mut staged = StagedExits::default();
        staged.add(staged_exits);
        let mut order = Vec::new();
        for record in ring.iter().map(|&at| ring_record(at)) {
            let at = record.header().mono_ns;
            while let Some(exit) = staged.next_before(at) {
                order.push(("exit", exit.header().mono_ns));
            }
            order.push(("ring", at));
        }
        order.extend(staged.rest().map(|exit| ("exit", exit.header().mono_ns)));
        order
    }

    #[test]
    fn staged_exits_go_among_the_ring_records_by_time() {
        // Two CPUs' stages, each in order; the ring as committed (20 after 30: another
        // CPU's record reserved later).
        let staged = vec![exit(5, 0), exit(25, 0), exit(12, 1), exit(40, 1)];
        assert_eq!(
            merged(&[10, 30, 20], staged),
            [
                ("exit", 5),
                ("ring", 10),
                ("exit", 12),
                ("exit", 25),
                ("ring", 30),
                ("ring", 20),
                ("exit", 40),
            ]
        );
    }

    #[test]
    fn a_ring_record_at_the_same_time_comes_after_the_exit() {
        assert_eq!(merged(&[7], vec![exit(7, 1)]), [("exit", 7), ("ring", 7)]);
        assert_eq!(merged(&[], vec![exit(3, 0)]), [("exit", 3)]);
        assert_eq!(merged(&[3], vec![]), [("ring", 3)]);
    }

    #[test]
    fn exits_of_a_later_read_go_before_the_ring_record_that_prompted_it() {
        // An exit at 5 on CPU 1 was published after the first read; a ring record at 8
        // (its socket closing, say) prompts the second.
        let mut staged = StagedExits::default();
        staged.add([exit(9, 0), exit(3, 0)]);
        assert_eq!(staged.next_before(4).map(|e| e.header().mono_ns), Some(3));
        staged.add([exit(5, 1)]);
        assert_eq!(staged.next_before(8).map(|e| e.header().mono_ns), Some(5));
        assert_eq!(staged.next_before(8), None);
        let rest: Vec<u64> = staged.rest().map(|e| e.header().mono_ns).collect();
        assert_eq!(rest, [9]);
    }
}
