//! `observer report` on logs as they come: empty, garbled, truncated, from a newer
//! version, and large. Clear errors with line numbers, never a panic.
use std::process::Command;

use observer_tests::{observer_binary, temp_path};

fn report(content: &[u8]) -> (i32, String, String) {
    let log = temp_path("log.ndjson");
    std::fs::write(&log, content).unwrap();
    let output = Command::new(observer_binary())
        .args(["report", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&log);
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const EXIT_15: &str = r#"{"v":1,"type":"exit","time":"2026-11-24T22:00:00.000000000Z","mono_ns":1000000000,"host":"h","pid":42,"tid":42,"ppid":1,"comm":"app","code":null,"signal":15,"core_dumped":false,"status":143,"status_source":"kernel"}"#;

#[test]
fn an_empty_log_says_so() {
    let (status, stdout, stderr) = report(b"");
    assert_eq!((status, stdout.as_str()), (0, ""));
    assert!(stderr.contains("holds no events"), "{stderr}");
}

#[test]
fn garbled_and_truncated_lines_are_named_and_skipped() {
    let log = format!(
        "{EXIT_15}\nnot json\n{{\"v\":1,\"type\":\"exit\"}}\n{}",
        &EXIT_15[..50]
    );
    let (status, stdout, stderr) = report(log.as_bytes());
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains(":2: not JSON"), "{stderr}");
    assert!(stderr.contains(":3: not a valid exit event"), "{stderr}");
    assert!(stderr.contains(":4: not JSON"), "{stderr}");
    assert!(stderr.contains("3 lines"), "{stderr}");
    // The good line still counts: pid 42 died of SIGTERM, a termination signal.
    let report: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (&report["type"], &report["pid"]),
        (&"shutdown".into(), &42.into())
    );
}

#[test]
fn types_from_a_newer_version_are_skipped_quietly() {
    let log = format!(
        "{{\"v\":1,\"type\":\"future_event\",\"time\":\"x\",\"mono_ns\":1,\"host\":\"h\"}}\n{EXIT_15}\n"
    );
    let (status, stdout, stderr) = report(log.as_bytes());
    assert_eq!(status, 0, "{stderr}");
    // Only the shutdown: deploys start at a termination signal, which this log lacks.
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(r#""type":"shutdown""#) && stdout.contains(r#""pid":42"#));
}

#[test]
fn binary_garbage_and_huge_lines_do_not_panic() {
    let mut log: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    log.push(b'\n');
    log.extend(std::iter::repeat_n(b'x', 5_000_000));
    let (status, _, stderr) = report(&log);
    assert_eq!(status, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
