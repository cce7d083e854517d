//! `observer rehearse` on small servers, good and bad: the verdict, the findings, what
//! the clients saw, and the exit status.
use std::process::Command;

use observer_tests::{finding_codes as codes, observer_binary, servers_dir};
use serde_json::Value;

struct Rehearsal {
    status: i32,
    report: Value,
    summary: Value,
}

fn rehearse(options: &[&str], command: &[&str]) -> Rehearsal {
    let output = Command::new(observer_binary())
        .arg("rehearse")
        .args(["--json", "--connections", "3"])
        .args(options)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    assert_eq!(lines.len(), 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        (&lines[0]["type"], &lines[1]["type"]),
        (&"shutdown".into(), &"rehearsal".into())
    );
    Rehearsal {
        status: output.status.code().unwrap(),
        report: lines[0].clone(),
        summary: lines[1].clone(),
    }
}

fn script(name: &str) -> String {
    servers_dir().join(name).display().to_string()
}

#[test]
fn the_articles_handler_passes() {
    let r = rehearse(
        &["--http", "--grace", "5"],
        &["node", &script("article.js")],
    );
    assert_eq!(r.status, 0, "{}", r.report);
    assert_eq!(
        (&r.report["verdict"], &r.report["findings"]),
        (&"clean".into(), &Value::Array(vec![]))
    );
    assert_eq!(r.report["exit"]["code"], 0);
    let clients = &r.summary["clients"];
    assert_eq!(clients["in_flight"]["completed"], 3, "{clients}");
    assert_eq!(clients["idle"]["completed"], 3, "{clients}");
    assert_eq!(r.summary["passed"], true);
}

#[test]
fn no_handler_fails() {
    let r = rehearse(
        &["--grace", "5"],
        &["python3", &script("server.py"), "none"],
    );
    assert_eq!(r.status, 1);
    assert_eq!(r.report["verdict"], "dropped");
    assert_eq!(
        codes(&r.report),
        [
            "NO_SIGTERM_HANDLER",
            "CONNECTIONS_OPEN_AT_EXIT",
            "LISTENER_NOT_CLOSED"
        ]
    );
    assert_eq!(r.report["exit"]["signal"], 15);
}

#[test]
fn idle_connections_never_closed_fail_and_can_be_allowed() {
    let command = ["python3", &script("server.py"), "keepalive"];
    let r = rehearse(&["--grace", "5"], &command);
    assert_eq!(r.status, 1);
    let codes = codes(&r.report);
    assert!(
        codes.contains(&"KEEPALIVE_OPEN_AT_EXIT") && codes.contains(&"EXIT_NONZERO_AFTER_SIGTERM"),
        "{codes:?}"
    );
    // The server accepts until it notices the signal: a client arriving right after it
    // is accepted (no readiness flip), and the report counts exactly those.
    let accepted = r.report["accepted_after_signal"].as_u64().unwrap();
    let drain = &r.summary["clients"]["during_drain"];
    assert_eq!(accepted, drain["completed"].as_u64().unwrap(), "{drain}");
    assert_eq!(codes.contains(&"ACCEPTED_AFTER_SIGNAL"), accepted > 0);
    let inbound = r.report["open_at_exit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "inbound")
        .count() as u64;
    // The held connections (the drain arrival closes its own at once).
    assert_eq!(inbound, 3, "{}", r.report);
    // Accepting the findings does not make a dropped verdict clean.
    let allowed = rehearse(
        &[
            "--grace",
            "5",
            "--allow",
            "KEEPALIVE_OPEN_AT_EXIT",
            "--allow",
            "exit_nonzero_after_sigterm",
            "--allow",
            "ACCEPTED_AFTER_SIGNAL",
        ],
        &command,
    );
    assert_eq!(
        (allowed.status, &allowed.report["verdict"]),
        (1, &"dropped".into())
    );
}

#[test]
fn a_blocked_event_loop_is_killed_after_the_grace_period() {
    let r = rehearse(&["--grace", "1"], &["node", &script("blocked.js")]);
    assert_eq!(r.status, 1);
    assert_eq!(r.report["verdict"], "killed");
    let codes = codes(&r.report);
    assert_eq!(
        &codes[..2],
        ["SIGKILL_AFTER_GRACE", "HANDLER_NEVER_RAN"],
        "{}",
        r.report
    );
    assert!(r.report["sigkill"]["after_sigterm_ms"].as_u64().unwrap() >= 1000);
}

#[test]
fn a_shell_wrapper_does_not_forward_sigterm() {
    let command = format!("node {}; true", script("article.js"));
    let r = rehearse(&["--http", "--grace", "2"], &["sh", "-c", &command]);
    assert_eq!(r.status, 1);
    assert_eq!(r.report["comm"], "sh", "{}", r.report);
    let codes = codes(&r.report);
    assert!(
        codes.contains(&"NO_SIGTERM_HANDLER") && codes.contains(&"SIGNAL_NOT_FORWARDED"),
        "{codes:?}"
    );
}
