//! The events of the JSON contract (docs/events-v1.md), as Rust types. Serialising one
//! gives exactly one NDJSON line's fields; deserialising reads a saved log back.
use observer_common::{SI_KERNEL, SI_QUEUE, SI_TKILL, SI_USER};
use serde::{Deserialize, Serialize};

/// Schema version written in every line's `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// The port of an endpoint as events write it (`addr:port`, IPv6 in brackets).
pub fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

/// One output line: the envelope every event shares, then the event's own fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Line {
    pub v: u32,
    #[serde(flatten)]
    pub event: Event,
    pub time: String,
    pub mono_ns: u64,
    pub host: String,
    /// The container of the process the event is about (a signal's target, the exiting
    /// process, a socket's owner, a report's process), read from its runtime's metadata.
    #[serde(default)]
    pub container_info: Option<ContainerInfo>,
}

/// Who a container is, as its runtime recorded it on disk (docker's config.v2.json, an
/// OCI bundle's annotations, kubelet's pod log directories).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The full container id (64 hex).
    pub id: String,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    /// Kubernetes: the pod's namespace and name, and the container's name in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_container: Option<String>,
    /// The signal its runtime stops it with when not SIGTERM (`docker stop` sends the
    /// image's STOPSIGNAL or `--stop-signal`: SIGUSR1 for HAProxy's, SIGWINCH for
    /// httpd's), by name: that signal starts its shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    time: &'a str,
    mono_ns: u64,
    host: &'a str,
}

impl Line {
    /// The line as compact JSON (no newline): the envelope's fields first, in the
    /// contract's order, then the event's.
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            v: self.v,
            kind: self.event.type_name(),
            time: &self.time,
            mono_ns: self.mono_ns,
            host: &self.host,
        };
        let body = match &self.event {
            Event::Signal(e) => serde_json::to_vec(e),
            Event::SignalDelivered(e) => serde_json::to_vec(e),
            Event::Exit(e) => serde_json::to_vec(e),
            Event::TcpReset(e) => serde_json::to_vec(e),
            Event::TcpRefused(e) => serde_json::to_vec(e),
            Event::TcpCloseAtExit(e) | Event::TcpCloseInFlight(e) => serde_json::to_vec(e),
            Event::TcpListen(e) => serde_json::to_vec(e),
            Event::TcpAccept(e) => serde_json::to_vec(e),
            Event::Lost(e) => serde_json::to_vec(e),
            Event::Shutdown(e) => serde_json::to_vec(e),
            Event::Deploy(e) => serde_json::to_vec(e),
        };
        let mut out = serde_json::to_vec(&envelope).expect("plain struct serialises");
        let body = body.expect("plain struct serialises");
        // Both are JSON objects with at least one member: splice `{a}` and `{b}` into `{a,b}`.
        out.pop();
        out.push(b',');
        out.extend_from_slice(&body[1..]);
        if let Some(info) = &self.container_info {
            out.pop();
            out.extend_from_slice(br#","container_info":"#);
            out.extend(serde_json::to_vec(info).expect("plain struct serialises"));
            out.push(b'}');
        }
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Signal(SignalEvent),
    SignalDelivered(DeliveredEvent),
    Exit(ExitEvent),
    TcpReset(TcpResetEvent),
    TcpRefused(TcpRefusedEvent),
    TcpCloseAtExit(TcpCloseAtExitEvent),
    TcpCloseInFlight(TcpCloseAtExitEvent),
    TcpListen(TcpListenEvent),
    TcpAccept(TcpAcceptEvent),
    Lost(LostEvent),
    Shutdown(Box<ShutdownReport>),
    Deploy(DeployReport),
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Signal(_) => "signal",
            Event::SignalDelivered(_) => "signal_delivered",
            Event::Exit(_) => "exit",
            Event::TcpReset(_) => "tcp_reset",
            Event::TcpRefused(_) => "tcp_refused",
            Event::TcpCloseAtExit(_) => "tcp_close_at_exit",
            Event::TcpCloseInFlight(_) => "tcp_close_in_flight",
            Event::TcpListen(_) => "tcp_listen",
            Event::TcpAccept(_) => "tcp_accept",
            Event::Lost(_) => "lost",
            Event::Shutdown(_) => "shutdown",
            Event::Deploy(_) => "deploy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
    /// For a signal's sender: its parents, nearest first (who asked a short-lived
    /// helper such as runc to send it: containerd-shim, dockerd, kubelet), up to init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<ProcessRef>,
}

impl ProcessRef {
    pub fn new(pid: u32, comm: impl Into<String>) -> Self {
        Self {
            pid,
            comm: comm.into(),
            via: Vec::new(),
        }
    }
}

impl ThreadRef {
    /// A thread, with none of the optional facts read from /proc.
    pub fn thread(pid: u32, tid: u32, comm: String) -> Self {
        Self {
            pid,
            tid,
            comm,
            cgroup: None,
            ns_pid: None,
            listening: Vec::new(),
            children: Vec::new(),
            exe: None,
            cmdline: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRef {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its pid inside its own PID namespace (1: the namespace's init), when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// For a termination signal: the listening sockets the target held (read from
    /// /proc), including inherited ones and those opened before observer started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<String>,
    /// For a termination signal: the target's child processes at that moment (read from
    /// /proc), so that a child that was never told can be found after it is reparented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<u32>,
    /// For a termination signal: the target's executable and command line (from /proc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
}

/// How a signal came to be, from its `si_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    User,
    Kernel,
    Tkill,
    Queue,
    Other,
}

impl Origin {
    pub fn from_si_code(si_code: i32) -> Self {
        match si_code {
            SI_USER => Origin::User,     // kill()
            SI_KERNEL => Origin::Kernel, // e.g. the OOM killer, a dying namespace init
            SI_TKILL => Origin::Tkill,   // tkill()/tgkill()
            SI_QUEUE => Origin::Queue,   // sigqueue()
            _ => Origin::Other,
        }
    }
}

/// What the kernel did with a generated signal (`enum trace_signal_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalResult {
    Delivered,
    Ignored,
    AlreadyPending,
    OverflowFail,
    LoseInfo,
    Unknown,
}

impl SignalResult {
    pub fn from_kernel(result: i32) -> Self {
        match result {
            0 => SignalResult::Delivered,
            1 => SignalResult::Ignored,
            2 => SignalResult::AlreadyPending,
            3 => SignalResult::OverflowFail,
            4 => SignalResult::LoseInfo,
            _ => SignalResult::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handler {
    Default,
    Ignore,
    Custom,
}

impl Handler {
    pub fn from_sa_handler(sa_handler: u64) -> Self {
        match sa_handler {
            observer_common::SIG_DFL => Handler::Default,
            observer_common::SIG_IGN => Handler::Ignore,
            _ => Handler::Custom,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalEvent {
    pub sig: i32,
    pub sig_name: String,
    pub sender: ProcessRef,
    pub target: ThreadRef,
    pub group: bool,
    pub si_code: i32,
    pub origin: Origin,
    pub result: SignalResult,
    /// The target's disposition for the signal when it was generated (`default`,
    /// `ignore`, `custom`), read in the kernel: known even for a signal the kernel drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Handler>,
    /// The target thread blocked the signal: it is taken with signalfd or sigwaitinfo(),
    /// so no `signal_delivered` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredEvent {
    pub sig: i32,
    pub sig_name: String,
    pub target: ThreadRef,
    pub handler: Handler,
}

/// Where an exit's status came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusSource {
    /// Read from the task as the parent's waitpid() reads it.
    Kernel,
    /// No BTF: inferred from the exit_group() code or the fatal signal delivered.
    Inferred,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    pub pid: u32,
    /// The thread that exited last.
    pub tid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    pub status: Option<i32>,
    pub status_source: StatusSource,
    /// Its children when it exited (before the kernel reparented them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Sent,
    Received,
}

/// An RST sent or received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpResetEvent {
    pub direction: Direction,
    /// The kernel's `enum sk_rst_reason` name (sent RSTs, 6.10+), else null.
    pub reason: Option<String>,
    pub local: String,
    pub remote: String,
    pub state: String,
    /// The socket's owner; null when no process owns it (e.g. a closed port).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// For an RST from a port no socket holds: the process that last listened there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub former_owner: Option<ProcessRef>,
    /// The socket's part for its owner, when the kernel saw it made: an RST on a
    /// connection the process opened itself (a proxy's to its backend) reaches no client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

impl TcpResetEvent {
    /// The endpoint that refused a connection, if this RST is a refusal: sent because no
    /// socket holds the port (reason NO_SOCKET, traced since 6.10), or received by a
    /// client's connect() (SYN_SENT: it fails with ECONNREFUSED).
    pub fn refused_endpoint(&self) -> Option<&str> {
        match self.direction {
            Direction::Sent if self.reason.as_deref() == Some("NO_SOCKET") => Some(&self.local),
            Direction::Received if self.state == "SYN_SENT" => Some(&self.remote),
            _ => None,
        }
    }
}

/// Connections refused by one endpoint during one interval, counted: what the
/// refusals' `tcp_reset` lines would have said, one line instead of two per attempt.
/// The line's `time` is the first refusal's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRefusedEvent {
    /// The address and port that refused: where clients connected and nothing listened.
    pub refused: String,
    pub port: u16,
    /// RSTs this host sent for it (it is local: the server side).
    pub sent: u64,
    /// Refusals this host's clients received from it (their connect() failed).
    pub received: u64,
    /// The last refusal counted here (CLOCK_MONOTONIC ns).
    pub last_mono_ns: u64,
    /// How long a line counts for at most, ms.
    pub interval_ms: u64,
    /// The process that last listened there, if one was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub former_owner: Option<ProcessRef>,
    /// The process whose `shutdown` report counts the `sent` refusals in its
    /// `refused_after_exit` (null: none does).
    pub counted_for: Option<u32>,
    /// This host's processes whose connects were refused, most refused first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<RefusedClient>,
    /// How many processes `clients` would list without its bound.
    #[serde(default)]
    pub clients_total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedClient {
    pub pid: u32,
    pub comm: String,
    pub refused: u64,
}

/// What a connection closed at exit carried, from the kernel's sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Nothing unread, and the peer did not speak last: it had its answer (or never
    /// asked). Closing it sends a FIN.
    Idle,
    /// The peer's data was unread, or the peer spoke last and was not answered: a
    /// request (or, outbound, an answer) was cut.
    InFlight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Inbound,
    Outbound,
    Listener,
}

/// A TCP socket the process still held when it exited, closed by the kernel
/// (`tcp_close_at_exit`); or an inbound connection a process that is shutting down
/// closed itself with a request in flight (`tcp_close_in_flight`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCloseAtExitEvent {
    pub pid: u32,
    pub comm: String,
    pub local: String,
    pub remote: String,
    /// The state it was in when the kernel closed it.
    pub state: String,
    pub role: Role,
    /// Read from the socket as the kernel closed it; absent without BTF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsent_bytes: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenAction {
    Open,
    Close,
}

/// A listening socket opened, or closed by its process (closes at exit are
/// `tcp_close_at_exit` with role listener). An addition to contract v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpListenEvent {
    pub action: ListenAction,
    pub pid: u32,
    pub comm: String,
    pub local: String,
    /// The listening process's cgroup, so that a replacement can be tied to its service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// A connection accepted by a process after its first termination signal. An addition
/// to contract v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpAcceptEvent {
    pub pid: u32,
    pub comm: String,
    pub local: String,
    pub remote: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvent {
    pub count: u64,
}

/// The first termination signal a process received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigtermInfo {
    pub time: String,
    pub sig_name: String,
    pub from: ProcessRef,
    pub result: SignalResult,
    /// From its delivery; null if it was never delivered.
    pub handler: Option<Handler>,
    /// The disposition when it was generated (see [`SignalEvent::disposition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Handler>,
    /// Blocked by the target: taken with signalfd or sigwaitinfo(), not by a handler.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
}

/// One signal in a shutdown's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalStep {
    pub time: String,
    pub sig: i32,
    pub sig_name: String,
    pub from: ProcessRef,
    pub result: SignalResult,
    /// From its delivery; null if none was seen.
    pub handler: Option<Handler>,
    /// The process sent it to itself after a handler of its own had run: a handler
    /// re-raising the signal (as Node's runtime does, and servers that drain first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reraised: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigkillInfo {
    pub time: String,
    pub from: ProcessRef,
    pub after_sigterm_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub time: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub status: Option<i32>,
    pub core_dumped: bool,
    /// A code of 128+N right after signal N: by convention, "stopped by signal N" (JVMs
    /// after their shutdown hooks, inits such as tini passing on their child's death),
    /// e.g. `128+SIGTERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convention: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenConnection {
    pub local: String,
    pub remote: String,
    pub state: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Clean,
    Dropped,
    Killed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FindingCode {
    NoSigtermHandler,
    SignalIgnoredByPid1,
    SignalNotForwarded,
    HandlerNeverRan,
    SigkillAfterGrace,
    SigkillWithoutSigterm,
    KilledByKernel,
    ConnectionsOpenAtExit,
    KeepaliveOpenAtExit,
    AcceptedAfterSignal,
    ListenerNotClosed,
    ResetsSent,
    RefusedAfterExit,
    ExitNonzeroAfterSigterm,
    OutboundOpenAtExit,
    ConnectionsClosedInFlight,
    KilledByRepeatedSignal,
}

/// Whether a finding explains a verdict that is not clean, or is advice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Clients lost work, or the process was killed: the verdict is not `clean`.
    #[default]
    Error,
    /// Nothing was lost this time, but something to fix (or the platform's doing).
    Warning,
}

impl FindingCode {
    /// The contract's name, e.g. `NO_SIGTERM_HANDLER`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .expect("a unit variant serialises as a string")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: FindingCode,
    #[serde(default)]
    pub severity: Severity,
    /// What happened and what to change, in one line.
    pub message: String,
}

/// How one process that was told to stop (or killed) actually stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container: Option<String>,
    /// The Kubernetes pod uid, when the cgroup names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub sigterm: Option<SigtermInfo>,
    pub sigkill: Option<SigkillInfo>,
    /// Every signal of the stop, in order (at most [`crate::reports::shutdown::TIMELINE_SIGNALS`]).
    #[serde(default)]
    pub signals: Vec<SignalStep>,
    pub sigkill_first: bool,
    pub exit: Option<ExitInfo>,
    pub drain_ms: Option<u64>,
    pub listener_closed_ms: Option<u64>,
    pub accepted_after_signal: u32,
    /// The service its deploy groups it under (`unit:…`, `container:…`, `comm:…`).
    #[serde(default)]
    pub service: String,
    /// Routing after the stop began: its last accept (ms after the first termination
    /// signal), its last refused client (ms after its exit), and the later of the two
    /// (ms after the signal): how long the platform kept sending it traffic.
    #[serde(default)]
    pub last_accepted_after_signal_ms: Option<u64>,
    #[serde(default)]
    pub last_refused_after_exit_ms: Option<u64>,
    #[serde(default)]
    pub routing_lag_ms: Option<u64>,
    /// The first [`crate::reports::at_exit::LISTED`]; the counts below cover them all.
    pub open_at_exit: Vec<OpenConnection>,
    #[serde(default)]
    pub open_at_exit_total: u32,
    /// Counts by role (`inbound`, `outbound`, `listener`) and by TCP state.
    #[serde(default)]
    pub open_at_exit_by_role: std::collections::BTreeMap<String, u32>,
    #[serde(default)]
    pub open_at_exit_by_state: std::collections::BTreeMap<String, u32>,
    /// Inbound connections cut at exit with a request in flight, and idle ones closed.
    #[serde(default)]
    pub in_flight_at_exit: u32,
    #[serde(default)]
    pub idle_at_exit: u32,
    pub resets_sent: u32,
    /// Inbound connections it closed itself while shutting down, with a request in
    /// flight (`tcp_close_in_flight`).
    #[serde(default)]
    pub closed_in_flight: u32,
    pub refused_after_exit: u32,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    pub complete: bool,
}

/// The shutdowns of one service within one deploy, and what replaced them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReport {
    pub service: String,
    pub started: String,
    pub ended: String,
    /// At most [`crate::reports::deploy::LISTED_PIDS`] each; the totals count them all.
    pub stopped: Vec<u32>,
    #[serde(default)]
    pub stopped_total: u32,
    pub started_pids: Vec<u32>,
    #[serde(default)]
    pub started_total: u32,
    pub listener_gap_ms: Option<u64>,
    /// Clients that lost their connection: requests cut at exit, other connections
    /// reset, clients refused after exit; each counted once.
    pub dropped_connections: u32,
    /// Of those, the clients refused after exit (the load balancer still sent them).
    #[serde(default)]
    pub refused_after_exit: u32,
    /// The longest drain of its instances (signal to exit), and the longest routing lag
    /// (see [`ShutdownReport::routing_lag_ms`]).
    #[serde(default)]
    pub drain_ms_max: Option<u64>,
    #[serde(default)]
    pub routing_lag_ms: Option<u64>,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_envelope_first_and_reads_back_the_same_line() {
        let line = Line {
            v: SCHEMA_VERSION,
            event: Event::Exit(ExitEvent {
                pid: 1234,
                tid: 1240,
                ppid: Some(1),
                comm: "node".into(),
                cgroup: Some("/system.slice/app.service".into()),
                code: None,
                signal: Some(15),
                core_dumped: false,
                status: Some(143),
                status_source: StatusSource::Kernel,
                children: Vec::new(),
            }),
            time: "2026-11-24T21:03:06.000000001Z".into(),
            mono_ns: 42,
            host: "h".into(),
            container_info: None,
        };
        let json = line.to_json();
        assert!(
            json.starts_with(
                r#"{"v":1,"type":"exit","time":"2026-11-24T21:03:06.000000001Z","mono_ns":42,"host":"h","pid":1234,"#
            ),
            "{json}"
        );
        assert!(json.contains(r#""code":null,"signal":15,"core_dumped":false,"status":143"#));
        let back: Line = serde_json::from_str(&json).unwrap();
        assert_eq!(back, line);
    }

    #[test]
    fn names_origins_results_and_handlers_as_the_contract_does() {
        assert_eq!(Origin::from_si_code(0), Origin::User);
        assert_eq!(Origin::from_si_code(0x80), Origin::Kernel);
        assert_eq!(Origin::from_si_code(-6), Origin::Tkill);
        assert_eq!(Origin::from_si_code(-1), Origin::Queue);
        assert_eq!(Origin::from_si_code(3), Origin::Other);
        assert_eq!(SignalResult::from_kernel(1), SignalResult::Ignored);
        assert_eq!(SignalResult::from_kernel(2), SignalResult::AlreadyPending);
        assert_eq!(Handler::from_sa_handler(0), Handler::Default);
        assert_eq!(Handler::from_sa_handler(1), Handler::Ignore);
        assert_eq!(Handler::from_sa_handler(0x5555_0000), Handler::Custom);
        let json = serde_json::to_string(&SignalResult::OverflowFail).unwrap();
        assert_eq!(json, r#""overflow_fail""#);
    }
}
