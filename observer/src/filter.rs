//! `--pid` / `--comm`: which processes' events to show. Events name a subject process
//! (a signal's target, a delivery's receiver, an exit's process); `lost` always passes.
use crate::event::Event;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
}

impl Filter {
    /// True when the event concerns a chosen process. Values of one flag are
    /// alternatives; different flags must all match.
    pub fn matches(&self, event: &Event) -> bool {
        let (pid, comm) = match event {
            Event::Signal(e) => (e.target.pid, e.target.comm.as_str()),
            Event::SignalDelivered(e) => (e.target.pid, e.target.comm.as_str()),
            Event::Exit(e) => (e.pid, e.comm.as_str()),
            Event::Lost(_) => return true,
        };
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExitEvent, LostEvent, StatusSource};

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
        })
    }

    #[test]
    fn flags_combine_as_documented() {
        let all = Filter::default();
        assert!(all.matches(&exit(1, "a")));
        let pids = Filter {
            pids: vec![1, 2],
            comms: vec![],
        };
        assert!(pids.matches(&exit(2, "x")) && !pids.matches(&exit(3, "x")));
        let both = Filter {
            pids: vec![1],
            comms: vec!["nginx".into(), "node".into()],
        };
        assert!(both.matches(&exit(1, "node")));
        assert!(!both.matches(&exit(1, "sh")));
        assert!(!both.matches(&exit(2, "node")));
        assert!(both.matches(&Event::Lost(LostEvent { count: 3 })));
    }
}
