//! Records → contract events: resolves what the kernel could not see (a thread's process,
//! cgroup paths), de-duplicates per-thread kernel views of one process-wide fact, and
//! infers exit statuses when BTF is missing. Pure apart from the [`HostView`] it is given.
use observer_common::{
    ExitGroupCallRecord, ProcessExitRecord, SIG_DFL, SIGKILL, SignalDeliverRecord,
    SignalGenerateRecord, exit_flags, signal_bit, target_flags,
};

use crate::{
    bounded::BoundedMap,
    event::{
        ContainerInfo, DeliveredEvent, Event, ExitEvent, Handler, Origin, ProcessRef, SignalEvent,
        SignalResult, StatusSource, ThreadRef,
    },
    host::signals,
    host::wait_status::WaitStatus,
    pipeline::decode::{Record, comm},
    pipeline::exit_inference::ExitInference,
    pipeline::tcp::TcpTracker,
};

/// What enrichment asks of the host (procfs and cgroupfs in production, a fake in tests).
pub trait HostView {
    /// The thread group of thread `tid`, if it still exists.
    fn tgid_of(&mut self, tid: u32) -> Option<u32>;
    /// The cgroup v2 path of a live process.
    fn cgroup_of_process(&mut self, pid: u32) -> Option<String>;
    /// The path of the cgroup v2 directory whose inode number is `cgroup_id`.
    fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String>;
    /// A live process's pid in its own (innermost) PID namespace.
    fn ns_pid(&mut self, pid: u32) -> Option<u32>;
    /// The TCP listening sockets a live process holds, as `addr:port`.
    fn listening(&mut self, pid: u32) -> Vec<String>;
    /// A live process's children.
    fn children(&mut self, pid: u32) -> Vec<u32>;
    /// A live process's executable and command line.
    fn command(&mut self, pid: u32) -> (Option<String>, Vec<String>);
    /// A live process's parent and its comm.
    fn parent(&mut self, _pid: u32) -> Option<(u32, String)> {
        None
    }
    /// The container a cgroup path names, with its runtime's metadata.
    fn container_info(&mut self, _cgroup: &str) -> Option<ContainerInfo> {
        None
    }
}

/// Parents named in a signal sender's `via`, at most.
const MAX_VIA: usize = 4;

/// An event and the CLOCK_MONOTONIC time of the kernel event behind it.
pub type Timed = (u64, Event);

/// Processes tracked at once for de-duplication.
const TRACKED_PROCESSES: usize = 65_536;
/// A signal's target is looked up in /proc at most this often: a tight signal loop would
/// otherwise cost a /proc walk per signal and overrun the ring buffer.
const TARGET_FACTS_TTL_NS: u64 = 1_000_000_000;
const CACHED_TARGETS: usize = 4096;

/// What /proc said about a signal's target, and when (record time).
#[derive(Clone, Default)]
struct TargetFacts {
    read_ns: u64,
    /// Whether the termination-only facts (listeners, children, command) were read.
    full: bool,
    cgroup: Option<String>,
    ns_pid: Option<u32>,
    listening: Vec<String>,
    children: Vec<u32>,
    exe: Option<String>,
    cmdline: Vec<String>,
}

pub struct Enricher<H> {
    host: H,
    /// Signals to report (the kernel may send more, for exit inference).
    signal_mask: u64,
    /// Signals reported when they are their target container's stop signal.
    container_stop_mask: u64,
    /// tgid → the container stop signal it was sent: its deliveries are reported.
    stopping: BoundedMap<u32, i32>,
    inference: ExitInference,
    /// tgids whose fatal delivery was already reported (every thread sees one).
    dying: BoundedMap<u32, ()>,
    /// tgid → the thread a fatal thread-directed signal was aimed at: its delivery is the
    /// one to report when the whole group is torn down.
    aimed: BoundedMap<u32, u32>,
    /// tgid → the first teardown delivery (and its time), held while waiting for the
    /// aimed thread's.
    held: BoundedMap<u32, Timed>,
    /// (tgid, start time) of processes whose exit was reported; kernels without
    /// `group_dead` can report one exit twice.
    exited: BoundedMap<(u32, u64), ()>,
    tcp: TcpTracker,
    /// The cgroup last read for a process: the fallback when it is gone by the time a
    /// signal to it is enriched (SIGTERM with no handler ends it within microseconds).
    cgroups: BoundedMap<u32, String>,
    /// tgid → its facts, reused within TARGET_FACTS_TTL_NS; forgotten at its exit.
    targets: BoundedMap<u32, TargetFacts>,
}

impl<H: HostView> Enricher<H> {
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    pub fn new(host: H, signal_mask: u64, tcp: TcpTracker) -> Self {
        Self {
            tcp,
            host,
            signal_mask,
            container_stop_mask: 0,
            stopping: BoundedMap::new(TRACKED_PROCESSES),
            inference: ExitInference::default(),
            dying: BoundedMap::new(TRACKED_PROCESSES),
            aimed: BoundedMap::new(TRACKED_PROCESSES),
            held: BoundedMap::new(TRACKED_PROCESSES),
            exited: BoundedMap::new(TRACKED_PROCESSES),
            cgroups: BoundedMap::new(TRACKED_PROCESSES),
            targets: BoundedMap::new(CACHED_TARGETS),
        }
    }

    /// Signals that start a container's stop when its runtime's stop signal is theirs
    /// (the kernel reports them too; see [`signals::CONTAINER_STOP_SIGNALS`]).
    pub fn with_container_stop_signals(mut self, mask: u64) -> Self {
        self.container_stop_mask = mask;
        self
    }

    /// Appends to `out` the events `record` gives (usually one or none).
    pub fn enrich(&mut self, record: &Record, out: &mut Vec<Timed>) {
        let mono_ns = record.header().mono_ns;
        let event = match record {
            Record::SignalGenerate(r) => self.signal(r),
            Record::SignalDeliver(r) => self.delivered(r),
            Record::ProcessExit(r) => {
                out.extend(self.take_held(r.facts.tgid));
                self.exit(r)
            }
            Record::ExitGroupCall(r) => self.exit_group_call(r),
            Record::TcpState(r) => self.tcp.state_change(r).map(|mut event| {
                if let Event::TcpListen(listen) = &mut event {
                    listen.cgroup = self.cgroup_of(listen.pid);
                }
                event
            }),
            Record::TcpReset(r) => Some(self.tcp.reset(r)),
            Record::TcpAccept(r) => Some(self.tcp.accept(r)),
        };
        out.extend(event.map(|event| (mono_ns, event)));
    }

    /// A held teardown delivery whose aimed thread never reported one.
    fn take_held(&mut self, tgid: u32) -> Option<Timed> {
        self.aimed.remove(&tgid);
        self.held.remove(&tgid)
    }

    /// A process's cgroup, read now or, if it is gone, as last read.
    fn cgroup_of(&mut self, pid: u32) -> Option<String> {
        match self.host.cgroup_of_process(pid) {
            Some(cgroup) => {
                self.cgroups.insert(pid, cgroup.clone());
                Some(cgroup)
            }
            None => self.cgroups.get(&pid).cloned(),
        }
    }

    /// The container of the process `event` is about (a signal's target, the exiting
    /// process, a socket's owner), from its cgroup: the event's own, or the last read.
    pub fn container_of(&mut self, event: &Event) -> Option<ContainerInfo> {
        let cgroup = match event {
            Event::Signal(e) => e.target.cgroup.clone(),
            Event::Exit(e) => e.cgroup.clone(),
            Event::TcpListen(e) => e.cgroup.clone(),
            Event::TcpCloseAtExit(e) | Event::TcpCloseInFlight(e) => self.known_cgroup(e.pid),
            Event::TcpAccept(e) => self.known_cgroup(e.pid),
            // A client refused after its server exited: the server that listened there.
            Event::TcpReset(e) => e
                .pid
                .or(e.former_owner.as_ref().map(|owner| owner.pid))
                .and_then(|pid| self.known_cgroup(pid)),
            Event::TcpRefused(e) => e
                .former_owner
                .as_ref()
                .map(|owner| owner.pid)
                .and_then(|pid| self.known_cgroup(pid)),
            _ => None,
        }?;
        self.host.container_info(&cgroup)
    }

    /// A process's cgroup as last read, else read now (TCP events are many: /proc is
    /// read once per process, not per event).
    fn known_cgroup(&mut self, pid: u32) -> Option<String> {
        match self.cgroups.get(&pid) {
            Some(cgroup) => Some(cgroup.clone()),
            None => self.cgroup_of(pid),
        }
    }

    /// Who asked a sender: its parents, nearest first, up to (not including) init.
    fn via(&mut self, sender: u32) -> Vec<ProcessRef> {
        let mut via = Vec::new();
        let mut pid = sender;
        while via.len() < MAX_VIA {
            match self.host.parent(pid) {
                Some((parent, comm)) if parent > 1 => {
                    via.push(ProcessRef::new(parent, comm));
                    pid = parent;
                }
                _ => break,
            }
        }
        via
    }

    fn reported(&self, sig: i32) -> bool {
        self.signal_mask & signal_bit(sig) != 0
    }

    /// Whether `r` is the stop signal the runtime of its target's container stops it with.
    fn stops_container(&mut self, tgid: u32, r: &SignalGenerateRecord) -> bool {
        if self.container_stop_mask & signal_bit(r.sig) == 0 {
            return false;
        }
        let cgroup = self.cgroup_of(tgid).or_else(|| match r.target_cgroup_id {
            0 => None,
            id => self.host.cgroup_path(id),
        });
        cgroup
            .and_then(|cgroup| self.host.container_info(&cgroup))
            .and_then(|container| container.stop_signal)
            .is_some_and(|stop| stop == signals::name(r.sig))
    }

    fn signal(&mut self, r: &SignalGenerateRecord) -> Option<Event> {
        let tgid = match r.target_tgid {
            0 => self.host.tgid_of(r.target_tid).unwrap_or(r.target_tid),
            known => known,
        };
        let result = SignalResult::from_kernel(r.result);
        if result == SignalResult::Delivered {
            self.inference.fatal_signal_generated(tgid, r.sig);
            if signals::is_fatal_by_default(r.sig) && !self.dying.contains(&tgid) {
                if r.group == 0 {
                    self.aimed.insert(tgid, r.target_tid);
                } else {
                    self.aimed.remove(&tgid);
                }
            }
        }
        let stops_container = self.stops_container(tgid, r);
        if !self.reported(r.sig) && !stops_container {
            return None;
        }
        if stops_container {
            self.stopping.insert(tgid, r.sig);
        }
        let terminating = signals::TERMINATION_SIGNALS.contains(&r.sig) || stops_container;
        let target_comm = comm(&r.target_comm);
        let mut facts = self.target_facts(tgid, &target_comm, terminating, r.header.mono_ns);
        // A target gone before /proc was read (a child that SIGTERM ended at once) keeps
        // the cgroup the kernel read at the signal.
        if facts.cgroup.is_none()
            && r.target_cgroup_id != 0
            && let Some(cgroup) = self.host.cgroup_path(r.target_cgroup_id)
        {
            self.cgroups.insert(tgid, cgroup.clone());
            facts.cgroup = Some(cgroup);
        }
        let via = if !terminating {
            Vec::new()
        } else if r.sender_ppid > 1 {
            // The kernel named the sender's parent: a helper such as runc is often gone
            // before /proc is read, the one who ran it (containerd-shim) is not.
            let mut via = vec![ProcessRef::new(r.sender_ppid, comm(&r.sender_parent_comm))];
            via.extend(self.via(r.sender_ppid));
            via.truncate(MAX_VIA);
            via
        } else {
            self.via(r.sender_tgid)
        };
        Some(Event::Signal(SignalEvent {
            sig: r.sig,
            sig_name: signals::name(r.sig),
            sender: ProcessRef {
                pid: r.sender_tgid,
                comm: comm(&r.sender_comm),
                via,
            },
            target: ThreadRef {
                pid: tgid,
                tid: r.target_tid,
                comm: target_comm,
                cgroup: facts.cgroup,
                // The kernel's word, read at the signal, beats /proc, which a target
                // that the signal ends may have left before it is read.
                ns_pid: if r.target_flags & target_flags::NAMESPACE_INIT != 0 {
                    Some(1)
                } else {
                    facts.ns_pid
                },
                listening: facts.listening,
                children: facts.children,
                exe: facts.exe,
                cmdline: facts.cmdline,
            },
            group: r.group != 0,
            si_code: r.si_code,
            origin: Origin::from_si_code(r.si_code),
            result,
            disposition: disposition(r.target_flags),
            blocked: (r.target_flags & target_flags::DISPOSITION_READ != 0)
                .then_some(r.target_flags & target_flags::BLOCKED != 0),
        }))
    }

    /// The target's facts from /proc, or as read less than TARGET_FACTS_TTL_NS ago; the
    /// termination-only ones (listeners, children, command) only for a terminating signal.
    fn target_facts(
        &mut self,
        tgid: u32,
        comm: &str,
        terminating: bool,
        mono_ns: u64,
    ) -> TargetFacts {
        if let Some(facts) = self.targets.get(&tgid)
            && mono_ns.saturating_sub(facts.read_ns) < TARGET_FACTS_TTL_NS
            && (facts.full || !terminating)
        {
            return if terminating {
                facts.clone()
            } else {
                TargetFacts {
                    cgroup: facts.cgroup.clone(),
                    ns_pid: facts.ns_pid,
                    ..TargetFacts::default()
                }
            };
        }
        let mut facts = TargetFacts {
            read_ns: mono_ns,
            cgroup: self.cgroup_of(tgid),
            ns_pid: self.host.ns_pid(tgid),
            ..TargetFacts::default()
        };
        if terminating {
            facts.full = true;
            (facts.exe, facts.cmdline) = self.host.command(tgid);
            facts.listening = self.listening(tgid, comm);
            facts.children = self.host.children(tgid);
        }
        self.targets.insert(tgid, facts.clone());
        facts
    }

    /// A target's listeners: those the kernel reported it opening (exact, even when the
    /// record is handled after the process closed them) and those /proc shows (opened
    /// before observer started). The TCP tracker learns the latter too, so that an RST
    /// on one of their inbound sockets during the drain names the process.
    fn listening(&mut self, tgid: u32, comm: &str) -> Vec<String> {
        let mut listening = self.host.listening(tgid);
        self.tcp.learn_listeners(tgid, comm, &listening);
        listening.extend(self.tcp.listening_of(tgid).cloned());
        listening.sort();
        listening.dedup();
        listening
    }

    fn delivered(&mut self, r: &SignalDeliverRecord) -> Option<Event> {
        let default_action = r.sa_handler == SIG_DFL;
        let teardown = r.dequeued_sig == SIGKILL;
        self.inference
            .signal_delivered(r.tgid, r.sig, default_action, teardown);
        if !self.reported(r.sig) && self.stopping.get(&r.tgid) != Some(&r.sig) {
            return None;
        }
        let event = Event::SignalDelivered(DeliveredEvent {
            sig: r.sig,
            sig_name: signals::name(r.sig),
            target: ThreadRef::thread(r.tgid, r.tid, comm(&r.comm)),
            handler: Handler::from_sa_handler(r.sa_handler),
        });
        if !(default_action && signals::is_fatal_by_default(r.sig)) {
            return Some(event);
        }
        // A fatal default action ends the whole group and every thread reports it: keep
        // one, the aimed thread's when the signal was thread-directed, else the first.
        if self.dying.get(&r.tgid).is_some() {
            return None;
        }
        if teardown && self.aimed.get(&r.tgid).is_some_and(|&tid| tid != r.tid) {
            self.held.insert_new(r.tgid, (r.header.mono_ns, event));
            return None;
        }
        self.dying.insert(r.tgid, ());
        self.take_held(r.tgid);
        Some(event)
    }

    fn exit(&mut self, record: &ProcessExitRecord) -> Option<Event> {
        let r = &record.facts;
        let parent_known = r.flags & exit_flags::PARENT_KNOWN != 0;
        if parent_known && !self.exited.insert_new((r.tgid, r.start_time_ns), ()) {
            return None;
        }
        self.dying.remove(&r.tgid);
        self.aimed.remove(&r.tgid);
        let cgroup = (r.cgroup_id != 0)
            .then(|| self.host.cgroup_path(r.cgroup_id))
            .flatten()
            .or_else(|| self.cgroups.get(&r.tgid).cloned());
        // Kept past the exit: the kernel closes the process's sockets after it reports
        // the exit, and those records come next.
        match &cgroup {
            Some(cgroup) => self.cgroups.insert(r.tgid, cgroup.clone()),
            None => self.cgroups.remove(&r.tgid),
        };
        self.targets.remove(&r.tgid);
        self.stopping.remove(&r.tgid);
        let inferred = self.inference.take(r.tgid);
        let (status, source) = if r.flags & exit_flags::WAIT_STATUS_EXACT != 0 {
            (
                Some(WaitStatus::decode(r.wait_status)),
                StatusSource::Kernel,
            )
        } else {
            (inferred, StatusSource::Inferred)
        };
        Some(Event::Exit(ExitEvent {
            pid: r.tgid,
            tid: r.tid,
            ppid: parent_known.then_some(r.ppid),
            comm: comm(&r.comm),
            cgroup,
            code: status.and_then(|s| s.code),
            signal: status.and_then(|s| s.signal),
            core_dumped: status.is_some_and(|s| s.core_dumped),
            status: status.and_then(|s| s.shell_status()),
            status_source: source,
            children: record.children[..(record.child_count as usize).min(record.children.len())]
                .to_vec(),
        }))
    }

    fn exit_group_call(&mut self, r: &ExitGroupCallRecord) -> Option<Event> {
        self.inference.exit_group_called(r.tgid, r.code);
        None
    }
}

/// The disposition the kernel read at generation, if it read one.
fn disposition(flags: u32) -> Option<Handler> {
    if flags & target_flags::DISPOSITION_READ == 0 {
        None
    } else if flags & target_flags::HANDLER_IGNORE != 0 {
        Some(Handler::Ignore)
    } else if flags & target_flags::HANDLER_CUSTOM != 0 {
        Some(Handler::Custom)
    } else {
        Some(Handler::Default)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use observer_common::{COMM_LEN, ExitFacts, RecordHeader, kind};

    use super::*;

    #[derive(Default)]
    pub struct FakeHost {
        pub tgids: HashMap<u32, u32>,
        pub cgroups: HashMap<u32, String>,
        pub cgroup_ids: HashMap<u64, String>,
        pub containers: HashMap<String, ContainerInfo>,
    }

    impl HostView for FakeHost {
        fn tgid_of(&mut self, tid: u32) -> Option<u32> {
            self.tgids.get(&tid).copied()
        }
        fn cgroup_of_process(&mut self, pid: u32) -> Option<String> {
            self.cgroups.get(&pid).cloned()
        }
        fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String> {
            self.cgroup_ids.get(&cgroup_id).cloned()
        }
        fn ns_pid(&mut self, _pid: u32) -> Option<u32> {
            None
        }
        fn listening(&mut self, _pid: u32) -> Vec<String> {
            Vec::new()
        }
        fn children(&mut self, _pid: u32) -> Vec<u32> {
            Vec::new()
        }
        fn command(&mut self, _pid: u32) -> (Option<String>, Vec<String>) {
            (None, Vec::new())
        }
        fn container_info(&mut self, cgroup: &str) -> Option<ContainerInfo> {
            self.containers.get(cgroup).cloned()
        }
    }

    /// `docker stop` of HAProxy's image sends SIGUSR1: reported, with its delivery, for
    /// a process in that container; not for one in a container stopped with SIGTERM.
    #[test]
    fn a_containers_own_stop_signal_is_reported_like_sigterm() {
        let mut host = FakeHost::default();
        for (pid, cgroup, stop) in [
            (700, "/docker/a", Some("SIGUSR1")),
            (701, "/docker/b", None),
        ] {
            host.cgroups.insert(pid, cgroup.to_string());
            let info = ContainerInfo {
                stop_signal: stop.map(str::to_string),
                ..ContainerInfo::default()
            };
            host.containers.insert(cgroup.to_string(), info);
        }
        let mut enricher = Enricher::new(host, default_mask(), no_tcp())
            .with_container_stop_signals(signal_bit(10) | signal_bit(28));
        let Some(Event::Signal(usr1)) = enrich(&mut enricher, generate(10, 700, 700)) else {
            panic!("SIGUSR1 to the HAProxy container not reported");
        };
        assert_eq!(usr1.sig_name, "SIGUSR1");
        assert!(enrich(&mut enricher, deliver(700, 700, 10, 10, 0x1000)).is_some());
        for record in [
            generate(10, 701, 701),
            deliver(701, 701, 10, 10, 0x1000),
            generate(28, 700, 700),
        ] {
            assert_eq!(enrich(&mut enricher, record), None);
        }
    }

    fn no_tcp() -> TcpTracker {
        TcpTracker::new(HashMap::new())
    }

    fn comm_bytes(name: &str) -> [u8; COMM_LEN] {
        let mut bytes = [0u8; COMM_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes
    }

    fn header(kind: u32) -> RecordHeader {
        RecordHeader {
            kind,
            cpu: 0,
            mono_ns: 1,
        }
    }

    /// What `observer watch` reports by default: TERM, INT, QUIT, HUP, KILL.
    fn default_mask() -> u64 {
        [15, 2, 3, 1, 9].iter().map(|&s| signal_bit(s)).sum()
    }

    fn enrich(enricher: &mut Enricher<FakeHost>, record: Record) -> Option<Event> {
        let mut out = Vec::new();
        enricher.enrich(&record, &mut out);
        assert!(out.len() <= 1, "{out:?}");
        out.pop().map(|(_, event)| event)
    }

    fn generate(sig: i32, target_tid: u32, target_tgid: u32) -> Record {
        Record::SignalGenerate(SignalGenerateRecord {
            header: header(kind::SIGNAL_GENERATE),
            sig,
            si_code: 0,
            result: 0,
            group: 1,
            target_tid,
            target_tgid,
            sender_tgid: 500,
            sender_tid: 501,
            target_comm: comm_bytes("worker"),
            sender_comm: comm_bytes("supervisord"),
            target_flags: 0,
            sender_ppid: 0,
            target_cgroup_id: 0,
            sender_parent_comm: [0; COMM_LEN],
        })
    }

    /// A thread-directed signal: tgkill(tgid, tid, sig).
    fn tgkill(sig: i32, tid: u32, tgid: u32) -> Record {
        let mut record = generate(sig, tid, tgid);
        if let Record::SignalGenerate(r) = &mut record {
            r.group = 0;
        }
        record
    }

    fn deliver(tgid: u32, tid: u32, sig: i32, dequeued: i32, handler: u64) -> Record {
        Record::SignalDeliver(SignalDeliverRecord {
            header: header(kind::SIGNAL_DELIVER),
            sig,
            dequeued_sig: dequeued,
            si_code: 0,
            group_exit_code: -1,
            tgid,
            tid,
            sa_handler: handler,
            sa_flags: 0,
            comm: comm_bytes("app"),
        })
    }

    fn exit(tgid: u32, flags: u32, wait_status: u32) -> Record {
        Record::ProcessExit(ProcessExitRecord {
            header: header(kind::PROCESS_EXIT),
            facts: ExitFacts {
                tgid,
                tid: tgid,
                ppid: 1,
                wait_status,
                flags,
                _pad: 0,
                cgroup_id: 7,
                start_time_ns: 99,
                comm: comm_bytes("app"),
            },
            children: [0; observer_common::EXIT_CHILDREN],
            child_count: 0,
            _pad2: 0,
        })
    }

    #[test]
    fn a_signal_loop_reads_proc_once_a_second_and_again_after_an_exit() {
        let mut host = FakeHost::default();
        host.cgroups.insert(1234, "/first".into());
        let mut enricher = Enricher::new(host, default_mask(), no_tcp());
        let cgroup_at = |enricher: &mut Enricher<FakeHost>, mono_ns: u64| {
            let mut record = generate(15, 1234, 1234);
            if let Record::SignalGenerate(r) = &mut record {
                r.header.mono_ns = mono_ns;
            }
            match enrich(enricher, record) {
                Some(Event::Signal(signal)) => signal.target.cgroup.unwrap(),
                other => panic!("{other:?}"),
            }
        };
        const SECOND: u64 = 1_000_000_000;
        assert_eq!(cgroup_at(&mut enricher, SECOND), "/first");
        enricher.host.cgroups.insert(1234, "/second".into());
        assert_eq!(cgroup_at(&mut enricher, SECOND + SECOND / 2), "/first");
        assert_eq!(cgroup_at(&mut enricher, 2 * SECOND + 1), "/second");
        // An exit ends the process: a reused pid is looked up afresh.
        enricher.host.cgroups.insert(1234, "/third".into());
        enrich(&mut enricher, exit(1234, 0, 0));
        assert_eq!(cgroup_at(&mut enricher, 2 * SECOND + 2), "/third");
    }

    #[test]
    fn resolves_the_target_process_and_its_cgroup() {
        let mut host = FakeHost::default();
        host.tgids.insert(1235, 1234);
        host.cgroups
            .insert(1234, "/system.slice/app.service".into());
        let mut enricher = Enricher::new(host, default_mask(), no_tcp());
        let Some(Event::Signal(signal)) = enrich(&mut enricher, generate(15, 1235, 0)) else {
            panic!("expected a signal event");
        };
        assert_eq!((signal.target.pid, signal.target.tid), (1234, 1235));
        assert_eq!(
            signal.target.cgroup.as_deref(),
            Some("/system.slice/app.service")
        );
        assert_eq!(
            signal.sender,
            ProcessRef {
                pid: 500,
                comm: "supervisord".into(),
                via: Vec::new(),
            }
        );
        assert_eq!(
            (signal.origin, signal.result),
            (Origin::User, SignalResult::Delivered)
        );
        // A tgid the kernel already knew wins over the host's view.
        let Some(Event::Signal(signal)) = enrich(&mut enricher, generate(15, 1235, 42)) else {
            panic!("expected a signal event");
        };
        assert_eq!(signal.target.pid, 42);
    }

    #[test]
    fn a_process_gone_before_its_signal_is_enriched_keeps_its_cgroup() {
        let mut host = FakeHost::default();
        host.cgroups.insert(10, "/system.slice/app.service".into());
        let mut enricher = Enricher::new(host, default_mask(), no_tcp());
        enrich(&mut enricher, generate(1, 10, 10)); // e.g. a reload, while it runs
        enricher.host.cgroups.clear(); // SIGTERM with no handler: gone at once
        let Some(Event::Signal(signal)) = enrich(&mut enricher, generate(15, 10, 10)) else {
            panic!("expected a signal event");
        };
        assert_eq!(
            signal.target.cgroup.as_deref(),
            Some("/system.slice/app.service")
        );
    }

    #[test]
    fn a_target_gone_before_proc_is_read_keeps_the_cgroup_the_kernel_read() {
        let mut host = FakeHost::default();
        host.cgroup_ids.insert(77, "/docker/abc".into());
        let mut enricher = Enricher::new(host, default_mask(), no_tcp());
        let mut record = generate(15, 10, 10);
        if let Record::SignalGenerate(r) = &mut record {
            r.target_cgroup_id = 77;
            r.sender_ppid = 400;
            r.sender_parent_comm = comm_bytes("containerd-shim");
        }
        let Some(Event::Signal(signal)) = enrich(&mut enricher, record) else {
            panic!("expected a signal");
        };
        assert_eq!(signal.target.cgroup.as_deref(), Some("/docker/abc"));
        assert_eq!(
            signal.sender.via,
            [ProcessRef::new(400, "containerd-shim")],
            "the sender's parent, from the kernel"
        );
    }

    #[test]
    fn reports_only_the_chosen_signals() {
        let mut enricher = Enricher::new(FakeHost::default(), signal_bit(9), no_tcp());
        assert!(enrich(&mut enricher, generate(15, 10, 10)).is_none());
        assert!(enrich(&mut enricher, generate(9, 10, 10)).is_some());
    }

    #[test]
    fn reports_one_fatal_delivery_per_process() {
        let mut enricher = Enricher::new(FakeHost::default(), default_mask(), no_tcp());
        let first = enrich(&mut enricher, deliver(10, 10, 15, 9, SIG_DFL));
        let Some(Event::SignalDelivered(delivered)) = first else {
            panic!("expected a delivery");
        };
        assert_eq!((delivered.sig, delivered.handler), (15, Handler::Default));
        for tid in 11..26 {
            assert!(enrich(&mut enricher, deliver(10, tid, 15, 9, SIG_DFL)).is_none());
        }
        // Handled signals are reported each time they are delivered.
        for _ in 0..2 {
            assert!(enrich(&mut enricher, deliver(20, 20, 15, 15, 0x4000)).is_some());
        }
    }

    #[test]
    fn a_namespace_init_is_known_from_the_kernel_without_proc() {
        let mut enricher = Enricher::new(FakeHost::default(), default_mask(), no_tcp());
        let mut record = generate(15, 10, 10);
        let Some(Event::Signal(plain)) = enrich(&mut enricher, record) else {
            panic!("expected a signal");
        };
        assert_eq!(plain.target.ns_pid, None, "FakeHost has no /proc facts");
        if let Record::SignalGenerate(r) = &mut record {
            r.target_flags = target_flags::TASK_READ | target_flags::NAMESPACE_INIT;
        }
        let Some(Event::Signal(init)) = enrich(&mut enricher, record) else {
            panic!("expected a signal");
        };
        assert_eq!(init.target.ns_pid, Some(1));
    }

    #[test]
    fn reports_the_aimed_threads_delivery_for_a_thread_directed_fatal_signal() {
        let mut enricher = Enricher::new(FakeHost::default(), default_mask(), no_tcp());
        enrich(&mut enricher, tgkill(15, 12, 10));
        // The main thread dequeues the group SIGKILL first: held back.
        assert!(enrich(&mut enricher, deliver(10, 10, 15, 9, SIG_DFL)).is_none());
        let Some(Event::SignalDelivered(aimed)) =
            enrich(&mut enricher, deliver(10, 12, 15, 9, SIG_DFL))
        else {
            panic!("expected the aimed thread's delivery");
        };
        assert_eq!(aimed.target.tid, 12);
        assert!(enrich(&mut enricher, deliver(10, 11, 15, 9, SIG_DFL)).is_none());
        let mut out = Vec::new();
        enricher.enrich(&exit(10, exit_flags::WAIT_STATUS_EXACT, 15), &mut out);
        assert_eq!(out.len(), 1, "only the exit: {out:?}");
    }

    #[test]
    fn a_held_delivery_is_reported_before_the_exit_if_the_aimed_thread_never_dequeues() {
        let mut enricher = Enricher::new(FakeHost::default(), default_mask(), no_tcp());
        enrich(&mut enricher, tgkill(15, 12, 10));
        assert!(enrich(&mut enricher, deliver(10, 10, 15, 9, SIG_DFL)).is_none());
        let mut out = Vec::new();
        enricher.enrich(&exit(10, exit_flags::WAIT_STATUS_EXACT, 15), &mut out);
        let types: Vec<_> = out.iter().map(|(_, event)| event.type_name()).collect();
        assert_eq!(types, ["signal_delivered", "exit"]);
    }

    #[test]
    fn exact_exit_status_comes_from_the_kernel() {
        let mut enricher = Enricher::new(FakeHost::default(), default_mask(), no_tcp());
        let flags = exit_flags::WAIT_STATUS_EXACT | exit_flags::PARENT_KNOWN;
        let Some(Event::Exit(exit)) = enrich(&mut enricher, exit(10, flags, 0x8b)) else {
            panic!("expected an exit");
        };
        assert_eq!(
            (exit.code, exit.signal, exit.core_dumped),
            (None, Some(11), true)
        );
        assert_eq!((exit.status, exit.ppid), (Some(139), Some(1)));
        assert_eq!(exit.status_source, StatusSource::Kernel);
        // The same process reported twice (kernels without group_dead) is one exit.
        assert!(enrich(&mut enricher, self::exit(10, flags, 0x8b)).is_none());
    }

    #[test]
    fn without_btf_the_status_is_inferred() {
        let mut host = FakeHost::default();
        host.cgroup_ids.insert(7, "/user.slice".into());
        let mut enricher = Enricher::new(host, default_mask(), no_tcp());
        enrich(
            &mut enricher,
            Record::ExitGroupCall(ExitGroupCallRecord {
                header: header(kind::EXIT_GROUP_CALL),
                tgid: 10,
                tid: 10,
                code: 3,
                _pad: 0,
            }),
        );
        let Some(Event::Exit(exit)) = enrich(&mut enricher, exit(10, 0, 0)) else {
            panic!("expected an exit");
        };
        assert_eq!(
            (exit.code, exit.status, exit.ppid),
            (Some(3), Some(3), None)
        );
        assert_eq!(exit.status_source, StatusSource::Inferred);
        assert_eq!(exit.cgroup.as_deref(), Some("/user.slice"));

        enrich(&mut enricher, generate(15, 11, 11));
        enrich(&mut enricher, deliver(11, 11, 9, 9, SIG_DFL));
        let Some(Event::Exit(exit)) = enrich(&mut enricher, self::exit(11, 0, 0)) else {
            panic!("expected an exit");
        };
        assert_eq!((exit.signal, exit.status), (Some(15), Some(143)));
    }
}
