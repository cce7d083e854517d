//! `watch --metrics`: a real Prometheus server (Debian's `prometheus`) scrapes observer on
//! loopback while services in a unit's cgroup stop three ways; its query API must return
//! the counts that the shutdown reports (and waitpid) say.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Observer, TIMEOUT, UnitCgroup, read_line, send_signal, servers_dir, temp_path, wait_timeout,
};
use serde_json::Value;

const UNIT: &str = "observer-metrics-test.service";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port`: (status code, Content-Type, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    // Prometheus answers chunked; its JSON body is the one chunk between the size lines.
    let body = if head.contains("Transfer-Encoding: chunked") {
        body.split("\r\n").nth(1).unwrap_or("").to_string()
    } else {
        body.to_string()
    };
    Ok((status, content_type, body))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping 127.0.0.1:`target` every second, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Self {
        let dir = temp_path("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: observer\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect(
                "starting prometheus (Debian package `prometheus`; `cargo xtask test` installs it)",
            );
        let prometheus = Self { child, port, dir };
        prometheus.wait_for(
            || http_get(port, "/-/ready").is_ok_and(|(status, _, _)| status == 200),
            "to be ready",
        );
        prometheus
    }

    /// The value of each series `query` returns, by the value of `label`.
    fn query(&self, query: &str, label: &str) -> Vec<(String, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(query));
        let Ok((200, _, body)) = http_get(self.port, &path) else {
            return Vec::new();
        };
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| {
                let name = series["metric"][label].as_str().unwrap_or("").to_string();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (name, value)
            })
            .collect()
    }

    fn wait_for(&self, mut condition: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "prometheus did not get {what} within {TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts server.py MODE in the unit, signals it (then SIGKILLs it after `kill_after`),
/// and returns its pid and wait status.
fn stop_in_unit(unit: &UnitCgroup, mode: &str, kill_after: Option<Duration>) -> (u32, i32) {
    let mut child = unit.spawn(
        Command::new("python3")
            .arg(servers_dir().join("server.py"))
            .arg(mode)
            .stdout(Stdio::piped()),
    );
    assert!(read_line(&mut child).starts_with("ready"));
    let pid = child.id();
    send_signal(pid, libc::SIGTERM);
    if let Some(grace) = kill_after {
        std::thread::sleep(grace);
        send_signal(pid, libc::SIGKILL);
    }
    let status = wait_timeout(&mut child);
    (pid, std::os::unix::process::ExitStatusExt::into_raw(status))
}

fn reports_written(observer: &Observer) -> Vec<Value> {
    std::fs::read_to_string(observer.output_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["type"] == "shutdown" || line["type"] == "deploy")
        .collect()
}

#[test]
fn prometheus_scrapes_what_the_shutdown_reports_say() {
    let metrics_port = free_port();
    let address = format!("127.0.0.1:{metrics_port}");
    let observer = Observer::start(&[
        "--metrics",
        &address,
        "--unit",
        UNIT,
        "--after-exit",
        "0.3",
        "--deploy-window",
        // The three stops are one deploy however slowly each server starts.
        "4",
    ]);
    let prometheus = Prometheus::start(metrics_port);
    prometheus.wait_for(
        || {
            !prometheus
                .query("up{job=\"observer\"} == 1", "job")
                .is_empty()
        },
        "a successful scrape of observer",
    );

    let unit = UnitCgroup::new(&format!("system.slice/{UNIT}"));
    let drained = stop_in_unit(&unit, "drain", None);
    let defaulted = stop_in_unit(&unit, "none", None);
    let killed = stop_in_unit(&unit, "ignore", Some(Duration::from_millis(300)));
    // Ground truth from waitpid: exit 0, died of SIGTERM, died of SIGKILL.
    assert_eq!(
        (drained.1, defaulted.1, killed.1),
        (0, libc::SIGTERM, libc::SIGKILL)
    );

    let deadline = Instant::now() + TIMEOUT;
    let reports = loop {
        let reports = reports_written(&observer);
        if reports.iter().any(|r| r["type"] == "deploy") {
            break reports;
        }
        assert!(Instant::now() < deadline, "no deploy report: {reports:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let shutdowns: Vec<&Value> = reports.iter().filter(|r| r["type"] == "shutdown").collect();
    let pids: Vec<u64> = shutdowns
        .iter()
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        [drained.0, defaulted.0, killed.0].map(u64::from),
        "{reports:#?}"
    );
    let verdict_count =
        |verdict: &str| shutdowns.iter().filter(|r| r["verdict"] == verdict).count();
    let deploy = reports.iter().find(|r| r["type"] == "deploy").unwrap();

    let service = format!("service=\"{UNIT}\"");
    prometheus.wait_for(
        || {
            prometheus
                .query(&format!("sum(observer_shutdowns_total{{{service}}})"), "")
                .first()
                .is_some_and(|(_, value)| *value == 3.0)
        },
        "three shutdowns",
    );
    let by_verdict = prometheus.query(&format!("observer_shutdowns_total{{{service}}}"), "verdict");
    for (verdict, value) in &by_verdict {
        assert_eq!(
            *value,
            verdict_count(verdict) as f64,
            "{verdict}: {by_verdict:?}"
        );
    }
    assert_eq!(verdict_count("killed"), 1, "{reports:#?}");
    // The deploy line comes a deploy window after the last stop: wait for a scrape
    // that has counted it.
    prometheus.wait_for(
        || {
            !prometheus
                .query(
                    &format!("observer_deploys_total{{{service}}} > 0"),
                    "verdict",
                )
                .is_empty()
        },
        "the deploy counted",
    );
    let deploys = prometheus.query(
        &format!("observer_deploys_total{{{service}}} > 0"),
        "verdict",
    );
    assert_eq!(
        deploys,
        [(deploy["verdict"].as_str().unwrap().to_string(), 1.0)]
    );
    let kills = prometheus.query(
        &format!("observer_sigkills_after_grace_total{{{service}}}"),
        "service",
    );
    assert_eq!(kills, [(UNIT.to_string(), 1.0)]);
    // Every shutdown that drained has a drain time; the histogram counts them.
    let drained_count = shutdowns
        .iter()
        .filter(|r| !r["drain_ms"].is_null())
        .count();
    let drains = prometheus.query(
        &format!("observer_shutdown_drain_seconds_count{{{service}}}"),
        "service",
    );
    assert_eq!(drains, [(UNIT.to_string(), drained_count as f64)]);
    let lost = prometheus.query("observer_lost_events_total", "job");
    assert_eq!(lost, [("observer".to_string(), 0.0)]);
    let exits = prometheus.query("observer_events_total{type=\"exit\"}", "type");
    assert!(exits.first().is_some_and(|(_, n)| *n >= 3.0), "{exits:?}");

    // The endpoint itself: the exposition content type, and nothing but /metrics.
    let (status, content_type, body) = http_get(metrics_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(body.contains("# TYPE observer_shutdown_drain_seconds histogram"));
    assert_eq!(http_get(metrics_port, "/other").unwrap().0, 404);
    drop(unit);
    observer.stop();
}

#[test]
fn a_metrics_address_in_use_fails_before_loading() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(observer_tests::observer_binary())
        .args(["watch", "--metrics", &address, "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address} for --metrics")),
        "{stderr}"
    );
    assert!(!stderr.contains("observer: watching"), "{stderr}");
}

/// `observer_kernel_records_total` from observer's endpoint.
fn kernel_records(port: u16) -> u64 {
    let (_, _, body) = http_get(port, "/metrics").unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix("observer_kernel_records_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no observer_kernel_records_total in\n{body}"))
}

/// Runs `count` short processes in the group; returns their pids (each checked to exit 0).
fn burst(unit: &UnitCgroup, count: usize) -> Vec<u32> {
    (0..count)
        .map(|_| {
            let mut child = unit.spawn(&mut Command::new("/bin/true"));
            assert!(wait_timeout(&mut child).success());
            child.id()
        })
        .collect()
}

/// Waits until the kernel-record count stops moving (the ring buffer is drained).
fn settled_records(port: u16) -> u64 {
    let mut last = kernel_records(port);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = kernel_records(port);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn the_kernel_skips_processes_outside_the_scope() {
    const BURST: usize = 300;
    let inside = UnitCgroup::new("system.slice/observer-scope-in.service");
    let outside = UnitCgroup::new("system.slice/observer-scope-out.service");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let observer = Observer::start(&["--metrics", &address, "--unit", "observer-scope-in.service"]);

    // A group that existed at start, and one created after it (found when an exit names
    // its unknown cgroup id: looked up by that id, the kernel's scope is synced).
    let before = settled_records(port);
    burst(&outside, BURST);
    let late = UnitCgroup::new("system.slice/observer-scope-late.service");
    burst(&late, 1);
    std::thread::sleep(Duration::from_millis(800));
    let before_late = settled_records(port);
    burst(&late, BURST);
    let after_outside = settled_records(port);
    let inside_pids = burst(&inside, BURST);
    let after_inside = settled_records(port);

    // Without the kernel filter every exit is a record: the in-scope burst shows it.
    assert!(
        after_inside - after_outside >= BURST as u64,
        "in scope: {} records for {BURST} exits",
        after_inside - after_outside
    );
    let (outside_records, late_records) = (before_late - before, after_outside - before_late);
    assert!(
        outside_records < 20 && late_records < 20,
        "out of scope: {outside_records} and {late_records} records for {BURST} exits each"
    );
    let events = observer.stop();
    for pid in &inside_pids {
        assert_eq!(events.exit_of(*pid)["code"], 0, "{}", events.dump());
    }
    assert_eq!(events.of_type("exit").count(), BURST, "{}", events.dump());
    drop((inside, outside, late));
}
