//! The human format's answer to a process that dies holding thousands of connections:
//! its first few connections closed at exit (and RSTs it sent) are shown, then one line
//! says the rest are counted in its shutdown report. A server killed with 10,000 clients
//! is a screenful, not 10,000 lines. `--json` writes every one regardless, and
//! `--connections each` shows every one in the human format too.
use crate::{
    bounded::BoundedMap,
    event::{Direction, Event, Line},
};

/// Lines of each kind shown per process before the rest are folded.
pub const SHOWN_PER_PROCESS: u32 = 8;
/// Processes whose lines are counted at once (the oldest are forgotten past it).
const PROCESSES: usize = 4096;

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Fold {
    Show,
    /// Show this note in its place: the lines of its kind from now on are left out.
    Note(String),
    Hide,
}

pub struct Folding {
    /// (pid, kind) → lines of that kind seen.
    seen: BoundedMap<(u32, Kind), u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    ClosedAtExit,
    ResetSent,
}

impl Default for Folding {
    fn default() -> Self {
        Self {
            seen: BoundedMap::new(PROCESSES),
        }
    }
}

impl Folding {
    pub fn fold(&mut self, line: &Line) -> Fold {
        let (pid, comm, kind) = match &line.event {
            Event::TcpCloseAtExit(e) => (e.pid, e.comm.as_str(), Kind::ClosedAtExit),
            Event::TcpReset(e) if e.direction == Direction::Sent => match (e.pid, &e.comm) {
                (Some(pid), Some(comm)) => (pid, comm.as_str(), Kind::ResetSent),
                _ => return Fold::Show,
            },
            _ => return Fold::Show,
        };
        let count = match self.seen.get_mut(&(pid, kind)) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                self.seen.insert((pid, kind), 1);
                1
            }
        };
        match count {
            ..=SHOWN_PER_PROCESS => Fold::Show,
            c if c == SHOWN_PER_PROCESS + 1 => Fold::Note(format!(
                "{comm}[{pid}]  more {} not shown: its shutdown report counts them all \
                 (--connections each shows every one)",
                match kind {
                    Kind::ClosedAtExit => "connections closed at exit",
                    Kind::ResetSent => "RSTs sent",
                }
            )),
            _ => Fold::Hide,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Role, SCHEMA_VERSION, TcpCloseAtExitEvent};

    fn closed(pid: u32, port: u16) -> Line {
        Line {
            v: SCHEMA_VERSION,
            event: Event::TcpCloseAtExit(TcpCloseAtExitEvent {
                pid,
                comm: "nginx".into(),
                local: "127.0.0.1:80".into(),
                remote: format!("127.0.0.1:{port}"),
                state: "ESTABLISHED".into(),
                role: Role::Inbound,
                activity: None,
                unread_bytes: None,
                unsent_bytes: None,
            }),
            time: String::new(),
            mono_ns: 0,
            host: String::new(),
            container_info: None,
        }
    }

    #[test]
    fn a_process_shows_its_first_connections_then_one_note() {
        let mut folding = Folding::default();
        let folds: Vec<Fold> = (0..10_000).map(|p| folding.fold(&closed(7, p))).collect();
        let shown = folds.iter().filter(|f| **f == Fold::Show).count();
        assert_eq!(shown, SHOWN_PER_PROCESS as usize);
        let notes: Vec<&Fold> = folds
            .iter()
            .filter(|f| matches!(f, Fold::Note(_)))
            .collect();
        assert_eq!(notes.len(), 1);
        assert!(matches!(notes[0], Fold::Note(n) if n.starts_with("nginx[7]  more connections")));
        assert_eq!(folding.fold(&closed(8, 1)), Fold::Show, "another process");
    }
}
