//! `observer rehearse -- CMD`: a shutdown rehearsal. Starts CMD in a cgroup of its own,
//! waits until it listens, drives a bounded load on loopback, stops it as a platform
//! does (a signal, a grace period, SIGKILL; when the main process ends, the rest of its
//! cgroup is killed, as a container runtime does), keeps new connections arriving during
//! the drain, then prints CMD's shutdown report and what the clients saw. Exits 1 unless
//! the verdict is clean and every finding is allowed.
use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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
    time::{sleep, timeout},
};

use crate::{
    cli::RehearseArgs,
    correlate::Config,
    enrich::HostView,
    event::{Event, FindingCode, Line, SCHEMA_VERSION, ShutdownReport, Verdict},
    filter::Filter,
    pipeline::{Output, OutputFormat},
    procfs::{self, ProcHost},
    signals,
    sink::Sink,
    watch::{Options, Session},
};

/// How often new clients arrive during the drain, as from a load balancer that has not
/// noticed yet.
const ARRIVAL_INTERVAL: Duration = Duration::from_millis(50);
/// When the in-flight requests are completed after the signal.
const IN_FLIGHT_COMPLETION: Duration = Duration::from_millis(100);
/// How long the load runs before the stop, so that the server has accepted it (a real
/// stop hits a server that has been serving, not one that is still starting).
const SETTLE: Duration = Duration::from_millis(250);

/// What the clients saw.
#[derive(Debug, Default, Serialize)]
pub struct Clients {
    /// Requests (HTTP) or connections (TCP) in flight when the signal came.
    pub in_flight: Outcomes,
    /// Idle keep-alive connections open when the signal came.
    pub idle: Outcomes,
    /// New connections that arrived during the drain.
    pub during_drain: Outcomes,
}

#[derive(Debug, Default, Serialize)]
pub struct Outcomes {
    /// Got a response (HTTP), or closed cleanly by the server (TCP, idle).
    pub completed: u32,
    /// Reset (RST) by the server.
    pub reset: u32,
    /// Refused: nobody listened any more.
    pub refused: u32,
    /// Closed by the server without an answer.
    pub closed: u32,
}

impl Outcomes {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Closed => self.closed += 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
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
        for pid in self.pids() {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn run(args: &RehearseArgs) -> Result<bool> {
    let allowed: Vec<FindingCode> = args
        .allow
        .iter()
        .map(|code| {
            serde_json::from_value(serde_json::Value::String(code.to_uppercase()))
                .map_err(|_| anyhow::anyhow!("--allow {code}: not a finding code"))
        })
        .collect::<Result<_>>()?;
    let mut session = Session::start(Options {
        signals: signals::TERMINATION_SIGNALS.to_vec(),
        filter: Filter::default(),
        output: Output {
            format: OutputFormat::Json,
            sink: Sink::discard(),
        },
        reports: Config {
            after_exit_ns: args.after_exit.as_nanos() as u64,
            deploy_window_ns: 0,
        },
        ring_buffer_kib: 1024,
    })?;
    session.pipeline.collected = Some(Vec::new());
    let cgroup = Cgroup::create()?;
    let output_dir =
        std::env::temp_dir().join(format!("observer-rehearsal-{}", std::process::id()));
    std::fs::create_dir_all(&output_dir)?;
    let mut child = spawn(&args.command, cgroup.as_ref(), &output_dir)?;
    let pid = child.id();
    eprintln!(
        "observer: rehearsing `{}` (pid {pid})",
        args.command.join(" ")
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rehearsal = runtime.block_on(session.run_until(
        rehearse(args, &mut child, cgroup.as_ref(), &output_dir),
        |_| false,
    ));
    drop(cgroup);
    let clients = rehearsal?.context("output closed")??;
    session.finish()?;
    let reports = session.pipeline.collected.take().unwrap_or_default();
    let report = reports.iter().find_map(|line| match &line.event {
        Event::Shutdown(report) if report.pid == pid => Some((line, report.as_ref())),
        _ => None,
    });
    let Some((line, report)) = report else {
        bail!("no shutdown report for pid {pid}: were events lost?");
    };
    let passed = report.verdict == Verdict::Clean
        && report.findings.iter().all(|f| allowed.contains(&f.code));
    print(args, line, report, &clients, passed);
    let _ = std::fs::remove_dir_all(&output_dir);
    Ok(passed)
}

fn spawn(command: &[String], cgroup: Option<&Cgroup>, output_dir: &Path) -> Result<Child> {
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

fn output_of(output_dir: &Path) -> String {
    let mut text = String::new();
    for name in ["stdout", "stderr"] {
        let mut content = String::new();
        let _ = std::fs::File::open(output_dir.join(name))
            .and_then(|mut f| f.read_to_string(&mut content));
        let tail: Vec<&str> = content.lines().rev().take(20).collect();
        text.push_str(&format!("--- its {name} (last lines) ---\n"));
        for line in tail.into_iter().rev() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

async fn rehearse(
    args: &RehearseArgs,
    child: &mut Child,
    cgroup: Option<&Cgroup>,
    output_dir: &Path,
) -> Result<Clients> {
    let pid = child.id();
    let target = wait_until_listening(args, child, cgroup, output_dir).await?;
    let connections = args.connections as usize;
    let mut idle = Vec::new();
    let mut in_flight = Vec::new();
    for _ in 0..connections {
        if args.http {
            idle.push(open_idle_keepalive(target).await?);
            in_flight.push(start_request(target).await?);
        } else {
            in_flight.push(TcpStream::connect(target).await?);
        }
    }

    sleep(SETTLE).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, args.signal.0) };
    let signalled = Instant::now();
    let http = args.http;
    let idle_tasks: Vec<_> = idle
        .into_iter()
        .map(|s| tokio::spawn(watch_idle(s)))
        .collect();
    let in_flight_tasks: Vec<_> = in_flight
        .into_iter()
        .map(|s| tokio::spawn(finish_in_flight(s, http)))
        .collect();
    let stop_arrivals = Arc::new(AtomicBool::new(false));
    let arrivals = tokio::spawn(arrive_during_drain(
        target,
        http,
        Arc::clone(&stop_arrivals),
    ));

    // The platform's side: wait for the grace period, then SIGKILL.
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !killed && signalled.elapsed() >= args.grace {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            if let Some(cgroup) = cgroup {
                cgroup.kill_all();
            }
            killed = true;
        }
        sleep(Duration::from_millis(5)).await;
    };
    stop_arrivals.store(true, Ordering::Relaxed);
    // The main process is gone: so is the rest of its cgroup.
    if let Some(cgroup) = cgroup {
        cgroup.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cgroup.pids().is_empty() && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
        }
    }
    let mut clients = Clients::default();
    for task in in_flight_tasks {
        clients.in_flight.record(task.await?);
    }
    for task in idle_tasks {
        clients.idle.record(task.await?);
    }
    let stopped_after = signalled.elapsed();
    clients.during_drain = arrivals.await?;
    eprintln!(
        "observer: `{}` ended: {} {} ms after {}",
        args.command.join(" "),
        match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by {}", signals::name(sig)),
            _ => "ended".to_string(),
        },
        stopped_after.as_millis(),
        signals::name(args.signal.0)
    );
    // Let late RSTs and closes reach the report's window.
    sleep(args.after_exit).await;
    Ok(clients)
}

/// Waits until CMD (or a process in its cgroup) listens, on `--port` if given.
async fn wait_until_listening(
    args: &RehearseArgs,
    child: &mut Child,
    cgroup: Option<&Cgroup>,
    output_dir: &Path,
) -> Result<SocketAddr> {
    let started = Instant::now();
    let mut host = ProcHost::new();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "`{}` exited ({status}) before it listened\n{}",
                args.command.join(" "),
                output_of(output_dir)
            );
        }
        let pids = cgroup.map_or_else(|| vec![child.id()], Cgroup::pids);
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
        if started.elapsed() > args.ready_timeout {
            bail!(
                "`{}` did not listen{} within {:?}\n{}",
                args.command.join(" "),
                args.port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
                args.ready_timeout,
                output_of(output_dir)
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: rehearsal\r\nConnection: keep-alive\r\n\r\n";

/// A keep-alive connection that made one request, then stays idle.
async fn open_idle_keepalive(target: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(target).await?;
    stream.write_all(REQUEST).await?;
    read_response(&mut stream)
        .await
        .context("the server did not answer a keep-alive request")?;
    Ok(stream)
}

/// A request whose last line is still to come: in flight when the signal arrives.
async fn start_request(target: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(target).await?;
    stream.write_all(&REQUEST[..REQUEST.len() - 2]).await?;
    Ok(stream)
}

async fn finish_in_flight(mut stream: TcpStream, http: bool) -> Outcome {
    sleep(IN_FLIGHT_COMPLETION).await;
    if !http {
        // A plain TCP client: how did the server end the connection?
        return watch_idle(stream).await;
    }
    if let Err(error) = stream.write_all(b"\r\n").await {
        return classify(&error);
    }
    match timeout(Duration::from_secs(120), read_response(&mut stream)).await {
        Ok(Ok(())) => Outcome::Completed,
        Ok(Err(error)) => classify(&error),
        Err(_) => Outcome::Closed,
    }
}

/// How an idle connection ended: closed by the server (FIN), or reset.
async fn watch_idle(mut stream: TcpStream) -> Outcome {
    let mut buf = [0u8; 4096];
    loop {
        match timeout(Duration::from_secs(120), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Outcome::Completed,
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => return classify(&error),
            Err(_) => return Outcome::Closed,
        }
    }
}

/// New clients during the drain, one every ARRIVAL_INTERVAL from one interval after the
/// signal (a handler that reacts within that has closed its listener; a server that keeps
/// accepting for longer is caught), until told to stop or refused (nobody listens).
async fn arrive_during_drain(target: SocketAddr, http: bool, stopped: Arc<AtomicBool>) -> Outcomes {
    let mut outcomes = Outcomes::default();
    loop {
        sleep(ARRIVAL_INTERVAL).await;
        if stopped.load(Ordering::Relaxed) {
            break;
        }
        let outcome = match TcpStream::connect(target).await {
            Err(error) => classify(&error),
            Ok(_) if !http => Outcome::Completed,
            Ok(mut stream) => match stream.write_all(REQUEST).await {
                Err(error) => classify(&error),
                Ok(()) => match timeout(Duration::from_secs(5), read_response(&mut stream)).await {
                    Ok(Ok(())) => Outcome::Completed,
                    Ok(Err(error)) => classify(&error),
                    Err(_) => Outcome::Closed,
                },
            },
        };
        outcomes.record(outcome);
        if outcome == Outcome::Refused {
            break; // the instance stopped listening: out of rotation for new clients
        }
    }
    outcomes
}

/// Reads one HTTP response (status line, headers, a Content-Length or chunked body).
async fn read_response(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let eof = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a response",
        )
    };
    let header_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(eof());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let headers = String::from_utf8_lossy(&data[..header_end]).to_ascii_lowercase();
    if !headers.starts_with("http/1.") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP response",
        ));
    }
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = headers.contains("transfer-encoding: chunked");
    loop {
        let body = &data[header_end..];
        let complete = match (length, chunked) {
            (Some(length), _) => body.len() >= length,
            (None, true) => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            (None, false) => true,
        };
        if complete {
            return Ok(());
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
    verdict: Verdict,
    passed: bool,
    clients: &'a Clients,
}

fn print(
    args: &RehearseArgs,
    line: &Line,
    report: &ShutdownReport,
    clients: &Clients,
    passed: bool,
) {
    if args.json {
        println!("{}", line.to_json());
        let summary = RehearsalLine {
            v: SCHEMA_VERSION,
            kind: "rehearsal",
            command: &args.command,
            pid: report.pid,
            verdict: report.verdict,
            passed,
            clients,
        };
        println!(
            "{}",
            serde_json::to_string(&summary).expect("plain struct serialises")
        );
        return;
    }
    let OutputFormat::Human(human) = OutputFormat::choose(false, args.color, false) else {
        unreachable!("json is false");
    };
    println!("{}", human.render(line));
    let show = |name: &str, o: &Outcomes| {
        println!(
            "  clients {name:<13} completed {:>3} · reset {:>3} · refused {:>3} · closed unanswered {:>3}",
            o.completed, o.reset, o.refused, o.closed
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
    println!(
        "rehearsal {}",
        if passed {
            "passed: a clean shutdown"
        } else {
            "failed: fix the findings above (or --allow them)"
        }
    );
}
