//! Storms: thousands of short-lived processes, a fork bomb held by a pids cgroup, a tight
//! signal loop, and a pid reused within a second. observer must report every event
//! exactly as waitpid() saw it, or count what it missed in `lost` — never a wrong event,
//! never a crash — and its memory must stay bounded.
use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use observer_tests::{Events, Observer, read_line, servers_dir, wait_timeout};

/// observer's peak RSS may not pass this (its goal is 40 MiB; maps and caches are bounded).
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

fn storm(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(servers_dir().join("storm.py"))
        .args(args)
        .stdout(Stdio::piped());
    command
}

/// Runs a storm to its end: (pid → raw wait status) for every child reaped, and its stdout.
fn run_storm(command: &mut Command) -> (HashMap<u32, i32>, String) {
    let output = command.output().expect("running storm.py");
    assert!(output.status.success(), "storm.py failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (observer_tests::storm_reaped(&stdout), stdout)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Stops observer after checking its peak memory.
fn stop_bounded(observer: Observer) -> Events {
    let peak = peak_rss_kib(observer.pid());
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "observer's peak RSS is {peak} KiB"
    );
    eprintln!("observer peak RSS: {peak} KiB");
    observer.stop()
}

/// Every reaped child's exit is reported with its exact status, or missing and counted
/// in `lost`; returns how many were reported.
fn assert_exits_exact_or_lost(events: &Events, reaped: &HashMap<u32, i32>) -> usize {
    let mut exits_by_pid: HashMap<u64, Vec<&serde_json::Value>> = HashMap::new();
    for exit in events.of_type("exit") {
        exits_by_pid
            .entry(exit["pid"].as_u64().unwrap())
            .or_default()
            .push(exit);
    }
    let mut missing = 0u64;
    for (&pid, &status) in reaped {
        let exits = exits_by_pid.remove(&u64::from(pid)).unwrap_or_default();
        let Some(exit) = exits.first() else {
            missing += 1;
            continue;
        };
        assert_eq!(exits.len(), 1, "pid {pid} exited once: {exits:#?}");
        let (code, signal) = (status >> 8 & 0xff, status & 0x7f);
        if signal == 0 {
            assert_eq!(exit["code"], code, "pid {pid}: {exit}");
        } else {
            assert_eq!(exit["signal"], signal, "pid {pid}: {exit}");
        }
    }
    assert!(
        missing <= events.lost(),
        "{missing} of {} exits missing but only {} counted lost",
        reaped.len(),
        events.lost()
    );
    eprintln!(
        "{} exits: {} reported, {missing} missing, {} lost",
        reaped.len(),
        reaped.len() as u64 - missing,
        events.lost()
    );
    reaped.len() - missing as usize
}

#[test]
fn ten_thousand_short_lived_processes() {
    let observer = Observer::start(&["--signals", "TERM"]);
    let (reaped, _) = run_storm(storm(&["exits", "10000"]).stdout(Stdio::piped()));
    assert_eq!(reaped.len(), 10_000);
    let events = stop_bounded(observer);
    assert_exits_exact_or_lost(&events, &reaped);
}

/// A pids cgroup (v2 if its controller is there, else the v1 hierarchy), removed on drop.
struct PidsCgroup {
    path: PathBuf,
}

impl PidsCgroup {
    fn new(name: &str, max: u32) -> Self {
        let unified = PathBuf::from("/sys/fs/cgroup");
        let v2_has_pids = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "pids"));
        let root = if v2_has_pids {
            unified
        } else {
            PathBuf::from("/sys/fs/cgroup/pids")
        };
        let path = root.join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("pids.max"), max.to_string()).expect("setting pids.max");
        Self { path }
    }

    fn spawn(&self, command: &mut Command) -> Child {
        use std::os::unix::process::CommandExt;
        let procs = self.path.join("cgroup.procs");
        // SAFETY: open/write/close between fork and exec.
        unsafe {
            command.pre_exec(move || std::fs::write(&procs, "0"));
        }
        command.spawn().unwrap()
    }

    /// How many forks pids.max refused.
    fn refused(&self) -> u64 {
        std::fs::read_to_string(self.path.join("pids.events"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_fork_bomb_held_by_a_pids_cgroup() {
    let cgroup = PidsCgroup::new("observer-fork-bomb", 48);
    let observer = Observer::start(&["--signals", "TERM"]);
    let bomb = cgroup.spawn(&mut storm(&["bomb", "3"]));
    let output = bomb.wait_with_output().unwrap();
    assert!(output.status.success());
    let reaped = observer_tests::storm_reaped(&String::from_utf8(output.stdout).unwrap());
    assert!(cgroup.refused() > 0, "pids.max never refused a fork");
    assert!(reaped.len() > 1000, "only {} processes", reaped.len());
    let events = stop_bounded(observer);
    assert_exits_exact_or_lost(&events, &reaped);
}

#[test]
fn a_tight_signal_loop() {
    const SIGNALS: usize = 20_000;
    // A target that handles SIGTERM (and so survives it) until stdin closes.
    let mut target = Command::new("python3")
        .args([
            "-c",
            "import signal,sys; signal.signal(signal.SIGTERM, lambda *_: None); \
             print('ready', flush=True); sys.stdin.read()",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(read_line(&mut target), "ready");
    let observer = Observer::start(&["--signals", "TERM"]);
    let mut sender = storm(&["signals", &target.id().to_string(), &SIGNALS.to_string()])
        .spawn()
        .unwrap();
    assert_eq!(read_line(&mut sender), format!("sent {SIGNALS}"));
    let sender_pid = sender.id();
    assert!(wait_timeout(&mut sender).success());
    drop(target.stdin.take());
    assert!(wait_timeout(&mut target).success());
    let events = stop_bounded(observer);

    let generated: Vec<_> = events
        .signals_to(target.id())
        .into_iter()
        .filter(|s| s["sender"]["pid"] == sender_pid)
        .collect();
    let missing = (SIGNALS - generated.len()) as u64;
    assert!(
        missing <= events.lost(),
        "{missing} of {SIGNALS} kill() calls missing, {} lost",
        events.lost()
    );
    // Each was delivered, or merged into one already pending: nothing else.
    for signal in &generated {
        assert!(
            signal["result"] == "delivered" || signal["result"] == "already_pending",
            "{signal}"
        );
    }
    let deliveries = events.deliveries_to(target.id()).len();
    assert!(
        deliveries <= generated.len() && deliveries > 0,
        "{deliveries}"
    );
    eprintln!(
        "{SIGNALS} signals: {} reported, {deliveries} delivered to the handler, {} lost",
        generated.len(),
        events.lost()
    );
}

#[test]
fn a_pid_reused_within_a_second_is_two_processes() {
    let observer = Observer::start(&["--after-exit", "0.2"]);
    let (reaped, stdout) = run_storm(&mut storm(&["reuse"]));
    let lines: Vec<(u32, i32)> = stdout
        .lines()
        .rev()
        .take(2)
        .map(|line| {
            let (pid, status) = line.split_once(' ').unwrap();
            (pid.parse().unwrap(), status.parse().unwrap())
        })
        .collect();
    let [(second, second_status), (first, first_status)] = lines[..] else {
        panic!("{stdout}");
    };
    assert_eq!(first, second, "{stdout}");
    assert_eq!((first_status, second_status), (libc::SIGTERM, 7 << 8));
    assert!(reaped.contains_key(&first));
    let events = observer.stop();

    // Both exits, in order, each with its own status.
    let exits = events.exits_of(first);
    let last_two: Vec<_> = exits.iter().rev().take(2).rev().collect();
    assert_eq!(last_two.len(), 2, "{}", events.dump());
    assert_eq!(
        (&last_two[0]["signal"], &last_two[1]["code"]),
        (&serde_json::json!(libc::SIGTERM), &serde_json::json!(7)),
        "{}",
        events.dump()
    );
    // One shutdown report: the first process, killed by its SIGTERM; the second process
    // got no signal and is not folded into it.
    let reports: Vec<_> = events
        .of_type("shutdown")
        .filter(|r| r["pid"] == first)
        .collect();
    assert_eq!(
        reports.last().unwrap()["exit"]["signal"],
        libc::SIGTERM,
        "{reports:#?}"
    );
    assert!(
        reports.iter().all(|r| r["exit"]["code"] != 7),
        "{reports:#?}"
    );
}

/// A node drain: 3,000 servers, each listening with two connections open, told to stop
/// within a second. Every one gets its report, with the status waitpid() saw and the
/// sockets it held when it died; nothing is lost.
#[test]
fn a_node_drain_of_three_thousand_servers_holding_connections() {
    const SERVERS: usize = 3_000;
    let observer = Observer::start(&["--signals", "TERM", "--after-exit", "1"]);
    let (reaped, _) = run_storm(&mut storm(&["drain", &SERVERS.to_string()]));
    let events = stop_bounded(observer);

    assert_eq!(reaped.len(), SERVERS);
    assert_eq!(events.lost(), 0, "{}", events.stderr);
    assert_eq!(assert_exits_exact_or_lost(&events, &reaped), SERVERS);
    let mut senders = std::collections::BTreeSet::new();
    for (&pid, &status) in &reaped {
        assert_eq!(status, libc::SIGTERM, "the storm's own ground truth");
        let report = events.shutdown_of(pid);
        assert_eq!(report["exit"]["signal"], libc::SIGTERM, "{report}");
        senders.insert(report["sigterm"]["from"]["pid"].as_u64());
        assert_eq!(
            (
                &report["open_at_exit_by_role"]["inbound"],
                &report["open_at_exit_by_role"]["listener"]
            ),
            (&serde_json::json!(2), &serde_json::json!(1)),
            "{report}"
        );
    }
    assert_eq!(senders.len(), 1, "one storm sent them all: {senders:?}");
    assert!(!senders.contains(&None));
}
