//! A compressed day of ordinary churn: short processes, a quarter of them stopped with
//! SIGTERM, servers stopped as deploys stop them, loopback connections. observer's
//! memory must stay flat after warm-up, no line may pass the contract's bound, nothing
//! may be lost, and deploys stay bounded. `cargo xtask soak --minutes N` runs this
//! longer (OBSERVER_SOAK_SECONDS) and prints the samples.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{Observer, read_line, servers_dir, wait_timeout};

/// The contract's bound on one line.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// How much observer's RSS may move between the warm-up's end and the run's end.
const RSS_BAND_KIB: u64 = 6 * 1024;

/// observer's resident set and CPU time (user + system, in clock ticks) now.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

/// The interpreter itself, not a wrapper (pyenv's `python3` is a shell script whose own
/// children would count as the churn's).
fn python() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn memory_stays_flat_and_lines_bounded_under_endless_churn() {
    let seconds: u64 = std::env::var("OBSERVER_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let warm_up = Duration::from_secs((seconds / 3).max(20));
    let observer = Observer::start(&["--after-exit", "1", "--deploy-window", "5"]);
    let mut churn = Command::new(python())
        .arg(servers_dir().join("churn.py"))
        .arg(seconds.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting churn.py");
    assert_eq!(read_line(&mut churn), "ready");
    let start = Instant::now();
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut samples: Vec<(Duration, u64, f64)> = Vec::new();
    let mut last_ticks = sample(observer.pid()).1;
    let mut last_at = start;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(5));
        let (rss, ticks) = sample(observer.pid());
        let cpu = (ticks - last_ticks) as f64 / ticks_per_second / last_at.elapsed().as_secs_f64();
        (last_ticks, last_at) = (ticks, Instant::now());
        samples.push((start.elapsed(), rss, cpu * 100.0));
        eprintln!(
            "soak t={:>5.0}s rss={rss:>6} KiB cpu={:>5.1}%",
            start.elapsed().as_secs_f64(),
            cpu * 100.0
        );
    }
    let done = read_line(&mut churn);
    assert!(wait_timeout(&mut churn).success(), "churn.py failed");
    let events = observer.stop();

    let truth: Vec<u64> = done
        .strip_prefix("done ")
        .unwrap_or_else(|| panic!("churn.py said {done:?}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (exits, sigterms) = (truth[0], truth[1]);
    assert_eq!(events.lost(), 0, "nothing lost");
    let churn_pid = churn.id();
    let seen_exits = events
        .of_type("exit")
        .filter(|e| e["ppid"] == churn_pid)
        .count() as u64;
    assert_eq!(seen_exits, exits, "every child's exit, exactly once");
    let seen_sigterms = events
        .of_type("signal")
        .filter(|s| s["sender"]["pid"] == churn_pid && s["sig"] == 15)
        .count() as u64;
    assert_eq!(seen_sigterms, sigterms);
    let longest = events.text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= MAX_LINE_BYTES, "a line of {longest} bytes");
    for deploy in events.of_type("deploy") {
        assert!(
            deploy["stopped_total"].as_u64().unwrap() <= 1_000,
            "a deploy of bounded size: {deploy}"
        );
    }
    let after_warm_up: Vec<u64> = samples
        .iter()
        .filter(|(at, _, _)| *at >= warm_up)
        .map(|(_, rss, _)| *rss)
        .collect();
    assert!(after_warm_up.len() >= 3, "too few samples: {samples:?}");
    let (low, high) = (
        *after_warm_up.iter().min().unwrap(),
        *after_warm_up.iter().max().unwrap(),
    );
    assert!(
        high - low <= RSS_BAND_KIB,
        "observer's RSS moved {} KiB after warm-up: {samples:?}",
        high - low
    );
    eprintln!(
        "soak: {exits} exits, {sigterms} SIGTERMs, {} connections in {seconds} s; RSS after \
         warm-up {low}-{high} KiB; longest line {longest} bytes",
        truth[2]
    );
}
