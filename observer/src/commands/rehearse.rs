//! `observer rehearse -- CMD`: a shutdown rehearsal. Starts CMD in a cgroup of its own,
//! waits until it listens, drives a bounded load on loopback (with `--http`: idle
//! keep-alive connections that completed a request, and complete requests to `--path`
//! sent just before the signal, so that they are in flight when it comes), stops it as a
//! platform does (a signal, a grace period, SIGKILL; when the main process ends, the rest
//! of its cgroup is killed, as a container runtime does), keeps new connections arriving
//! during the drain, then prints CMD's shutdown report and what the clients saw.
//!
//! Exits 1 unless the verdict is clean and every finding is allowed, no process of CMD's
//! cgroup died between its listening and the signal, no request held before the signal
//! was answered with an error status, and the whole run ended within `--max-duration`
//! (every wait in it is bounded by that deadline; past it, everything the rehearsal
//! started is killed). CMD's output is shown when it fails (or with `--show-output`).
use std::{
    collections::{BTreeSet, HashMap},
    io::{Read, Seek, SeekFrom},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
    time::{sleep, timeout, timeout_at},
};

use crate::{
    commands::cli::RehearseArgs,
    commands::session::{Options, Session},
    event::{
        Event, ExitEvent, FindingCode, Line, ProcessRef, SCHEMA_VERSION, ShutdownReport, Verdict,
    },
    host::clock,
    host::procfs::{self, ProcHost},
    host::signals,
    output::sink::Sink,
    output::{Output, OutputFormat},
    pipeline::correlate::Config,
    pipeline::enrich::HostView,
    pipeline::filter::Filter,
};

/// How often new clients arrive during the drain, as from a load balancer that has not
/// noticed yet.
const ARRIVAL_INTERVAL: Duration = Duration::from_millis(50);
/// How long an arriving client waits for its connection to be accepted by the kernel (a
/// full backlog drops SYNs, and connect() would retry for minutes).
const ARRIVAL_CONNECT: Duration = Duration::from_secs(1);
/// How long before the signal, at least, the in-flight requests are sent (so that the
/// server is handling them when it comes), and, in TCP mode, the connections opened.
const SETTLE: Duration = Duration::from_millis(250);
/// How long, at most, the signal waits for the server to accept them all (a pre-fork
/// server with every worker busy, or a busy machine, takes them later, or never).
const ACCEPT_WAIT: Duration = Duration::from_secs(2);
/// After the last is accepted: time for the server to read its request.
const READ_MARGIN: Duration = Duration::from_millis(50);
/// How much of each of CMD's output streams is shown.
const OUTPUT_TAIL: u64 = 64 * 1024;
/// After the main process ends: how long the rest of its cgroup may take to die.
const CGROUP_EMPTY: Duration = Duration::from_secs(5);
/// Past the deadline, when everything was killed: how long the clients may take to see
/// it.
const WIND_DOWN: Duration = Duration::from_secs(2);
/// Past the deadline: how long the rehearsal itself may take to wind down before the
/// processes are killed regardless.
const BACKSTOP: Duration = Duration::from_secs(5);

/// What the clients saw.
#[derive(Debug, Default, Serialize)]
pub struct Clients {
    /// Requests (HTTP) or connections (TCP) in flight when the signal came.
    pub in_flight: Outcomes,
    /// Idle keep-alive connections (HTTP), each after a successful first request, counted
    /// by how the server ended them (before the signal too: a server that does not keep
    /// connections alive closes them at once); or, when that request failed, by how.
    pub idle: Outcomes,
    /// New connections that arrived during the drain.
    pub during_drain: Outcomes,
}

#[derive(Debug, Default, Serialize)]
pub struct Outcomes {
    /// Got a successful response (HTTP 2xx or 3xx), or closed cleanly by the server (TCP,
    /// idle).
    pub completed: u32,
    /// Got a response with another status (HTTP 4xx, 5xx): an error the client saw.
    pub failed: u32,
    /// Reset (RST) by the server.
    pub reset: u32,
    /// Refused: nobody listened any more.
    pub refused: u32,
    /// Closed by the server without an answer.
    pub closed: u32,
    /// The error statuses behind `failed`.
    #[serde(skip)]
    pub statuses: BTreeSet<u16>,
}

impl Outcomes {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Failed(status) => {
                self.failed += 1;
                self.statuses.insert(status);
            }
            Outcome::Reset => self.reset += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Closed => self.closed += 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    /// An HTTP response with this (error) status.
    Failed(u16),
    Reset,
    Refused,
    Closed,
}

fn classify(error: &std::io::Error) -> Outcome {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => Outcome::Reset,
        _ => Outcome::Closed,
    }
}

/// What an HTTP response's status means to a client.
fn judge(status: u16) -> Outcome {
    if (200..400).contains(&status) {
        Outcome::Completed
    } else {
        Outcome::Failed(status)
    }
}

/// A process of CMD's cgroup that died before the stop signal: killed by a signal,
/// exited non-zero, or exited after another process signalled it (as a pre-fork master
/// stops a worker that timed out: gunicorn's SIGABRT, which the worker handles and exits
/// 0). A process that exits 0 on its own (a helper, a recycled worker) did not die.
#[derive(Debug, Serialize)]
pub struct Death {
    pub pid: u32,
    pub comm: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// What a shell shows in `$?`.
    pub status: Option<i32>,
    /// The first signal another process sent it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_signal: Option<SentSignal>,
    /// When, in ms after CMD started.
    pub after_start_ms: u64,
    /// How long before the stop signal (or, if none was sent, before the rehearsal gave
    /// up waiting to send it).
    pub before_signal_ms: u64,
}

impl Death {
    /// The death as a reason the rehearsal failed.
    fn problem(&self, stop_signal: i32, signalled: bool) -> String {
        let how = match (self.code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by {}", signals::name(sig)),
            _ => "status unknown".to_string(),
        };
        let status = self
            .status
            .map(|s| format!(" (status {s})"))
            .unwrap_or_default();
        let after_signal = self
            .after_signal
            .as_ref()
            .map(|s| format!(" after {} from {}[{}]", s.sig_name, s.from.comm, s.from.pid))
            .unwrap_or_default();
        format!(
            "{}[{}] died before {}: {how}{status}{after_signal}, {:.3} s after the start and \
             {:.3} s before {}",
            self.comm,
            self.pid,
            signals::name(stop_signal),
            self.after_start_ms as f64 / 1000.0,
            self.before_signal_ms as f64 / 1000.0,
            if signalled {
                "the signal"
            } else {
                "the rehearsal stopped"
            },
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SentSignal {
    pub sig: i32,
    pub sig_name: String,
    pub from: ProcessRef,
}

/// The signals the session reports: the termination signals, and SIGABRT (with which a
/// pre-fork master such as gunicorn's stops a worker that timed out).
fn watched_signals() -> Vec<i32> {
    let mut watched = signals::TERMINATION_SIGNALS.to_vec();
    watched.push(libc::SIGABRT);
    watched
}

/// The cgroup CMD runs in, removed afterwards.
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn create() -> Result<Option<Self>> {
        let Some(mount) = procfs::cgroup2_mount() else {
            return Ok(None);
        };
        let path = mount.join(format!("observer-rehearsal-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Some(Self { path }))
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn kill_all(&self) {
        self.kill_all_but(None);
    }

    /// SIGKILLs every process in it but `spared` (one SIGKILLed already).
    fn kill_all_but(&self, spared: Option<u32>) {
        for pid in self.pids() {
            if Some(pid) != spared {
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            self.kill_all();
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Everything the rehearsal started outside itself: CMD, its cgroup, the directory with
/// its output. Dropping it kills CMD and whatever is left in its cgroup, reaps CMD, and
/// removes the directory, on every path out of [`run`].
struct Started {
    child: Child,
    /// Set once CMD was reaped.
    status: Option<ExitStatus>,
    cgroup: Option<Cgroup>,
    output_dir: PathBuf,
}

impl Started {
    /// Starts CMD in a cgroup of its own (when cgroup2 is mounted), its output in
    /// `output_dir`, which is removed if CMD cannot start.
    fn spawn(command: &[String], output_dir: PathBuf) -> Result<Self> {
        let spawned = Cgroup::create().and_then(|cgroup| {
            let child = spawn_in(command, cgroup.as_ref(), &output_dir)?;
            Ok((cgroup, child))
        });
        match spawned {
            Ok((cgroup, child)) => Ok(Self {
                child,
                status: None,
                cgroup,
                output_dir,
            }),
            Err(error) => {
                let _ = std::fs::remove_dir_all(&output_dir);
                Err(error)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills CMD and its cgroup, and reaps CMD (waiting at most about a second).
    fn kill(&mut self) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped (so its pid is still ours).
            unsafe { libc::kill(self.pid() as i32, libc::SIGKILL) };
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all_but(Some(self.pid()));
        }
        for _ in 0..100 {
            if self.status.is_some() {
                break;
            }
            self.status = self.child.try_wait().ok().flatten();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.kill();
        drop(self.cgroup.take());
        let _ = std::fs::remove_dir_all(&self.output_dir);
    }
}

/// How the load and the stop went.
#[derive(Default)]
struct Rehearsed {
    clients: Clients,
    /// When CMD was found listening (CLOCK_MONOTONIC ns).
    ready_mono: u64,
    /// When the stop signal was sent (CLOCK_MONOTONIC ns and as an Instant).
    signalled: Option<(u64, Instant)>,
    /// When the rehearsal stopped waiting to send the signal, if it never did.
    gave_up_before_signal: Option<u64>,
    /// CMD ended before the signal, with this status.
    ended_before_signal: Option<ExitStatus>,
    /// What the rehearsal was waiting for when `--max-duration` ran out.
    timed_out: Option<&'static str>,
    /// In-flight connections the server had not accepted when the signal came.
    not_accepted: u32,
    /// In-flight requests answered before the signal came (the path was too fast).
    answered_before_signal: u32,
    /// Idle keep-alive connections the server closed right after their first response
    /// (`Connection: close`: no keep-alive).
    not_kept_alive: u32,
}

impl Rehearsed {
    /// Deaths before this count (CLOCK_MONOTONIC ns): the signal, or when the rehearsal
    /// gave up sending it.
    fn cutoff(&self) -> Option<u64> {
        self.signalled
            .map(|(mono, _)| mono)
            .or(self.gave_up_before_signal)
    }

    fn timed_out(mut self, waiting_for: &'static str) -> Self {
        self.timed_out = Some(waiting_for);
        if self.signalled.is_none() {
            self.gave_up_before_signal = Some(clock::monotonic_ns());
        }
        self
    }
}

pub fn run(args: &RehearseArgs) -> Result<bool> {
    let allowed = allowed_findings(&args.allow)?;
    let output_dir =
        std::env::temp_dir().join(format!("observer-rehearsal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&output_dir);
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    // Every line the session writes goes to a file: the exits of CMD's processes are read
    // from it afterwards.
    let events_path = output_dir.join("events.ndjson");
    let mut session = match start_session(args, &events_path) {
        Ok(session) => session,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&output_dir);
            return Err(error);
        }
    };
    let start_mono = clock::monotonic_ns();
    let deadline = tokio::time::Instant::now() + args.max_duration();
    let mut started = Started::spawn(&args.command, output_dir)?;
    let pid = started.pid();
    // The cgroup as the kernel's events name it.
    let cgroup_name = started
        .cgroup
        .as_ref()
        .and_then(|_| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .and_then(|text| procfs::parse_cgroup2_line(&text));
    eprintln!(
        "observer: rehearsing `{}` (pid {pid})",
        args.command.join(" ")
    );
    let rehearsed = drive(&mut session, args, &mut started, deadline)?;
    session.finish()?;
    let reports = session.pipeline.take_collected();
    let report = reports.iter().find_map(|line| match &line.event {
        Event::Shutdown(report) if report.pid == pid => Some((line, report.as_ref())),
        _ => None,
    });
    let deaths = rehearsed.cutoff().map_or_else(Vec::new, |cutoff| {
        let window = rehearsed.ready_mono..cutoff;
        deaths_in(
            &events_path,
            cgroup_name.as_deref(),
            pid,
            start_mono,
            window,
        )
    });
    let verdict = report.map(|(_, report)| report);
    let problems = problems(args, &rehearsed, &deaths, verdict, &allowed, pid)?;
    print_notes(args, &rehearsed);
    let passed = problems.is_empty();
    if args.json {
        print_json(args, report, &rehearsed, &deaths, pid, passed, &problems);
    } else {
        let line = report.map(|(line, _)| line);
        print_human(args, line, &rehearsed.clients, &problems);
    }
    if !passed || args.show_output {
        eprint!("{}", output_of(&started.output_dir));
    }
    Ok(passed)
}

/// The finding codes `--allow` names.
fn allowed_findings(names: &[String]) -> Result<Vec<FindingCode>> {
    names
        .iter()
        .map(|code| {
            serde_json::from_value(serde_json::Value::String(code.to_uppercase()))
                .map_err(|_| anyhow::anyhow!("--allow {code}: not a finding code"))
        })
        .collect()
}

/// The watching session, writing every line to `events_path` and collecting reports.
fn start_session(args: &RehearseArgs, events_path: &Path) -> Result<Session> {
    let mut session = Session::start(Options {
        signals: watched_signals(),
        filter: Filter::default(),
        output: Output::new(OutputFormat::Json, Sink::file(events_path)?),
        reports: Config {
            after_exit_ns: args.after_exit.as_nanos() as u64,
            deploy_window_ns: 0,
        },
        ring_buffer_kib: 4096,
        every_reset: false,
        container_stop_signals: Vec::new(),
    })?;
    session.pipeline.collect_reports();
    Ok(session)
}

/// Runs the rehearsal while the session watches, within `deadline` (and a backstop past
/// it); whatever happens, nothing the rehearsal started outlives it.
fn drive(
    session: &mut Session,
    args: &RehearseArgs,
    started: &mut Started,
    deadline: tokio::time::Instant,
) -> Result<Rehearsed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let rehearsal = timeout_at(deadline + BACKSTOP, rehearse(args, started, deadline));
        session.run_until(rehearsal, |_| false).await
    });
    started.kill();
    match outcome?.context("output closed")? {
        Ok(rehearsed) => rehearsed,
        // The backstop: when the signal went out is not known, so neither is what died
        // before it.
        Err(_) => Ok(Rehearsed {
            timed_out: Some("the rehearsal to wind down"),
            ..Rehearsed::default()
        }),
    }
}

/// Why the rehearsal failed, if it did.
fn problems(
    args: &RehearseArgs,
    rehearsed: &Rehearsed,
    deaths: &[Death],
    report: Option<&ShutdownReport>,
    allowed: &[FindingCode],
    pid: u32,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    if let Some(waiting_for) = rehearsed.timed_out {
        problems.push(format!(
            "--max-duration ({} s) ran out while waiting for {waiting_for}: everything the \
             rehearsal started was killed",
            args.max_duration().as_secs_f64()
        ));
    }
    if let Some(status) = rehearsed.ended_before_signal {
        problems.push(format!(
            "`{}` ended ({}) before {} was sent",
            args.command.join(" "),
            describe(status),
            signals::name(args.signal.0)
        ));
    }
    let signalled = rehearsed.signalled.is_some();
    problems.extend(deaths.iter().map(|d| d.problem(args.signal.0, signalled)));
    problems.extend(error_statuses(&rehearsed.clients));
    match report {
        Some(report)
            if report.verdict != Verdict::Clean
                || !report.findings.iter().all(|f| allowed.contains(&f.code)) =>
        {
            problems.push("fix the findings above (or --allow them)".to_string());
        }
        Some(_) => {}
        None if problems.is_empty() => {
            bail!("no shutdown report for pid {pid}: were events lost?");
        }
        None => {}
    }
    Ok(problems)
}

/// Requests held before the signal (in flight, or on idle keep-alive connections) that
/// were answered with an error status.
fn error_statuses(clients: &Clients) -> Vec<String> {
    let held = [
        ("in flight", &clients.in_flight),
        ("on idle keep-alive connections", &clients.idle),
    ];
    held.into_iter()
        .filter(|(_, outcomes)| outcomes.failed > 0)
        .map(|(name, outcomes)| {
            let statuses: Vec<String> = outcomes.statuses.iter().map(u16::to_string).collect();
            format!(
                "{} request(s) {name} were answered with an error status (HTTP {})",
                outcomes.failed,
                statuses.join(", ")
            )
        })
        .collect()
}

/// What made the load weaker than asked, for whoever reads the result.
fn print_notes(args: &RehearseArgs, rehearsed: &Rehearsed) {
    if rehearsed.answered_before_signal > 0 {
        eprintln!(
            "observer: note: {} of the requests meant to be in flight were answered before {}: \
             point --path at an endpoint that takes a while (now {})",
            rehearsed.answered_before_signal,
            signals::name(args.signal.0),
            args.path
        );
    }
    if rehearsed.not_accepted > 0 {
        eprintln!(
            "observer: note: {} of the in-flight {} were still waiting in the listen backlog \
             when {} came: not accepted within {} s (every worker busy?)",
            rehearsed.not_accepted,
            if args.http { "requests" } else { "connections" },
            signals::name(args.signal.0),
            ACCEPT_WAIT.as_secs()
        );
    }
    if rehearsed.not_kept_alive > 0 {
        eprintln!(
            "observer: note: {} of the idle keep-alive connections were closed by the server \
             right after their first response (Connection: close)",
            rehearsed.not_kept_alive
        );
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by {}", signals::name(sig)),
        _ => "ended".to_string(),
    }
}

/// The processes of CMD's cgroup (`cgroup`; without one, CMD and its children) that
/// died (see [`Death`]) in `window` (CLOCK_MONOTONIC ns: from when CMD listened, as
/// what runs before, such as a wrapper's helpers, is not the service yet, until the stop
/// signal), from the signal and exit events in `events`.
fn deaths_in(
    events: &Path,
    cgroup: Option<&str>,
    main_pid: u32,
    start_mono: u64,
    window: std::ops::Range<u64>,
) -> Vec<Death> {
    let text = std::fs::read_to_string(events).unwrap_or_default();
    let mut signalled: HashMap<u32, SentSignal> = HashMap::new();
    let mut deaths = Vec::new();
    let lines = text
        .lines()
        .filter(|line| line.contains(r#""type":"exit""#) || line.contains(r#""type":"signal""#))
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .filter(|line| window.contains(&line.mono_ns));
    for line in lines {
        match line.event {
            Event::Signal(signal)
                if signal.sender.pid != signal.target.pid
                    && in_cgroup(signal.target.cgroup.as_deref(), cgroup) != Some(false) =>
            {
                signalled.entry(signal.target.pid).or_insert(SentSignal {
                    sig: signal.sig,
                    sig_name: signal.sig_name,
                    from: signal.sender,
                });
            }
            Event::Exit(exit) if belongs(&exit, cgroup, main_pid) => {
                let after_signal = signalled.remove(&exit.pid);
                let abnormal = exit.signal.is_some() || exit.code.is_some_and(|code| code != 0);
                if abnormal || after_signal.is_some() {
                    deaths.push(Death {
                        pid: exit.pid,
                        comm: exit.comm,
                        code: exit.code,
                        signal: exit.signal,
                        status: exit.status,
                        after_signal,
                        after_start_ms: (line.mono_ns - start_mono) / 1_000_000,
                        before_signal_ms: (window.end - line.mono_ns) / 1_000_000,
                    });
                }
            }
            _ => {}
        }
    }
    deaths
}

/// Whether an event's cgroup path is CMD's cgroup `ours` or below it (None: unknown).
fn in_cgroup(path: Option<&str>, ours: Option<&str>) -> Option<bool> {
    let (path, ours) = (path?, ours?);
    Some(path == ours || path.strip_prefix(ours).is_some_and(|r| r.starts_with('/')))
}

fn belongs(exit: &ExitEvent, cgroup: Option<&str>, main_pid: u32) -> bool {
    // Not known: CMD itself, or one of its children.
    in_cgroup(exit.cgroup.as_deref(), cgroup)
        .unwrap_or(exit.pid == main_pid || exit.ppid == Some(main_pid))
}

fn spawn_in(command: &[String], cgroup: Option<&Cgroup>, output_dir: &Path) -> Result<Child> {
    let (program, rest) = command.split_first().context("no command to rehearse")?;
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(output_dir.join("stdout"))?)
        .stderr(std::fs::File::create(output_dir.join("stderr"))?);
    if let Some(cgroup) = cgroup {
        let procs = std::ffi::CString::new(
            cgroup
                .path
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )?;
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// The end of CMD's stdout and stderr (at most OUTPUT_TAIL bytes of each), for a reader.
fn output_of(output_dir: &Path) -> String {
    let mut text = String::new();
    for name in ["stdout", "stderr"] {
        let (tail, skipped) = tail_of(&output_dir.join(name), OUTPUT_TAIL);
        if skipped > 0 {
            text.push_str(&format!(
                "--- its {name} (the last {} KiB; {skipped} bytes before not shown) ---\n",
                OUTPUT_TAIL / 1024
            ));
        } else {
            text.push_str(&format!("--- its {name} ---\n"));
        }
        text.push_str(&tail);
        if !tail.is_empty() && !tail.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// The last `limit` bytes of a file (from a line start, when one is in them), and how
/// many bytes before them were left out.
fn tail_of(path: &Path, limit: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut skipped = len.saturating_sub(limit);
    if file.seek(SeekFrom::Start(skipped)).is_err() {
        return (String::new(), 0);
    }
    let mut bytes = Vec::new();
    let _ = file.take(limit).read_to_end(&mut bytes);
    if skipped > 0
        && let Some(newline) = bytes.iter().position(|&b| b == b'\n')
        && newline + 1 < bytes.len()
    {
        bytes.drain(..=newline);
        skipped += newline as u64 + 1;
    }
    (String::from_utf8_lossy(&bytes).into_owned(), skipped)
}

/// Runs `future` until `deadline`: None if it ran out.
async fn within<T>(deadline: tokio::time::Instant, future: impl Future<Output = T>) -> Option<T> {
    timeout_at(deadline, future).await.ok()
}

async fn rehearse(
    args: &RehearseArgs,
    started: &mut Started,
    deadline: tokio::time::Instant,
) -> Result<Rehearsed> {
    let mut rehearsed = Rehearsed::default();
    let target = wait_until_listening(args, started, deadline).await?;
    rehearsed.ready_mono = clock::monotonic_ns();
    let request = Arc::new(request(&args.path));
    let http = args.http;
    let mut idle = Vec::new();
    if http {
        let Some(tasks) = open_idle(target, &request, args, deadline, &mut rehearsed).await? else {
            return Ok(rehearsed.timed_out("the first requests of the idle keep-alive connections"));
        };
        idle = tasks;
    }
    let Some(in_flight) = send_in_flight(target, &request, args, deadline, &mut rehearsed).await
    else {
        return Ok(rehearsed.timed_out("the in-flight requests to be sent"));
    };
    let sent = Instant::now();
    let ports: Vec<u16> = in_flight
        .iter()
        .map(|stream| stream.local_addr().map_or(0, |a| a.port()))
        .collect();
    let in_flight: Vec<JoinHandle<(Outcome, Instant)>> = in_flight
        .into_iter()
        .map(|stream| tokio::spawn(finish_in_flight(stream, http)))
        .collect();
    rehearsed.not_accepted = wait_until_taken(target.port(), &ports, &in_flight, sent).await;
    let mut tasks = Tasks {
        in_flight,
        idle,
        arrivals: None,
    };
    if let Some(status) = started.child.try_wait()? {
        started.status = Some(status);
        rehearsed.ended_before_signal = Some(status);
        rehearsed.gave_up_before_signal = Some(clock::monotonic_ns());
        collect(&mut rehearsed, started, tasks, http, deadline).await?;
        return Ok(rehearsed);
    }
    let signal_mono = clock::monotonic_ns();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(started.pid() as i32, args.signal.0) };
    let signalled = Instant::now();
    rehearsed.signalled = Some((signal_mono, signalled));
    let stop_arrivals = Arc::new(AtomicBool::new(false));
    tasks.arrivals = Some(tokio::spawn(arrive_during_drain(
        target,
        http.then(|| Arc::clone(&request)),
        Arc::clone(&stop_arrivals),
        deadline + WIND_DOWN,
    )));
    stop_like_a_platform(args, started, signalled, deadline, &mut rehearsed).await?;
    stop_arrivals.store(true, Ordering::Relaxed);
    collect(&mut rehearsed, started, tasks, http, deadline).await?;
    // Let late RSTs and closes reach the report's window.
    if rehearsed.timed_out.is_none() && within(deadline, sleep(args.after_exit)).await.is_none() {
        rehearsed.timed_out = Some("--after-exit to pass");
    }
    Ok(rehearsed)
}

/// Idle keep-alive connections: each completes a request, then stays idle, watched as a
/// real client's pool watches it (a server that closes it is answered with a close at
/// once: gunicorn's sync workers linger until the client closes). None if the deadline
/// ran out first.
async fn open_idle(
    target: SocketAddr,
    request: &Arc<Vec<u8>>,
    args: &RehearseArgs,
    deadline: tokio::time::Instant,
    rehearsed: &mut Rehearsed,
) -> Result<Option<Vec<JoinHandle<Outcome>>>> {
    let opening: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(open_idle_keepalive(target, Arc::clone(request))))
        .collect();
    let mut watching = Vec::new();
    for task in opening {
        let Some(result) = within(deadline, task).await else {
            return Ok(None);
        };
        match result? {
            Ok((stream, kept_alive)) => {
                rehearsed.not_kept_alive += u32::from(!kept_alive);
                watching.push(tokio::spawn(watch_idle(stream)));
            }
            Err(outcome) => rehearsed.clients.idle.record(outcome),
        }
    }
    Ok(Some(watching))
}

/// The connections (and, with `--http`, requests) to be in flight when the signal comes;
/// those that failed are counted. None if the deadline ran out first.
async fn send_in_flight(
    target: SocketAddr,
    request: &[u8],
    args: &RehearseArgs,
    deadline: tokio::time::Instant,
    rehearsed: &mut Rehearsed,
) -> Option<Vec<TcpStream>> {
    let mut in_flight = Vec::new();
    for _ in 0..args.connections {
        let opened = within(deadline, async {
            let mut stream = TcpStream::connect(target).await?;
            if args.http {
                stream.write_all(request).await?;
            }
            Ok::<_, std::io::Error>(stream)
        });
        match opened.await? {
            Ok(stream) => in_flight.push(stream),
            Err(error) => rehearsed.clients.in_flight.record(classify(&error)),
        }
    }
    Some(in_flight)
}

/// Waits until the server has taken every in-flight connection (accepted it, or already
/// ended it), at least SETTLE after they were `sent` and at most ACCEPT_WAIT; returns
/// how many it had not accepted by then.
async fn wait_until_taken(
    port: u16,
    ports: &[u16],
    tasks: &[JoinHandle<(Outcome, Instant)>],
    sent: Instant,
) -> u32 {
    let mut taken_at = None;
    loop {
        let accepted = accepted_by_server(port, ports);
        let waiting = ports
            .iter()
            .zip(tasks)
            .filter(|(port, task)| !accepted.contains(port) && !task.is_finished())
            .count();
        if waiting == 0 {
            taken_at.get_or_insert_with(Instant::now);
        }
        let ready = taken_at.is_some_and(|at: Instant| at.elapsed() >= READ_MARGIN);
        if (ready && sent.elapsed() >= SETTLE) || sent.elapsed() >= ACCEPT_WAIT {
            return waiting as u32;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// The platform's side after the signal: waits for the grace period, then SIGKILLs CMD
/// and the rest of its cgroup. Past the deadline, everything is killed, and the clients
/// are counted by what that did to them.
async fn stop_like_a_platform(
    args: &RehearseArgs,
    started: &mut Started,
    signalled: Instant,
    deadline: tokio::time::Instant,
    rehearsed: &mut Rehearsed,
) -> Result<()> {
    let pid = started.pid();
    let mut killed = false;
    loop {
        if let Some(status) = started.child.try_wait()? {
            started.status = Some(status);
            eprintln!(
                "observer: `{}` ended: {} {} ms after {}",
                args.command.join(" "),
                describe(status),
                signalled.elapsed().as_millis(),
                signals::name(args.signal.0)
            );
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline && rehearsed.timed_out.is_none() {
            rehearsed.timed_out = Some("CMD to stop");
        }
        if !killed && (signalled.elapsed() >= args.grace || now >= deadline) {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            if let Some(cgroup) = &started.cgroup {
                cgroup.kill_all_but(Some(pid));
            }
            killed = true;
        }
        if now >= deadline + WIND_DOWN {
            return Ok(()); // not even SIGKILL ended it: Started::kill tries once more
        }
        sleep(Duration::from_millis(5)).await;
    }
}

/// The clients, as tasks that end with what each saw.
struct Tasks {
    in_flight: Vec<JoinHandle<(Outcome, Instant)>>,
    idle: Vec<JoinHandle<Outcome>>,
    arrivals: Option<JoinHandle<Outcomes>>,
}

/// CMD ended: kills the rest of its cgroup, and counts what the clients saw (by the
/// deadline; after it, everything having been killed, a little later).
async fn collect(
    rehearsed: &mut Rehearsed,
    started: &Started,
    tasks: Tasks,
    http: bool,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let limit = |rehearsed: &Rehearsed| match rehearsed.timed_out {
        Some(_) => deadline + WIND_DOWN,
        None => deadline,
    };
    if let Some(cgroup) = &started.cgroup {
        cgroup.kill_all();
        let empty_by = limit(rehearsed).min(tokio::time::Instant::now() + CGROUP_EMPTY);
        while !cgroup.pids().is_empty() && tokio::time::Instant::now() < empty_by {
            sleep(Duration::from_millis(10)).await;
        }
    }
    let signalled = rehearsed.signalled.map(|(_, at)| at);
    for task in tasks.in_flight {
        match within(limit(rehearsed), task).await {
            Some(result) => {
                let (outcome, at) = result?;
                rehearsed.clients.in_flight.record(outcome);
                if http && signalled.is_some_and(|signalled| at < signalled) {
                    rehearsed.answered_before_signal += 1;
                }
            }
            None => {
                rehearsed
                    .timed_out
                    .get_or_insert("the in-flight requests' answers");
                rehearsed.clients.in_flight.record(Outcome::Closed);
            }
        }
    }
    for task in tasks.idle {
        match within(limit(rehearsed), task).await {
            Some(result) => rehearsed.clients.idle.record(result?),
            None => {
                rehearsed
                    .timed_out
                    .get_or_insert("the idle connections to end");
                rehearsed.clients.idle.record(Outcome::Closed);
            }
        }
    }
    if let Some(arrivals) = tasks.arrivals {
        match within(limit(rehearsed), arrivals).await {
            Some(result) => rehearsed.clients.during_drain = result?,
            None => {
                rehearsed
                    .timed_out
                    .get_or_insert("the clients that arrived during the drain");
            }
        }
    }
    Ok(())
}

/// Waits until CMD (or a process in its cgroup) listens, on `--port` if given.
async fn wait_until_listening(
    args: &RehearseArgs,
    started: &mut Started,
    deadline: tokio::time::Instant,
) -> Result<SocketAddr> {
    let ready_by = deadline.min(tokio::time::Instant::now() + args.ready_timeout);
    let mut host = ProcHost::new();
    loop {
        if let Some(status) = started.child.try_wait()? {
            started.status = Some(status);
            bail!(
                "`{}` exited ({status}) before it listened\n{}",
                args.command.join(" "),
                output_of(&started.output_dir)
            );
        }
        let pids = started
            .cgroup
            .as_ref()
            .map_or_else(|| vec![started.pid()], Cgroup::pids);
        let listening = pids.iter().flat_map(|&pid| host.listening(pid));
        let found = listening
            .filter_map(|local| local.parse::<SocketAddr>().ok())
            .find(|addr| args.port.is_none_or(|port| addr.port() == port));
        if let Some(local) = found {
            // Connect over loopback, to whatever the listener accepts.
            let ip = match local.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            return Ok(SocketAddr::new(ip, local.port()));
        }
        if tokio::time::Instant::now() >= ready_by {
            bail!(
                "`{}` did not listen{} within {:?}\n{}",
                args.command.join(" "),
                args.port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
                args.ready_timeout.min(args.max_duration()),
                output_of(&started.output_dir)
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Which of the client connections from `ports` to local port `port` the server has
/// accepted: its end of each has a socket (an inode) in /proc/net/tcp or tcp6 once
/// accept() took it from the listen backlog (0 before).
fn accepted_by_server(port: u16, ports: &[u16]) -> Vec<u16> {
    let port_of = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
    };
    let mut accepted = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            if port_of(local) == Some(port)
                && let Some(client) = port_of(remote).filter(|p| ports.contains(p))
                && *inode != "0"
            {
                accepted.push(client);
            }
        }
    }
    accepted
}

/// A complete request for `path`.
fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: rehearsal\r\nConnection: keep-alive\r\n\r\n").into_bytes()
}

/// A keep-alive connection that completed one request (and whether the server means to
/// keep it open), to be held idle; or how its request failed.
async fn open_idle_keepalive(
    target: SocketAddr,
    request: Arc<Vec<u8>>,
) -> Result<(TcpStream, bool), Outcome> {
    let mut stream = TcpStream::connect(target).await.map_err(|e| classify(&e))?;
    stream.write_all(&request).await.map_err(|e| classify(&e))?;
    let response = read_response(&mut stream).await.map_err(|e| classify(&e))?;
    match judge(response.status) {
        Outcome::Completed => Ok((stream, response.keep_alive)),
        outcome => Err(outcome),
    }
}

/// How a request in flight ended (or, in TCP mode, how the server ended the connection),
/// and when.
async fn finish_in_flight(mut stream: TcpStream, http: bool) -> (Outcome, Instant) {
    let outcome = if http {
        match read_response(&mut stream).await {
            Ok(response) => judge(response.status),
            Err(error) => classify(&error),
        }
    } else {
        watch_idle(stream).await
    };
    (outcome, Instant::now())
}

/// How an idle connection ended: closed by the server (FIN), or reset.
async fn watch_idle(mut stream: TcpStream) -> Outcome {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Outcome::Completed,
            Ok(_) => continue,
            Err(error) => return classify(&error),
        }
    }
}

/// New clients during the drain, one every ARRIVAL_INTERVAL from one interval after the
/// signal (a handler that reacts within that has closed its listener; a server that keeps
/// accepting for longer is caught), until told to stop or refused (nobody listens). With
/// `request`, each sends it and waits for the answer (concurrently with the next
/// arrivals).
async fn arrive_during_drain(
    target: SocketAddr,
    request: Option<Arc<Vec<u8>>>,
    stopped: Arc<AtomicBool>,
    deadline: tokio::time::Instant,
) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let mut exchanges = Vec::new();
    loop {
        sleep(ARRIVAL_INTERVAL).await;
        if stopped.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline {
            break;
        }
        let outcome = match timeout(ARRIVAL_CONNECT, TcpStream::connect(target)).await {
            Err(_) => Outcome::Closed,
            Ok(Err(error)) => classify(&error),
            Ok(Ok(stream)) => match &request {
                None => Outcome::Completed,
                Some(request) => {
                    exchanges.push(tokio::spawn(exchange(stream, Arc::clone(request))));
                    continue;
                }
            },
        };
        outcomes.record(outcome);
        if outcome == Outcome::Refused {
            break; // the instance stopped listening: out of rotation for new clients
        }
    }
    for task in exchanges {
        let outcome = match within(deadline, task).await {
            Some(Ok(outcome)) => outcome,
            _ => Outcome::Closed,
        };
        outcomes.record(outcome);
    }
    outcomes
}

/// Sends a request on a new connection and judges the answer.
async fn exchange(mut stream: TcpStream, request: Arc<Vec<u8>>) -> Outcome {
    if let Err(error) = stream.write_all(&request).await {
        return classify(&error);
    }
    match read_response(&mut stream).await {
        Ok(response) => judge(response.status),
        Err(error) => classify(&error),
    }
}

/// What a client needs of a response.
struct Response {
    status: u16,
    /// The server means to keep the connection open (no `Connection: close`).
    keep_alive: bool,
}

/// Reads one HTTP response (status line, headers, a Content-Length or chunked body),
/// after any interim (1xx) ones.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let eof = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a response",
        )
    };
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let (header_end, headers, status) = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&data[..at + 4]).to_ascii_lowercase();
            if !headers.starts_with("http/1.") {
                return Err(invalid());
            }
            let status: u16 = headers
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(invalid)?;
            if (100..200).contains(&status) && status != 101 {
                data.drain(..at + 4);
                continue;
            }
            break (at + 4, headers, status);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(eof());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let length = header("content-length:").and_then(|v| v.parse::<usize>().ok());
    let chunked = header("transfer-encoding:").is_some_and(|v| v.contains("chunked"));
    let keep_alive = !header("connection:").is_some_and(|v| v.contains("close"))
        && !headers.starts_with("http/1.0");
    loop {
        let body = &data[header_end..];
        let complete = match (length, chunked) {
            (Some(length), _) => body.len() >= length,
            (None, true) => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            (None, false) => true,
        };
        if complete {
            return Ok(Response { status, keep_alive });
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(eof());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

#[derive(Serialize)]
struct RehearsalLine<'a> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'static str,
    command: &'a [String],
    pid: u32,
    /// None when there was no shutdown report (CMD was never signalled).
    verdict: Option<Verdict>,
    passed: bool,
    clients: &'a Clients,
    /// Processes of CMD's cgroup that died before the signal.
    died_before_signal: &'a [Death],
    /// `--max-duration` ran out.
    timed_out: bool,
}

fn print_json(
    args: &RehearseArgs,
    report: Option<(&Line, &ShutdownReport)>,
    rehearsed: &Rehearsed,
    deaths: &[Death],
    pid: u32,
    passed: bool,
    problems: &[String],
) {
    if let Some((line, _)) = report {
        println!("{}", line.to_json());
    }
    let summary = RehearsalLine {
        v: SCHEMA_VERSION,
        kind: "rehearsal",
        command: &args.command,
        pid,
        verdict: report.map(|(_, report)| report.verdict),
        passed,
        clients: &rehearsed.clients,
        died_before_signal: deaths,
        timed_out: rehearsed.timed_out.is_some(),
    };
    println!(
        "{}",
        serde_json::to_string(&summary).expect("plain struct serialises")
    );
    for problem in problems {
        eprintln!("observer: rehearsal failed: {problem}");
    }
}

fn print_human(args: &RehearseArgs, report: Option<&Line>, clients: &Clients, problems: &[String]) {
    let OutputFormat::Human(human) = OutputFormat::choose(false, args.color.forced(), false) else {
        unreachable!("json is false");
    };
    if let Some(line) = report {
        println!("{}", human.render(line));
    }
    let show = |name: &str, o: &Outcomes| {
        println!(
            "  clients {name:<15} completed {:>3} · failed {:>3} · reset {:>3} · refused {:>3} · \
             closed unanswered {:>3}",
            o.completed, o.failed, o.reset, o.refused, o.closed
        )
    };
    show(
        if args.http { "in flight" } else { "connected" },
        &clients.in_flight,
    );
    if args.http {
        show("idle keep-alive", &clients.idle);
    }
    show("during drain", &clients.during_drain);
    match problems {
        [] => println!("rehearsal passed: a clean shutdown"),
        [problem] => println!("rehearsal failed: {problem}"),
        problems => {
            println!("rehearsal failed:");
            for problem in problems {
                println!("  - {problem}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::commands::cli::{Cli, Command as Sub};

    fn rehearse_args(argv: &[&str]) -> Result<RehearseArgs, String> {
        let argv = [&["observer", "rehearse"][..], argv].concat();
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Sub::Rehearse(args),
            }) => Ok(args),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn path_and_bounds_parse() {
        let args = rehearse_args(&["--grace", "5", "--", "true"]).unwrap();
        assert_eq!(args.path, "/");
        assert!(!args.show_output);
        assert_eq!(args.max_duration(), Duration::from_secs(10 + 5 + 1 + 30));
        let args = rehearse_args(&[
            "--http",
            "--path",
            "/slow?x=1",
            "--max-duration",
            "2.5",
            "--show-output",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(args.path, "/slow?x=1");
        assert_eq!(args.max_duration(), Duration::from_millis(2500));
        assert!(args.show_output);
        for (argv, reason) in [
            (
                &["--http", "--path", "slow", "--", "true"][..],
                "does not start with /",
            ),
            (
                &["--http", "--path", "/a b", "--", "true"],
                "percent-encode",
            ),
            (&["--path", "/slow", "--", "true"], "--http"),
            (&["--max-duration", "0", "--", "true"], "positive"),
        ] {
            let error = rehearse_args(argv).unwrap_err();
            assert!(error.contains(reason), "{argv:?}: {error}");
        }
    }

    #[test]
    fn only_success_statuses_complete() {
        assert_eq!(judge(200), Outcome::Completed);
        assert_eq!(judge(204), Outcome::Completed);
        assert_eq!(judge(302), Outcome::Completed);
        assert_eq!(judge(404), Outcome::Failed(404));
        assert_eq!(judge(500), Outcome::Failed(500));
        assert_eq!(judge(503), Outcome::Failed(503));
        let mut outcomes = Outcomes::default();
        for outcome in [
            Outcome::Failed(500),
            Outcome::Completed,
            Outcome::Failed(502),
        ] {
            outcomes.record(outcome);
        }
        assert_eq!((outcomes.completed, outcomes.failed), (1, 2));
        assert_eq!(outcomes.statuses, BTreeSet::from([500, 502]));
        let json = serde_json::to_value(&outcomes).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"completed":1,"failed":2,"reset":0,"refused":0,"closed":0})
        );
    }

    #[test]
    fn reads_statuses_after_interim_responses() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                for answer in [
                    &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nno\n"[..],
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
                ] {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    socket.write_all(answer).await.unwrap();
                }
            });
            let mut stream = TcpStream::connect(target).await.unwrap();
            let response = read_response(&mut stream).await.unwrap();
            assert_eq!((response.status, response.keep_alive), (500, true));
            let mut stream = TcpStream::connect(target).await.unwrap();
            let response = read_response(&mut stream).await.unwrap();
            assert_eq!((response.status, response.keep_alive), (200, false));
            server.await.unwrap();
        });
    }

    #[test]
    fn output_is_shown_bounded_from_a_line_start() {
        let dir = std::env::temp_dir().join(format!("rehearse-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let long: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.join("stdout"), &long).unwrap();
        std::fs::write(dir.join("stderr"), "short\n").unwrap();
        let shown = output_of(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(shown.len() < OUTPUT_TAIL as usize + 200, "{}", shown.len());
        assert!(shown.contains("line 19999\n--- its stderr ---\nshort\n"));
        let first = shown.lines().nth(1).unwrap();
        assert!(first.starts_with("line ") && first.len() > 5, "{first}");
        assert!(
            shown.starts_with("--- its stdout (the last 64 KiB; "),
            "{}",
            &shown[..80]
        );
    }

    fn exit(
        pid: u32,
        ppid: u32,
        cgroup: Option<&str>,
        code: Option<i32>,
        signal: Option<i32>,
    ) -> ExitEvent {
        serde_json::from_value(serde_json::json!({
            "pid": pid, "tid": pid, "ppid": ppid, "comm": "worker", "cgroup": cgroup,
            "code": code, "signal": signal, "core_dumped": false,
            "status": code.or(signal.map(|s| 128 + s)), "status_source": "kernel",
        }))
        .unwrap()
    }

    #[test]
    fn a_death_belongs_to_the_cgroup_or_else_to_cmd() {
        let ours = Some("/observer-rehearsal-7");
        assert!(belongs(
            &exit(20, 10, Some("/observer-rehearsal-7"), Some(1), None),
            ours,
            10
        ));
        assert!(belongs(
            &exit(21, 20, Some("/observer-rehearsal-7/sub"), Some(1), None),
            ours,
            10
        ));
        assert!(!belongs(
            &exit(22, 10, Some("/observer-rehearsal-70"), Some(1), None),
            ours,
            10
        ));
        assert!(!belongs(
            &exit(23, 1, Some("/user.slice"), Some(1), None),
            ours,
            10
        ));
        // Without a cgroup path: CMD and its children only.
        assert!(belongs(&exit(24, 10, None, Some(1), None), ours, 10));
        assert!(belongs(&exit(10, 1, None, None, Some(9)), None, 10));
        assert!(!belongs(&exit(25, 1, None, Some(1), None), ours, 10));
    }
}
