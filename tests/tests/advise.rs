//! `observer advise`: a service stopped several times while a simulated load balancer
//! keeps routing to it for a known time after each stop begins. The advised pre-stop
//! delay and grace period must cover what was measured, and a stop with the advised
//! delay (the load balancer done before the signal) must come out clean.
use std::{
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    Events, Observer, UnitCgroup, read_line, servers_dir, temp_path, wait_timeout,
};
use serde_json::Value;

const UNIT: &str = "observer-advise-test.service";
const TIMING: &[&str] = &["--after-exit", "3", "--deploy-window", "1"];

/// One stop of server.py (which drains and exits 0) in the unit: the load balancer
/// keeps sending clients for `routing` after it starts deregistering the instance,
/// and the platform sends SIGTERM `pre_stop` after that start. Returns how many clients
/// were refused.
fn stop_once(unit: &UnitCgroup, routing: Duration, pre_stop: Duration) -> usize {
    let mut server = unit.spawn(
        Command::new("python3")
            .arg(servers_dir().join("server.py"))
            .arg("drain")
            .stdout(Stdio::piped()),
    );
    let ready = read_line(&mut server);
    let port: u16 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    let deregistering = Instant::now();
    let balancer = std::thread::spawn(move || {
        let mut refused = 0;
        while deregistering.elapsed() < routing {
            if TcpStream::connect(("127.0.0.1", port)).is_err() {
                refused += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        refused
    });
    std::thread::sleep(pre_stop);
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(
        wait_timeout(&mut server).success(),
        "server.py drains and exits 0"
    );
    balancer.join().unwrap()
}

fn advice_of(events: &Events) -> Value {
    let log = temp_path("advise.ndjson");
    std::fs::write(&log, &events.text).unwrap();
    let human = Command::new(observer_tests::observer_binary())
        .arg("advise")
        .args(TIMING)
        .arg(&log)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&human.stdout));
    let output = Command::new(observer_tests::observer_binary())
        .args(["advise", "--json"])
        .args(TIMING)
        .arg(&log)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|a| a["service"] == format!("unit:{UNIT}"))
        .expect("advice for the unit")
}

#[test]
fn the_advised_delay_covers_the_routing_lag_and_a_stop_with_it_is_clean() {
    let unit = UnitCgroup::new(UNIT);
    let observer = Observer::start(TIMING);
    let lags = [800, 400, 1_200].map(Duration::from_millis);
    for routing in lags {
        let refused = stop_once(&unit, routing, Duration::ZERO);
        assert!(refused > 0, "the balancer was refused after the exit");
        std::thread::sleep(Duration::from_millis(1_500)); // a deploy apart
    }
    std::thread::sleep(Duration::from_secs(4));
    let events = observer.stop();
    let advice = advice_of(&events);
    assert_eq!(advice["stops"], 3, "{advice}");
    let lag = advice["routing_lag"]["max_ms"].as_u64().unwrap();
    assert!(
        (1_100..1_700).contains(&lag),
        "the slowest lag measured is about 1.2 s: {advice}"
    );
    let pre_stop = advice["pre_stop_s"].as_u64().unwrap();
    assert!(pre_stop * 1_000 > lag, "{advice}");
    let drain_max = advice["drain"]["max_ms"].as_u64().unwrap();
    let grace = advice["grace_period_s"].as_u64().unwrap();
    assert!(grace * 1_000 > drain_max + pre_stop * 1_000 - 1, "{advice}");
    let findings: Vec<String> = events
        .of_type("shutdown")
        .map(|s| format!("{} {}", s["verdict"], s["findings"]))
        .collect();
    assert_eq!(
        advice["saved"].as_array().unwrap().len(),
        3,
        "every stop was only late routing: {advice}\n{findings:#?}"
    );

    // The same service stopped with the advised delay: clean.
    let observer = Observer::start(TIMING);
    let refused = stop_once(&unit, lags[2], Duration::from_secs(pre_stop));
    assert_eq!(refused, 0, "the balancer stopped before the signal");
    std::thread::sleep(Duration::from_secs(4));
    let events = observer.stop();
    let deploy = events
        .of_type("deploy")
        .find(|d| d["service"] == format!("unit:{UNIT}"))
        .expect("the deploy");
    assert_eq!(deploy["stopped_total"], 1, "{deploy}");
    assert_eq!(deploy["verdict"], "clean", "{deploy}");
    assert_eq!(deploy["refused_after_exit"], 0, "{deploy}");
}
