//! observer's NDJSON as a log pipeline takes it: Debian's logrotate rotating the output
//! during an exit storm (every exit in exactly one file, no partial line, no
//! duplicate), Debian's syslog-ng parsing the file with `json-parser()` (every line
//! arrives with its fields intact, the largest report included), and a closed port
//! hammered by clients (a few counted lines, with counts exact against the clients).
use std::{
    collections::HashMap,
    io::Write,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Observer, TIMEOUT, kernel_traces_rst_reasons, read_line, send_signal, servers_dir, temp_path,
    wait_timeout,
};
use serde_json::Value;

/// Every line of `files`, in order, each a whole JSON object.
fn lines_of(files: &[PathBuf]) -> Vec<Value> {
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in a partial line",
            file.display()
        );
        for line in text.lines() {
            lines.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", file.display())),
            );
        }
    }
    lines
}

/// Rotates `output` (observer's `--output`) with Debian's logrotate `times` times while
/// `storm` runs, using `rule` (`create` + a postrotate SIGHUP, or `copytruncate`).
fn rotate_during(observer: &Observer, rule: &str, storm: Child, times: usize) -> String {
    let output = observer.output_path();
    let dir = temp_path("logrotate");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("observer.conf");
    let postrotate = if rule == "create" {
        format!(
            "    postrotate\n        kill -HUP {}\n    endscript\n",
            observer.pid()
        )
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "{} {{\n    su root root\n    {rule}\n    rotate 50\n    missingok\n    nocompress\n\
             {postrotate}}}\n",
            output.display()
        ),
    )
    .unwrap();
    for _ in 0..times {
        std::thread::sleep(Duration::from_millis(400));
        let status = Command::new("logrotate")
            .args(["--force", "--state"])
            .arg(dir.join("state"))
            .arg(&config)
            .status()
            .expect("running logrotate: is Debian's logrotate installed?");
        assert!(status.success(), "logrotate failed");
    }
    let out = storm.wait_with_output().unwrap();
    assert!(out.status.success(), "storm.py failed");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout).unwrap()
}

/// The current file and every rotated one (FILE.1 … FILE.N), oldest first.
fn rotated_files(output: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=50)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", output.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(output.to_path_buf());
    files
}

fn storm_of_exits(count: &str) -> Child {
    Command::new("python3")
        .arg(servers_dir().join("storm.py"))
        .args(["exits", count])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting storm.py")
}

fn rotation_keeps_every_exit_once(rule: &str) {
    let observer = Observer::start(&["--signals", "TERM"]);
    let output = observer.output_path().to_path_buf();
    let storm = storm_of_exits("10000");
    let stdout = rotate_during(&observer, rule, storm, 4);
    std::thread::sleep(Duration::from_millis(300));
    let files = rotated_files(&output);
    let (text, _) = observer.stop_raw(libc::SIGINT);
    let mut lines = lines_of(&files[..files.len() - 1]);
    lines.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    for file in &files[..files.len() - 1] {
        let _ = std::fs::remove_file(file);
    }
    assert!(files.len() >= 3, "logrotate rotated: {files:?}");
    let truth = observer_tests::storm_reaped(&stdout);
    assert_eq!(truth.len(), 10_000);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for exit in lines.iter().filter(|l| l["type"] == "exit") {
        *seen.entry(exit["pid"].as_u64().unwrap()).or_default() += 1;
    }
    let lost: u64 = lines
        .iter()
        .filter(|l| l["type"] == "lost")
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    let missing = truth
        .keys()
        .filter(|pid| !seen.contains_key(&u64::from(**pid)))
        .count();
    let twice: Vec<_> = truth
        .keys()
        .filter(|pid| seen.get(&u64::from(**pid)).is_some_and(|&n| n > 1))
        .collect();
    assert!(twice.is_empty(), "{rule}: exits written twice: {twice:?}");
    assert_eq!(
        (missing, lost),
        (0, 0),
        "{rule}: every exit in exactly one file ({} files)",
        files.len()
    );
}

#[test]
fn logrotate_with_a_hup_keeps_every_line_once() {
    rotation_keeps_every_exit_once("create");
}

#[test]
fn logrotate_copytruncate_keeps_every_line_once() {
    rotation_keeps_every_exit_once("copytruncate");
}

/// `parsed` as syslog-ng's json-parser() hands it on: strings for scalars ("" for
/// null), a comma-separated list for an array of scalars, JSON text for an array of
/// objects, and nested objects as objects.
fn same_as_parsed(original: &Value, parsed: &Value) -> bool {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => o
            .iter()
            .all(|(key, value)| p.get(key).is_some_and(|pv| same_as_parsed(value, pv))),
        (Value::Object(o), _) => o.is_empty(),
        (Value::String(o), Value::String(p)) => o == p,
        (Value::Null, Value::String(p)) => p.is_empty(),
        (Value::Number(o), Value::String(p)) => o.to_string() == *p,
        (Value::Bool(o), Value::String(p)) => o.to_string() == *p,
        (Value::Array(items), Value::String(p)) if items.iter().all(|i| !i.is_object()) => {
            let scalars: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            scalars.join(",") == *p
        }
        (Value::Array(_), Value::String(p)) => {
            serde_json::from_str::<Value>(p).is_ok_and(|v| v == *original)
        }
        (Value::Array(o), _) => o.is_empty(),
        _ => false,
    }
}

/// tests/servers/server.py with no SIGTERM handler, listening: it and its port.
fn server_without_a_handler() -> (Child, u16) {
    let mut server = Command::new("python3")
        .arg(servers_dir().join("server.py"))
        .arg("none")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = read_line(&mut server);
    (
        server,
        ready.strip_prefix("ready ").unwrap().parse().unwrap(),
    )
}

/// A server killed while holding `connections` clients: its report is the largest line.
fn kill_a_busy_server(connections: usize) {
    let (mut server, port) = server_without_a_handler();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        client.write_all(b"x").unwrap();
        clients.push(client);
    }
    for _ in 0..connections {
        assert_eq!(read_line(&mut server), "accepted");
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGKILL) };
    wait_timeout(&mut server);
}

#[test]
fn syslog_ng_parses_every_line_with_its_fields_intact() {
    let observer = Observer::start(&["--after-exit", "1"]);
    let output = observer.output_path().to_path_buf();
    kill_a_busy_server(200);
    let mut storm = storm_of_exits("200");
    assert!(storm.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(1_500));
    // Keep the file: stop observer, then let syslog-ng read what it wrote.
    let kept = temp_path("kept.ndjson");
    std::fs::copy(&output, &kept).ok();
    let (text, _) = observer.stop_raw(libc::SIGINT);
    std::fs::write(&kept, &text).unwrap();
    let dir = temp_path("syslog-ng");
    std::fs::create_dir_all(&dir).unwrap();
    let parsed = dir.join("parsed.ndjson");
    let config = dir.join("syslog-ng.conf");
    std::fs::write(
        &config,
        format!(
            "@version: 3.38\noptions {{ stats-freq(0); }};\n\
             source s_observer {{ file(\"{}\" flags(no-parse) follow-freq(1) \
             log-msg-size(65536)); }};\n\
             parser p_observer {{ json-parser(prefix(\"observer.\")); }};\n\
             destination d_parsed {{ file(\"{}\" template(\"$(format-json --scope \
             dot-nv-pairs --key observer.*)\\n\")); }};\n\
             log {{ source(s_observer); parser(p_observer); destination(d_parsed); }};\n",
            kept.display(),
            parsed.display()
        ),
    )
    .unwrap();
    let mut syslog_ng = Command::new("syslog-ng")
        .arg("-F")
        .arg("-f")
        .arg(&config)
        .arg("-R")
        .arg(dir.join("persist"))
        .arg("-p")
        .arg(dir.join("pid"))
        .arg("-c")
        .arg(dir.join("ctl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting syslog-ng: is Debian's syslog-ng-core installed?");
    let originals: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    let received = loop {
        let got = std::fs::read_to_string(&parsed).unwrap_or_default();
        if got.lines().count() >= originals.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(syslog_ng.id() as i32, libc::SIGTERM) };
    let _ = syslog_ng.wait();
    let received: Vec<Value> = received
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["observer"].clone())
        .collect();
    assert_eq!(received.len(), originals.len(), "every line arrived");
    for (original, parsed) in originals.iter().zip(&received) {
        assert!(
            same_as_parsed(original, parsed),
            "fields changed on the way:\n{original}\n{parsed}"
        );
    }
    let largest = text.lines().map(str::len).max().unwrap();
    let report = originals
        .iter()
        .find(|l| l["type"] == "shutdown" && l["open_at_exit_total"] == 201)
        .unwrap_or_else(|| panic!("the busy server's report: {text}"));
    assert_eq!(
        serde_json::to_string(report).unwrap().len(),
        largest,
        "the largest line is the report"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&kept);
}

/// The bound the contract sets on every line.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// The refused connects of the storm, and the rate they are paced at.
const HAMMER_CONNECTS: u64 = 60_000;
const HAMMER_RATE: u64 = 20_000;

/// Connects to `port` on loopback `count` times, paced at `rate` a second: how many the
/// kernel refused (connect() failed with ECONNREFUSED).
fn hammer(port: u16, count: u64, rate: u64) -> u64 {
    let start = Instant::now();
    let mut refused = 0;
    for sent in 0..count {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            other => panic!("connect {sent} to the closed port: {other:?}"),
        }
        let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(ahead) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "hammer: {refused} refused in {seconds:.2} s ({:.0} connects/s)",
        count as f64 / seconds
    );
    refused
}

/// A server stopped by SIGTERM, then its port hammered: one `tcp_refused` line per
/// second with counts exact against the clients, no `tcp_reset` line per refusal, the
/// report's `refused_after_exit` and the deploy's exact, and a replay that agrees.
#[test]
fn a_closed_port_hammered_gives_a_few_exact_lines() {
    let timing = ["--after-exit", "30"];
    let observer = Observer::start(&timing);
    let (mut server, port) = server_without_a_handler();
    let pid = server.id();
    send_signal(pid, libc::SIGTERM);
    wait_timeout(&mut server);
    let refused = hammer(port, HAMMER_CONNECTS, HAMMER_RATE);
    let events = observer.stop();

    assert_eq!(refused, HAMMER_CONNECTS);
    assert_eq!(events.lost(), 0, "{}", events.stderr);
    let longest = events.text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= MAX_LINE_BYTES, "a line of {longest} bytes");
    let address = format!("127.0.0.1:{port}");
    let per_refusal = events
        .of_type("tcp_reset")
        .filter(|r| r["local"] == address.as_str() || r["remote"] == address.as_str())
        .count();
    assert_eq!(per_refusal, 0, "refusals written one by one");
    let lines: Vec<&Value> = events
        .of_type("tcp_refused")
        .filter(|r| r["refused"] == address.as_str())
        .collect();
    let sum = |field: &str| {
        lines
            .iter()
            .map(|l| l[field].as_u64().unwrap())
            .sum::<u64>()
    };
    let seconds = (HAMMER_CONNECTS / HAMMER_RATE) as usize;
    assert!(
        (seconds..=seconds * 4).contains(&lines.len()),
        "{} tcp_refused lines for {HAMMER_CONNECTS} refusals",
        lines.len()
    );
    assert_eq!(sum("received"), refused, "what the clients saw");
    let me = std::process::id();
    for line in &lines {
        assert_eq!(line["former_owner"]["pid"], pid, "{line}");
        assert_eq!(line["clients"][0]["pid"], me, "{line}");
        assert_eq!(line["clients"][0]["refused"], line["received"], "{line}");
    }
    let report = events.shutdown_of(pid);
    let deploy = events
        .of_type("deploy")
        .find(|d| d["stopped"].as_array().unwrap().contains(&pid.into()))
        .expect("the server's deploy");
    if kernel_traces_rst_reasons() {
        assert_eq!(sum("sent"), refused, "RSTs the server's host sent");
        assert!(lines.iter().all(|l| l["counted_for"] == pid));
        assert_eq!(report["refused_after_exit"], refused, "{report}");
        assert_eq!(deploy["refused_after_exit"], refused, "{deploy}");
    } else {
        // Before 6.10 the sent RST of a refusal is not traced: the clients' side only.
        assert_eq!(sum("sent"), 0);
    }
    events.assert_replay_is_identical(&timing);
}
