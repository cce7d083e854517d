//! Shutdown reports for real programs stopped by a real supervisor (SIGTERM, a grace
//! period, SIGKILL), one per way a shutdown goes wrong, and a clean one. Each scenario
//! also checks that `observer report` replays the log into the same report lines.
use std::{
    io::Write,
    net::{Shutdown, TcpStream},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Observer, TIMEOUT, UnitCgroup, finding_codes as codes, read_line, servers_dir,
    testee::testee_path, wait_timeout,
};
use serde_json::{Value, json};

/// A program under the orchestrator, and what the orchestrator said about it.
struct Supervised {
    orchestrator: Child,
    /// The pid it signals.
    pid: u32,
    /// The first word after "ready" (a port, or a namespace init's pid).
    ready: String,
}

impl Supervised {
    fn start(grace: &str, signal_ready_pid: bool, command: &[&str]) -> Self {
        let mut args = vec![
            servers_dir().join("orchestrate.py").display().to_string(),
            grace.to_string(),
        ];
        if signal_ready_pid {
            args.push("--signal-ready-pid".to_string());
        }
        args.push("--".to_string());
        args.extend(command.iter().map(|s| s.to_string()));
        let mut orchestrator = Command::new("python3")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the orchestrator");
        let ready = read_line(&mut orchestrator);
        let ready = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("orchestrated {command:?} said {ready:?}"))
            .to_string();
        let pid_line = read_line(&mut orchestrator);
        let pid = pid_line.strip_prefix("pid ").unwrap().parse().unwrap();
        Self {
            orchestrator,
            pid,
            ready,
        }
    }

    fn port(&self) -> u16 {
        self.ready.parse().unwrap()
    }

    fn expect_line(&mut self, expected: &str) {
        let line = read_line(&mut self.orchestrator);
        assert_eq!(line, expected);
    }

    fn stop(&mut self) {
        let stdin = self.orchestrator.stdin.as_mut().unwrap();
        writeln!(stdin, "stop")
            .and_then(|()| stdin.flush())
            .unwrap();
    }

    /// Reads lines until "reaped RAW"; returns the raw status and the lines before it.
    fn reaped(&mut self) -> (ExitStatus, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let line = read_line(&mut self.orchestrator);
            if let Some(raw) = line.strip_prefix("reaped ") {
                assert!(wait_timeout(&mut self.orchestrator).success());
                return (ExitStatus::from_raw(raw.parse().unwrap()), before);
            }
            assert!(
                !line.is_empty() || before.len() < 1000,
                "orchestrator ended early"
            );
            before.push(line);
        }
    }
}

/// server.py in `mode` under the orchestrator with `grace`.
fn supervise(grace: &str, mode: &str) -> Supervised {
    let args = server(mode);
    Supervised::start(
        grace,
        false,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn server(mode: &str) -> Vec<String> {
    vec![
        "python3".into(),
        servers_dir().join("server.py").display().to_string(),
        mode.into(),
    ]
}

/// Reports due 2 s after exit (and the replay must be told the same).
const OBSERVER_TIMING: &[&str] = &["--after-exit", "2"];

fn start_observer() -> Observer {
    Observer::start(OBSERVER_TIMING)
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server")
}

/// The sender of the report's signals is the orchestrator.
fn assert_from_orchestrator(report: &Value, field: &str, supervised: &Supervised) {
    assert_eq!(
        report[field]["from"]["pid"],
        supervised.orchestrator.id(),
        "{report}"
    );
}

fn assert_exit(report: &Value, status: ExitStatus) {
    let exit = &report["exit"];
    assert_eq!(
        (&exit["code"], &exit["signal"]),
        (&json!(status.code()), &json!(status.signal())),
        "{report}"
    );
}

#[test]
fn no_handler() {
    let observer = start_observer();
    let mut app = supervise("5", "none");
    app.stop();
    let (status, _) = app.reaped();
    let events = observer.stop();

    let report = events.shutdown_of(app.pid);
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_exit(report, status);
    assert_eq!(report["verdict"], "dropped");
    assert_eq!(codes(report), ["NO_SIGTERM_HANDLER", "LISTENER_NOT_CLOSED"]);
    assert_eq!(
        (&report["sigterm"]["handler"], &report["sigkill"]),
        (&json!("default"), &json!(null))
    );
    assert_from_orchestrator(report, "sigterm", &app);
    assert_eq!(report["complete"], true);
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn sigterm_ignored_then_sigkill_after_the_grace_period() {
    let observer = start_observer();
    let mut app = supervise("0.5", "ignore");
    app.stop();
    let (status, _) = app.reaped();
    let events = observer.stop();

    let report = events.shutdown_of(app.pid);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_exit(report, status);
    assert_eq!(report["verdict"], "killed");
    assert_eq!(
        codes(report),
        ["SIGKILL_AFTER_GRACE", "LISTENER_NOT_CLOSED"]
    );
    assert_eq!(report["sigterm"]["result"], "ignored");
    assert_eq!(
        report["sigterm"]["disposition"], "ignore",
        "SIG_IGN, read at generation"
    );
    assert!(
        report["sigkill"]["after_sigterm_ms"].as_u64().unwrap() >= 500,
        "{report}"
    );
    assert_eq!(report["sigkill_first"], true);
    assert_from_orchestrator(report, "sigkill", &app);
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn a_shell_as_pid1_of_a_namespace_swallows_sigterm() {
    let observer = start_observer();
    let testee = testee_path().display().to_string();
    let script = format!(
        "python3 {} none; true",
        servers_dir().join("server.py").display()
    );
    let mut app = Supervised::start("0.5", true, &[&testee, "pidns", "sh", "-c", &script]);
    let init = app.pid;
    // Wait until sh has started the server.
    let deadline = Instant::now() + TIMEOUT;
    let server_pid: u32 = loop {
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "python3" {
                break pid.parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "the server never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    app.stop();
    let (_, lines) = app.reaped();
    let events = observer.stop();

    let raw: i32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("status "))
        .unwrap()
        .parse()
        .unwrap();
    let init_status = ExitStatus::from_raw(raw);
    let report = events.shutdown_of(init);
    assert_eq!(
        (report["comm"].as_str(), init_status.signal()),
        (Some("sh"), Some(libc::SIGKILL))
    );
    assert_exit(report, init_status);
    assert_eq!(
        codes(report),
        [
            "SIGNAL_IGNORED_BY_PID1",
            "SIGNAL_NOT_FORWARDED",
            "SIGKILL_AFTER_GRACE"
        ]
    );
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("tini")
    );
    assert!(
        report["findings"][1]["message"]
            .as_str()
            .unwrap()
            .contains(&server_pid.to_string())
    );
    let server = events.shutdown_of(server_pid);
    // The kernel killed it as its namespace's init exited (zap_pid_ns_processes()):
    // nobody ever told it to stop.
    assert_eq!(codes(server), ["SIGKILL_WITHOUT_SIGTERM"]);
    assert!(
        server["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("init `sh`[{init}]")),
        "{}",
        server["findings"][0]["message"]
    );
    assert_eq!(server["sigkill"]["from"]["pid"], init);
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn a_handler_whose_event_loop_is_blocked_never_runs() {
    let observer = start_observer();
    let script = servers_dir().join("blocked.js").display().to_string();
    let mut app = Supervised::start("1", false, &["node", &script]);
    std::thread::sleep(Duration::from_millis(200)); // let the loop block
    app.stop();
    let (status, _) = app.reaped();
    let events = observer.stop();

    let report = events.shutdown_of(app.pid);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(report["sigterm"]["handler"], "custom", "{report}");
    assert_eq!(
        codes(report),
        [
            "SIGKILL_AFTER_GRACE",
            "HANDLER_NEVER_RAN",
            "LISTENER_NOT_CLOSED"
        ]
    );
    assert_eq!(report["verdict"], "killed");
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn idle_keepalive_connections_left_open_then_the_timeout_fallback() {
    let observer = start_observer();
    let mut app = supervise("5", "keepalive");
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(app.port())).collect();
    app.expect_line("accepted");
    app.expect_line("accepted");
    app.stop();
    let (status, _) = app.reaped();
    let events = observer.stop();

    assert_eq!(status.code(), Some(1));
    let report = events.shutdown_of(app.pid);
    assert_exit(report, status);
    assert_eq!(
        codes(report),
        ["KEEPALIVE_OPEN_AT_EXIT", "EXIT_NONZERO_AFTER_SIGTERM"]
    );
    assert_eq!(report["verdict"], "dropped");
    assert!(
        report["listener_closed_ms"].as_u64().unwrap() < 1000,
        "{report}"
    );
    let mut open: Vec<&str> = report["open_at_exit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(
                (&c["role"], &c["state"]),
                (&json!("inbound"), &json!("ESTABLISHED"))
            );
            c["remote"].as_str().unwrap()
        })
        .collect();
    open.sort();
    let mut clients: Vec<String> = idle
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    clients.sort();
    assert_eq!(open, clients);
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn accepting_after_the_signal_is_counted_exactly() {
    let observer = start_observer();
    let mut app = supervise("5", "accept");
    let early = connect(app.port());
    app.expect_line("accepted");
    early.shutdown(Shutdown::Both).unwrap();
    app.stop();
    app.expect_line("term");
    for _ in 0..3 {
        let late = connect(app.port());
        app.expect_line("accepted");
        late.shutdown(Shutdown::Both).unwrap();
    }
    let (status, _) = app.reaped();
    let events = observer.stop();

    assert_eq!(status.code(), Some(0));
    let report = events.shutdown_of(app.pid);
    assert_eq!(report["accepted_after_signal"], 3, "{report}");
    assert_eq!(codes(report), ["ACCEPTED_AFTER_SIGNAL"]);
    assert_eq!(report["verdict"], "clean");
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn clients_refused_after_the_server_exited() {
    let observer = start_observer();
    let mut app = supervise("5", "none");
    let port = app.port();
    app.stop();
    app.reaped();
    let refused = (0..3)
        .filter(|_| TcpStream::connect(("127.0.0.1", port)).is_err())
        .count();
    let events = observer.stop();

    assert_eq!(refused, 3);
    let report = events.shutdown_of(app.pid);
    assert_eq!(report["refused_after_exit"], 3, "{report}");
    assert_eq!(
        codes(report),
        [
            "NO_SIGTERM_HANDLER",
            "LISTENER_NOT_CLOSED",
            "REFUSED_AFTER_EXIT"
        ]
    );
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

#[test]
fn a_clean_drain_has_no_findings() {
    let observer = start_observer();
    let mut app = supervise("5", "drain");
    let client = connect(app.port());
    app.expect_line("accepted");
    app.stop();
    app.expect_line("term");
    client.shutdown(Shutdown::Both).unwrap();
    let (status, _) = app.reaped();
    let events = observer.stop();

    assert_eq!(status.code(), Some(0));
    let report = events.shutdown_of(app.pid);
    assert_eq!(
        (&report["verdict"], &report["findings"]),
        (&json!("clean"), &json!([])),
        "{report}"
    );
    assert_eq!(report["sigterm"]["handler"], "custom");
    let (closed, drained) = (
        report["listener_closed_ms"].as_u64().unwrap(),
        report["drain_ms"].as_u64().unwrap(),
    );
    assert!(closed <= drained, "{report}");
    assert_eq!(report["open_at_exit"], json!([]));
    assert_exit(report, status);
    let deploy: Vec<&Value> = events.of_type("deploy").collect();
    assert_eq!(deploy.len(), 1, "{}", events.dump());
    assert_eq!(deploy[0]["stopped"], json!([app.pid]));
    events.assert_replay_is_identical(OBSERVER_TIMING);
}

fn gate(service: &str, timeout: &str) -> Child {
    use std::io::Read;
    let mut child = Command::new(observer_tests::observer_binary())
        .args([
            "watch",
            "--json",
            "--after-exit",
            "1",
            "--deploy-window",
            "1",
            "--gate",
            service,
            "--timeout",
            timeout,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until its programs are attached (it says so on stderr).
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("observer: watching") {
        assert_eq!(
            stderr.read(&mut byte).unwrap(),
            1,
            "observer ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    // Keep draining stderr so that observer never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    child
}

fn gate_result(child: Child) -> (Option<i32>, Vec<Value>) {
    let output = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output.status.code(), lines)
}

fn stop_in_unit(unit: &UnitCgroup, mode: &str) -> u32 {
    let args = server(mode);
    let mut child = unit.spawn(
        Command::new(&args[0])
            .args(&args[1..])
            .stdout(Stdio::piped()),
    );
    assert!(read_line(&mut child).starts_with("ready"));
    let pid = child.id();
    observer_tests::send_signal(pid, libc::SIGTERM);
    wait_timeout(&mut child);
    pid
}

#[test]
fn a_deploy_gate_passes_a_clean_deploy_and_fails_a_dropped_one() {
    let unit = UnitCgroup::new("observer-gate-test.service");
    let watching = gate("observer-gate-test.service", "30");
    let pid = stop_in_unit(&unit, "drain");
    let (status, lines) = gate_result(watching);
    assert_eq!(status, Some(0), "{lines:#?}");
    let deploy = lines.last().unwrap();
    assert_eq!(
        (&deploy["type"], &deploy["service"]),
        (&json!("deploy"), &json!("unit:observer-gate-test.service"))
    );
    assert_eq!(
        (&deploy["verdict"], &deploy["stopped"]),
        (&json!("clean"), &json!([pid]))
    );
    assert_eq!(lines[0]["type"], "shutdown");
    assert_eq!(lines[0]["unit"], "observer-gate-test.service");

    let watching = gate("unit:observer-gate-test.service", "30");
    stop_in_unit(&unit, "none");
    let (status, lines) = gate_result(watching);
    assert_eq!(status, Some(1), "{lines:#?}");
    assert_eq!(lines.last().unwrap()["verdict"], "dropped");
}

#[test]
fn a_deploy_gate_times_out_without_a_deploy() {
    let (status, lines) = gate_result(gate("nothing-deploys.service", "1"));
    assert_eq!((status, lines.len()), (Some(2), 0));
}

#[test]
fn a_containers_shutdown_names_its_container_and_pod() {
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let uid = "8f2a1c3e-4b5d-6e7f-8091-a2b3c4d5e6f7";
    let scope = format!(
        "observer-test-kubepods.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let group = UnitCgroup::new(&scope);
    let observer = start_observer();
    let mut child = group.spawn(
        Command::new(testee_path())
            .arg("wait")
            .stdout(Stdio::piped()),
    );
    assert_eq!(read_line(&mut child), "ready");
    let pid = child.id();
    observer_tests::send_signal(pid, libc::SIGTERM);
    wait_timeout(&mut child);
    let events = observer.stop();

    let report = events.shutdown_of(pid);
    assert_eq!(
        (&report["container"], &report["pod"], &report["unit"]),
        (&json!(id), &json!(uid), &json!(null)),
        "{report}"
    );
    assert!(
        report["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&format!("cri-containerd-{id}.scope"))
    );
    let exit = events.exit_of(pid);
    assert_eq!(exit["cgroup"], report["cgroup"]);
}
