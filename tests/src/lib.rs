//! Harness for the privileged tests: runs the real `observer` binary (path in
//! `OBSERVER_BIN`, set by `cargo xtask test`) against real processes, and checks every
//! line it writes against docs/events-v1.schema.json.
//!
//! Files of the checkout (the schema, tests/servers) are found through [`tests_dir`]:
//! `OBSERVER_TESTS_DIR` when set (the VM suites run from a copy at a fixed path in an
//! initramfs), else where this package was compiled.
//!
//! These tests must run as root with the programs loadable; anything else is a failure,
//! never a skip. With `OBSERVER_KEEP_OUTPUT` set, observer's output files stay in the
//! temporary directory, to look at after a failure.
use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod attachments;
pub mod docker;
pub mod sockets;
pub mod testee;
pub mod upstream;

/// Longest any step may take before the test fails (generous: CI machines are slow).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// This package's directory (`tests/` of the checkout): `OBSERVER_TESTS_DIR`, or else
/// where it was compiled.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("OBSERVER_TESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn observer_binary() -> PathBuf {
    let path = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| tests_dir().join("../target/debug/observer"));
    assert!(
        path.is_file(),
        "observer binary {} not found: run the suite with `cargo xtask test`",
        path.display()
    );
    assert!(
        // SAFETY: no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the privileged tests load eBPF programs and must run as root"
    );
    path
}

/// A running `observer watch --json --output FILE`.
pub struct Observer {
    child: Child,
    output: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Observer {
    /// Starts observer with `args` (after `watch --json --output …`) and waits until its
    /// programs are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(&[], &[&["--json"], args].concat(), env)
    }

    /// Starts `WRAPPER… observer watch --json …` (e.g. setpriv dropping capabilities;
    /// the wrapper must exec observer, so that its pid is observer's).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        Self::spawn(wrapper, &[&["--json"], args].concat(), &[])
    }

    /// Starts observer in its human format (`watch --output FILE ARGS…`).
    pub fn start_human(args: &[&str]) -> Self {
        Self::spawn(&[], args, &[])
    }

    fn spawn(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let output = temp_path("events.out");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(observer_binary());
                command
            }
            None => Command::new(observer_binary()),
        };
        let mut child = command
            .args(["watch", "--output"])
            .arg(&output)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning observer");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let observer = Self {
            child,
            output,
            stderr,
        };
        observer.wait_until_watching();
        observer
    }

    fn wait_until_watching(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if self.stderr().contains("observer: watching") {
                return;
            }
            if let Ok(Some(status)) = unsafe_try_wait(self.child.id()) {
                panic!(
                    "observer exited ({status}) before attaching its programs:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "observer did not attach within {TIMEOUT:?}:\n{}",
            self.stderr()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it writes (`--output`).
    pub fn output_path(&self) -> &std::path::Path {
        &self.output
    }

    /// Waits until observer has written a line for which `wanted` holds (for facts read
    /// from /proc, which must be read while the process still lives, however slow the
    /// machine).
    pub fn wait_for_line(&self, wanted: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.output).unwrap_or_default();
            if text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .any(|line| wanted(&line))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "observer wrote no such line within {TIMEOUT:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `sig` to observer, waits for it to exit 0, and returns every line it wrote,
    /// each checked against the schema.
    pub fn stop_with(self, sig: i32) -> Events {
        let (text, stderr) = self.stop_raw(sig);
        Events::parse(&text, stderr)
    }

    /// Sends `sig`, waits for it to exit 0 and returns its output and stderr as text.
    pub fn stop_raw(mut self, sig: i32) -> (String, String) {
        send_signal(self.child.id(), sig);
        let status = wait_timeout(&mut self.child);
        // Give the stderr reader a moment to collect the last lines.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            status.success(),
            "observer exited with {status} after signal {sig}:\n{}",
            self.stderr()
        );
        let mut text = String::new();
        std::fs::File::open(&self.output)
            .and_then(|mut file| file.read_to_string(&mut text))
            .expect("reading observer's output");
        if std::env::var_os("OBSERVER_KEEP_OUTPUT").is_none() {
            let _ = std::fs::remove_file(&self.output);
        }
        (text, self.stderr())
    }

    /// Waits for observer to exit on its own (e.g. `--duration`), then returns like
    /// [`Observer::stop_raw`].
    pub fn wait_raw(mut self) -> (ExitStatus, String, String) {
        let status = wait_timeout(&mut self.child);
        std::thread::sleep(Duration::from_millis(50));
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let _ = std::fs::remove_file(&self.output);
        (status, text, self.stderr())
    }

    pub fn stop(self) -> Events {
        self.stop_with(libc::SIGINT)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_try_wait(pid: u32) -> std::io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: WNOHANG waitpid on our own child.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(Some(status)),
    }
}

/// Every line observer wrote.
pub struct Events {
    pub lines: Vec<Value>,
    /// The output as written.
    pub text: String,
    pub stderr: String,
}

impl Events {
    pub fn parse(text: &str, stderr: String) -> Self {
        let validator = schema();
        let lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", index + 1));
                if let Err(error) = validator.validate(&value) {
                    panic!("line {} breaks the schema: {error}\n{line}", index + 1);
                }
                value
            })
            .collect();
        Self {
            lines,
            text: text.to_string(),
            stderr,
        }
    }

    /// `observer report ARGS` on this output prints exactly the report lines written
    /// live (ARGS: the report timing flags `watch` was given).
    pub fn assert_replay_is_identical(&self, args: &[&str]) {
        let log = temp_path("replay.ndjson");
        std::fs::write(&log, &self.text).unwrap();
        let output = Command::new(observer_binary())
            .args(["report", "--json"])
            .args(args)
            .arg(&log)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&log);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "observer report failed: {stderr}");
        let replayed = String::from_utf8(output.stdout).unwrap();
        let live: Vec<&str> = self
            .text
            .lines()
            .filter(|l| l.contains(r#""type":"shutdown""#) || l.contains(r#""type":"deploy""#))
            .collect();
        assert!(
            !live.is_empty(),
            "no reports were written live:\n{}",
            self.dump()
        );
        assert_eq!(replayed.lines().collect::<Vec<_>>(), live, "replay differs");
    }

    /// The one shutdown report of `pid`.
    pub fn shutdown_of(&self, pid: u32) -> &Value {
        let reports: Vec<_> = self
            .of_type("shutdown")
            .filter(|r| r["pid"] == pid)
            .collect();
        assert_eq!(
            reports.len(),
            1,
            "shutdowns of {pid}: {reports:#?}\n{}",
            self.dump()
        );
        reports[0]
    }

    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.lines.iter().filter(move |line| line["type"] == kind)
    }

    pub fn exits_of(&self, pid: u32) -> Vec<&Value> {
        self.of_type("exit").filter(|e| e["pid"] == pid).collect()
    }

    /// The one exit of `pid`; fails if there is not exactly one.
    pub fn exit_of(&self, pid: u32) -> &Value {
        let exits = self.exits_of(pid);
        assert_eq!(
            exits.len(),
            1,
            "exits of {pid}: {exits:#?}\n{}",
            self.dump()
        );
        exits[0]
    }

    pub fn signals_to(&self, pid: u32) -> Vec<&Value> {
        self.of_type("signal")
            .filter(|e| e["target"]["pid"] == pid)
            .collect()
    }

    /// Exactly one signal event to `pid`, with the given number.
    pub fn the_signal(&self, pid: u32, sig: i32) -> &Value {
        let signals: Vec<_> = self
            .signals_to(pid)
            .into_iter()
            .filter(|s| s["sig"] == sig)
            .collect();
        assert_eq!(
            signals.len(),
            1,
            "signals {sig} to {pid}: {signals:#?}\n{}",
            self.dump()
        );
        signals[0]
    }

    pub fn deliveries_to(&self, pid: u32) -> Vec<&Value> {
        self.of_type("signal_delivered")
            .filter(|e| e["target"]["pid"] == pid)
            .collect()
    }

    pub fn lost(&self) -> u64 {
        self.of_type("lost")
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    }

    /// For failure messages.
    pub fn dump(&self) -> String {
        let shown: Vec<String> = self.lines.iter().take(200).map(Value::to_string).collect();
        format!(
            "{} lines; first 200:\n{}\nstderr:\n{}",
            self.lines.len(),
            shown.join("\n"),
            self.stderr
        )
    }
}

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = tests_dir().join("../docs/events-v1.schema.json");
        let text = std::fs::read_to_string(&path).expect("reading the schema");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        jsonschema::validator_for(&schema).expect("the schema compiles")
    })
}

/// A cgroup v2 group named like a systemd unit, removed on drop.
pub struct UnitCgroup {
    path: PathBuf,
}

impl UnitCgroup {
    pub fn new(unit: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|line| {
                let (fields, fs) = line.split_once(" - ")?;
                (fs.split_whitespace().next()? == "cgroup2")
                    .then(|| fields.split_whitespace().nth(4).unwrap().to_string())
            })
            .expect("cgroup2 is mounted");
        let path = PathBuf::from(mount).join(unit);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// Starts `command` inside the group.
    pub fn spawn(&self, command: &mut Command) -> Child {
        use std::os::unix::process::CommandExt;
        let procs = self.path.join("cgroup.procs");
        // SAFETY: only open/write/close between fork and exec (via std::fs, which makes
        // no allocation-sensitive calls that matter in this single-threaded test child).
        unsafe {
            command.pre_exec(move || std::fs::write(&procs, "0"));
        }
        command.spawn().unwrap()
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        // The group, then the (now empty) parents it may have needed; stops at the first
        // that is not empty or not ours to remove.
        let mut dir = Some(self.path.as_path());
        while let Some(path) = dir {
            if std::fs::remove_dir(path).is_err() {
                break;
            }
            dir = path.parent();
        }
    }
}

/// tests/servers/storm.py's "PID STATUS" lines: every child it reaped, with the status
/// waitpid() returned.
pub fn storm_reaped(stdout: &str) -> std::collections::HashMap<u32, i32> {
    stdout
        .lines()
        .filter_map(|line| {
            let (pid, status) = line.split_once(' ')?;
            Some((pid.parse().ok()?, status.parse().ok()?))
        })
        .collect()
}

/// The finding codes of a shutdown or deploy report, in order.
pub fn finding_codes(report: &Value) -> Vec<&str> {
    report["findings"]
        .as_array()
        .expect("findings is an array")
        .iter()
        .map(|f| f["code"].as_str().expect("a code is a string"))
        .collect()
}

/// The test servers shipped with the tests (tests/servers).
pub fn servers_dir() -> PathBuf {
    tests_dir().join("servers")
}

pub fn temp_path(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("observer-test-{}-{n}-{name}", std::process::id()))
}

pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with plain integers.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for a child, failing the test after [`TIMEOUT`].
pub fn wait_timeout(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {TIMEOUT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one line from a child's stdout (e.g. its "ready" line).
pub fn read_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().expect("stdout piped");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("reading child stdout") == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether this kernel's tcp:tcp_send_reset has its `reason` field (6.10 and later).
/// Older kernels also trace no RST sent without a socket; observer reports less there
/// (see `observer check`), and the tests expect exactly that.
pub fn kernel_traces_rst_reasons() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/tcp/tcp_send_reset/format")).ok()
        })
        .expect("tcp:tcp_send_reset's format file (tracefs is mounted by observer)")
        .contains(" reason;")
}

/// The RST reason to expect in events: `name`, or null where the kernel has none.
pub fn expected_rst_reason(name: &str) -> Value {
    if kernel_traces_rst_reasons() {
        Value::from(name)
    } else {
        Value::Null
    }
}

/// This process's comm, as the kernel reports a sender.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string()
}
