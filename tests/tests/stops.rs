//! Stops that are not one SIGTERM to a handler: a stop signal of the program's own
//! choosing (asked for with `--signals`), a SIGTERM taken with sigwait() (no handler
//! ever runs: never "not delivered"), and a second signal that ends what the first did
//! not. The test is each program's parent: its waitpid() is the ground truth.
use std::{
    os::unix::process::ExitStatusExt,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use observer_tests::{
    Events, Observer, finding_codes as codes, read_line, send_signal, servers_dir, wait_timeout,
};
use serde_json::Value;

const TIMING: &[&str] = &["--after-exit", "1", "--deploy-window", "2"];

/// stops.py in `mode`, once it listens.
fn start(mode: &str) -> Child {
    let mut child = Command::new("python3")
        .arg(servers_dir().join("stops.py"))
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting stops.py");
    let ready = read_line(&mut child);
    assert!(
        ready.starts_with("ready "),
        "stops.py {mode} said {ready:?}"
    );
    child
}

/// Its report, after checking the exit against waitpid.
fn report_of(events: &Events, pid: u32, status: ExitStatus) -> &Value {
    let report = events.shutdown_of(pid);
    assert_eq!(
        (
            report["exit"]["code"].as_i64(),
            report["exit"]["signal"].as_i64()
        ),
        (status.code().map(i64::from), status.signal().map(i64::from)),
        "{report}"
    );
    report
}

#[test]
fn a_stop_by_a_signal_asked_for_with_signals_gets_a_report() {
    let mut args = vec!["--signals", "TERM,INT,QUIT,HUP,KILL,WINCH"];
    args.extend(TIMING);
    let observer = Observer::start(&args);
    let mut server = start("winch");
    let pid = server.id();
    send_signal(pid, libc::SIGWINCH);
    let status = wait_timeout(&mut server);
    let events = observer.stop();

    let report = report_of(&events, pid, status);
    assert_eq!(status.code(), Some(0));
    assert_eq!(report["sigterm"]["sig_name"], "SIGWINCH", "{report}");
    assert_eq!(report["sigterm"]["handler"], "custom", "{report}");
    assert_eq!(report["verdict"], "clean", "{report}");
    assert_eq!(codes(report), Vec::<&str>::new());
    assert!(report["listener_closed_ms"].as_u64().is_some(), "{report}");
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn a_sigterm_taken_with_sigwait_is_not_undelivered() {
    let observer = Observer::start(TIMING);
    let mut server = start("sigwait");
    let pid = server.id();
    send_signal(pid, libc::SIGTERM);
    let status = wait_timeout(&mut server);
    let events = observer.stop();

    let report = report_of(&events, pid, status);
    assert_eq!(status.code(), Some(0));
    let term = &report["sigterm"];
    assert_eq!(
        (&term["blocked"], &term["handler"], &term["disposition"]),
        (&Value::Bool(true), &Value::Null, &Value::from("default")),
        "blocked and taken synchronously: no handler, no delivery: {report}"
    );
    assert_eq!(report["verdict"], "clean", "{report}");
    assert_eq!(codes(report), Vec::<&str>::new());
    let log = observer_tests::temp_path("sigwait.ndjson");
    std::fs::write(&log, &events.text).unwrap();
    let human = Command::new(observer_tests::observer_binary())
        .arg("report")
        .args(TIMING)
        .arg(&log)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&log);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("blocked: taken with signalfd or sigwaitinfo"),
        "{text}"
    );
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn a_second_signal_that_ends_the_stop_is_in_its_timeline() {
    let observer = Observer::start(TIMING);
    let mut server = start("second");
    let pid = server.id();
    send_signal(pid, libc::SIGTERM);
    assert_eq!(read_line(&mut server), "term");
    std::thread::sleep(Duration::from_millis(300));
    send_signal(pid, libc::SIGINT);
    let status = wait_timeout(&mut server);
    let events = observer.stop();

    let report = report_of(&events, pid, status);
    assert_eq!(status.signal(), Some(libc::SIGINT));
    let timeline: Vec<(&str, &str)> = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["sig_name"].as_str().unwrap(),
                s["handler"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    assert_eq!(
        timeline,
        [("SIGTERM", "custom"), ("SIGINT", "default")],
        "{report}"
    );
    assert_eq!(report["sigterm"]["sig_name"], "SIGTERM");
    assert_eq!(report["verdict"], "dropped", "{report}");
    let findings = codes(report);
    assert!(findings.contains(&"NO_SIGTERM_HANDLER"), "{report}");
    assert!(
        report["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("SIGINT's default action"),
        "{report}"
    );
    assert!(report["drain_ms"].as_u64().unwrap() >= 300, "{report}");
    events.assert_replay_is_identical(TIMING);
}
