//! Without BTF the kernel programs cannot read a task's exit status. This infers it, per
//! process, from what came first: the code passed to exit_group(), or the fatal signal
//! that ended the group. Core dumps cannot be seen this way.
use crate::{bounded::BoundedMap, host::signals, host::wait_status::WaitStatus};

/// Processes tracked at once; beyond this the oldest evidence is forgotten.
const CAPACITY: usize = 65_536;

pub struct ExitInference {
    /// tgid → the first evidence of how it ends.
    cause: BoundedMap<u32, WaitStatus>,
    /// tgid → the last fatal-by-default signal generated for it that its handler has not
    /// (yet) taken: the likely cause of a group exit reported as SIGKILL.
    pending_fatal: BoundedMap<u32, i32>,
}

impl Default for ExitInference {
    fn default() -> Self {
        Self {
            cause: BoundedMap::new(CAPACITY),
            pending_fatal: BoundedMap::new(CAPACITY),
        }
    }
}

impl ExitInference {
    /// exit_group(code) was called.
    pub fn exit_group_called(&mut self, tgid: u32, code: i32) {
        self.record_cause(tgid, WaitStatus::exited(code));
    }

    /// A fatal-by-default signal was generated for the process.
    pub fn fatal_signal_generated(&mut self, tgid: u32, sig: i32) {
        if signals::is_fatal_by_default(sig) {
            self.pending_fatal.insert(tgid, sig);
        }
    }

    /// A signal was delivered; `default_action` when its handler is SIG_DFL, `teardown`
    /// when it is get_signal()'s SIGKILL for a group exit already under way.
    pub fn signal_delivered(&mut self, tgid: u32, sig: i32, default_action: bool, teardown: bool) {
        if !default_action {
            if self.pending_fatal.get(&tgid) == Some(&sig) {
                self.pending_fatal.remove(&tgid);
            }
            return;
        }
        if teardown {
            // A fatal signal with no handler was turned into a group SIGKILL: the signal
            // generated last is the cause (SIGKILL itself if none other is pending).
            let cause = self.pending_fatal.get(&tgid).copied().unwrap_or(sig);
            self.record_cause(tgid, WaitStatus::killed(cause));
        } else if signals::is_fatal_by_default(sig) {
            self.record_cause(tgid, WaitStatus::killed(sig));
        }
    }

    /// The process exited: its inferred status, forgetting it.
    pub fn take(&mut self, tgid: u32) -> Option<WaitStatus> {
        self.pending_fatal.remove(&tgid);
        self.cause.remove(&tgid)
    }

    fn record_cause(&mut self, tgid: u32, status: WaitStatus) {
        // The first cause wins: once a group exit is under way, later signals change nothing.
        self.cause.insert_new(tgid, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_group_code_is_the_status() {
        let mut inference = ExitInference::default();
        inference.exit_group_called(10, 3);
        // exit_group tears the other threads down with SIGKILL deliveries: no effect.
        inference.signal_delivered(10, 9, true, true);
        assert_eq!(inference.take(10), Some(WaitStatus::exited(3)));
        assert_eq!(inference.take(10), None);
    }

    #[test]
    fn sigterm_without_handler_is_reported_as_sigterm_not_sigkill() {
        let mut inference = ExitInference::default();
        inference.fatal_signal_generated(20, 15);
        inference.signal_delivered(20, 9, true, true);
        assert_eq!(inference.take(20), Some(WaitStatus::killed(15)));
    }

    #[test]
    fn a_handled_sigterm_is_not_the_cause_of_a_later_exit() {
        let mut inference = ExitInference::default();
        inference.fatal_signal_generated(30, 15);
        inference.signal_delivered(30, 15, false, false);
        inference.exit_group_called(30, 0);
        assert_eq!(inference.take(30), Some(WaitStatus::exited(0)));
    }

    #[test]
    fn a_core_dumping_signal_is_delivered_itself() {
        let mut inference = ExitInference::default();
        inference.signal_delivered(40, 11, true, false);
        assert_eq!(inference.take(40), Some(WaitStatus::killed(11)));
        inference.signal_delivered(41, 17, true, false); // SIGCHLD: not fatal
        assert_eq!(inference.take(41), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut inference = ExitInference::default();
        for tgid in 0..(CAPACITY as u32 * 2) {
            inference.exit_group_called(tgid, 1);
            inference.fatal_signal_generated(tgid, 15);
        }
        assert!(inference.cause.len() <= CAPACITY);
        assert!(inference.pending_fatal.len() <= CAPACITY);
        assert_eq!(
            inference.take(CAPACITY as u32 * 2 - 1),
            Some(WaitStatus::exited(1))
        );
    }
}
