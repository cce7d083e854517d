//! Termination signals and process exits, checked against ground truth: the parent's
//! waitpid() status, the pids and comms of the processes involved.
use std::{
    os::unix::process::ExitStatusExt,
    process::{Command, ExitStatus},
};

use observer_tests::{
    Events, Observer, own_comm, read_line, send_signal, temp_path,
    testee::{run_to_exit, start_ready},
    wait_timeout,
};
use serde_json::{Value, json};

/// The exit event agrees with what waitpid() returned to the parent (this process).
fn assert_exit_matches(events: &Events, pid: u32, status: ExitStatus) {
    let exit = events.exit_of(pid);
    let expected_status = status.code().or(status.signal().map(|s| 128 + s));
    assert_eq!(exit["code"], json!(status.code()), "code of {exit}");
    assert_eq!(exit["signal"], json!(status.signal()), "signal of {exit}");
    assert_eq!(
        exit["core_dumped"],
        json!(status.core_dumped()),
        "core of {exit}"
    );
    assert_eq!(exit["status"], json!(expected_status), "status of {exit}");
    assert_eq!(exit["ppid"], json!(std::process::id()), "ppid of {exit}");
    assert_eq!(exit["comm"], "testee", "comm of {exit}");
    assert_eq!(exit["status_source"], "kernel", "{exit}");
}

fn assert_sent_by_this_process(signal: &Value) {
    let sender = &signal["sender"];
    assert_eq!(
        (&sender["pid"], &sender["comm"]),
        (&json!(std::process::id()), &json!(own_comm())),
        "{signal}"
    );
    // Who asked: the sender's parents, nearest first, up to (not including) init.
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    if parent > 1 {
        assert_eq!(sender["via"][0]["pid"], parent, "{signal}");
    } else {
        assert_eq!(sender.get("via"), None, "{signal}");
    }
}

#[test]
fn exit_codes_match_waitpid() {
    let observer = Observer::start(&[]);
    let runs: Vec<_> = ["0", "3", "255"]
        .iter()
        .map(|code| run_to_exit(&["exit", code]))
        .collect();
    let events = observer.stop();
    for (pid, status) in runs {
        assert_exit_matches(&events, pid, status);
    }
}

#[test]
fn sigterm_without_a_handler_ends_the_process_with_143() {
    let observer = Observer::start(&[]);
    let (mut child, _) = start_ready(&["wait"]);
    let pid = child.id();
    send_signal(pid, libc::SIGTERM);
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_exit_matches(&events, pid, status);
    assert_eq!(events.exit_of(pid)["status"], 143);
    let signal = events.the_signal(pid, libc::SIGTERM);
    assert_sent_by_this_process(signal);
    assert_eq!(signal["sig_name"], "SIGTERM");
    assert_eq!(signal["target"]["tid"], pid);
    assert_eq!(signal["target"]["comm"], "testee");
    assert_eq!(
        (&signal["group"], &signal["origin"], &signal["result"]),
        (&json!(true), &json!("user"), &json!("delivered"))
    );
    let deliveries = events.deliveries_to(pid);
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(
        (&deliveries[0]["sig"], &deliveries[0]["handler"]),
        (&json!(15), &json!("default"))
    );
}

#[test]
fn sigterm_with_a_handler_that_exits_0() {
    let observer = Observer::start(&[]);
    let (mut child, _) = start_ready(&["handler", "0"]);
    let pid = child.id();
    send_signal(pid, libc::SIGTERM);
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    assert_eq!(status.code(), Some(0));
    assert_exit_matches(&events, pid, status);
    let signal = events.the_signal(pid, libc::SIGTERM);
    assert_sent_by_this_process(signal);
    let deliveries = events.deliveries_to(pid);
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0]["handler"], "custom");
    assert_eq!(deliveries[0]["target"]["pid"], pid);
}

#[test]
fn sigkill_ends_the_process_with_137() {
    let observer = Observer::start(&[]);
    let (mut child, _) = start_ready(&["wait"]);
    let pid = child.id();
    send_signal(pid, libc::SIGKILL);
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_exit_matches(&events, pid, status);
    assert_eq!(events.exit_of(pid)["status"], 137);
    let signal = events.the_signal(pid, libc::SIGKILL);
    assert_sent_by_this_process(signal);
    assert_eq!(signal["sig_name"], "SIGKILL");
}

#[test]
fn sigsegv_with_and_without_a_core_dump() {
    let observer = Observer::start(&[]);
    let (plain_pid, plain) = run_to_exit(&["segv"]);
    let core_dir = temp_path("cores");
    std::fs::create_dir_all(&core_dir).unwrap();
    let (core_pid, cored) = run_to_exit(&["segv", core_dir.to_str().unwrap()]);
    let events = observer.stop();
    let _ = std::fs::remove_dir_all(&core_dir);

    assert_eq!(plain.signal(), Some(libc::SIGSEGV));
    assert_exit_matches(&events, plain_pid, plain);
    // Whether the kernel dumped core depends on core_pattern; either way observer must
    // say what waitpid says.
    assert_eq!(cored.signal(), Some(libc::SIGSEGV));
    assert_exit_matches(&events, core_pid, cored);
    // SIGSEGV is not among the default signals: no signal events for it.
    assert!(events.signals_to(plain_pid).is_empty(), "{}", events.dump());
}

#[test]
fn pid1_of_a_pid_namespace_ignores_sigterm() {
    let observer = Observer::start(&[]);
    let (mut parent, init) = start_ready(&["pidns", "sh", "-c", "sleep 30; true"]);
    let init: u32 = init.parse().unwrap();
    // Wait until the namespace's init has exec'd sh and forked its sleep.
    let children = format!("/proc/{init}/task/{init}/children");
    let deadline = std::time::Instant::now() + observer_tests::TIMEOUT;
    let sleeper: u32 = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            break pid.parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sh never started its sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    send_signal(init, libc::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(100));
    send_signal(init, libc::SIGKILL);
    let status_line = read_line(&mut parent);
    wait_timeout(&mut parent);
    let events = observer.stop();

    let raw: i32 = status_line
        .strip_prefix("status ")
        .unwrap()
        .parse()
        .unwrap();
    let init_status = ExitStatus::from_raw(raw);
    assert_eq!(init_status.signal(), Some(libc::SIGKILL));

    let term = events.the_signal(init, libc::SIGTERM);
    assert_eq!(term["target"]["comm"], "sh");
    assert_eq!(term["disposition"], "default", "read at generation: {term}");
    assert_sent_by_this_process(term);
    // Ignored by the kernel: dropped at generation, and the process lived on. If sh
    // happened to block SIGTERM at that moment (dash does around its waits), the
    // kernel queued it instead and dropped it when sh dequeued it: an init's default
    // action is nothing.
    if term["result"] == "ignored" {
        assert!(events.deliveries_to(init).iter().all(|d| d["sig"] != 15));
    } else {
        assert_eq!(
            (&term["result"], &term["blocked"]),
            (&json!("delivered"), &json!(true)),
            "{term}"
        );
    }
    let exit = events.exit_of(init);
    assert_eq!(exit["signal"], json!(init_status.signal()), "{exit}");
    assert_eq!(exit["status"], 137);
    // The dying init takes the namespace with it: the kernel SIGKILLs the sleep.
    let reaped = events.the_signal(sleeper, libc::SIGKILL);
    assert_eq!(reaped["origin"], "kernel", "{reaped}");
    assert_eq!(reaped["sender"]["pid"], init, "{reaped}");
    assert_eq!(events.exit_of(sleeper)["signal"], 9);
}

#[test]
fn a_thread_directed_signal_names_process_and_thread() {
    let observer = Observer::start(&[]);
    let (mut child, tid) = start_ready(&["thread-wait"]);
    let pid = child.id();
    let tid: u32 = tid.parse().unwrap();
    assert_ne!(pid, tid);
    // SAFETY: tgkill with plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    let signal = events.the_signal(pid, libc::SIGTERM);
    assert_eq!(signal["target"]["tid"], tid, "{signal}");
    assert_eq!(
        (&signal["group"], &signal["origin"]),
        (&json!(false), &json!("tkill")),
        "{signal}"
    );
    assert_sent_by_this_process(signal);
    let deliveries = events.deliveries_to(pid);
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0]["target"]["tid"], tid);
    assert_exit_matches(&events, pid, status);
}

#[test]
fn a_sixteen_thread_process_exits_once() {
    let observer = Observer::start(&[]);
    let (mut child, _) = start_ready(&["threads", "16", "7"]);
    let pid = child.id();
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    assert_eq!(status.code(), Some(7));
    assert_exit_matches(&events, pid, status);
    // exit_group() tears the other 15 threads down; none of that is a signal.
    assert!(events.deliveries_to(pid).is_empty(), "{}", events.dump());
}

#[test]
fn the_sender_is_the_process_that_called_kill() {
    let observer = Observer::start(&[]);
    let (mut child, _) = start_ready(&["wait"]);
    let pid = child.id();
    let mut kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .spawn()
        .expect("running kill(1)");
    let kill_pid = kill.id();
    assert!(wait_timeout(&mut kill).success());
    let status = wait_timeout(&mut child);
    let events = observer.stop();

    let signal = events.the_signal(pid, libc::SIGTERM);
    let sender = &signal["sender"];
    assert_eq!(
        (&sender["pid"], &sender["comm"]),
        (&json!(kill_pid), &json!("kill")),
        "{signal}"
    );
    // kill(1) is gone by now: the kernel named its parent, this test.
    assert_eq!(
        sender["via"][0],
        json!({"pid": std::process::id(), "comm": own_comm()}),
        "{signal}"
    );
    assert_exit_matches(&events, pid, status);
}
