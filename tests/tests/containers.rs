//! Containers for real: a private dockerd (tests/src/docker.rs) runs the article's cases,
//! and every report is compared with the ground truth — `docker inspect` (the container's
//! id, name, image, PID 1, State.ExitCode), how long `docker stop` took, and what each
//! client saw. Each test starts its own dockerd and stops it at the end; if dockerd
//! cannot start, the test fails.
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use observer_tests::{
    Events, Observer, TIMEOUT,
    docker::{APP_IMAGE, BUSYBOX_IMAGE, Dockerd, HAPROXY_IMAGE},
    finding_codes as codes, temp_path,
    upstream::Upstream,
};
use serde_json::{Value, json};

/// Reports 2 s after an exit, deploys 3 s after the last termination signal (the replay
/// must be told the same).
const TIMING: &[&str] = &["--after-exit", "2", "--deploy-window", "3"];

fn observe(dockerd: &Dockerd) -> Observer {
    let root = dockerd.data_root().display().to_string();
    Observer::start(&[TIMING, &["--docker-root", &root]].concat())
}

/// What docker says about a container, to compare observer's identity fields with.
struct Truth {
    id: String,
    name: String,
    image: String,
    labels: Value,
}

fn truth(dockerd: &Dockerd, name: &str) -> Truth {
    let inspect = dockerd.inspect(name);
    Truth {
        id: inspect["Id"].as_str().unwrap().to_string(),
        name: inspect["Name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string(),
        image: inspect["Config"]["Image"].as_str().unwrap().to_string(),
        labels: inspect["Config"]["Labels"].clone(),
    }
}

/// `container_info` (of a report, a signal's target, an exit, a TCP event's process)
/// names the container exactly as docker inspect does.
fn assert_identity(info: &Value, truth: &Truth, what: &Value) {
    assert_eq!(info["id"], truth.id.as_str(), "{what}");
    assert_eq!(info["runtime"], "docker", "{what}");
    assert_eq!(info["name"], truth.name.as_str(), "{what}");
    assert_eq!(info["image"], truth.image.as_str(), "{what}");
    for (label, field) in [
        ("com.docker.compose.project", "compose_project"),
        ("com.docker.compose.service", "compose_service"),
    ] {
        let expected = truth.labels.get(label).cloned().unwrap_or(Value::Null);
        assert_eq!(
            info.get(field).cloned().unwrap_or(Value::Null),
            expected,
            "{field}: {what}"
        );
    }
}

/// Every event observer wrote about `pid` (signals to it, its exit, its TCP events and
/// its report) names the container.
fn assert_every_event_names(events: &Events, pid: u32, truth: &Truth) {
    let mut seen = 0;
    for line in &events.lines {
        let about = match line["type"].as_str().unwrap() {
            "signal" => &line["target"]["pid"],
            "exit" | "shutdown" | "tcp_listen" | "tcp_close_at_exit" | "tcp_accept" => &line["pid"],
            _ => continue,
        };
        if *about != pid {
            continue;
        }
        assert_identity(&line["container_info"], truth, line);
        let cgroup = line.get("cgroup").or(line["target"].get("cgroup"));
        if let Some(cgroup) = cgroup {
            assert!(cgroup.as_str().unwrap().ends_with(&truth.id), "{line}");
        }
        seen += 1;
    }
    assert!(seen >= 3, "few events about {pid}:\n{}", events.dump());
}

/// The single deploy report of `service`.
fn deploy_of<'a>(events: &'a Events, service: &str) -> &'a Value {
    let deploys: Vec<&Value> = events
        .of_type("deploy")
        .filter(|d| d["service"] == service)
        .collect();
    assert_eq!(deploys.len(), 1, "deploys of {service}:\n{}", events.dump());
    deploys[0]
}

/// The stop signals came from runc, which containerd's shim ran for dockerd: `sender`
/// is runc, `sender.via` names the shim.
fn assert_sent_through_the_runtime(signal: &Value) {
    let sender = &signal["sender"];
    assert_eq!(sender["comm"], "runc", "{signal}");
    let via = sender["via"].as_array().expect("sender.via");
    assert!(
        via.iter()
            .any(|p| p["comm"].as_str().unwrap().starts_with("containerd-shim")),
        "{signal}"
    );
}

fn exit_code(dockerd: &Dockerd, name: &str) -> i64 {
    dockerd.inspect(name)["State"]["ExitCode"].as_i64().unwrap()
}

/// RFC 3339 UTC (`2026-12-01T19:24:51.712345678Z`, as observer and docker write it) →
/// seconds since the epoch.
fn epoch_seconds(time: &str) -> f64 {
    let (date, clock) = time.trim_end_matches('Z').split_once('T').unwrap();
    let ymd: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m, d) = (ymd[0] - i64::from(ymd[1] <= 2), ymd[1], ymd[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let hms: Vec<f64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
    days as f64 * 86_400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

/// The report's exit is the one docker recorded (State.FinishedAt: when containerd saw
/// PID 1 exit), to within the time docker takes to notice.
fn assert_exit_time(report: &Value, dockerd: &Dockerd, name: &str) {
    let finished = dockerd.inspect(name)["State"]["FinishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let exit = report["exit"]["time"].as_str().unwrap();
    let lag = epoch_seconds(&finished) - epoch_seconds(exit);
    assert!(
        (-0.05..1.0).contains(&lag),
        "observer's exit {exit}, docker's FinishedAt {finished}"
    );
}

/// The pid of `parent`'s one child (e.g. the process tini started).
fn only_child(parent: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{parent} started no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the container");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A client that asked and had its answer (an idle keep-alive client).
fn idle_client(port: u16) -> TcpStream {
    let mut stream = connect(port);
    stream.write_all(b"ping\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert_eq!(line, "pong\n");
    stream
}

/// A client whose request is in flight (the server answers it after 60 s).
fn slow_client(port: u16) -> TcpStream {
    let mut stream = connect(port);
    stream.write_all(b"slow\n").unwrap();
    stream
}

/// What a connected client saw when the server went away.
fn fate(mut stream: TcpStream) -> &'static str {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => "closed",
        Ok(_) => "answered",
        Err(e) if e.kind() == ErrorKind::ConnectionReset => "reset",
        Err(e) => panic!("client read: {e}"),
    }
}

#[test]
fn a_shell_as_pid1_drops_sigterm_and_docker_stop_kills_it_after_the_timeout() {
    let dockerd = Dockerd::start();
    dockerd.import_busybox();
    let observer = observe(&dockerd);
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "shellform",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "sleep 600; true",
    ]);
    let pid = dockerd.pid_of("shellform");
    let truth = truth(&dockerd, "shellform");
    let took = dockerd.timed(&["stop", "-t", "2", "shellform"]);
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "shellform"), 137);
    assert!(took >= Duration::from_secs(2), "docker stop took {took:?}");
    let report = events.shutdown_of(pid);
    assert_eq!(report["comm"], "sh");
    assert_exit_time(report, &dockerd, "shellform");
    assert_eq!(report["exit"]["status"], 137, "{report}");
    assert_eq!(report["verdict"], "killed");
    // sh's child (sleep) was killed with it, never told.
    assert_eq!(
        codes(report),
        [
            "SIGNAL_IGNORED_BY_PID1",
            "SIGNAL_NOT_FORWARDED",
            "SIGKILL_AFTER_GRACE"
        ],
        "{report}"
    );
    assert_eq!(report["sigterm"]["result"], "ignored");
    let after = report["sigkill"]["after_sigterm_ms"].as_u64().unwrap();
    assert!(
        (2000..=took.as_millis() as u64).contains(&after),
        "SIGKILL {after} ms after SIGTERM; docker stop took {took:?}"
    );
    let signals = events.signals_to(pid);
    assert_eq!(signals[0]["sig_name"], "SIGTERM");
    assert_sent_through_the_runtime(signals[0]);
    assert_identity(&report["container_info"], &truth, report);
    assert_eq!(report["container"], truth.id.as_str());
    assert_every_event_names(&events, pid, &truth);
    let deploy = deploy_of(&events, "container:shellform");
    assert!(deploy["stopped"].as_array().unwrap().contains(&json!(pid)));
    assert_eq!(deploy["verdict"], "killed");
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn the_exec_form_with_a_handler_stops_clean() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    let observer = observe(&dockerd);
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "shop_web_1",
        "--network",
        "host",
        "--label",
        "com.docker.compose.project=shop",
        "--label",
        "com.docker.compose.service=web",
        APP_IMAGE,
        "python3",
        "/app.py",
        "drain",
        "18311",
    ]);
    dockerd.wait_for_log("shop_web_1", "ready");
    let pid = dockerd.pid_of("shop_web_1");
    let truth = truth(&dockerd, "shop_web_1");
    let took = dockerd.timed(&["stop", "-t", "10", "shop_web_1"]);
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "shop_web_1"), 0);
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    let report = events.shutdown_of(pid);
    assert_eq!(report["verdict"], "clean", "{report}");
    assert_eq!(codes(report), Vec::<&str>::new());
    assert_exit_time(report, &dockerd, "shop_web_1");
    assert_eq!(report["exit"]["code"], 0);
    assert_eq!(report["sigterm"]["handler"], "custom");
    assert_eq!(report["sigkill"], Value::Null);
    assert!(report["listener_closed_ms"].is_u64(), "{report}");
    assert_sent_through_the_runtime(events.signals_to(pid)[0]);
    assert_identity(&report["container_info"], &truth, report);
    assert_every_event_names(&events, pid, &truth);
    let deploy = deploy_of(&events, "compose:shop/web");
    assert_eq!(deploy["stopped"], json!([pid]));
    assert_eq!(deploy["verdict"], "clean");
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn init_forwards_sigterm_to_a_child_without_a_handler() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    let observer = observe(&dockerd);
    dockerd.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "withinit",
        "--network",
        "host",
        APP_IMAGE,
        "python3",
        "/app.py",
        "none",
        "18312",
    ]);
    dockerd.wait_for_log("withinit", "ready");
    let init = dockerd.pid_of("withinit");
    let child = only_child(init);
    let truth = truth(&dockerd, "withinit");
    let took = dockerd.timed(&["stop", "-t", "10", "withinit"]);
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "withinit"), 143);
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    let tini = events.shutdown_of(init);
    assert_exit_time(tini, &dockerd, "withinit");
    assert_eq!(tini["comm"], "docker-init");
    assert_eq!(tini["exit"]["code"], 143);
    assert_eq!(tini["exit"]["convention"], "128+SIGTERM");
    // tini passed on its child's death: the child's finding is the story, not tini's.
    assert_eq!(tini["verdict"], "clean", "{tini}");
    assert_eq!(codes(tini), Vec::<&str>::new(), "{tini}");
    assert_sent_through_the_runtime(events.signals_to(init)[0]);

    let python = events.shutdown_of(child);
    assert_eq!(python["exit"]["signal"], 15);
    assert_eq!(python["verdict"], "dropped");
    assert_eq!(codes(python), ["NO_SIGTERM_HANDLER", "LISTENER_NOT_CLOSED"]);
    assert_eq!(python["sigterm"]["from"]["pid"], init);
    // The child died at once: its container comes from the kernel, not /proc.
    let forwarded = events.signals_to(child);
    assert_eq!(forwarded[0]["sender"]["comm"], "docker-init");
    assert!(
        forwarded[0]["target"]["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&truth.id),
        "{}",
        forwarded[0]
    );
    assert_every_event_names(&events, child, &truth);
    assert_every_event_names(&events, init, &truth);
    let deploy = deploy_of(&events, "container:withinit");
    let mut stopped: Vec<u64> = deploy["stopped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    stopped.sort();
    assert_eq!(stopped, [init.min(child) as u64, init.max(child) as u64]);
    assert!(
        !events
            .of_type("deploy")
            .any(|d| d["service"].as_str().unwrap().starts_with("comm:")),
        "{}",
        events.dump()
    );
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn a_server_holding_clients_on_the_host_network_is_killed_after_the_timeout() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    let observer = observe(&dockerd);
    let port = 18313;
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "held",
        "--network",
        "host",
        APP_IMAGE,
        "python3",
        "/app.py",
        "none",
        &port.to_string(),
    ]);
    dockerd.wait_for_log("held", "ready");
    let pid = dockerd.pid_of("held");
    let truth = truth(&dockerd, "held");
    let idle: Vec<TcpStream> = (0..2).map(|_| idle_client(port)).collect();
    let slow = slow_client(port);
    std::thread::sleep(Duration::from_millis(200)); // the request is read
    let took = dockerd.timed(&["stop", "-t", "1", "held"]);
    let fates: Vec<&str> = idle.into_iter().map(fate).collect();
    let slow_fate = fate(slow);
    let refused = TcpStream::connect(("127.0.0.1", port))
        .expect_err("nothing listens after the container stopped");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    std::thread::sleep(Duration::from_millis(200));
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "held"), 137);
    assert!(took >= Duration::from_secs(1), "docker stop took {took:?}");
    assert_eq!(fates, ["closed", "closed"]);
    assert_eq!(slow_fate, "closed", "its request was read, never answered");
    let report = events.shutdown_of(pid);
    assert_eq!(report["verdict"], "killed");
    assert_eq!(
        codes(report),
        [
            "SIGNAL_IGNORED_BY_PID1",
            "SIGKILL_AFTER_GRACE",
            "CONNECTIONS_OPEN_AT_EXIT",
            "KEEPALIVE_OPEN_AT_EXIT",
            "LISTENER_NOT_CLOSED",
            "REFUSED_AFTER_EXIT"
        ],
        "{report}"
    );
    assert_eq!(
        (&report["in_flight_at_exit"], &report["idle_at_exit"]),
        (&json!(1), &json!(2)),
        "{report}"
    );
    assert_eq!(report["refused_after_exit"], 1);
    assert_every_event_names(&events, pid, &truth);
    // The refused client's RST names the container whose server listened there.
    let refusal = events
        .of_type("tcp_refused")
        .find(|r| r["former_owner"]["pid"] == pid)
        .expect("the refusal");
    assert_identity(&refusal["container_info"], &truth, refusal);
    let deploy = deploy_of(&events, "container:held");
    assert_eq!(
        (
            &deploy["dropped_connections"],
            &deploy["refused_after_exit"]
        ),
        (&json!(2), &json!(1)),
        "{deploy}"
    );
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn docker_kill_is_a_sigkill_without_sigterm() {
    let dockerd = Dockerd::start();
    dockerd.import_busybox();
    let observer = observe(&dockerd);
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "killed",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "sleep 600; true",
    ]);
    let pid = dockerd.pid_of("killed");
    let truth = truth(&dockerd, "killed");
    dockerd.docker(&["kill", "killed"]);
    dockerd.docker(&["wait", "killed"]);
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "killed"), 137);
    let report = events.shutdown_of(pid);
    assert_eq!(report["verdict"], "killed");
    assert_eq!(codes(report), ["SIGKILL_WITHOUT_SIGTERM"], "{report}");
    assert_exit_time(report, &dockerd, "killed");
    assert_eq!(report["sigterm"], Value::Null);
    assert_eq!(report["exit"]["signal"], 9);
    assert_sent_through_the_runtime(events.signals_to(pid)[0]);
    assert_every_event_names(&events, pid, &truth);
    events.assert_replay_is_identical(TIMING);
}

/// Starts the drain app on the host network as `name` with `extra` docker run flags.
fn run_app(dockerd: &Dockerd, name: &str, port: u16, extra: &[&str]) {
    let port = port.to_string();
    let mut args = vec!["run", "-d", "--name", name, "--network", "host"];
    args.extend(extra);
    args.extend([APP_IMAGE, "python3", "/app.py", "drain", &port]);
    dockerd.docker(&args);
    dockerd.wait_for_log(name, "ready");
}

#[test]
fn docker_restart_is_one_deploy_of_the_same_container() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    let observer = observe(&dockerd);
    run_app(&dockerd, "restarted", 18314, &[]);
    let old = dockerd.pid_of("restarted");
    let truth = truth(&dockerd, "restarted");
    dockerd.docker(&["restart", "-t", "10", "restarted"]);
    dockerd.wait_for_log("restarted", "ready");
    let new = dockerd.pid_of("restarted");
    assert_ne!(old, new);
    assert_eq!(truth.id, dockerd.inspect("restarted")["Id"]);
    let client = idle_client(18314);
    drop(client);
    let events = observer.stop();

    let report = events.shutdown_of(old);
    assert_eq!(report["verdict"], "clean", "{report}");
    assert_every_event_names(&events, old, &truth);
    let deploy = deploy_of(&events, "container:restarted");
    assert_eq!(deploy["stopped"], json!([old]));
    assert_eq!(deploy["started_pids"], json!([new]));
    assert!(deploy["listener_gap_ms"].is_u64(), "{deploy}");
    assert_eq!(deploy["verdict"], "clean");
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn a_container_recreated_with_a_new_id_is_one_deploy() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    let observer = observe(&dockerd);
    let labels = [
        "--label",
        "com.docker.compose.project=shop",
        "--label",
        "com.docker.compose.service=api",
    ];
    run_app(&dockerd, "shop_api_1", 18315, &labels);
    let old = dockerd.pid_of("shop_api_1");
    let old_truth = truth(&dockerd, "shop_api_1");
    let held = idle_client(18315);
    // What compose does on `up` after a change: stop and remove the old container,
    // create a new one (a new id) under the same project and service.
    dockerd.docker(&["stop", "-t", "1", "shop_api_1"]);
    dockerd.docker(&["rm", "shop_api_1"]);
    run_app(&dockerd, "shop_api_2", 18315, &labels);
    let new = dockerd.pid_of("shop_api_2");
    let new_truth = truth(&dockerd, "shop_api_2");
    assert_ne!(old_truth.id, new_truth.id);
    let held_fate = fate(held);
    let events = observer.stop();

    // The held client never closed: the server drained until docker's timeout.
    assert_eq!(held_fate, "closed");
    let report = events.shutdown_of(old);
    assert_eq!(report["verdict"], "killed", "{report}");
    assert_every_event_names(&events, old, &old_truth);
    let listen = events
        .of_type("tcp_listen")
        .find(|l| l["pid"] == new && l["action"] == "open")
        .expect("the new container's listener");
    assert_identity(&listen["container_info"], &new_truth, listen);
    let deploy = deploy_of(&events, "compose:shop/api");
    assert_eq!(deploy["stopped"], json!([old]));
    assert_eq!(deploy["started_pids"], json!([new]));
    assert!(deploy["listener_gap_ms"].as_u64().is_some(), "{deploy}");
    assert_eq!(deploy["verdict"], "killed");
    events.assert_replay_is_identical(TIMING);
}

#[test]
fn a_server_on_its_own_bridge_network_behind_docker_proxy() {
    let dockerd = Dockerd::start();
    dockerd.import_app();
    // A user-defined bridge (the default one is off: --bridge=none), on a subnet of its
    // own; clients only ever connect to 127.0.0.1, where docker-proxy listens.
    dockerd.docker(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        "10.213.213.0/24",
        "observer-test",
    ]);
    let observer = observe(&dockerd);
    let port = 18316;
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "bridged",
        "--network",
        "observer-test",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        APP_IMAGE,
        "python3",
        "/app.py",
        "none",
        "8080",
    ]);
    dockerd.wait_for_log("bridged", "ready");
    let pid = dockerd.pid_of("bridged");
    let truth = truth(&dockerd, "bridged");
    let address =
        dockerd.inspect("bridged")["NetworkSettings"]["Networks"]["observer-test"]["IPAddress"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(address.starts_with("10.213.213."), "{address}");
    let idle: Vec<TcpStream> = (0..2).map(|_| idle_client(port)).collect();
    let slow = slow_client(port);
    std::thread::sleep(Duration::from_millis(300));
    let took = dockerd.timed(&["stop", "-t", "1", "bridged"]);
    let fates: Vec<&str> = idle.into_iter().map(fate).collect();
    let slow_fate = fate(slow);
    std::thread::sleep(Duration::from_millis(300));
    let events = observer.stop();

    assert_eq!(exit_code(&dockerd, "bridged"), 137);
    assert!(took >= Duration::from_secs(1), "docker stop took {took:?}");
    assert_eq!(fates, ["closed", "closed"]);
    assert_eq!(slow_fate, "closed");
    let report = events.shutdown_of(pid);
    assert_eq!(report["verdict"], "killed");
    assert_eq!(
        (&report["in_flight_at_exit"], &report["idle_at_exit"]),
        (&json!(1), &json!(2)),
        "{report}"
    );
    // The container's connections are docker-proxy's, from the bridge's gateway.
    for connection in report["open_at_exit"].as_array().unwrap() {
        if connection["role"] == "inbound" {
            assert_eq!(connection["local"], format!("{address}:8080"), "{report}");
        }
    }
    assert_every_event_names(&events, pid, &truth);
    let deploy = deploy_of(&events, "container:bridged");
    assert_eq!(deploy["dropped_connections"], 1, "{deploy}");
    // docker-proxy's sockets to clients whose container already died are that same
    // loss, not a second one in a deploy of its own.
    let proxy_losses: Vec<&Value> = events
        .of_type("deploy")
        .filter(|d| d["service"] != "container:bridged" && d["dropped_connections"] != 0)
        .collect();
    assert!(proxy_losses.is_empty(), "{proxy_losses:#?}");
    // dockerd stopped docker-proxy (SIGINT) once the container was gone: its sockets to
    // the dead container (CLOSE_WAIT) are no pool left open.
    let proxy = events
        .of_type("shutdown")
        .find(|s| s["comm"] == "docker-proxy")
        .expect("docker-proxy's report");
    assert_eq!(proxy["sigterm"]["from"]["pid"], dockerd.pid(), "{proxy}");
    assert_eq!(proxy["verdict"], "clean", "{proxy}");
    assert_eq!(codes(proxy), Vec::<&str>::new(), "{proxy}");
    events.assert_replay_is_identical(TIMING);
}

/// HAProxy's official image stops it with SIGUSR1 (`STOPSIGNAL SIGUSR1`: its soft stop,
/// which lets requests in flight finish); `docker stop` sends the container's stop
/// signal, never SIGTERM. Here the host's HAProxy in master-worker mode, as that image
/// runs it, with `--stop-signal SIGUSR1`, and a request waiting 2 s on its upstream.
#[test]
fn docker_stop_with_haproxys_stop_signal_is_a_clean_soft_stop() {
    let dockerd = Dockerd::start();
    dockerd.import_haproxy();
    let upstream = Upstream::start(2);
    let config = temp_path("haproxy");
    std::fs::create_dir_all(&config).unwrap();
    let port = 18_316;
    std::fs::write(
        config.join("haproxy.cfg"),
        format!(
            "global\n  master-worker\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\n\
             frontend web\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  server upstream 127.0.0.1:{}\n",
            upstream.port
        ),
    )
    .unwrap();
    let observer = observe(&dockerd);
    let mount = format!("{}:/etc/haproxy:ro", config.display());
    dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "lb",
        "--network",
        "host",
        "--stop-signal",
        "SIGUSR1",
        "-v",
        &mount,
        HAPROXY_IMAGE,
        "/usr/sbin/haproxy",
        "-W",
        "-db",
        "-f",
        "/etc/haproxy/haproxy.cfg",
    ]);
    let master = dockerd.pid_of("lb");
    let worker = only_child(master);
    let mut client = wait_for_connect(port);
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let took = dockerd.timed(&["stop", "-t", "10", "lb"]);
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    let events = observer.stop();
    let _ = std::fs::remove_dir_all(&config);

    // Ground truth: the request finished, then HAProxy exited 0 well within the timeout.
    assert!(
        answer.starts_with("HTTP/1.0 200 OK"),
        "the client got {answer:?}"
    );
    assert_eq!(exit_code(&dockerd, "lb"), 0);
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}");
    let report = events.shutdown_of(master);
    assert_eq!(
        report["container_info"]["stop_signal"], "SIGUSR1",
        "{report}"
    );
    assert_eq!(report["sigterm"]["sig_name"], "SIGUSR1", "{report}");
    assert_eq!(report["sigterm"]["handler"], "custom", "{report}");
    assert_sent_through_the_runtime(events.signals_to(master)[0]);
    assert_eq!(report["exit"]["code"], 0, "{report}");
    assert_eq!(report["sigkill"], Value::Null, "{report}");
    assert_exit_time(report, &dockerd, "lb");
    // The master passed SIGUSR1 on; the worker drained the request, then exited.
    let drained = events.shutdown_of(worker);
    assert_eq!(drained["sigterm"]["sig_name"], "SIGUSR1", "{drained}");
    assert_eq!(drained["sigterm"]["from"]["pid"], master, "{drained}");
    assert!(drained["drain_ms"].as_u64().unwrap() >= 1_000, "{drained}");
    for shutdown in [report, drained] {
        assert_eq!(shutdown["verdict"], "clean", "{shutdown}");
        assert_eq!(codes(shutdown), Vec::<&str>::new(), "{shutdown}");
    }
    assert_eq!(deploy_of(&events, "container:lb")["verdict"], "clean");
    events.assert_replay_is_identical(TIMING);
}

/// A connection to a server starting in a container, retried until it listens.
fn wait_for_connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                return stream;
            }
            Err(e) => assert!(Instant::now() < deadline, "port {port}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
