//! `observer watch` as a user runs it: filters, output formats, stopping, losing events,
//! running without BTF, and the errors it gives.
use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    process::Command,
};

use observer_tests::{
    Events, Observer, observer_binary, read_line, send_signal,
    testee::{run_to_exit, start_interactive, start_ready},
    wait_timeout,
};
use serde_json::json;

#[test]
fn pid_and_comm_filters_keep_only_the_chosen_processes() {
    let (mut chosen, _) = start_ready(&["wait"]);
    let chosen_pid = chosen.id();
    let observer = Observer::start(&["--pid", &chosen_pid.to_string()]);
    let (other_pid, _) = run_to_exit(&["exit", "4"]);
    send_signal(chosen_pid, libc::SIGTERM);
    wait_timeout(&mut chosen);
    let by_pid = observer.stop();

    assert_eq!(by_pid.exit_of(chosen_pid)["signal"], 15);
    assert_eq!(by_pid.signals_to(chosen_pid).len(), 1);
    let others: Vec<_> = by_pid
        .lines
        .iter()
        .filter(|line| match line["type"].as_str() {
            Some("deploy") => line["stopped"] != json!([chosen_pid]),
            _ => line["pid"] != chosen_pid && line["target"]["pid"] != chosen_pid,
        })
        .collect();
    assert!(others.is_empty(), "events of other processes: {others:#?}");
    assert!(by_pid.exits_of(other_pid).is_empty());

    let observer = Observer::start(&["--comm", "testee"]);
    let (testee_pid, _) = run_to_exit(&["exit", "5"]);
    let mut shell = Command::new("sh").args(["-c", "exit 6"]).spawn().unwrap();
    let shell_pid = shell.id();
    assert_eq!(wait_timeout(&mut shell).code(), Some(6));
    let by_comm = observer.stop();
    assert_eq!(by_comm.exit_of(testee_pid)["code"], 5);
    assert!(by_comm.exits_of(shell_pid).is_empty());
    assert!(
        by_comm.of_type("exit").all(|exit| exit["comm"] == "testee"),
        "{}",
        by_comm.dump()
    );
}

#[test]
fn signals_flag_chooses_which_signals_are_reported() {
    let observer = Observer::start(&["--signals", "KILL"]);
    let (mut handled, _) = start_ready(&["handler", "0"]);
    let (mut killed, _) = start_ready(&["wait"]);
    send_signal(handled.id(), libc::SIGTERM);
    send_signal(killed.id(), libc::SIGKILL);
    assert_eq!(wait_timeout(&mut handled).code(), Some(0));
    assert_eq!(wait_timeout(&mut killed).signal(), Some(9));
    let events = observer.stop();

    assert!(
        events.signals_to(handled.id()).is_empty(),
        "{}",
        events.dump()
    );
    assert!(events.deliveries_to(handled.id()).is_empty());
    assert_eq!(events.signals_to(killed.id()).len(), 1);
    // Exits are always reported.
    assert_eq!(events.exit_of(handled.id())["code"], 0);
    assert_eq!(events.exit_of(killed.id())["signal"], 9);
}

#[test]
fn duration_stops_observer_by_itself() {
    let observer = Observer::start(&["--duration", "1"]);
    let (pid, _) = run_to_exit(&["exit", "9"]);
    let (status, text, stderr) = observer.wait_raw();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("--duration elapsed"), "{stderr}");
    let events = Events::parse(&text, stderr);
    assert_eq!(events.exit_of(pid)["code"], 9);
}

#[test]
fn sigterm_to_observer_flushes_every_event() {
    let observer = Observer::start(&[]);
    let runs: Vec<_> = (0..300)
        .map(|i| run_to_exit(&["exit", &(i % 256).to_string()]))
        .collect();
    // Stop at once: whatever is still in the ring buffer must be drained, not dropped.
    let events = observer.stop_with(libc::SIGTERM);
    assert!(
        events.stderr.contains("stopped (SIGTERM)"),
        "{}",
        events.stderr
    );
    assert_eq!(events.lost(), 0, "{}", events.dump());
    for (pid, status) in runs {
        assert_eq!(events.exit_of(pid)["code"], json!(status.code()));
    }
}

#[test]
fn a_full_ring_buffer_is_reported_as_lost_events() {
    let observer = Observer::start(&["--ring-buffer-kib", "4"]);
    // Freeze observer so that nothing drains the 4 KiB buffer (about 50 exit records).
    send_signal(observer.pid(), libc::SIGSTOP);
    let runs: Vec<_> = (0..300).map(|_| run_to_exit(&["exit", "0"])).collect();
    send_signal(observer.pid(), libc::SIGCONT);
    let events = observer.stop();

    let seen = runs
        .iter()
        .filter(|(pid, _)| !events.exits_of(*pid).is_empty())
        .count() as u64;
    let lost = events.lost();
    assert!(
        lost > 0,
        "nothing lost with a frozen reader: {}",
        events.dump()
    );
    assert!(seen < 300, "all 300 exits fit in 4 KiB?");
    // Every exit is either reported or counted as lost (lost may include other records).
    assert!(seen + lost >= 300, "seen {seen} + lost {lost} < 300");
    assert!(
        events.stderr.contains(&format!("{lost} events lost")),
        "{}",
        events.stderr
    );
}

#[test]
fn without_btf_exit_statuses_are_inferred() {
    let observer = Observer::start_with_env(&[], &[("OBSERVER_BTF", "/nonexistent/vmlinux")]);
    let (exit_pid, exited) = run_to_exit(&["exit", "3"]);
    let (mut termed, _) = start_ready(&["wait"]);
    let (mut killed, _) = start_ready(&["wait"]);
    let (mut handled, _) = start_ready(&["handler", "4"]);
    let (mut threads, _) = start_ready(&["threads", "8", "2"]);
    send_signal(termed.id(), libc::SIGTERM);
    send_signal(killed.id(), libc::SIGKILL);
    send_signal(handled.id(), libc::SIGTERM);
    let statuses = [
        (exit_pid, exited),
        (termed.id(), wait_timeout(&mut termed)),
        (killed.id(), wait_timeout(&mut killed)),
        (handled.id(), wait_timeout(&mut handled)),
        (threads.id(), wait_timeout(&mut threads)),
    ];
    let events = observer.stop();

    assert!(
        events.stderr.contains("no usable kernel BTF"),
        "{}",
        events.stderr
    );
    for (pid, status) in statuses {
        let exit = events.exit_of(pid);
        assert_eq!(exit["code"], json!(status.code()), "{exit}");
        assert_eq!(exit["signal"], json!(status.signal()), "{exit}");
        assert_eq!(exit["status_source"], "inferred", "{exit}");
        assert_eq!(exit["ppid"], json!(null), "{exit}");
    }
    // Signals come from the classic tracepoint then, the target's process from /proc.
    for pid in [statuses[1].0, statuses[2].0, statuses[3].0] {
        let signals = events.signals_to(pid);
        assert_eq!(signals.len(), 1, "{}", events.dump());
        assert_eq!(signals[0]["sender"]["pid"], std::process::id());
    }
}

/// A server killed holding 20 clients: the human format shows its first 8 connections
/// closed at exit and one line for the rest (its report counts them all);
/// `--connections each` shows every one.
#[test]
fn the_human_format_folds_a_process_s_many_connections() {
    const CLIENTS: usize = 20;
    for (args, shown, notes) in [
        (&[][..], 8, 1),
        (&["--connections", "each"][..], CLIENTS + 1, 0),
    ] {
        let observer = Observer::start_human(args);
        let (mut server, port) = start_interactive(&["tcp-server", "127.0.0.1:0"]);
        let port: u16 = port.trim().parse().unwrap();
        let pid = server.id();
        let clients: Vec<std::net::TcpStream> = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        for _ in 0..CLIENTS {
            assert!(read_line(&mut server).starts_with("accepted"));
        }
        send_signal(pid, libc::SIGKILL);
        wait_timeout(&mut server);
        let (text, _) = observer.stop_raw(libc::SIGINT);
        drop(clients);

        let ours = |what: &str| {
            text.lines()
                .filter(|l| l.contains(&format!("testee[{pid}]")) && l.contains(what))
                .count()
        };
        assert_eq!(ours("open@exit"), shown, "{args:?}\n{text}");
        assert_eq!(
            ours("more connections closed at exit not shown"),
            notes,
            "{args:?}\n{text}"
        );
        assert!(
            text.contains("KEEPALIVE_OPEN_AT_EXIT 20 idle inbound connections"),
            "the report counts them all:\n{text}"
        );
    }
}

#[test]
fn the_human_format_is_one_aligned_line_per_event() {
    let observer = Observer::start_human(&[]);
    let (mut child, _) = start_ready(&["wait"]);
    let pid = child.id();
    send_signal(pid, libc::SIGTERM);
    wait_timeout(&mut child);
    let (text, _) = observer.stop_raw(libc::SIGINT);

    let ours: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(&format!("testee[{pid}]")))
        .collect();
    assert_eq!(ours.len(), 4, "{text}");
    // The target's command line follows when /proc was read before it died.
    assert!(
        ours[0].contains("  signal     SIGTERM  ") && ours[0].contains(&format!("→ testee[{pid}]")),
        "{}",
        ours[0]
    );
    assert!(ours[1].contains("  delivered  SIGTERM  ") && ours[1].ends_with("default action"));
    assert!(ours[2].contains(&format!(
        "  exit       testee[{pid}]  killed by SIGTERM (status 143)"
    )));
    // Then its shutdown report: a timeline and the finding with its fix.
    assert!(
        ours[3].contains(&format!("  SHUTDOWN   testee[{pid}]  DROPPED")),
        "{text}"
    );
    let report: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.contains(&format!("SHUTDOWN   testee[{pid}]")))
        .skip(1)
        .take_while(|line| line.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(
        report[0].starts_with("+0 ms  SIGTERM from ")
            && report[0].ends_with("default action (no handler)"),
        "{report:?}"
    );
    // Usually +0 ms; a slow machine (qemu without KVM) may take a few.
    assert!(
        report[1].starts_with('+') && report[1].ends_with(" ms  killed by SIGTERM (status 143)"),
        "{report:?}"
    );
    let finding = "✗ NO_SIGTERM_HANDLER `testee` died of SIGTERM's default action";
    assert!(report.iter().any(|l| l.starts_with(finding)), "{report:?}");
    assert!(!text.contains('\x1b'), "colour in a file");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    // Every flag that takes a value, with a wrong one: usage error (2), the reason named.
    for (args, reason) in [
        (&["--signals", "BOGUS"][..], "unknown signal 'BOGUS'"),
        (&["--signals", "0"], "outside 1..=64"),
        (&["--duration", "-1"], "positive number of seconds, not -1"),
        (&["--duration", "0"], "positive number of seconds, not 0"),
        (&["--ring-buffer-kib", "3"], "power of two"),
        (&["--ring-buffer-kib", "0"], "power of two"),
        (&["--pid", "0"], "0 is not in 1..="),
        (&["--pid", "abc"], "invalid digit"),
        (
            &["--comm", "a-name-far-too-long"],
            "the kernel keeps only the first 15",
        ),
        (&["--port", "0"], "0 is not in 1..=65535"),
        (&["--port", "70000"], "70000 is not in 1..=65535"),
        (&["--after-exit", "-1"], "zero or more seconds, not -1"),
        (&["--deploy-window", "x"], "'x' is not a number of seconds"),
        (&["--color", "blue"], "possible values: auto, always, never"),
        (&["--metrics", "nope"], "invalid socket address"),
        (&["--timeout", "5"], "--gate <SERVICE>"),
        (&["--unit"], "a value is required for '--unit"),
        (&["--container"], "a value is required for '--container"),
        (&["--cgroup"], "a value is required for '--cgroup"),
        (&["--output"], "a value is required for '--output"),
        (&["--gate"], "a value is required for '--gate"),
        (&["--bogus"], "unexpected argument '--bogus'"),
    ] {
        let output = Command::new(observer_binary())
            .arg("watch")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

#[test]
fn without_privileges_it_names_the_capabilities_it_needs() {
    let output = Command::new(observer_binary())
        .args(["watch", "--duration", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needed in ["CAP_BPF", "CAP_PERFMON", "sudo observer watch"] {
        assert!(stderr.contains(needed), "{stderr}");
    }
}

#[test]
fn without_tracefs_and_unable_to_mount_it_says_how_to_fix_it() {
    // A private mount namespace without tracefs, and no CAP_SYS_ADMIN to mount it.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         exec setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {} watch --duration 1",
        observer_binary().display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tracefs is not mounted"), "{stderr}");
    assert!(
        stderr.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
        "{stderr}"
    );
}

#[test]
fn check_on_a_healthy_machine_attaches_every_program() {
    let output = Command::new(observer_binary())
        .arg("check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    // With BTF, the cheapest attachment each program has: the hot path typed, so that it
    // reads sockets with plain loads rather than a helper call each.
    for (program, attachment) in [
        ("signal_generate", "raw_tp signal_generate"),
        ("signal_deliver", "signal:signal_deliver"),
        ("process_exit", "tp_btf sched_process_exit"),
        ("tcp_state", "tp_btf inet_sock_set_state"),
        ("sys_exit_accept", "syscalls:sys_exit_accept4"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(program))
            .unwrap_or_else(|| panic!("no line for {program}:\n{stdout}"));
        assert!(
            line.starts_with("ok") && line.contains(&format!("attached to {attachment}")),
            "{line}"
        );
    }
    assert!(
        stdout.contains("sig@") && stdout.contains("observer watch can run here."),
        "{stdout}"
    );
}

#[test]
fn check_without_tracefs_fails_with_the_fix() {
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         exec setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {} check",
        observer_binary().display()
    );
    let output = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let tracefs = stdout.lines().find(|l| l.contains("tracefs")).unwrap();
    assert!(
        tracefs.starts_with("FAIL") && tracefs.contains("mount -t tracefs"),
        "{tracefs}"
    );
    assert!(stdout.contains("cannot run here"), "{stdout}");
}

#[test]
fn unit_filter_keeps_only_the_units_processes() {
    let unit = observer_tests::UnitCgroup::new("observer-filter-test.service");
    let observer = Observer::start(&["--unit", "observer-filter-test.service"]);
    let mut inside = unit.spawn(
        Command::new(observer_tests::testee::testee_path())
            .args(["exit", "3"])
            .stdout(std::process::Stdio::null()),
    );
    let inside_pid = inside.id();
    assert_eq!(wait_timeout(&mut inside).code(), Some(3));
    let (outside_pid, _) = run_to_exit(&["exit", "4"]);
    let events = observer.stop();

    let exit = events.exit_of(inside_pid);
    assert_eq!(
        exit["cgroup"]
            .as_str()
            .map(|c| c.ends_with("/observer-filter-test.service")),
        Some(true)
    );
    assert!(events.exits_of(outside_pid).is_empty());
    assert!(
        events.of_type("exit").all(|e| e["pid"] == inside_pid),
        "{}",
        events.dump()
    );
}

#[test]
fn sighup_reopens_the_output_file_as_logrotate_expects() {
    let observer = Observer::start(&[]);
    let path = observer.output_path().to_path_buf();
    let rotated = path.with_extension("1");
    let (before, _) = run_to_exit(&["exit", "5"]);
    // Wait until its exit is written, then rotate as logrotate does.
    let deadline = std::time::Instant::now() + observer_tests::TIMEOUT;
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains(&format!("\"pid\":{before},"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first exit was never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::rename(&path, &rotated).unwrap();
    send_signal(observer.pid(), libc::SIGHUP);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (after, _) = run_to_exit(&["exit", "6"]);
    let events = observer.stop();

    let old = Events::parse(&std::fs::read_to_string(&rotated).unwrap(), String::new());
    let _ = std::fs::remove_file(&rotated);
    assert_eq!(old.exit_of(before)["code"], 5);
    assert!(old.exits_of(after).is_empty());
    assert_eq!(events.exit_of(after)["code"], 6);
    assert!(events.exits_of(before).is_empty());
}
