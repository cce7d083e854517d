//! Records shared by the kernel programs (`observer-ebpf`) and userspace (`observer`).
//!
//! Wire records travel through one BPF ring buffer. Each starts with a [`RecordHeader`];
//! all are `#[repr(C)]`, hold only integers and fixed arrays, spell out their padding,
//! and have their size asserted so that both sides agree byte for byte.
//!
//! Layout records (`*Layout`, [`Settings`]) are `.rodata` globals that userspace fills in
//! before load: tracepoint field offsets read from tracefs `format` files, and kernel
//! struct member offsets read from vmlinux BTF (Rust eBPF has no CO-RE).
#![no_std]

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Record kinds, the first field of every [`RecordHeader`].
pub mod kind {
    pub const SIGNAL_GENERATE: u32 = 1;
    pub const SIGNAL_DELIVER: u32 = 2;
    pub const PROCESS_EXIT: u32 = 3;
    pub const EXIT_GROUP_CALL: u32 = 4;
    pub const TCP_STATE: u32 = 5;
    pub const TCP_RESET: u32 = 6;
    pub const TCP_ACCEPT: u32 = 7;
}

/// Starts every record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the program ran on (events from different CPUs may arrive out of order).
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC at the event.
    pub mono_ns: u64,
}

/// `signal:signal_generate`, in the sender's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalGenerateRecord {
    pub header: RecordHeader,
    pub sig: i32,
    /// `si_code` as the tracepoint stores it (SI_USER 0, SI_KERNEL 0x80, SI_TKILL -6, …).
    pub si_code: i32,
    /// Kernel result: 0 delivered, 1 ignored, 2 already pending, 3 overflow fail, 4 lose info.
    pub result: i32,
    /// 1 for a process-directed signal (kill), 0 for a thread-directed one (tgkill).
    pub group: u32,
    pub target_tid: u32,
    /// 0 when the kernel side could not tell; userspace then resolves it.
    pub target_tgid: u32,
    pub sender_tgid: u32,
    pub sender_tid: u32,
    /// The target thread's comm, as the tracepoint copies it.
    pub target_comm: [u8; COMM_LEN],
    /// The sending process's comm (its thread group leader's when BTF offsets are known).
    pub sender_comm: [u8; COMM_LEN],
    /// [`target_flags`] bits.
    pub target_flags: u32,
    /// The sender's parent (`real_parent`), and its thread group leader's comm: who ran a
    /// short-lived sender such as runc. 0 when the task layout is unknown.
    pub sender_ppid: u32,
    /// The target's cgroup v2 id (`task->cgroups->dfl_cgrp->kn->id`, what
    /// bpf_get_current_cgroup_id() gives in its own context): its cgroup even when it is
    /// gone before userspace reads /proc. 0 when unknown.
    pub target_cgroup_id: u64,
    pub sender_parent_comm: [u8; COMM_LEN],
}

/// What the kernel side knew of a signal's target (`SignalGenerateRecord::target_flags`).
pub mod target_flags {
    /// Read from the target task: its thread group (`target_tgid`) is exact.
    pub const TASK_READ: u32 = 1 << 0;
    /// Its `signal_struct` has SIGNAL_UNKILLABLE: the init of its PID namespace (or of the
    /// host), which the kernel shields from signals it has no handler for.
    pub const NAMESPACE_INIT: u32 = 1 << 1;
    /// The target's disposition for the signal was read when it was generated
    /// (`sighand->action[sig - 1].sa.sa_handler`): [`HANDLER_IGNORE`], [`HANDLER_CUSTOM`],
    /// or neither (SIG_DFL). Known even when the kernel drops the signal at once.
    pub const DISPOSITION_READ: u32 = 1 << 2;
    pub const HANDLER_IGNORE: u32 = 1 << 3;
    pub const HANDLER_CUSTOM: u32 = 1 << 4;
    /// The target thread blocks the signal (`blocked`, or `real_blocked` while it waits in
    /// sigtimedwait()): it is taken with signalfd or sigwaitinfo, not by a handler, so no
    /// `signal_deliver` follows.
    pub const BLOCKED: u32 = 1 << 5;
}

/// `signal:signal_deliver`, in the target thread's context when it dequeues the signal.
///
/// A fatal signal with the default action (SIGKILL, or SIGTERM with no handler) becomes a
/// group exit in complete_signal(): every thread then dequeues a SIGKILL whatever the
/// original signal was. For those, `sig` is the signal that caused the group exit (from
/// `signal->group_exit_code`) and `dequeued_sig` is SIGKILL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalDeliverRecord {
    pub header: RecordHeader,
    pub sig: i32,
    pub dequeued_sig: i32,
    pub si_code: i32,
    /// `signal->group_exit_code` when BTF offsets are known, else -1.
    pub group_exit_code: i32,
    pub tgid: u32,
    pub tid: u32,
    /// `sa_handler`: 0 SIG_DFL, 1 SIG_IGN, anything else a handler's address.
    pub sa_handler: u64,
    pub sa_flags: u64,
    pub comm: [u8; COMM_LEN],
}

/// Bits of [`ExitFacts::flags`].
pub mod exit_flags {
    /// `wait_status` was read from the task (BTF offsets known); otherwise userspace
    /// infers the status from exit_group calls and fatal signal deliveries.
    pub const WAIT_STATUS_EXACT: u32 = 1 << 0;
    /// `ppid` and `start_time_ns` were read from the task.
    pub const PARENT_KNOWN: u32 = 1 << 1;
}

/// What the kernel reads of a process when its last thread exits: all of a
/// [`StagedExit`], and what every [`ProcessExitRecord`] carries besides its header and
/// children.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitFacts {
    pub tgid: u32,
    /// The thread that exited last.
    pub tid: u32,
    pub ppid: u32,
    /// What the parent's waitpid(2) will see: `code << 8`, or the signal (| 0x80 on core dump).
    pub wait_status: u32,
    /// [`exit_flags`].
    pub flags: u32,
    pub _pad: u32,
    /// `bpf_get_current_cgroup_id()`: the cgroup v2 id (its directory's inode number).
    pub cgroup_id: u64,
    /// The thread group leader's `start_time` (ns since boot): with `tgid`, a process
    /// identity that survives PID reuse.
    pub start_time_ns: u64,
    /// The thread group leader's comm.
    pub comm: [u8; COMM_LEN],
}

/// `sched:sched_process_exit` for the last thread of a thread group (the whole process).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExitRecord {
    pub header: RecordHeader,
    pub facts: ExitFacts,
    /// Its children (tgids) when it exited, before the kernel reparented them: the first
    /// `child_count` (at most [`EXIT_CHILDREN`]).
    pub children: [u32; EXIT_CHILDREN],
    pub child_count: u32,
    pub _pad2: u32,
}

/// Children listed in a [`ProcessExitRecord`].
pub const EXIT_CHILDREN: usize = 8;

/// An exit as staged in an [`ExitStage`]: a [`ProcessExitRecord`] without its header's
/// kind and CPU (the stage's) and without children, in one 64-byte cache line, so that
/// staging an exit writes one line the reader shares instead of about three. Exits whose
/// children are read (a termination signal reached the process, or a signal ended it)
/// go through the ring buffer whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StagedExit {
    pub mono_ns: u64,
    pub facts: ExitFacts,
}

impl StagedExit {
    /// The record the ring buffer would have carried, staged on `cpu`.
    pub fn into_record(self, cpu: u32) -> ProcessExitRecord {
        ProcessExitRecord {
            header: RecordHeader {
                kind: kind::PROCESS_EXIT,
                cpu,
                mono_ns: self.mono_ns,
            },
            facts: self.facts,
            children: [0; EXIT_CHILDREN],
            child_count: 0,
            _pad2: 0,
        }
    }
}

/// Exits one CPU can hold in its [`ExitStage`] between two reads by userspace (every
/// 20 ms): 3,200 a second per CPU before the ring buffer takes the rest.
pub const EXIT_STAGE_SLOTS: usize = 64;

/// One CPU's staging area for exits, an element of the memory-mapped `EXIT_STAGE` array
/// (one per possible CPU): a single-producer, single-consumer ring with no lock. The
/// CPU's exit program is the only writer of `head` and of the slots (tracing programs
/// do not nest on one CPU); userspace is the only writer of `taken`. Slot
/// `n % EXIT_STAGE_SLOTS` is the kernel's while `n >= head`, userspace's while
/// `taken <= n < head`. `head`, `taken` and each slot have cache lines of their own
/// (the array's elements are page-aligned in the mapping and this size is a multiple
/// of 64), so the kernel writes one shared line per exit, and the counters only move
/// between CPUs once per read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitStage {
    /// Exits published on this CPU since load; an exit is complete before `head` counts it.
    pub head: u64,
    pub _pad_head: [u64; 7],
    /// Exits userspace has copied out; their slots may be written again.
    pub taken: u64,
    pub _pad_taken: [u64; 7],
    pub slots: [StagedExit; EXIT_STAGE_SLOTS],
}

/// `syscalls:sys_enter_exit_group`; only attached without BTF, to infer exit codes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitGroupCallRecord {
    pub header: RecordHeader,
    pub tgid: u32,
    pub tid: u32,
    pub code: i32,
    pub _pad: u32,
}

/// A TCP connection's addresses, normalised from whichever layout the kernel used.
/// Ports in host byte order; IPv4 addresses in the first 4 bytes of the arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEndpoints {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Who a socket belongs to, as learnt in process context (listen, connect, accept).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    /// 0 when unknown.
    pub tgid: u32,
    /// One of [`role`].
    pub role: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; COMM_LEN],
}

/// The part a socket plays for its owner.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    pub const LISTENER: u8 = 1;
    pub const INBOUND: u8 = 2;
    pub const OUTBOUND: u8 = 3;
}

/// TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
    pub const BOUND_INACTIVE: i32 = 13;

    /// The state's name as the header names it, without `TCP_`.
    pub const fn name(state: i32) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            BOUND_INACTIVE => "BOUND_INACTIVE",
            _ => "UNKNOWN",
        }
    }

    /// States of a socket nobody has closed yet: tcp_close() leaves one of these.
    pub const fn is_open(state: i32) -> bool {
        matches!(
            state,
            ESTABLISHED | SYN_SENT | SYN_RECV | CLOSE_WAIT | LISTEN
        )
    }
}

/// Bits of [`TcpStateRecord::flags`].
pub mod tcp_flags {
    /// The state changed in the context of a process that is exiting (`PF_EXITING`): the
    /// kernel is closing the sockets the process still held.
    pub const CLOSED_AT_EXIT: u8 = 1 << 0;
    /// A close at exit whose traffic was read from `struct tcp_sock`: `unread_bytes`,
    /// `unsent_bytes` and the two bits below are valid.
    pub const TRAFFIC_KNOWN: u8 = 1 << 1;
    /// The peer ever sent data (`bytes_received` > 0).
    pub const PEER_SENT_DATA: u8 = 1 << 2;
    /// The last segment from the peer carried data (`snd_wl1`, the sequence number of
    /// the last segment that updated the send window, is before `rcv_nxt`): nothing of
    /// ours was acknowledged after the peer last spoke, so the peer spoke last and is
    /// waiting for an answer.
    pub const PEER_SPOKE_LAST: u8 = 1 << 3;
    /// The process was still writing: its writes had filled half the send buffer
    /// (`sk_wmem_queued` against `sk_sndbuf`), or the last one found it full and no room
    /// has freed since (SOCK_NOSPACE on its `struct socket`). Unsent data then is the
    /// middle of a response (a download), not a whole one on its way.
    pub const STILL_WRITING: u8 = 1 << 4;
    /// A process that is shutting down (not exiting) closed a connection with a request
    /// in flight: the peer spoke last, and the process had sent nothing since. Traffic
    /// is known, as for a close at exit.
    pub const CLOSED_IN_FLIGHT: u8 = 1 << 5;
}

/// `sock:inet_sock_set_state`, only for what a report needs: a listener opening or
/// closing, and sockets closed by the kernel while their process exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStateRecord {
    pub header: RecordHeader,
    pub endpoints: TcpEndpoints,
    pub owner: SocketOwner,
    pub old_state: u8,
    pub new_state: u8,
    /// [`tcp_flags`].
    pub flags: u8,
    pub _pad: [u8; 5],
    /// With [`tcp_flags::TRAFFIC_KNOWN`]: bytes the peer sent that the process never read
    /// (`rcv_nxt - copied_seq`), and bytes it wrote that the peer has not acknowledged
    /// (`write_seq - snd_una`).
    pub unread_bytes: u32,
    pub unsent_bytes: u32,
}

/// Bits of [`TcpResetRecord::flags`].
pub mod reset_flags {
    /// The RST was received (tcp:tcp_receive_reset), not sent.
    pub const RECEIVED: u8 = 1 << 0;
    /// `reason` holds an `enum sk_rst_reason` value (kernels since 6.10 give one).
    pub const REASON_KNOWN: u8 = 1 << 1;
    /// `state` was read (always for sent RSTs; from the socket via BTF when received).
    pub const STATE_KNOWN: u8 = 1 << 2;
    /// The RST concerned a socket (its owner may still be unknown); without it, the
    /// kernel answered a segment for which no socket exists (e.g. a closed port).
    pub const HAS_SOCKET: u8 = 1 << 3;
}

/// `tcp:tcp_send_reset` / `tcp:tcp_receive_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpResetRecord {
    pub header: RecordHeader,
    pub endpoints: TcpEndpoints,
    pub owner: SocketOwner,
    pub reason: u32,
    pub state: u8,
    /// [`reset_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// accept()/accept4() returned a connection to a process that is shutting down (one
/// that received a termination signal).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpAcceptRecord {
    pub header: RecordHeader,
    pub endpoints: TcpEndpoints,
    pub owner: SocketOwner,
}

const _: () = assert!(size_of::<TcpEndpoints>() == 40);
const _: () = assert!(size_of::<SocketOwner>() == 24);
const _: () = assert!(size_of::<TcpStateRecord>() == 96);
const _: () = assert!(size_of::<TcpResetRecord>() == 88);
const _: () = assert!(size_of::<TcpAcceptRecord>() == 80);
const _: () = assert!(size_of::<RecordHeader>() == 16);
const _: () = assert!(size_of::<SignalGenerateRecord>() == 112);
const _: () = assert!(size_of::<SignalDeliverRecord>() == 72);
const _: () = assert!(size_of::<ProcessExitRecord>() == 112);
const _: () = assert!(size_of::<ExitGroupCallRecord>() == 32);
const _: () = assert!(size_of::<ExitFacts>() == 56);
const _: () = assert!(size_of::<StagedExit>() == 64);
const _: () = assert!(size_of::<ExitStage>() == 128 + 64 * EXIT_STAGE_SLOTS);
const _: () = assert!(EXIT_STAGE_SLOTS.is_power_of_two());

/// Marks a tracepoint field that this kernel's `format` file does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Offsets into `signal:signal_generate`'s record, from its `format` file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalGenerateLayout {
    pub sig: u32,
    pub code: u32,
    pub comm: u32,
    pub pid: u32,
    pub group: u32,
    pub result: u32,
}

/// Offsets into `signal:signal_deliver`'s record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalDeliverLayout {
    pub sig: u32,
    pub code: u32,
    pub sa_handler: u32,
    pub sa_flags: u32,
}

/// Offsets into `sched:sched_process_exit`'s record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExitLayout {
    /// [`FIELD_ABSENT`] before 6.16-ish kernels, which lack the field.
    pub group_dead: u32,
}

/// Offsets into `syscalls:sys_enter_exit_group` (`error_code`, a long).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitGroupLayout {
    pub error_code: u32,
}

/// Offsets of a tracepoint's addresses when it stores them as `sport`, `dport`,
/// `family`, `saddr[4]`, `daddr[4]`, `saddr_v6[16]`, `daddr_v6[16]` (inet_sock_set_state,
/// tcp_receive_reset, and tcp_send_reset before 6.10).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitAddrLayout {
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

/// Offsets into `sock:inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InetSockSetStateLayout {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub protocol: u32,
    pub addrs: SplitAddrLayout,
}

/// How `tcp:tcp_send_reset` stores addresses.
pub mod addr_format {
    /// `saddr[28]`/`daddr[28]` holding a sockaddr_in or sockaddr_in6 (6.10+).
    pub const SOCKADDR: u32 = 0;
    /// [`super::SplitAddrLayout`] fields.
    pub const SPLIT: u32 = 1;
}

/// Offsets into `tcp:tcp_send_reset` / `tcp:tcp_receive_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpResetLayout {
    pub skaddr: u32,
    /// [`FIELD_ABSENT`] when the tracepoint has no `state` (tcp_receive_reset).
    pub state: u32,
    /// [`FIELD_ABSENT`] before 6.10.
    pub reason: u32,
    /// One of [`addr_format`].
    pub addr_format: u32,
    /// With [`addr_format::SOCKADDR`]: offsets of the two sockaddrs.
    pub sockaddr_local: u32,
    pub sockaddr_remote: u32,
    /// With [`addr_format::SPLIT`].
    pub addrs: SplitAddrLayout,
}

/// Offsets into `syscalls:sys_exit_accept4` / `sys_exit_accept` (`long ret`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptLayout {
    pub ret: u32,
}

/// Byte offsets to go from a task and a file descriptor to its `struct sock`, and of
/// the `struct sock_common` members observer reads, from vmlinux BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    /// 1 when the offsets below are valid.
    pub known: u32,
    pub task_flags: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `sock.sk_shutdown`: SHUTDOWN_MASK once __tcp_close() has begun.
    pub sock_shutdown: u32,
    pub skc_state: u32,
    pub skc_family: u32,
    /// `inet_sock.inet_sport` (big-endian), which survives the unhash at CLOSE; `skc_num`
    /// is zeroed there when the port is put back.
    pub inet_sport: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `sock.sk_protocol`: a u16 since 5.6 (a bitfield before).
    pub sock_protocol: u32,
    /// `sock.sk_lock.owned`: 1 while a task holds the socket (lock_sock()). Softirq and
    /// timer work on a held socket is deferred to that task's release_sock(), so whatever
    /// runs on it then runs in the holder's context.
    pub sk_lock_owned: u32,
    /// `struct tcp_sock` members that tell an idle connection from one with a request in
    /// flight when its process exits (read only then).
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub tcp_snd_wl1: u32,
    pub tcp_snd_una: u32,
    pub tcp_write_seq: u32,
    pub tcp_bytes_received: u32,
    /// `sock.sk_wmem_queued`, `sock.sk_sndbuf`, `sock.sk_socket` and `socket.flags`.
    pub sock_wmem_queued: u32,
    pub sock_sndbuf: u32,
    pub sock_socket: u32,
    pub socket_flags: u32,
}

/// `socket.flags` bit set when a writer found no room in the send buffer
/// (include/linux/net.h).
pub const SOCK_NOSPACE: u64 = 1 << 2;

/// `task_struct.flags` bit set once a task has started exiting (include/linux/sched.h).
pub const PF_EXITING: u32 = 0x0000_0004;
/// `sk_shutdown` value when both directions are shut (include/net/sock.h).
pub const SHUTDOWN_MASK: u8 = 3;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Byte offsets of kernel struct members, from vmlinux BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLayout {
    /// 1 when the offsets below are valid (BTF was readable), else 0.
    pub known: u32,
    pub task_exit_code: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_start_time: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_signal: u32,
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    pub signal_live: u32,
    /// `task_struct.children` and `.sibling` (list_heads).
    pub task_children: u32,
    pub task_sibling: u32,
    /// `task_struct.pid`: the thread id.
    pub task_pid: u32,
    /// `kernel_siginfo.si_code`.
    pub siginfo_code: u32,
    /// `task_struct.sighand`, `sighand_struct.action`, `sizeof(struct k_sigaction)` and
    /// `k_sigaction.sa.sa_handler`: a task's disposition for a signal.
    pub task_sighand: u32,
    pub sighand_action: u32,
    pub k_sigaction_size: u32,
    pub k_sigaction_handler: u32,
    /// `task_struct.blocked` and `.real_blocked` (sigset_t, one u64 on 64-bit).
    pub task_blocked: u32,
    pub task_real_blocked: u32,
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and `kernfs_node.id`: a
    /// task's cgroup v2 id. All 0 when one of them is missing from BTF.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// 1 when the offsets are the running kernel's own BTF, so programs may load through
    /// pointers the verifier types from it (`tp_btf` arguments,
    /// `bpf_get_current_task_btf`). Offsets from another file (`OBSERVER_BTF`, e.g. for
    /// a kernel built without BTF) are read with `bpf_probe_read_kernel`.
    pub typed: u32,
}

/// Run-time settings of the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Bit `n` set: report signal `n` (1..=64) at generation and delivery.
    pub signal_mask: u64,
    /// Bit `n` set: also report generations of signal `n` and its deliveries with the
    /// default action, so that userspace can infer exit statuses when BTF is missing.
    /// 0 when BTF is present.
    pub fatal_default_mask: u64,
    /// Signals after which a process counts as shutting down (its accepts are reported).
    pub termination_mask: u64,
    /// 1: `--unit/--container/--cgroup` chose processes; the programs that run in their
    /// subject's context skip tasks whose cgroup is in `OUT_OF_SCOPE_CGROUPS`.
    pub scope_filtered: u64,
    /// Records are committed without waking userspace, which polls the ring on a short
    /// timer, until this many bytes wait in it (a quarter of the ring): one wake-up per
    /// batch, not per record. Set by the loader from the ring's size.
    pub wakeup_bytes: u64,
    /// 1 when the CPU makes stores visible to other CPUs in program order (x86's TSO),
    /// so a plain store publishes what was written before it; elsewhere (arm64) an
    /// atomic exchange does. Set by the loader from the architecture it is built for,
    /// which is the kernel's.
    pub stores_in_order: u64,
}

/// `sigaction.sa_handler` values with a fixed meaning.
pub const SIG_DFL: u64 = 0;
pub const SIG_IGN: u64 = 1;

pub const SIGKILL: i32 = 9;

/// `signal_struct.flags` bit set once the whole group is exiting (include/linux/sched/signal.h).
pub const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;
/// `signal_struct.flags` bit of a PID namespace's init (include/linux/sched/signal.h): fatal
/// signals it has no handler for are ignored, unless SIGKILL/SIGSTOP from an ancestor
/// namespace. A group exit overwrites the flags with SIGNAL_GROUP_EXIT.
pub const SIGNAL_UNKILLABLE: u32 = 0x0000_0040;
/// `si_code` values (include/uapi/asm-generic/siginfo.h): sent by kill(), by the kernel,
/// by sigqueue(), by tkill()/tgkill().
pub const SI_USER: i32 = 0;
pub const SI_KERNEL: i32 = 0x80;
pub const SI_QUEUE: i32 = -1;
pub const SI_TKILL: i32 = -6;

/// Bit for signal `sig` in a 64-bit signal mask.
pub const fn signal_bit(sig: i32) -> u64 {
    if sig >= 1 && sig <= 64 {
        1u64 << (sig - 1)
    } else {
        0
    }
}

/// A record that can be read from the ring buffer's bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]` with only integer and integer-array fields, so every bit
/// pattern of the right size is a valid value.
pub unsafe trait WireRecord: Copy {}

unsafe impl WireRecord for RecordHeader {}
unsafe impl WireRecord for SignalGenerateRecord {}
unsafe impl WireRecord for SignalDeliverRecord {}
unsafe impl WireRecord for ProcessExitRecord {}
unsafe impl WireRecord for StagedExit {}
unsafe impl WireRecord for ExitGroupCallRecord {}
unsafe impl WireRecord for TcpStateRecord {}
unsafe impl WireRecord for TcpResetRecord {}
unsafe impl WireRecord for TcpAcceptRecord {}

/// Copies a record out of the ring buffer's bytes; `None` if they are too short.
pub fn read_record<T: WireRecord>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked, `read_unaligned` copes with any alignment, and
    // `WireRecord` promises every bit pattern is valid.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integer structs with explicit padding.
    unsafe impl aya::Pod for SignalGenerateLayout {}
    unsafe impl aya::Pod for SignalDeliverLayout {}
    unsafe impl aya::Pod for ProcessExitLayout {}
    unsafe impl aya::Pod for ExitGroupLayout {}
    unsafe impl aya::Pod for TaskLayout {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for InetSockSetStateLayout {}
    unsafe impl aya::Pod for TcpResetLayout {}
    unsafe impl aya::Pod for AcceptLayout {}
    unsafe impl aya::Pod for SockLayout {}
}
