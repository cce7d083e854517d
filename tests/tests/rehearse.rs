//! `observer rehearse` on small servers, good and bad, and on gunicorn (a real pre-fork
//! server with sync workers): the verdict, the findings, what the clients saw, the
//! processes that died before the signal, the server's output, and the exit status.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use observer_tests::{finding_codes as codes, observer_binary, servers_dir};
use serde_json::Value;

struct Rehearsal {
    status: i32,
    /// The shutdown report (Null when there was none).
    report: Value,
    summary: Value,
    stderr: String,
    took: Duration,
}

fn rehearse(options: &[&str], command: &[&str]) -> Rehearsal {
    let started = Instant::now();
    let output = Command::new(observer_binary())
        .arg("rehearse")
        .args(["--json", "--connections", "3"])
        .args(options)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 2,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let summary = lines.last().unwrap().clone();
    assert_eq!(summary["type"], "rehearsal", "{summary}");
    let report = match &lines[..] {
        [report, _] => {
            assert_eq!(report["type"], "shutdown", "{report}");
            report.clone()
        }
        _ => Value::Null,
    };
    let status = output.status.code().unwrap();
    assert_eq!(
        status == 0,
        summary["passed"] == true,
        "{summary}\n{stderr}"
    );
    Rehearsal {
        status,
        report,
        summary,
        stderr,
        took,
    }
}

fn script(name: &str) -> String {
    servers_dir().join(name).display().to_string()
}

/// gunicorn: `OBSERVER_GUNICORN`, or the one `cargo xtask test` installs into
/// target/real-servers/venv.
fn gunicorn() -> String {
    let path = std::env::var_os("OBSERVER_GUNICORN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/real-servers/venv/bin/gunicorn")
        });
    assert!(
        path.is_file(),
        "gunicorn is missing at {}: `cargo xtask test` installs it (or set OBSERVER_GUNICORN \
         to a gunicorn executable, e.g. after `python3 -m venv target/real-servers/venv && \
         target/real-servers/venv/bin/pip install gunicorn`)",
        path.display()
    );
    path.display().to_string()
}

/// gunicorn serving tests/servers/rehearse/app.py with sync workers.
fn gunicorn_command(extra: &[&str]) -> Vec<String> {
    let mut command = vec![
        gunicorn(),
        "--chdir".to_string(),
        servers_dir().join("rehearse").display().to_string(),
        "--bind".to_string(),
        "127.0.0.1:0".to_string(),
        "--worker-class".to_string(),
        "sync".to_string(),
    ];
    command.extend(extra.iter().map(|s| s.to_string()));
    command.push("app:app".to_string());
    command
}

fn strs(command: &[String]) -> Vec<&str> {
    command.iter().map(String::as_str).collect()
}

fn outcomes(summary: &Value, kind: &str) -> [u64; 5] {
    let o = &summary["clients"][kind];
    ["completed", "failed", "reset", "refused", "closed"].map(|k| {
        o[k].as_u64()
            .unwrap_or_else(|| panic!("{kind}.{k}: {summary}"))
    })
}

#[test]
fn the_articles_handler_passes() {
    let r = rehearse(
        &["--http", "--grace", "5", "--show-output"],
        &["node", &script("article.js")],
    );
    assert_eq!(r.status, 0, "{}\n{}", r.report, r.stderr);
    assert_eq!(
        (&r.report["verdict"], &r.report["findings"]),
        (&"clean".into(), &Value::Array(vec![]))
    );
    assert_eq!(r.report["exit"]["code"], 0);
    let clients = &r.summary["clients"];
    assert_eq!(clients["in_flight"]["completed"], 3, "{clients}");
    assert_eq!(clients["idle"]["completed"], 3, "{clients}");
    assert_eq!(r.summary["passed"], true);
    assert_eq!(r.summary["died_before_signal"], Value::Array(vec![]));
    assert_eq!(r.summary["timed_out"], false);
    // Its `/` answers at once: the requests meant to be in flight were not, and it says so.
    assert!(
        r.stderr
            .contains("were answered before SIGTERM: point --path at an endpoint"),
        "{}",
        r.stderr
    );
    // --show-output: the server's own output, though the rehearsal passed.
    assert!(
        r.stderr
            .contains("--- its stdout ---\nSIGTERM received — draining"),
        "{}",
        r.stderr
    );
}

#[test]
fn no_handler_fails() {
    let r = rehearse(
        &["--grace", "5"],
        &["python3", &script("server.py"), "none"],
    );
    assert_eq!(r.status, 1);
    assert_eq!(r.report["verdict"], "dropped");
    // The held TCP connections never sent anything: idle when they were cut.
    assert_eq!(
        codes(&r.report),
        [
            "NO_SIGTERM_HANDLER",
            "KEEPALIVE_OPEN_AT_EXIT",
            "LISTENER_NOT_CLOSED"
        ]
    );
    assert_eq!(r.report["exit"]["signal"], 15);
    // A failed rehearsal shows the server's output.
    assert!(
        r.stderr.contains("--- its stdout ---\nready "),
        "{}",
        r.stderr
    );
    // python3 may be a shim (pyenv) whose helpers exit non-zero while it starts: they
    // ran before the server listened, so they did not die as part of it.
    assert_eq!(r.summary["died_before_signal"], Value::Array(vec![]));
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

/// Sync workers, one per request, and a path that takes a second: the requests sent just
/// before SIGTERM are being handled when it comes, and gunicorn's graceful stop (close
/// the listener, SIGTERM the workers, each finishes its request) answers every one.
#[test]
fn gunicorn_drains_requests_in_flight_on_a_slow_path() {
    let command = gunicorn_command(&["--workers", "4"]);
    let r = rehearse(
        &["--http", "--path", "/slow", "--grace", "10"],
        &strs(&command),
    );
    assert_eq!(
        outcomes(&r.summary, "in_flight"),
        [3, 0, 0, 0, 0],
        "{}",
        r.summary
    );
    // Sync workers answer with Connection: close: the "idle" connections ended cleanly
    // right after their first (complete, successful) request.
    assert_eq!(
        outcomes(&r.summary, "idle"),
        [3, 0, 0, 0, 0],
        "{}",
        r.summary
    );
    assert!(
        r.stderr
            .contains("closed by the server right after their first response"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("answered before SIGTERM"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.summary["died_before_signal"],
        Value::Array(vec![]),
        "{}",
        r.summary
    );
    assert_eq!(r.summary["timed_out"], false);
    // It waited for the requests (a second each, sent 250 ms before the signal), then
    // exited 0 on its own, well within the grace period.
    assert_eq!(r.report["exit"]["code"], 0, "{}", r.report);
    assert!(r.report["sigkill"].is_null(), "{}", r.report);
    let drain_ms = r.report["drain_ms"].as_u64().unwrap();
    assert!((500..10_000).contains(&drain_ms), "{}", r.report);
    // New clients during the drain are not answered: the workers stop accepting, and
    // those left in the listener's backlog are reset when the last worker exits.
    let [completed, failed, ..] = outcomes(&r.summary, "during_drain");
    assert_eq!((completed, failed), (0, 0), "{}", r.summary);
    // Nothing but the verdict and the findings decided the outcome.
    let clean = r.report["verdict"] == "clean" && codes(&r.report).is_empty();
    assert_eq!(r.summary["passed"], clean, "{}\n{}", r.summary, r.report);
}

/// The path takes longer than gunicorn's worker timeout: the master SIGABRTs the workers
/// busy with the idle connections' first requests (they answer 500 and exit 0), and
/// those it respawns, all before the stop signal.
#[test]
fn gunicorn_workers_killed_before_the_signal_fail_the_rehearsal() {
    let command = gunicorn_command(&["--workers", "2", "--timeout", "1"]);
    let r = rehearse(
        &["--http", "--path", "/hang", "--grace", "2"],
        &strs(&command),
    );
    assert_eq!(r.status, 1, "{}\n{}", r.summary, r.stderr);
    let master = r.report["pid"].as_u64().unwrap();
    let deaths = r.summary["died_before_signal"].as_array().unwrap();
    assert!(deaths.len() >= 2, "{}\n{}", r.summary, r.stderr);
    for death in deaths {
        assert_eq!(death["comm"], "gunicorn", "{death}");
        assert_ne!(death["pid"], master, "{death}");
        assert_eq!(death["after_signal"]["sig_name"], "SIGABRT", "{death}");
        assert_eq!(death["after_signal"]["from"]["pid"], master, "{death}");
        assert!(death["before_signal_ms"].as_u64().is_some(), "{death}");
        assert!(death["after_start_ms"].as_u64().unwrap() > 0, "{death}");
        let pid = death["pid"].as_u64().unwrap();
        assert!(
            r.stderr.contains(&format!(
                "gunicorn[{pid}] died before SIGTERM: {}",
                match death["code"].as_i64() {
                    Some(code) => format!("exit {code}"),
                    None => "killed by".to_string(),
                }
            )),
            "{}",
            r.stderr
        );
    }
    // Their requests were not answered successfully.
    let [completed, ..] = outcomes(&r.summary, "idle");
    assert_eq!(completed, 0, "{}", r.summary);
    // The failure shows gunicorn's own account.
    assert!(r.stderr.contains("WORKER TIMEOUT"), "{}", r.stderr);
}

/// A handler that fails: gunicorn's answers are HTTP 500s, which are not completions.
#[test]
fn gunicorn_errors_on_the_path_are_not_counted_completed() {
    let command = gunicorn_command(&["--workers", "4"]);
    let r = rehearse(
        &["--http", "--path", "/error", "--grace", "10"],
        &strs(&command),
    );
    assert_eq!(r.status, 1, "{}\n{}", r.summary, r.stderr);
    assert_eq!(
        outcomes(&r.summary, "in_flight"),
        [0, 3, 0, 0, 0],
        "{}",
        r.summary
    );
    assert_eq!(outcomes(&r.summary, "idle")[..2], [0, 3], "{}", r.summary);
    assert!(
        r.stderr
            .contains("3 request(s) in flight were answered with an error status (HTTP 500)"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.summary["died_before_signal"],
        Value::Array(vec![]),
        "{}",
        r.summary
    );
    // The server itself stopped as it should.
    assert_eq!(r.report["exit"]["code"], 0, "{}", r.report);
}

/// A server that ignores SIGTERM, a grace period longer than --max-duration: the run
/// ends at the deadline, with everything it started killed.
#[test]
fn max_duration_bounds_the_run() {
    let r = rehearse(
        &["--grace", "60", "--max-duration", "3"],
        &["python3", &script("server.py"), "ignore"],
    );
    assert_eq!(r.status, 1);
    assert_eq!(r.summary["timed_out"], true, "{}", r.summary);
    assert!(r.took < Duration::from_secs(12), "took {:?}", r.took);
    assert!(
        r.stderr
            .contains("--max-duration (3 s) ran out while waiting for CMD to stop"),
        "{}",
        r.stderr
    );
    // Killed, and its cgroup gone.
    assert_eq!(r.report["exit"]["signal"], 9, "{}", r.report);
    let pid = r.report["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "pid {pid} still exists");
    let cgroup = r.report["cgroup"].as_str().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (fields, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2")
                .then(|| fields.split_whitespace().nth(4).unwrap().to_string())
        })
        .expect("cgroup2 is mounted");
    let path = PathBuf::from(format!("{mount}{cgroup}"));
    assert!(!path.exists(), "{} is still there", path.display());
}
