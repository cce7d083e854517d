//! Real third-party servers, stopped the way platforms stop them (a termination signal,
//! a grace period, SIGKILL for the whole group), with what really happened recorded
//! independently of observer: the test is the server's parent, so its own waitpid()
//! gives the exit status; real clients on loopback record what each of them saw; the
//! server's own log says what its workers did.
//!
//! Servers (installed by `cargo xtask test`: Debian's packages, PyPI's into
//! target/real-servers/venv, npm's into target/real-servers/node): nginx (C, pre-fork
//! master and workers), redis-server (C, one process), gunicorn (Python, pre-fork, sync
//! workers), uvicorn (Python, asyncio), express and http-server (Node.js), a Node
//! `cluster` pre-fork server, and a JVM (com.sun.net.httpserver with a shutdown hook).
//!
//! The assertions state the correct behaviour:
//! - exit events match waitpid exactly;
//! - `clean` when every client got its answer or was idle (a server that drained and
//!   then re-raised SIGTERM on itself is clean), `dropped` when a request in flight was
//!   cut or reset, `killed` when SIGKILL ended it;
//! - connections workers accepted on the master's listener are `inbound`;
//! - a pre-fork server's master and workers are one service, in one deploy;
//! - each refused or cut client counts once (a deploy's `dropped_connections` is the
//!   number of distinct such clients);
//! - no EXIT_NONZERO_AFTER_SIGTERM for status 128+N right after signal N;
//! - a Node app without a handler of its own gets NO_SIGTERM_HANDLER;
//! - a server's verdict is the worst of its processes' shutdowns; its deploy is also
//!   `dropped` when clients were refused after it exited (traffic still routed to it).
//!
//! With REAL_SERVERS_RECORD=DIR each test also writes DIR/<test>.md: the ground truth
//! next to observer's exit events and reports (the same text is printed on stdout).
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use observer_tests::{
    Events, Observer, finding_codes, send_signal, servers_dir, temp_path, upstream::Upstream,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Where the servers are

fn installed(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/real-servers")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` installs the real servers",
        path.display()
    );
    path
}

fn program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: `cargo xtask test` installs the real servers")
        })
}

fn real_dir() -> PathBuf {
    servers_dir().join("real")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port outside the kernel's ephemeral range (`ip_local_port_range`, 32768 and
/// up by default), where real servers listen: a port connect() never picks.
fn free_server_port() -> u16 {
    (20_000..30_000)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port in 20000..30000")
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = temp_path(name);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// What a client saw

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A full response (HTTP status, or 0 for a Redis reply).
    Answered(u16),
    /// ECONNRESET, after `bytes` bytes of a response.
    Reset { bytes: usize },
    /// ECONNREFUSED.
    Refused,
    /// EOF before any byte of a response.
    HungUp,
    /// EOF in the middle of a response.
    Cut { bytes: usize, expected: usize },
    /// An idle keep-alive connection (answered earlier) that the server then closed (EOF).
    IdleClosed,
    /// An idle keep-alive connection still open after the server was gone.
    IdleOpen,
    /// Connected when it should have been refused, or no answer in time.
    Other(String),
}

impl Seen {
    /// A client whose request was lost: cut, reset, hung up on or refused.
    fn lost(&self) -> bool {
        matches!(
            self,
            Seen::Reset { .. } | Seen::Refused | Seen::HungUp | Seen::Cut { .. }
        )
    }
}

fn io_seen(error: &std::io::Error, bytes: usize, expected: usize) -> Seen {
    match error.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Seen::Reset { bytes },
        ErrorKind::ConnectionRefused => Seen::Refused,
        ErrorKind::UnexpectedEof if bytes == 0 => Seen::HungUp,
        ErrorKind::UnexpectedEof => Seen::Cut { bytes, expected },
        _ => Seen::Other(format!("{error} after {bytes} bytes")),
    }
}

/// Reads one HTTP response (Content-Length, chunked, or to EOF): its status.
fn read_response(stream: &mut TcpStream) -> Result<u16, Seen> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let mut head_end = None;
    let mut expected = usize::MAX;
    loop {
        if let Some(end) = head_end {
            let body = &data[end..];
            if expected != usize::MAX && body.len() >= expected {
                break;
            }
            if expected == usize::MAX - 1 && body.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if head_end.is_some() && expected == usize::MAX {
                    break; // Connection: close, no length: EOF ends it
                }
                return Err(if data.is_empty() {
                    Seen::HungUp
                } else {
                    Seen::Cut {
                        bytes: data.len(),
                        expected: head_end.map_or(0, |e| e + expected.min(usize::MAX / 2)),
                    }
                });
            }
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io_seen(&e, data.len(), 0)),
        }
        if head_end.is_none()
            && let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n")
        {
            head_end = Some(pos + 4);
            let head = String::from_utf8_lossy(&data[..pos]).to_ascii_lowercase();
            if let Some(length) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
            {
                expected = length;
            } else if head.contains("transfer-encoding: chunked") {
                expected = usize::MAX - 1;
            }
        }
    }
    let head = String::from_utf8_lossy(&data[..head_end.unwrap()]).to_string();
    Ok(head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

fn http_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
}

/// The protocol a client speaks.
#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http,
    Redis,
    /// PostgreSQL's frontend/backend protocol: each request opens a session (startup
    /// message, trust authentication) and runs one query.
    Postgres,
}

/// A new session's startup message and one simple Query, as the client sends them.
/// Every byte is below 0x80 (lengths under 128), so the text is ASCII.
fn postgres_request(sql: &str) -> String {
    let parameters = "user\0postgres\0database\0postgres\0\0";
    let startup_len = 8 + parameters.len();
    let query_len = 4 + sql.len() + 1;
    assert!(startup_len < 128 && query_len < 128, "a short query: {sql}");
    let mut message = vec![0, 0, 0, startup_len as u8, 0, 3, 0, 0];
    message.extend_from_slice(parameters.as_bytes());
    message.extend_from_slice(&[b'Q', 0, 0, 0, query_len as u8]);
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    String::from_utf8(message).unwrap()
}

/// Reads PostgreSQL messages until the second ReadyForQuery (the startup's, then the
/// query's): Answered(0); a session that ended with an ErrorResponse (e.g. FATAL
/// "terminating connection due to administrator command") was answered too, with 1.
fn read_postgres_reply(stream: &mut TcpStream) -> Seen {
    let (mut data, mut ready, mut errors) = (Vec::new(), 0, 0);
    let mut buf = [0u8; 4096];
    loop {
        while data.len() >= 5 {
            let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
            if data.len() < 1 + length {
                break;
            }
            match data[0] {
                b'Z' => ready += 1,
                b'E' => errors += 1,
                _ => {}
            }
            data.drain(..1 + length);
            if ready == 2 {
                return Seen::Answered(0);
            }
        }
        match stream.read(&mut buf) {
            Ok(0) if errors > 0 && data.is_empty() => return Seen::Answered(1),
            Ok(0) if ready == 0 && errors == 0 && data.is_empty() => return Seen::HungUp,
            Ok(0) => {
                return Seen::Cut {
                    bytes: data.len(),
                    expected: 0,
                };
            }
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return io_seen(&e, data.len(), 0),
        }
    }
}

/// Sends `request` and reads one reply.
fn exchange(stream: &mut TcpStream, protocol: Protocol, request: &str) -> Seen {
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return io_seen(&e, 0, 0);
    }
    match protocol {
        Protocol::Http => match read_response(stream) {
            Ok(status) => Seen::Answered(status),
            Err(seen) => seen,
        },
        Protocol::Postgres => read_postgres_reply(stream),
        Protocol::Redis => {
            let mut reply = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                match stream.read(&mut byte) {
                    Ok(0) if reply.is_empty() => return Seen::HungUp,
                    Ok(0) => {
                        return Seen::Cut {
                            bytes: reply.len(),
                            expected: 0,
                        };
                    }
                    Ok(_) => {
                        reply.push(byte[0]);
                        if reply.ends_with(b"\r\n") {
                            return Seen::Answered(0);
                        }
                    }
                    Err(e) => return io_seen(&e, reply.len(), 0),
                }
            }
        }
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(25)))?;
    Ok(stream)
}

/// A keep-alive client that made one request (answered) and then stays idle.
struct IdleClient {
    stream: TcpStream,
    protocol: Protocol,
}

impl IdleClient {
    fn connect(port: u16, protocol: Protocol) -> Self {
        let mut stream = connect(port).expect("an idle client connects");
        let request = match protocol {
            Protocol::Http => http_request("/"),
            Protocol::Redis => "PING\r\n".to_string(),
            Protocol::Postgres => postgres_request("SELECT 1"),
        };
        let seen = exchange(&mut stream, protocol, &request);
        assert!(
            matches!(seen, Seen::Answered(_)),
            "the first request of an idle client: {seen:?}"
        );
        Self { stream, protocol }
    }

    fn local(&self) -> String {
        self.stream.local_addr().unwrap().to_string()
    }

    /// After the server is gone: closed (EOF), reset, or still open.
    fn seen(mut self) -> (String, Seen) {
        let local = self.local();
        self.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let seen = match self.stream.read(&mut buf) {
            Ok(0) => Seen::IdleClosed,
            // PostgreSQL tells an idle session why it ends (an ErrorResponse), then closes.
            Ok(_) if self.protocol == Protocol::Postgres && buf[0] == b'E' => {
                match std::io::copy(&mut self.stream, &mut std::io::sink()) {
                    Ok(_) => Seen::IdleClosed,
                    Err(e) => io_seen(&e, 0, 0),
                }
            }
            Ok(n) => Seen::Other(format!("{n} unexpected bytes")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Seen::IdleOpen
            }
            Err(e) => io_seen(&e, 0, 0),
        };
        (local, seen)
    }
}

/// A client whose request is in flight; its thread reads the reply.
struct InFlight {
    local: String,
    thread: JoinHandle<Seen>,
}

impl InFlight {
    /// Sends `request` and waits until it is sent; `first_bytes`: also wait until the
    /// reply has begun (a download), and then read the rest slowly enough that the
    /// server still has most of it to send.
    fn start(port: u16, protocol: Protocol, request: &str) -> Self {
        let mut stream = connect(port).expect("a client connects");
        let local = stream.local_addr().unwrap().to_string();
        let request = request.to_string();
        let (sent, is_sent) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut seen = None;
            if let Err(e) = stream.write_all(request.as_bytes()) {
                seen = Some(io_seen(&e, 0, 0));
            }
            sent.send(()).unwrap();
            seen.unwrap_or_else(|| match protocol {
                Protocol::Http => match read_response(&mut stream) {
                    Ok(status) => Seen::Answered(status),
                    Err(seen) => seen,
                },
                Protocol::Redis | Protocol::Postgres => exchange(&mut stream, protocol, ""),
            })
        });
        is_sent.recv().unwrap();
        Self { local, thread }
    }

    fn seen(self) -> (String, Seen) {
        (self.local, self.thread.join().unwrap())
    }
}

/// A download whose client stops reading after the first bytes until `resume` is sent
/// (so that the server is still sending when it is told to stop).
struct Download {
    local: String,
    resume: mpsc::Sender<()>,
    thread: JoinHandle<Seen>,
}

impl Download {
    fn start(port: u16, path: &str) -> Self {
        let mut stream = connect(port).expect("a client connects");
        let local = stream.local_addr().unwrap().to_string();
        stream.write_all(http_request(path).as_bytes()).unwrap();
        let mut first = [0u8; 4096];
        let n = stream.read(&mut first).unwrap();
        assert!(n > 0, "the download did not begin");
        let (resume, resumed) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let head = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
            let head_len = head.find("\r\n\r\n").map_or(0, |p| p + 4);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a download has a Content-Length");
            resumed.recv().unwrap();
            let mut got = n - head_len;
            let mut buf = vec![0u8; 1 << 20];
            while got < length {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        return Seen::Cut {
                            bytes: got,
                            expected: length,
                        };
                    }
                    Ok(k) => got += k,
                    Err(e) => return io_seen(&e, got, length),
                }
            }
            Seen::Answered(200)
        });
        Self {
            local,
            resume,
            thread,
        }
    }

    fn seen(self) -> (String, Seen) {
        let _ = self.resume.send(());
        (self.local, self.thread.join().unwrap())
    }
}

/// Clients that connect after the server exited: `n` attempts.
fn connect_after_exit(port: u16, n: usize) -> Vec<(String, Seen)> {
    (0..n)
        .map(|i| {
            let seen = match TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Seen::Refused,
                Err(e) => Seen::Other(e.to_string()),
                Ok(_) => Seen::Other("connected".into()),
            };
            (format!("after exit #{i}"), seen)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// A server under test

/// How a server is started: program, arguments, environment, working directory.
struct Spec {
    name: &'static str,
    command: Command,
    port: u16,
    protocol: Protocol,
    /// Processes besides the main one, once it serves (pre-fork workers).
    workers: usize,
    /// Its log file (its stdout and stderr, or its own error log).
    log: PathBuf,
    dir: TempDir,
    /// Started before observer (as on a host where a DaemonSet rolls out): observer
    /// never sees it open its listeners.
    running_before_observer: bool,
}

/// A running server: the test's own child, in a process group of its own.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    protocol: Protocol,
    log: PathBuf,
    workers: Vec<u32>,
    _dir: TempDir,
}

/// The pids of `pid`'s descendants, parents first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{parent}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

impl Server {
    fn start(mut spec: Spec) -> Self {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let child = spec
            .command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", spec.name));
        let mut server = Self {
            name: spec.name,
            child,
            port: spec.port,
            protocol: spec.protocol,
            log: spec.log,
            workers: Vec::new(),
            _dir: spec.dir,
        };
        server.wait_until_serving(spec.workers);
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until a request is answered and the workers are there.
    fn wait_until_serving(&mut self, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let request = match self.protocol {
            Protocol::Http => http_request("/"),
            Protocol::Redis => "PING\r\n".into(),
            Protocol::Postgres => postgres_request("SELECT 1"),
        };
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) while starting:\n{}",
                    self.name,
                    self.log()
                );
            }
            let answered = connect(self.port)
                .map(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    matches!(exchange(&mut s, self.protocol, &request), Seen::Answered(_))
                })
                .unwrap_or(false);
            self.workers = descendants(self.pid());
            if answered && self.workers.len() >= workers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve on port {} with {workers} workers within 40 s (workers {:?}):\n{}",
                self.name,
                self.port,
                self.workers,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// How the platform asks the server to stop.
enum Ask {
    Signal(i32),
    /// The signal to every process of the server's group at once, workers included, as
    /// systemd's default `KillMode=control-group` and `kill -TERM -PGID` send it.
    Group(i32),
    /// A command (e.g. `nginx -s quit`), run to completion.
    Command(Command),
}

/// What the stop did: ground truth.
struct Stopped {
    status: ExitStatus,
    /// SIGKILL sent to the process group after the grace period.
    sigkilled: bool,
    /// Processes of the group still alive after the main one was reaped, then SIGKILLed.
    leftovers: Vec<u32>,
    elapsed: Duration,
}

impl Server {
    /// Asks the server to stop; SIGKILLs its whole group after `grace` if the main
    /// process still runs (as a container runtime does), and whatever of the group is
    /// left once it was reaped.
    fn stop(&mut self, ask: Ask, grace: Duration) -> Stopped {
        let start = Instant::now();
        match ask {
            Ask::Signal(sig) => send_signal(self.pid(), sig),
            // The server leads its own process group.
            Ask::Group(sig) => send_signal_to_group(self.pid(), sig),
            Ask::Command(mut command) => {
                let status = command.status().expect("running the stop command");
                assert!(status.success(), "stop command: {status}");
            }
        }
        let mut sigkilled = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if !sigkilled && start.elapsed() >= grace {
                // SAFETY: kill(2) of our own process group.
                unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
                sigkilled = true;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "{} never exited",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = start.elapsed();
        // Leftovers: give stragglers a moment, then kill the group as a runtime would.
        let mut leftovers = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let alive: Vec<u32> = self
                .workers
                .iter()
                .copied()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        s.rsplit(')').next().unwrap().split_whitespace().next() != Some("Z")
                    })
                })
                .collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                leftovers = alive;
                // SAFETY: kill(2) of our own process group.
                unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Stopped {
            status,
            sigkilled,
            leftovers,
            elapsed,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The servers

fn nginx(workers: usize) -> Spec {
    nginx_proxying(workers, None)
}

/// nginx; with `upstream`, it also proxies /app/ to that port on loopback.
fn nginx_proxying(workers: usize, upstream: Option<u16>) -> Spec {
    let dir = TempDir::new("nginx");
    let port = free_port();
    let root = &dir.0;
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(root.join("www/index.html"), "ok /\n").unwrap();
    // A download served at 32 KiB/s: /slow2 takes 2 s. /big: 64 MiB, for downloads whose
    // client reads slowly (the rest is still to send when the server stops). A
    // rate-limited download cut between two writes leaves nothing pending in its socket:
    // at the TCP level that is an idle keep-alive connection, so the cut ones are /big.
    std::fs::write(root.join("www/slow2"), vec![b'x'; 64 * 1024]).unwrap();
    std::fs::write(root.join("www/big"), vec![b'x'; 64 << 20]).unwrap();
    let r = root.display();
    let proxy = upstream.map_or(String::new(), |port| {
        format!("location /app/ {{ proxy_pass http://127.0.0.1:{port}/; }}\n    ")
    });
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\nuser root;\n\
         pid {r}/nginx.pid;\nerror_log {r}/error.log notice;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 60s;\n\
         client_body_temp_path {r}/tmp/body;\n  proxy_temp_path {r}/tmp/proxy;\n\
         fastcgi_temp_path {r}/tmp/fastcgi;\n  uwsgi_temp_path {r}/tmp/uwsgi;\n\
         scgi_temp_path {r}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {r}/www;\n\
         {proxy}location /slow {{ limit_rate 32k; }}\n  }}\n}}\n"
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let mut command = Command::new(program("nginx"));
    command.args(nginx_args(root));
    Spec {
        name: "nginx",
        command,
        port,
        protocol: Protocol::Http,
        workers,
        log: root.join("error.log"),
        dir,
        running_before_observer: false,
    }
}

fn nginx_args(root: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        root.display().to_string(),
        "-c".into(),
        root.join("nginx.conf").display().to_string(),
        "-e".into(),
        root.join("error.log").display().to_string(),
    ]
}

/// `nginx -s SIGNAL` for the nginx started from `server`'s directory.
fn nginx_signal(server: &Server, signal: &str) -> Command {
    let mut command = Command::new(program("nginx"));
    command
        .args(nginx_args(&server._dir.0))
        .args(["-s", signal])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A Lua script that keeps redis busy for `seconds` (redis runs no timer, hence no
/// shutdown, while a script runs; `DEBUG SLEEP` would be cut short by the signal).
fn busy_script(seconds: u32) -> String {
    format!(
        "EVAL \"local n = redis.call('TIME') local t = n[1] * 1e6 + n[2] + {seconds}e6 \
         repeat n = redis.call('TIME') until n[1] * 1e6 + n[2] >= t return 1\" 0"
    )
}

/// HAProxy in master-worker mode (`-W`), proxying to `upstream` on loopback, on a port
/// outside the ephemeral range as real servers listen.
fn haproxy(upstream: u16) -> Spec {
    let dir = TempDir::new("haproxy");
    let port = free_server_port();
    let config = dir.0.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  master-worker\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend web\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  server upstream 127.0.0.1:{upstream}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(program("haproxy"));
    command.args(["-W", "-db", "-f"]).arg(&config);
    Spec {
        name: "haproxy",
        command,
        port,
        protocol: Protocol::Http,
        workers: 1,
        log: dir.0.join("haproxy.log"),
        dir,
        running_before_observer: false,
    }
}

/// Caddy (Go) as a reverse proxy to `upstream`, its admin API and automatic HTTPS off,
/// its state in the scenario's directory.
fn caddy(upstream: u16) -> Spec {
    let dir = TempDir::new("caddy");
    let port = free_port();
    let config = dir.0.join("Caddyfile");
    std::fs::write(
        &config,
        format!(
            "{{\n  admin off\n  auto_https off\n  storage file_system {}\n}}\n\
             http://:{port} {{\n  bind 127.0.0.1\n  reverse_proxy 127.0.0.1:{upstream}\n}}\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let mut command = Command::new(program("caddy"));
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", &dir.0)
        .env("XDG_CONFIG_HOME", dir.0.join("config"))
        .env("XDG_DATA_HOME", dir.0.join("data"));
    Spec {
        name: "caddy",
        command,
        port,
        protocol: Protocol::Http,
        workers: 0,
        log: dir.0.join("caddy.log"),
        dir,
        running_before_observer: false,
    }
}

/// Apache httpd, the prefork MPM (a root master, two children as `nobody`, one
/// connection each), proxying /app/ to `upstream` on loopback. On SIGTERM the master
/// SIGTERMs its children, whose handler closes their connections and exits at once.
fn apache(upstream: u16) -> Spec {
    let dir = TempDir::new("apache");
    let port = free_port();
    let modules = Path::new("/usr/lib/apache2/modules");
    let config = dir.0.join("httpd.conf");
    let module =
        |name: &str, file: &str| format!("LoadModule {name} {}\n", modules.join(file).display());
    let text = [
        module("mpm_prefork_module", "mod_mpm_prefork.so"),
        module("authz_core_module", "mod_authz_core.so"),
        module("proxy_module", "mod_proxy.so"),
        module("proxy_http_module", "mod_proxy_http.so"),
        format!(
            "ServerRoot {root}\nDefaultRuntimeDir {root}\nPidFile {root}/httpd.pid\n\
             ServerName localhost\nListen 127.0.0.1:{port}\nErrorLog /dev/stderr\n\
             LogLevel info\nUser nobody\nGroup nogroup\nStartServers 2\n\
             MinSpareServers 2\nMaxSpareServers 2\nMaxRequestWorkers 4\n\
             KeepAliveTimeout 60\nProxyPass /app/ http://127.0.0.1:{upstream}/\n",
            root = dir.0.display()
        ),
    ]
    .concat();
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(program("apache2"));
    command.arg("-f").arg(&config).arg("-DFOREGROUND");
    Spec {
        name: "apache",
        command,
        port,
        protocol: Protocol::Http,
        workers: 2,
        log: dir.0.join("apache.log"),
        dir,
        running_before_observer: false,
    }
}

fn redis() -> Spec {
    let dir = TempDir::new("redis");
    let port = free_port();
    let mut command = Command::new(program("redis-server"));
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.0.display().to_string(),
    ]);
    Spec {
        name: "redis-server",
        command,
        port,
        protocol: Protocol::Redis,
        workers: 0,
        log: dir.0.join("redis.log"),
        dir,
        running_before_observer: false,
    }
}

/// The uid and gid of `user`, from the password database.
fn user_ids(user: &str) -> (u32, u32) {
    let name = std::ffi::CString::new(user).unwrap();
    // SAFETY: a NUL-terminated name; the entry is copied out before any other call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "no user {user}: `cargo xtask test` installs PostgreSQL"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// A program of Debian's PostgreSQL server (/usr/lib/postgresql/<major>/bin), the
/// newest major installed.
fn postgres_program(name: &str) -> PathBuf {
    let mut majors: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin").join(name))
        .filter(|path| path.is_file())
        .collect();
    majors.sort_by_key(|path| {
        let major = path
            .components()
            .nth(4)
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .to_string();
        major.parse::<u32>().unwrap_or(0)
    });
    majors.pop().unwrap_or_else(|| {
        panic!("PostgreSQL's {name} is not installed: `cargo xtask test` installs it")
    })
}

/// A fresh cluster (initdb, trust authentication) run by the `postgres` user, which
/// PostgreSQL requires; listening on loopback only.
fn postgres() -> Spec {
    let dir = TempDir::new("postgres");
    let (uid, gid) = user_ids("postgres");
    std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid)).unwrap();
    let data = dir.0.join("data");
    let status = Command::new(postgres_program("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync"])
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .status()
        .expect("running initdb");
    assert!(status.success(), "initdb: {status}");
    let port = free_port();
    let mut command = Command::new(postgres_program("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir.0)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .uid(uid)
        .gid(gid);
    Spec {
        name: "postgres",
        command,
        port,
        protocol: Protocol::Postgres,
        // The checkpointer, background writer, WAL writer and the launchers.
        workers: 4,
        log: dir.0.join("postgres.log"),
        dir,
        running_before_observer: false,
    }
}

fn gunicorn(workers: usize, graceful_timeout: u32) -> Spec {
    let dir = TempDir::new("gunicorn");
    let port = free_port();
    let mut command = Command::new(installed("venv/bin/gunicorn"));
    command.args([
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--workers",
        &workers.to_string(),
        "--worker-class",
        "sync",
        "--graceful-timeout",
        &graceful_timeout.to_string(),
        "--chdir",
        &real_dir().display().to_string(),
        "--log-level",
        "debug",
        "wsgi_app:app",
    ]);
    Spec {
        name: "gunicorn",
        command,
        port,
        protocol: Protocol::Http,
        workers,
        log: dir.0.join("gunicorn.log"),
        dir,
        running_before_observer: false,
    }
}

fn uvicorn() -> Spec {
    let dir = TempDir::new("uvicorn");
    let port = free_port();
    let mut command = Command::new(installed("venv/bin/uvicorn"));
    command.args([
        "asgi_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--app-dir",
        &real_dir().display().to_string(),
        "--timeout-keep-alive",
        "60",
    ]);
    Spec {
        name: "uvicorn",
        command,
        port,
        protocol: Protocol::Http,
        workers: 0,
        log: dir.0.join("uvicorn.log"),
        dir,
        running_before_observer: false,
    }
}

fn node(script: &str, args: &[&str], workers: usize) -> Spec {
    let dir = TempDir::new("node");
    let port = free_port();
    let mut command = Command::new(program("node"));
    command
        .arg(real_dir().join(script))
        .arg(port.to_string())
        .args(args)
        .env("NODE_PATH", installed("node/node_modules"));
    Spec {
        name: "node",
        command,
        port,
        protocol: Protocol::Http,
        workers,
        log: dir.0.join("node.log"),
        dir,
        running_before_observer: false,
    }
}

fn express(mode: &str) -> Spec {
    node("express_app.js", &[mode], 0)
}

fn node_cluster(workers: usize) -> Spec {
    node("cluster.js", &[&workers.to_string()], workers)
}

/// http-server (npm) serving a directory with a 64 MiB file, /big.
fn http_server() -> Spec {
    let dir = TempDir::new("http-server");
    let port = free_port();
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok /\n").unwrap();
    std::fs::write(www.join("big"), vec![b'x'; 64 << 20]).unwrap();
    let mut command = Command::new(program("node"));
    command
        .arg(installed("node/node_modules/http-server/bin/http-server"))
        .arg(&www)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-c-1"]);
    Spec {
        name: "http-server",
        command,
        port,
        protocol: Protocol::Http,
        workers: 0,
        log: dir.0.join("http-server.log"),
        dir,
        running_before_observer: false,
    }
}

fn jvm(stop_seconds: u32) -> Spec {
    let dir = TempDir::new("jvm");
    let port = free_port();
    let mut command = Command::new(program("java"));
    command
        .args(["-Xshare:auto", "-XX:TieredStopAtLevel=1"])
        .arg(real_dir().join("SlowServer.java"))
        .arg(port.to_string())
        .arg(stop_seconds.to_string());
    Spec {
        name: "java",
        command,
        port,
        protocol: Protocol::Http,
        workers: 0,
        log: dir.0.join("java.log"),
        dir,
        running_before_observer: false,
    }
}

// ---------------------------------------------------------------------------------------
// A scenario: observer, a server, clients, a stop; then ground truth and reports side by side

/// Reports due 1 s after exit; a deploy closes 2 s after its last termination signal.
/// observer is stopped at the end of each scenario, which flushes what is pending.
const OBSERVER_ARGS: &[&str] = &["--after-exit", "1", "--deploy-window", "2"];

struct Outcome {
    name: String,
    server: &'static str,
    port: u16,
    how: String,
    master: u32,
    workers: Vec<u32>,
    stopped: Stopped,
    clients: Vec<(String, String, Seen)>,
    log: String,
    events: Events,
}

impl Outcome {
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.master)
            .chain(self.workers.iter().copied())
            .collect()
    }

    fn shutdown(&self, pid: u32) -> &Value {
        self.events.shutdown_of(pid)
    }

    fn shutdowns(&self) -> Vec<&Value> {
        let pids = self.pids();
        self.events
            .of_type("shutdown")
            .filter(|r| pids.iter().any(|p| r["pid"] == *p))
            .collect()
    }

    /// The deploy reports that stopped any of the server's processes.
    fn deploys(&self) -> Vec<&Value> {
        let pids = self.pids();
        self.events
            .of_type("deploy")
            .filter(|d| {
                d["stopped"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|p| pids.iter().any(|q| p == q)))
            })
            .collect()
    }

    fn seen(&self, kind: &str) -> Vec<&Seen> {
        self.clients
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, _, s)| s)
            .collect()
    }

    /// Distinct clients that lost their request or were refused.
    fn lost_clients(&self) -> usize {
        self.clients.iter().filter(|(_, _, s)| s.lost()).count()
    }

    /// The record: ground truth, then what observer said.
    fn describe(&self) -> String {
        let mut out = format!("## {}\n\n", self.name);
        out += &format!(
            "server: {} (master {}, workers {:?}); stopped with {}\n\n",
            self.server, self.master, self.workers, self.how
        );
        out += "### Ground truth\n\n";
        let s = &self.stopped.status;
        out += &format!(
            "- waitpid of {}: code {:?}, signal {:?} (raw {:#x}), after {} ms{}{}\n",
            self.master,
            s.code(),
            s.signal(),
            s.into_raw(),
            self.stopped.elapsed.as_millis(),
            if self.stopped.sigkilled {
                "; SIGKILL sent to the group after the grace period"
            } else {
                ""
            },
            if self.stopped.leftovers.is_empty() {
                String::new()
            } else {
                format!(
                    "; leftovers {:?} SIGKILLed after the main process was reaped",
                    self.stopped.leftovers
                )
            }
        );
        for (kind, local, seen) in &self.clients {
            out += &format!("- client {kind} {local}: {seen:?}\n");
        }
        let log: Vec<&str> = self.log.lines().filter(|l| !l.trim().is_empty()).collect();
        let shown = &log[log.len().saturating_sub(25)..];
        out += &format!(
            "- server log (last {} lines):\n```\n{}\n```\n\n",
            shown.len(),
            shown.join("\n")
        );
        out += "### observer\n\n```\n";
        for pid in self.pids() {
            for exit in self.events.exits_of(pid) {
                out += &format!("{}\n", trim(exit));
            }
        }
        let pids = self.pids();
        let port = format!(":{}", self.port);
        let ours = |e: &&Value| {
            pids.iter().any(|p| {
                e["pid"] == *p || e["target"]["pid"] == *p || e["former_owner"]["pid"] == *p
            }) || e["local"].as_str().is_some_and(|l| l.ends_with(&port))
        };
        let kinds = [
            "signal",
            "signal_delivered",
            "tcp_listen",
            "tcp_close_at_exit",
            "tcp_accept",
            "tcp_reset",
            "tcp_refused",
        ];
        let raw: Vec<&Value> = self
            .events
            .lines
            .iter()
            .filter(|e| kinds.iter().any(|k| e["type"] == *k))
            .filter(ours)
            .collect();
        for event in raw.iter().take(40) {
            out += &format!("{}\n", trim(event));
        }
        if raw.len() > 40 {
            out += &format!("… {} more signal/tcp events\n", raw.len() - 40);
        }
        for report in self.shutdowns() {
            out += &format!("{}\n", trim(report));
        }
        for deploy in self.deploys() {
            out += &format!("{}\n", trim(deploy));
        }
        out += "```\n\n";
        out
    }

    fn record(&self) {
        let text = self.describe();
        println!("{text}");
        if let Some(dir) = std::env::var_os("REAL_SERVERS_RECORD") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(Path::new(&dir).join(format!("{}.md", self.name)), &text).unwrap();
        }
    }
}

/// A report line without its long parts (messages, command lines, times).
fn trim(line: &Value) -> String {
    let mut line = line.clone();
    let object = line.as_object_mut().unwrap();
    for field in [
        "v",
        "host",
        "mono_ns",
        "cmdline",
        "exe",
        "cgroup",
        "unit",
        "container",
        "time",
    ] {
        object.remove(field);
    }
    if let Some(target) = object.get_mut("target").and_then(Value::as_object_mut) {
        for field in ["cmdline", "exe", "cgroup"] {
            target.remove(field);
        }
    }
    if let Some(findings) = object.get_mut("findings").and_then(Value::as_array_mut) {
        for finding in findings {
            if let Some(message) = finding.get_mut("message") {
                let text = message.as_str().unwrap_or("").to_string();
                if text.len() > 90 {
                    *message = json!(format!("{}…", &text[..text.floor_char_boundary(90)]));
                }
            }
        }
    }
    line.to_string()
}

/// Runs one scenario: observer, the server, `clients` before the stop, the stop, clients
/// after it, and `after_exit` connection attempts once it is gone.
fn scenario(
    name: &str,
    spec: Spec,
    how: &str,
    ask: impl FnOnce(&Server) -> Ask,
    grace: Duration,
    clients: impl FnOnce(&Server) -> Box<dyn FnOnce() -> Vec<(String, String, Seen)>>,
    after_exit: usize,
) -> Outcome {
    let server_name = spec.name;
    let (observer, mut server) = if spec.running_before_observer {
        let server = Server::start(spec);
        (Observer::start(OBSERVER_ARGS), server)
    } else {
        let observer = Observer::start(OBSERVER_ARGS);
        (observer, Server::start(spec))
    };
    let collect = clients(&server);
    let ask = ask(&server);
    let stopped = server.stop(ask, grace);
    let mut seen = collect();
    seen.extend(
        connect_after_exit(server.port, after_exit)
            .into_iter()
            .map(|(local, s)| ("refused".to_string(), local, s)),
    );
    let events = observer.stop();
    let outcome = Outcome {
        name: name.to_string(),
        server: server_name,
        port: server.port,
        how: how.to_string(),
        master: server.pid(),
        workers: server.workers.clone(),
        stopped,
        clients: seen,
        log: server.log(),
        events,
    };
    outcome.record();
    outcome
}

/// Idle keep-alive clients, requests in flight (`paths`), and optional downloads.
fn clients(
    server: &Server,
    idle: usize,
    in_flight: &[&str],
    downloads: &[&str],
) -> Box<dyn FnOnce() -> Vec<(String, String, Seen)>> {
    let idle: Vec<IdleClient> = (0..idle)
        .map(|_| IdleClient::connect(server.port, server.protocol))
        .collect();
    let flights: Vec<InFlight> = in_flight
        .iter()
        .map(|request| {
            let request = match server.protocol {
                Protocol::Http => http_request(request),
                Protocol::Redis => format!("{request}\r\n"),
                Protocol::Postgres => postgres_request(request),
            };
            InFlight::start(server.port, server.protocol, &request)
        })
        .collect();
    let downloads: Vec<Download> = downloads
        .iter()
        .map(|path| Download::start(server.port, path))
        .collect();
    // Let the requests reach their handlers.
    std::thread::sleep(Duration::from_millis(400));
    Box::new(move || {
        let mut seen: Vec<(String, String, Seen)> = Vec::new();
        for client in downloads {
            let (local, s) = client.seen();
            seen.push(("download".into(), local, s));
        }
        for client in flights {
            let (local, s) = client.seen();
            seen.push(("in flight".into(), local, s));
        }
        for client in idle {
            let (local, s) = client.seen();
            seen.push(("idle".into(), local, s));
        }
        seen
    })
}

/// A reverse proxy (`proxy`, given its upstream's port) SIGTERMed while `path` waits
/// on an upstream that answers it after 5 s: it exits 0 at once, the client is hung up
/// on, and the report of the process that held both connections (`holder`) says so.
fn sigterm_cuts_a_proxied_request(
    name: &str,
    proxy: impl FnOnce(u16) -> Spec,
    path: &str,
    holder: impl Fn(&Outcome) -> u32,
) {
    let upstream = Upstream::start(5);
    let outcome = scenario(
        name,
        proxy(upstream.port),
        "SIGTERM, grace 10 s, upstream answering after 5 s",
        term,
        GRACE,
        |s| clients(s, 0, &[path], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    let holder = holder(&outcome);
    checks.has_finding(holder, "CONNECTIONS_OPEN_AT_EXIT");
    checks.has_finding(holder, "OUTBOUND_OPEN_AT_EXIT");
    checks.finish();
}

fn term(_: &Server) -> Ask {
    Ask::Signal(libc::SIGTERM)
}

fn send_signal_to_group(leader: u32, sig: i32) {
    // SAFETY: kill(2) of a process group, with plain integers.
    let rc = unsafe { libc::kill(-(leader as i32), sig) };
    assert_eq!(
        rc,
        0,
        "kill(-{leader}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

const GRACE: Duration = Duration::from_secs(10);
const SHORT_GRACE: Duration = Duration::from_millis(1500);

// ---------------------------------------------------------------------------------------
// Checks shared by the scenarios

/// What waitpid said.
#[derive(Clone, Copy, Debug)]
enum Status {
    Code(i32),
    Signal(i32),
}

/// What really happened, asserted first (a server that does not behave so makes the
/// scenario meaningless, and fails the test at once), then the report that states it.
struct Truth {
    status: Status,
    /// Requests in flight and downloads: all lost (cut, reset, hung up), else all
    /// answered.
    in_flight_lost: bool,
    /// The server's verdict: its own, for the way it shut down (the worst of its
    /// processes' shutdowns). Its deploy's follows: also dropped when clients were
    /// refused after it exited.
    verdict: &'static str,
}

/// Checks on observer's reports, collected so that one run names every disagreement.
struct Checks<'a> {
    outcome: &'a Outcome,
    failures: Vec<String>,
}

impl<'a> Checks<'a> {
    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Fails the test with every disagreement found (the record is on stdout).
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: observer disagrees with what happened:\n- {}\n(the scenario's record is printed above)",
            self.outcome.name,
            self.failures.join("\n- ")
        );
    }

    fn has_finding(&mut self, pid: u32, code: &str) {
        let report = self.outcome.shutdown(pid);
        if !finding_codes(report).contains(&code) {
            self.fail(format!("{pid} lacks {code}: {}", trim(report)));
        }
    }

    fn lacks_finding(&mut self, pid: u32, code: &str) {
        let report = self.outcome.shutdown(pid);
        if finding_codes(report).contains(&code) {
            self.fail(format!(
                "{pid} has {code}, which is not so: {}",
                trim(report)
            ));
        }
    }

    fn shutdown_verdict(&mut self, pid: u32, expected: &str) {
        let report = self.outcome.shutdown(pid);
        if report["verdict"] != expected {
            self.fail(format!(
                "shutdown of {pid}: verdict {} where {expected}: {}",
                report["verdict"],
                trim(report)
            ));
        }
    }
}

/// The ground truth, then the checks every scenario makes; returns the checks for the
/// scenario's own, to be finished by the test.
fn check(outcome: &Outcome, truth: Truth) -> Checks<'_> {
    // Ground truth.
    let status = outcome.stopped.status;
    match truth.status {
        Status::Code(code) => assert_eq!(status.code(), Some(code), "{}", outcome.describe()),
        Status::Signal(sig) => assert_eq!(status.signal(), Some(sig), "{}", outcome.describe()),
    }
    assert_eq!(
        outcome.stopped.sigkilled,
        matches!(truth.status, Status::Signal(libc::SIGKILL)),
        "SIGKILL after the grace period: {}",
        outcome.describe()
    );
    for (kind, local, seen) in &outcome.clients {
        let expected = match kind.as_str() {
            "in flight" | "download" if truth.in_flight_lost => seen.lost(),
            "in flight" | "download" => matches!(seen, Seen::Answered(_)),
            "idle" => *seen == Seen::IdleClosed,
            "refused" => *seen == Seen::Refused,
            "backlog" => seen.lost(),
            _ => false,
        };
        assert!(
            expected,
            "client {kind} {local} saw {seen:?}:\n{}",
            outcome.describe()
        );
    }
    assert_eq!(outcome.events.lost(), 0, "observer lost events");
    let mut checks = Checks {
        outcome,
        failures: Vec::new(),
    };
    // Always true today: exit events match waitpid.
    assert_exit_matches_waitpid(outcome);
    assert_workers_exits_match_their_logs(outcome);

    // The server's verdict: the worst of its processes' shutdowns (killed > dropped >
    // clean). The deploy's: killed if SIGKILL ended a process, else dropped if any client
    // lost its request or was refused (traffic still routed to it), else clean.
    let rank = |v: &str| ["clean", "dropped", "killed"].iter().position(|x| *x == v);
    let worst = outcome
        .shutdowns()
        .into_iter()
        .max_by_key(|r| rank(r["verdict"].as_str().unwrap_or("")));
    match worst {
        Some(report) if report["verdict"] == truth.verdict => {}
        Some(report) => checks.fail(format!(
            "the server's verdict is {} where {}: {}",
            report["verdict"],
            truth.verdict,
            trim(report)
        )),
        None => checks.fail("no shutdown report".into()),
    }
    let deploy_verdict = match truth.verdict {
        "clean" if outcome.lost_clients() > 0 => "dropped",
        verdict => verdict,
    };
    let deploys = outcome.deploys();
    let master_deploy = deploys.iter().find(|d| {
        d["stopped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| *p == outcome.master)
    });
    match master_deploy {
        Some(deploy) if deploy["verdict"] == deploy_verdict => {}
        Some(deploy) => checks.fail(format!(
            "deploy verdict {} where {deploy_verdict}: {}",
            deploy["verdict"],
            trim(deploy)
        )),
        None => checks.fail("no deploy stopped the main process".into()),
    }
    // Master and workers: one service, one deploy holding every process reported on.
    if deploys.len() != 1 {
        checks.fail(format!(
            "one server, {} deploys: {}",
            deploys.len(),
            deploys
                .iter()
                .map(|d| trim(d))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    } else {
        let stopped = &deploys[0]["stopped"];
        for report in outcome.shutdowns() {
            if !stopped.as_array().unwrap().contains(&report["pid"]) {
                checks.fail(format!(
                    "{} reported on, not in the deploy {}",
                    report["pid"],
                    trim(deploys[0])
                ));
            }
        }
    }
    // Each client that lost its request or was refused counts once; idle ones not.
    let dropped: u64 = deploys
        .iter()
        .map(|d| d["dropped_connections"].as_u64().unwrap())
        .sum();
    if dropped as usize != outcome.lost_clients() {
        checks.fail(format!(
            "dropped_connections {dropped} where {} clients were cut, reset or refused \
             (and {} were idle): {}",
            outcome.lost_clients(),
            outcome.seen("idle").len(),
            deploys
                .iter()
                .map(|d| trim(d))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    for report in outcome.shutdowns() {
        // 128+N right after signal N is a convention, not a failure.
        let conventional = report["exit"]["code"].as_u64().is_some_and(|code| {
            report["sigterm"]["sig_name"]
                .as_str()
                .and_then(signal_number)
                .is_some_and(|n| code == 128 + n)
        });
        if conventional && finding_codes(report).contains(&"EXIT_NONZERO_AFTER_SIGTERM") {
            checks.fail(format!(
                "EXIT_NONZERO_AFTER_SIGTERM for status 128+N after signal N: {}",
                trim(report)
            ));
        }
        // Connections accepted on the server's port are inbound.
        let local = format!("127.0.0.1:{}", outcome.port);
        let mapped = format!("[::ffff:127.0.0.1]:{}", outcome.port);
        for connection in report["open_at_exit"].as_array().unwrap() {
            if (connection["local"] == local.as_str() || connection["local"] == mapped.as_str())
                && connection["role"] == "outbound"
            {
                checks.fail(format!(
                    "{} held a connection accepted on the server's port, reported outbound: {connection}",
                    report["pid"]
                ));
            }
        }
    }
    // A listener that a SIGKILLed process held is closed by its exit (tcp_close_at_exit),
    // not by the program (tcp_listen close).
    for pid in outcome.pids() {
        let killed_at = outcome
            .events
            .signals_to(pid)
            .iter()
            .filter(|s| s["sig"] == libc::SIGKILL)
            .filter_map(|s| s["mono_ns"].as_u64())
            .min();
        if let Some(killed_at) = killed_at {
            for close in outcome.events.of_type("tcp_listen").filter(|e| {
                e["pid"] == pid
                    && e["action"] == "close"
                    && e["mono_ns"].as_u64().unwrap() > killed_at
            }) {
                checks.fail(format!(
                    "{pid} was SIGKILLed, yet its listener is reported closed by the program \
                     after that: {}",
                    trim(close)
                ));
            }
        }
    }
    checks
}

/// observer's exit event of the main process equals waitpid's status.
fn assert_exit_matches_waitpid(outcome: &Outcome) {
    let exit = outcome.events.exit_of(outcome.master);
    let status = outcome.stopped.status;
    assert_eq!(
        (&exit["code"], &exit["signal"]),
        (&json!(status.code()), &json!(status.signal())),
        "exit event of {} vs waitpid {status:?}: {exit}",
        outcome.master
    );
    let report = outcome.shutdown(outcome.master);
    assert_eq!(
        (&report["exit"]["code"], &report["exit"]["signal"]),
        (&json!(status.code()), &json!(status.signal())),
        "{report}"
    );
}

/// Workers' exits as their master logged them (nginx: "worker process N exited with code
/// C"; gunicorn: "Worker (pid:N) was sent SIGKILL!", or SIGTERM), and one exit event per
/// worker.
fn assert_workers_exits_match_their_logs(outcome: &Outcome) {
    for &pid in &outcome.workers {
        let exit = outcome.events.exit_of(pid);
        let nginx = format!("worker process {pid} exited with code ");
        if let Some(code) = outcome.log.lines().find_map(|l| {
            l.split_once(&nginx)
                .and_then(|(_, c)| c.trim().parse::<i32>().ok())
        }) {
            assert_eq!(exit["code"], code, "{exit}");
        }
        let gunicorn = format!("Worker (pid:{pid}) was sent ");
        if let Some(sig) = outcome.log.lines().find_map(|l| {
            l.split_once(&gunicorn)
                .and_then(|(_, name)| signal_number(name.trim_end_matches('!')))
        }) {
            assert_eq!(exit["signal"], sig, "{exit}");
        }
    }
}

fn signal_number(name: &str) -> Option<u64> {
    Some(match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGKILL" => 9,
        "SIGTERM" => 15,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// nginx: a pre-fork master with 2 workers. `nginx -s quit` (SIGQUIT) is its graceful
// stop, SIGTERM its fast stop.

#[test]
fn nginx_quit_drains_a_download_and_closes_idle_connections() {
    let outcome = scenario(
        "nginx_quit_drains_a_download_and_closes_idle_connections",
        nginx(2),
        "nginx -s quit (SIGQUIT), grace 10 s",
        |s| Ask::Command(nginx_signal(s, "quit")),
        GRACE,
        |s| clients(s, 2, &["/slow2"], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

#[test]
fn nginx_sigterm_fast_stop_cuts_a_download() {
    let outcome = scenario(
        "nginx_sigterm_fast_stop_cuts_a_download",
        nginx(2),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &[], &["/big"]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    checks.finish();
}

/// A fast stop as a reverse proxy: the worker is told over nginx's channel and exits 0
/// by itself at once, the proxied request it had read still waiting for its upstream.
/// From the server's side that is the same as a client's goodbye a session's process
/// exits on (PostgreSQL's Terminate), which is why observer counts both as cut
/// (docs/verdicts.md names the limit).
#[test]
fn nginx_sigterm_fast_stop_cuts_a_proxied_request() {
    // The worker exits untold: its connections count in the master's report.
    sigterm_cuts_a_proxied_request(
        "nginx_sigterm_fast_stop_cuts_a_proxied_request",
        |upstream| nginx_proxying(1, Some(upstream)),
        "/app/slow",
        |outcome| outcome.master,
    );
}

#[test]
fn nginx_quit_then_sigkill_after_the_grace_period() {
    nginx_quit_until_sigkill(
        "nginx_quit_then_sigkill_after_the_grace_period",
        "nginx -s quit (SIGQUIT), grace 1.5 s, SIGKILL to the group",
        |s| Ask::Command(nginx_signal(s, "quit")),
    );
}

/// systemd's default stop (`KillMode=control-group`): SIGQUIT to the master and both
/// workers at once. The workers close their copies of the listener at once (before
/// observer reads /proc), one drains a download past the grace period; the master keeps
/// the listener and waits for them. Before: HANDLER_NEVER_RAN for the master, whose
/// listener looked like its own, and the idle worker, gone before its master's signal,
/// outside the deploy.
#[test]
fn nginx_group_sigquit_waits_for_a_download_until_sigkill() {
    nginx_quit_until_sigkill(
        "nginx_group_sigquit_waits_for_a_download_until_sigkill",
        "SIGQUIT to the whole group (systemd KillMode=control-group), grace 1.5 s, SIGKILL",
        |_| Ask::Group(libc::SIGQUIT),
    );
}

/// nginx's graceful stop, asked for by `ask`, with a download that outlasts the grace
/// period and an idle client: SIGKILL ends it, and the master's handler is known to
/// have run.
fn nginx_quit_until_sigkill(name: &str, how: &str, ask: impl FnOnce(&Server) -> Ask) {
    let outcome = scenario(
        name,
        nginx(2),
        how,
        ask,
        SHORT_GRACE,
        |s| clients(s, 1, &[], &["/big"]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    // The master's handler ran: it logged the signal, and its workers stopped (told over
    // its channel, or by a signal of their own; one closed its listener and exited 0 at
    // once).
    assert!(
        outcome.log.contains("(SIGQUIT) received"),
        "{}",
        outcome.log
    );
    checks.lacks_finding(outcome.master, "HANDLER_NEVER_RAN");
    checks.lacks_finding(outcome.master, "SIGNAL_NOT_FORWARDED");
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// redis-server: one process, one thread serving.

#[test]
fn redis_sigterm_with_idle_clients() {
    let outcome = scenario(
        "redis_sigterm_with_idle_clients",
        redis(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 3, &[], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

#[test]
fn redis_sigterm_while_a_command_runs() {
    let outcome = scenario(
        "redis_sigterm_while_a_command_runs",
        redis(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &[&busy_script(2)], &[]),
        3,
    );
    // redis 7.0 waits for the running script, then exits without sending its reply.
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    checks.finish();
}

#[test]
fn redis_busy_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "redis_busy_then_sigkill_after_the_grace_period",
        redis(),
        "SIGTERM, grace 1.5 s, SIGKILL to the group",
        term,
        SHORT_GRACE,
        |s| clients(s, 1, &[&busy_script(10)], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    // Its handler only scheduled the shutdown, which the busy script never let start:
    // as for a blocked event loop.
    assert!(outcome.log.contains("Received SIGTERM"), "{}", outcome.log);
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: the postmaster forks a backend per session (each in a session of its own,
// so a signal to the postmaster's group reaches no backend) besides its background
// processes. SIGTERM asks for a smart shutdown: no new sessions, and wait for the open
// ones to end; idle pooled sessions hold it up until the platform's SIGKILL (the
// official image stops it with SIGINT, a fast shutdown, for this reason). Backends see
// the postmaster die, tell their clients (FATAL) and exit.

#[test]
fn postgres_smart_shutdown_waits_for_idle_sessions_until_sigkill() {
    let outcome = scenario(
        "postgres_smart_shutdown_waits_for_idle_sessions_until_sigkill",
        postgres(),
        "SIGTERM (smart shutdown), grace 4 s, SIGKILL to the group",
        term,
        Duration::from_secs(4),
        |s| clients(s, 2, &["SELECT pg_sleep(2)"], &[]),
        3,
    );
    assert!(
        outcome.log.contains("received smart shutdown request"),
        "{}",
        outcome.log
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: false,
            verdict: "killed",
        },
    );
    checks.has_finding(outcome.master, "SIGKILL_AFTER_GRACE");
    // The query in flight was answered; the idle sessions were what it waited for.
    checks.lacks_finding(outcome.master, "CONNECTIONS_OPEN_AT_EXIT");
    checks.has_finding(outcome.master, "KEEPALIVE_OPEN_AT_EXIT");
    // Two idle sessions were left open; the answered client had closed its own, and
    // its backend exited on that.
    let idle = &outcome.shutdown(outcome.master)["idle_at_exit"];
    if *idle != 2 {
        checks.fail(format!("idle_at_exit {idle} where 2 sessions were idle"));
    }
    // Its handler ran: it stopped taking sessions and waited.
    checks.lacks_finding(outcome.master, "HANDLER_NEVER_RAN");
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// HAProxy: SIGTERM is its hard stop (the official image stops it with SIGUSR1, a soft
// stop, for this reason); the master passes it to the worker, which dies of it.

#[test]
fn haproxy_sigterm_hard_stop_cuts_a_proxied_request() {
    // The worker, SIGTERMed by the master, has a report of its own.
    sigterm_cuts_a_proxied_request(
        "haproxy_sigterm_hard_stop_cuts_a_proxied_request",
        haproxy,
        "/slow",
        |outcome| outcome.workers[0],
    );
}

/// observer started after HAProxy (a DaemonSet rolled out onto a running host): the
/// master holds no listener, the worker dies before /proc is read, and its listener is
/// seen only as its exit closes it. The client's connection is still inbound (its port
/// is one connect() never picks), and the stop still HAProxy's deploy (`check` asks).
#[test]
fn haproxy_running_before_observer_hard_stop_cuts_a_proxied_request() {
    sigterm_cuts_a_proxied_request(
        "haproxy_running_before_observer_hard_stop_cuts_a_proxied_request",
        |upstream| Spec {
            running_before_observer: true,
            ..haproxy(upstream)
        },
        "/slow",
        |outcome| outcome.workers[0],
    );
}

// ---------------------------------------------------------------------------------------
// Caddy (Go): on SIGTERM it stops its servers gracefully (Go's http.Server.Shutdown):
// closes its listener and idle connections, lets requests in flight finish, exits 0.

#[test]
fn caddy_sigterm_drains_a_proxied_request_and_closes_idle_clients() {
    let upstream = Upstream::start(2);
    let outcome = scenario(
        "caddy_sigterm_drains_a_proxied_request_and_closes_idle_clients",
        caddy(upstream.port),
        "SIGTERM, grace 10 s, upstream answering after 2 s",
        term,
        GRACE,
        |s| clients(s, 2, &["/slow"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.lacks_finding(outcome.master, "CONNECTIONS_CLOSED_IN_FLIGHT");
    checks.lacks_finding(outcome.master, "KEEPALIVE_OPEN_AT_EXIT");
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// Apache httpd (prefork): SIGTERM is its immediate stop (`apachectl stop`; Debian's unit
// sends it to the master right after `apachectl graceful-stop` returns).

/// The child holding a proxied request closes it itself as its SIGTERM handler exits:
/// nothing is open at exit, so only the close in flight shows the cut (the client gets
/// an empty reply); the idle keep-alive client gets a FIN.
#[test]
fn apache_sigterm_closes_a_proxied_request_in_flight() {
    let upstream = Upstream::start(5);
    let outcome = scenario(
        "apache_sigterm_closes_a_proxied_request_in_flight",
        apache(upstream.port),
        "SIGTERM to the master, grace 10 s, upstream answering after 5 s",
        term,
        GRACE,
        |s| clients(s, 1, &["/app/slow"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    assert!(
        outcome.log.contains("caught SIGTERM, shutting down"),
        "{}",
        outcome.log
    );
    let cutting: Vec<u32> = outcome
        .workers
        .iter()
        .copied()
        .filter(|&pid| {
            finding_codes(outcome.shutdown(pid)).contains(&"CONNECTIONS_CLOSED_IN_FLIGHT")
        })
        .collect();
    if cutting.len() != 1 {
        checks.fail(format!(
            "one child cut the request it held, observer names {cutting:?} of {:?}",
            outcome.workers
        ));
    }
    checks.lacks_finding(outcome.master, "CONNECTIONS_CLOSED_IN_FLIGHT");
    for &pid in &outcome.workers {
        checks.lacks_finding(pid, "NO_SIGTERM_HANDLER");
        checks.lacks_finding(pid, "KEEPALIVE_OPEN_AT_EXIT");
    }
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// gunicorn: a pre-fork master with 2 sync workers; on SIGTERM the master closes its
// listener, SIGTERMs the workers, and SIGKILLs those still running after
// --graceful-timeout.

#[test]
fn gunicorn_sigterm_with_nothing_in_flight() {
    let outcome = scenario(
        "gunicorn_sigterm_with_nothing_in_flight",
        gunicorn(2, 5),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &[], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    for &worker in &outcome.workers {
        checks.shutdown_verdict(worker, "clean");
    }
    checks.finish();
}

#[test]
fn gunicorn_sigterm_drains_a_slow_request() {
    let outcome = scenario(
        "gunicorn_sigterm_drains_a_slow_request",
        gunicorn(2, 5),
        "SIGTERM, grace 10 s (--graceful-timeout 5)",
        term,
        GRACE,
        |s| clients(s, 0, &["/slow?s=2"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    for &worker in &outcome.workers {
        checks.shutdown_verdict(worker, "clean");
    }
    checks.finish();
}

/// systemd's default stop (`KillMode=control-group`): SIGTERM to the master and both
/// workers at once; the master then sends its workers SIGTERM too. The idle worker's
/// handler runs and it exits, and the master's SIGTERM finds Python's default handler
/// restored as it finalises: it dies of SIGTERM (the master logs "was sent SIGTERM!").
/// Nothing was cut; the busy worker answers its request. Before: `dropped` and
/// NO_SIGTERM_HANDLER for the idle worker, and a `dropped` deploy.
#[test]
fn gunicorn_group_sigterm_drains_a_slow_request() {
    let outcome = scenario(
        "gunicorn_group_sigterm_drains_a_slow_request",
        gunicorn(2, 5),
        "SIGTERM to the whole group (systemd KillMode=control-group), grace 10 s",
        |_| Ask::Group(libc::SIGTERM),
        GRACE,
        |s| clients(s, 0, &["/slow?s=2"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    // The workers the master reaped dead of SIGTERM, by its own log (its waitpid()).
    let killed_by_repeat: Vec<u32> = outcome
        .workers
        .iter()
        .copied()
        .filter(|pid| {
            outcome
                .log
                .contains(&format!("Worker (pid:{pid}) was sent SIGTERM!"))
        })
        .collect();
    assert!(
        !killed_by_repeat.is_empty(),
        "no worker died of the second SIGTERM; the scenario tests nothing:\n{}",
        outcome.log
    );
    for &worker in &outcome.workers {
        checks.shutdown_verdict(worker, "clean");
        checks.lacks_finding(worker, "NO_SIGTERM_HANDLER");
        if killed_by_repeat.contains(&worker) {
            checks.has_finding(worker, "KILLED_BY_REPEATED_SIGNAL");
        } else {
            checks.lacks_finding(worker, "KILLED_BY_REPEATED_SIGNAL");
        }
    }
    checks.finish();
}

#[test]
fn gunicorn_sigkills_a_worker_busy_past_its_graceful_timeout() {
    let outcome = scenario(
        "gunicorn_sigkills_a_worker_busy_past_its_graceful_timeout",
        gunicorn(2, 1),
        "SIGTERM, grace 10 s (--graceful-timeout 1)",
        term,
        GRACE,
        |s| clients(s, 0, &["/slow?s=4"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    // The busy worker is the one that logged the slow request (gunicorn also logs
    // "Worker (pid:N) was sent SIGKILL!" when it reaps it before exiting, not always).
    let busy = outcome
        .workers
        .iter()
        .copied()
        .find(|pid| outcome.log.contains(&format!("[{pid}] [DEBUG] GET /slow")))
        .unwrap_or_else(|| panic!("no worker took the slow request:\n{}", outcome.log));
    assert!(
        !outcome
            .log
            .contains(&format!("Worker exiting (pid: {busy})")),
        "the busy worker exited on its own:\n{}",
        outcome.log
    );
    checks.shutdown_verdict(busy, "killed");
    checks.has_finding(busy, "SIGKILL_AFTER_GRACE");
    let report = outcome.shutdown(busy);
    assert_eq!(report["sigkill"]["from"]["pid"], outcome.master, "{report}");
    checks.finish();
}

#[test]
fn gunicorn_sigterm_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "gunicorn_sigterm_then_sigkill_after_the_grace_period",
        gunicorn(2, 30),
        "SIGTERM, grace 1.5 s, SIGKILL to the group (--graceful-timeout 30)",
        term,
        SHORT_GRACE,
        |s| clients(s, 0, &["/slow?s=10"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    assert!(
        outcome.log.contains("Handling signal: term"),
        "{}",
        outcome.log
    );
    for &worker in &outcome.workers {
        let from_master = outcome
            .events
            .signals_to(worker)
            .iter()
            .any(|s| s["sig"] == libc::SIGTERM && s["sender"]["pid"] == outcome.master);
        assert!(from_master, "the master SIGTERMs its workers");
    }
    checks.shutdown_verdict(outcome.master, "killed");
    checks.lacks_finding(outcome.master, "HANDLER_NEVER_RAN");
    checks.finish();
}

#[test]
fn gunicorn_sigterm_resets_connections_left_in_its_backlog() {
    let outcome = scenario(
        "gunicorn_sigterm_resets_connections_left_in_its_backlog",
        gunicorn(2, 5),
        "SIGTERM, grace 10 s (--graceful-timeout 5)",
        term,
        GRACE,
        |s| {
            // Both sync workers busy; two more clients wait in the listener's backlog,
            // which no worker accepts once told to stop.
            let busy: Vec<InFlight> = (0..2)
                .map(|_| InFlight::start(s.port, Protocol::Http, &http_request("/slow?s=3")))
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let waiting: Vec<InFlight> = (0..2)
                .map(|_| InFlight::start(s.port, Protocol::Http, &http_request("/")))
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            Box::new(move || {
                let mut seen = Vec::new();
                for client in busy {
                    let (local, s) = client.seen();
                    seen.push(("in flight".to_string(), local, s));
                }
                for client in waiting {
                    let (local, s) = client.seen();
                    seen.push(("backlog".to_string(), local, s));
                }
                seen
            })
        },
        3,
    );
    for seen in outcome.seen("backlog") {
        assert!(
            matches!(seen, Seen::Reset { bytes: 0 }),
            "a client left in the backlog: {seen:?}\n{}",
            outcome.describe()
        );
    }
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "dropped",
        },
    );
    let resets: u64 = outcome
        .shutdowns()
        .iter()
        .map(|r| r["resets_sent"].as_u64().unwrap())
        .sum();
    let mut checks = checks;
    if resets != 2 {
        checks.fail(format!(
            "resets_sent {resets} over the server's reports where 2 clients in the backlog \
             were reset"
        ));
    }
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// uvicorn: asyncio; on SIGTERM it closes the listener and idle connections, waits for
// the requests in flight, then re-raises the captured SIGTERM on itself.

#[test]
fn uvicorn_sigterm_with_idle_clients() {
    let outcome = scenario(
        "uvicorn_sigterm_with_idle_clients",
        uvicorn(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &[], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGTERM),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

#[test]
fn uvicorn_sigterm_drains_a_slow_request() {
    let outcome = scenario(
        "uvicorn_sigterm_drains_a_slow_request",
        uvicorn(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &["/slow?s=2"], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGTERM),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

#[test]
fn uvicorn_sigterm_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "uvicorn_sigterm_then_sigkill_after_the_grace_period",
        uvicorn(),
        "SIGTERM, grace 1.5 s, SIGKILL to the group",
        term,
        SHORT_GRACE,
        |s| clients(s, 0, &["/slow?s=10"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    checks.has_finding(outcome.master, "SIGKILL_AFTER_GRACE");
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// Node.js: express without and with a handler of its own, the http-server package, and
// a `cluster` pre-fork server.

#[test]
fn express_without_a_handler_cuts_a_slow_request() {
    let outcome = scenario(
        "express_without_a_handler_cuts_a_slow_request",
        express("none"),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &["/slow?s=2"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGTERM),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    checks.has_finding(outcome.master, "NO_SIGTERM_HANDLER");
    checks.finish();
}

#[test]
fn express_with_a_handler_drains_a_slow_request() {
    let outcome = scenario(
        "express_with_a_handler_drains_a_slow_request",
        express("graceful"),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &["/slow?s=2"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.lacks_finding(outcome.master, "NO_SIGTERM_HANDLER");
    checks.finish();
}

#[test]
fn express_with_a_handler_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "express_with_a_handler_then_sigkill_after_the_grace_period",
        express("graceful"),
        "SIGTERM, grace 1.5 s, SIGKILL to the group",
        term,
        SHORT_GRACE,
        |s| clients(s, 0, &["/slow?s=10"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    checks.has_finding(outcome.master, "SIGKILL_AFTER_GRACE");
    checks.finish();
}

#[test]
fn http_server_exits_at_once_with_idle_clients() {
    let outcome = scenario(
        "http_server_exits_at_once_with_idle_clients",
        http_server(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &[], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.has_finding(outcome.master, "LISTENER_NOT_CLOSED");
    checks.finish();
}

#[test]
fn http_server_exits_at_once_and_cuts_a_download() {
    let outcome = scenario(
        "http_server_exits_at_once_and_cuts_a_download",
        http_server(),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &[], &["/big"]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    checks.finish();
}

#[test]
fn node_cluster_sigterm_drains_its_workers() {
    let outcome = scenario(
        "node_cluster_sigterm_drains_its_workers",
        node_cluster(2),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 2, &["/slow?s=2"], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(0),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

#[test]
fn node_cluster_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "node_cluster_then_sigkill_after_the_grace_period",
        node_cluster(2),
        "SIGTERM, grace 1.5 s, SIGKILL to the group",
        term,
        SHORT_GRACE,
        |s| clients(s, 1, &["/slow?s=10"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    checks.lacks_finding(outcome.master, "SIGNAL_NOT_FORWARDED");
    checks.finish();
}

// ---------------------------------------------------------------------------------------
// A JVM: com.sun.net.httpserver; its shutdown hook stops the server (waiting for the
// exchanges in flight) and the JVM exits with status 143.

#[test]
fn jvm_shutdown_hook_drains_a_slow_request() {
    let outcome = scenario(
        "jvm_shutdown_hook_drains_a_slow_request",
        jvm(5),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &["/slow?s=2"], &[]),
        3,
    );
    let checks = check(
        &outcome,
        Truth {
            status: Status::Code(128 + libc::SIGTERM),
            in_flight_lost: false,
            verdict: "clean",
        },
    );
    checks.finish();
}

/// The JDK's HttpServer.stop(1) in the shutdown hook waits 1 s for the exchange in flight,
/// then closes every connection itself: the JVM cuts the request before it exits, so
/// nothing is open at exit, and only the close the hook made shows the loss.
#[test]
fn jvm_shutdown_hook_closes_a_slow_request_after_its_stop_delay() {
    let outcome = scenario(
        "jvm_shutdown_hook_closes_a_slow_request_after_its_stop_delay",
        jvm(1),
        "SIGTERM, grace 10 s",
        term,
        GRACE,
        |s| clients(s, 1, &["/slow?s=5"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Code(128 + libc::SIGTERM),
            in_flight_lost: true,
            verdict: "dropped",
        },
    );
    checks.has_finding(outcome.master, "CONNECTIONS_CLOSED_IN_FLIGHT");
    checks.lacks_finding(outcome.master, "CONNECTIONS_OPEN_AT_EXIT");
    checks.finish();
}

#[test]
fn jvm_shutdown_hook_then_sigkill_after_the_grace_period() {
    let outcome = scenario(
        "jvm_shutdown_hook_then_sigkill_after_the_grace_period",
        jvm(30),
        "SIGTERM, grace 1.5 s, SIGKILL to the group",
        term,
        SHORT_GRACE,
        |s| clients(s, 0, &["/slow?s=10"], &[]),
        3,
    );
    let mut checks = check(
        &outcome,
        Truth {
            status: Status::Signal(libc::SIGKILL),
            in_flight_lost: true,
            verdict: "killed",
        },
    );
    checks.has_finding(outcome.master, "SIGKILL_AFTER_GRACE");
    checks.finish();
}
