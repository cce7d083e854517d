//! Faults observer must survive or end cleanly on: a full disk, being SIGKILLed and
//! restarted, storms of processes and signals, PID reuse, running with only the
//! capabilities it needs, and a stop while its own programs detach.
use std::{
    io::Read,
    net::TcpStream,
    os::unix::process::ExitStatusExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Observer, TIMEOUT, observer_binary, read_line, send_signal, servers_dir, temp_path,
    testee::{command, run_to_exit, start_interactive, start_ready, testee_path},
    wait_timeout,
};
use serde_json::Value;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = temp_path("small-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        Self { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_disk_ends_observer_with_a_clear_error_and_only_whole_lines() {
    let disk = SmallDisk::mount("256k");
    let output = disk.dir.join("events.ndjson");
    let mut observer = Command::new(observer_binary())
        .args(["watch", "--json", "--output"])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = observer.stderr.take().unwrap();
    // Short-lived processes until the disk fills and observer gives up.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = observer.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "observer kept running on a full disk"
        );
        for _ in 0..50 {
            Command::new("/bin/true").status().unwrap();
        }
    };
    let mut message = String::new();
    stderr.read_to_string(&mut message).unwrap();
    assert_eq!(status.code(), Some(1), "{message}");
    for expected in [
        "observer: error: ",
        "lines not written",
        "No space left on device",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing: {message}"
        );
    }
    let written = std::fs::read(&output).unwrap();
    assert!(
        written.len() > 100_000,
        "only {} bytes written",
        written.len()
    );
    assert_eq!(
        written.last(),
        Some(&b'\n'),
        "the file ends in a partial line"
    );
    for line in String::from_utf8(written).unwrap().lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&output).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640, "{mode:o}");
}

#[test]
fn sigkill_then_restart_loses_only_the_window_it_was_down() {
    let crashed = Observer::start(&[]);
    send_signal(crashed.pid(), libc::SIGKILL);
    let (status, _, _) = crashed.wait_raw();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // While observer is down: a server starts and a client connects to it, and a
    // process exits (that exit is the window observer cannot see).
    let mut server = Command::new("python3")
        .arg(servers_dir().join("server.py"))
        .arg("keepalive")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let port: u16 = read_line(&mut server)
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .expect("ready PORT");
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(read_line(&mut server), "accepted");
    let (unseen, _) = run_to_exit(&["exit", "3"]);

    let restarted = Observer::start(&["--after-exit", "0.5"]);
    send_signal(server.id(), libc::SIGTERM);
    let server_status = wait_timeout(&mut server);
    let (seen, seen_status) = run_to_exit(&["exit", "4"]);
    let events = restarted.stop();
    drop(client);

    assert!(events.exits_of(unseen).is_empty(), "{}", events.dump());
    assert_eq!(events.exit_of(seen)["code"], seen_status.code().unwrap());
    // The server predates the restart: its identity, listener and open connection come
    // from /proc and the kernel's close at exit, its status from the kernel.
    let report = events.shutdown_of(server.id());
    assert_eq!(server_status.code(), Some(1));
    assert_eq!(report["exit"]["code"], 1, "{report:#}");
    assert_eq!(report["sigterm"]["handler"], "custom", "{report:#}");
    let local = format!("127.0.0.1:{port}");
    let open: Vec<&Value> = report["open_at_exit"].as_array().unwrap().iter().collect();
    assert!(
        open.iter().any(|c| c["local"] == local.as_str()),
        "the keep-alive connection on {local} is missing: {report:#}"
    );
    assert_eq!(report["verdict"], "dropped", "{report:#}");
    assert_eq!(events.lost(), 0);
}

#[test]
fn a_stop_right_after_attaching_still_drains_and_exits_0() {
    // Observer::stop sends SIGINT and fails unless observer exits 0 having flushed.
    for _ in 0..5 {
        let events = Observer::start(&[]).stop();
        assert_eq!(events.lost(), 0);
    }
}

/// Capability numbers (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[test]
fn root_with_only_cap_bpf_cap_perfmon_and_cap_sys_ptrace_sees_everything() {
    let observer = Observer::start_wrapped(
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
            "--inh-caps=-all",
            "--",
        ],
        &[],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", observer.pid())).unwrap();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap();
    let wanted = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]
        .iter()
        .fold(0u64, |mask, cap| mask | 1 << cap);
    assert_eq!(effective, wanted, "CapEff {effective:x}");

    // A server that outlives its SIGTERM until observer has read its /proc facts.
    let (mut server, port) = start_interactive(&["tcp-server", "127.0.0.1:0", "handler"]);
    let pid = server.id();
    send_signal(pid, libc::SIGTERM);
    assert_eq!(read_line(&mut server), "term");
    observer.wait_for_line(|line| line["type"] == "signal" && line["target"]["pid"] == pid);
    command(&mut server, "exit");
    let status = wait_timeout(&mut server);
    let events = observer.stop();
    assert_eq!(
        events.exit_of(pid)["code"],
        status.code().unwrap(),
        "{}",
        events.dump()
    );
    let signal = &events.signals_to(pid)[0];
    assert_eq!(
        signal["target"]["exe"],
        testee_path().to_str().unwrap(),
        "{signal}"
    );
    assert_eq!(events.deliveries_to(pid)[0]["handler"], "custom");
    // exe above needs ptrace access to a full-root process: CAP_SYS_PTRACE. The
    // listener also comes from the kernel's own listen event.
    assert_eq!(
        signal["target"]["listening"],
        serde_json::json!([format!("127.0.0.1:{port}")]),
        "{signal}"
    );
}

/// observer attaches its accept tracing while a process shuts down and detaches it about
/// a second after the last shutdown ended; the detach waits for RCU grace periods (well
/// over 100 ms here) on a thread of its own. A SIGTERM that comes meanwhile must not wait
/// for it: its target's /proc entry (here the command line) is read while it lives, and
/// these targets live 60 ms after their signal. Host only: under the VMs' emulation
/// 60 ms is too short for any read.
#[test]
fn a_sigterm_while_the_last_shutdowns_tracing_detaches_is_read_at_once() {
    let observer = Observer::start(&[]);
    let targets: Vec<_> = (0..4)
        .map(|_| start_ready(&["handler", "0", "60"]).0)
        .collect();
    let (mut first, _) = start_ready(&["wait"]);
    send_signal(first.id(), libc::SIGTERM);
    wait_timeout(&mut first);
    let ended = Instant::now();
    // The detach starts at observer's first drain (every 20 ms) a second after it saw
    // that exit: these signals span its first 100 ms.
    for (n, target) in targets.iter().enumerate() {
        let at = ended + Duration::from_millis(1_020 + 30 * n as u64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        send_signal(target.id(), libc::SIGTERM);
    }
    let pids: Vec<u32> = targets
        .into_iter()
        .map(|mut target| {
            assert_eq!(wait_timeout(&mut target).code(), Some(0));
            target.id()
        })
        .collect();
    let events = observer.stop();
    for pid in pids {
        let signal = events.the_signal(pid, libc::SIGTERM);
        assert!(
            signal["target"]["cmdline"]
                .as_array()
                .is_some_and(|cmdline| !cmdline.is_empty()),
            "its /proc entry was read after it exited: {signal}"
        );
    }
}
