//! TCP evidence against real sockets on loopback, IPv4 and IPv6: resets with their
//! reasons and owners, connections held at exit, accepts after a termination signal, and
//! clients refused by a dead server.
use std::{
    io::Write,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use observer_tests::{
    Events, Observer,
    attachments::linked_programs,
    expected_rst_reason, kernel_traces_rst_reasons, own_comm, read_line, send_signal,
    sockets::{self, pin_to_cpu0, set_linger_zero},
    testee::{command, start_interactive},
    wait_timeout,
};
use serde_json::{Value, json};

const LOOPBACKS: [&str; 2] = ["127.0.0.1", "[::1]"];

fn me() -> Value {
    json!(std::process::id())
}

/// The one tcp_reset in `direction` whose local and remote match.
fn the_reset<'a>(events: &'a Events, direction: &str, local: &str, remote: &str) -> &'a Value {
    let resets: Vec<_> = events
        .of_type("tcp_reset")
        .filter(|r| r["direction"] == direction && r["local"] == local && r["remote"] == remote)
        .collect();
    assert_eq!(
        resets.len(),
        1,
        "{direction} resets {local} -> {remote}: {resets:#?}\n{}",
        events.dump()
    );
    resets[0]
}

/// Waits until the peer has seen our RST (a read fails or returns EOF).
fn wait_for_reset(stream: &mut TcpStream) {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let _ = stream.read(&mut buf);
}

#[test]
fn closing_with_unread_data_sends_tcp_abort_on_close() {
    for host in LOOPBACKS {
        let observer = Observer::start(&[]);
        let listener = TcpListener::bind(format!("{host}:0")).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"unread request").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (server_addr, client_addr) =
            (server.local_addr().unwrap(), server.peer_addr().unwrap());
        drop(server); // unread data: the kernel aborts the connection
        wait_for_reset(&mut client);
        let events = observer.stop();

        let sent = the_reset(
            &events,
            "sent",
            &server_addr.to_string(),
            &client_addr.to_string(),
        );
        let reason = expected_rst_reason("TCP_ABORT_ON_CLOSE");
        assert_eq!(sent["reason"], reason, "{sent}");
        assert_eq!(
            (&sent["pid"], &sent["comm"]),
            (&me(), &json!(own_comm())),
            "{sent}"
        );
        let received = the_reset(
            &events,
            "received",
            &client_addr.to_string(),
            &server_addr.to_string(),
        );
        assert_eq!(received["pid"], me(), "{received}");
        assert_eq!(received["reason"], json!(null), "{received}");
    }
}

#[test]
fn so_linger_zero_sends_tcp_state_and_the_peer_receives_it() {
    for host in LOOPBACKS {
        let observer = Observer::start(&[]);
        let listener = TcpListener::bind(format!("{host}:0")).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (client_addr, server_addr) =
            (client.local_addr().unwrap(), client.peer_addr().unwrap());
        set_linger_zero(&client);
        drop(client);
        wait_for_reset(&mut server);
        let events = observer.stop();

        let sent = the_reset(
            &events,
            "sent",
            &client_addr.to_string(),
            &server_addr.to_string(),
        );
        assert_eq!(sent["reason"], expected_rst_reason("TCP_STATE"), "{sent}");
        assert_eq!(sent["pid"], me(), "{sent}");
        // The peer's RST received, on the accepted (inbound) socket.
        let received = the_reset(
            &events,
            "received",
            &server_addr.to_string(),
            &client_addr.to_string(),
        );
        assert_eq!(
            (&received["pid"], &received["state"]),
            (&me(), &json!("ESTABLISHED"))
        );
    }
}

#[test]
fn a_connect_to_a_closed_port_is_refused_with_no_socket() {
    for host in LOOPBACKS {
        // A port nobody listens on (briefly ours, so it is free).
        let port = TcpListener::bind(format!("{host}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let observer = Observer::start(&["--resets", "each"]);
        let refused = TcpStream::connect(target).unwrap_err();
        let events = observer.stop();
        assert_eq!(events.of_type("tcp_refused").count(), 0, "--resets each");

        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let sent: Vec<_> = events
            .of_type("tcp_reset")
            .filter(|r| r["direction"] == "sent" && r["local"] == target.to_string())
            .collect();
        if kernel_traces_rst_reasons() {
            assert_eq!(sent.len(), 1, "{}", events.dump());
            assert_eq!(sent[0]["reason"], "NO_SOCKET");
            assert_eq!(
                (&sent[0]["pid"], &sent[0]["comm"]),
                (&json!(null), &json!(null))
            );
        } else {
            // Not traced before 6.10: nothing, rather than a guess.
            assert!(sent.is_empty(), "{}", events.dump());
        }
        // The client's SYN_SENT socket receives it.
        let received: Vec<_> = events
            .of_type("tcp_reset")
            .filter(|r| r["direction"] == "received" && r["remote"] == target.to_string())
            .collect();
        assert_eq!(received.len(), 1, "{}", events.dump());
        assert_eq!(
            (&received[0]["pid"], &received[0]["state"]),
            (&me(), &json!("SYN_SENT"))
        );
    }
}

#[test]
fn connections_held_at_exit_are_closed_by_the_kernel_with_their_roles() {
    connections_held_at_exit_are_reported(&[]);
}

/// BTF from a file (`OBSERVER_BTF`, for kernels built without their own) gives offsets
/// but no typed pointers: the verifier checks those against the kernel's BTF. The hot
/// path is then the classic tracepoint, and the owner's comm (its leader's) and the
/// exiting check come through bpf_probe_read_kernel, with the same results.
#[test]
fn btf_from_a_file_reads_through_helpers_with_the_same_results() {
    let copy = std::env::temp_dir().join(format!("observer-vmlinux-{}", std::process::id()));
    std::fs::copy("/sys/kernel/btf/vmlinux", &copy).unwrap();
    let copy_path = copy.to_str().unwrap();
    assert_check_attaches_the_classic_hot_path(copy_path);
    connections_held_at_exit_are_reported(&[("OBSERVER_BTF", copy_path)]);
    std::fs::remove_file(copy).unwrap();
}

/// `observer check`, with `OBSERVER_BTF` set to `btf`, attaches the per-connection
/// program to the classic tracepoint.
fn assert_check_attaches_the_classic_hot_path(btf: &str) {
    let check = std::process::Command::new(observer_tests::observer_binary())
        .arg("check")
        .env("OBSERVER_BTF", btf)
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.lines().any(|line| line.starts_with("ok")
            && line.contains("tcp_state_tp")
            && line.ends_with("attached to sock:inet_sock_set_state")),
        "{check}"
    );
}

/// A server holding a listener, two accepted connections and one of its own exits: each
/// is reported as closed by its exit, with its role, and the exit is exact.
fn connections_held_at_exit_are_reported(env: &[(&str, &str)]) {
    for host in LOOPBACKS {
        let ours = TcpListener::bind(format!("{host}:0")).unwrap();
        let observer = Observer::start_with_env(&[], env);
        let (mut server, port) = start_interactive(&["tcp-server", &format!("{host}:0")]);
        let pid = server.id();
        let server_addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(server_addr).unwrap())
            .collect();
        for _ in 0..2 {
            assert!(read_line(&mut server).starts_with("accepted"));
        }
        command(
            &mut server,
            &format!("connect {}", ours.local_addr().unwrap().port()),
        );
        assert_eq!(read_line(&mut server), "connected");
        let (outbound_peer, _) = ours.accept().unwrap();
        command(&mut server, "exit");
        assert_eq!(wait_timeout(&mut server).code(), Some(0));
        std::thread::sleep(Duration::from_millis(100));
        let events = observer.stop();

        let mut closes: Vec<(String, String, String, String)> = events
            .of_type("tcp_close_at_exit")
            .filter(|c| c["pid"] == pid)
            .map(|c| {
                assert_eq!(c["comm"], "testee");
                let text = |k: &str| c[k].as_str().unwrap().to_string();
                (text("role"), text("local"), text("remote"), text("state"))
            })
            .collect();
        closes.sort();
        let mut expected = vec![
            (
                "listener".to_string(),
                server_addr.to_string(),
                unspecified(host),
                "LISTEN".to_string(),
            ),
            (
                "outbound".to_string(),
                outbound_peer.peer_addr().unwrap().to_string(),
                ours.local_addr().unwrap().to_string(),
                "ESTABLISHED".to_string(),
            ),
        ];
        for client in &clients {
            expected.push((
                "inbound".to_string(),
                server_addr.to_string(),
                client.local_addr().unwrap().to_string(),
                "ESTABLISHED".to_string(),
            ));
        }
        expected.sort();
        assert_eq!(closes, expected, "{}", events.dump());
        // The clients' sockets (ours) were not closed by an exit.
        assert!(
            events
                .of_type("tcp_close_at_exit")
                .all(|c| c["pid"] != me())
        );
        let exit = events.exit_of(pid);
        assert_eq!(
            (&exit["code"], &exit["status_source"]),
            (&json!(0), &json!("kernel"))
        );
        // The kernel closes a process's sockets after it reports the exit, and observer
        // writes them in that order, though this exit (nobody signalled it) reaches it
        // through an exit stage and the closes through the ring buffer.
        let line_of = |kind: &str| {
            events
                .lines
                .iter()
                .position(|line| line["type"] == kind && line["pid"] == pid)
                .unwrap()
        };
        assert!(
            line_of("exit") < line_of("tcp_close_at_exit"),
            "{}",
            events.dump()
        );
    }
}

fn unspecified(host: &str) -> String {
    if host.starts_with('[') {
        "[::]:0".to_string()
    } else {
        "0.0.0.0:0".to_string()
    }
}

#[test]
fn accepts_after_sigterm_are_counted_exactly() {
    let observer = Observer::start(&[]);
    let (mut server, port) = start_interactive(&["tcp-server", "127.0.0.1:0", "handler"]);
    let pid = server.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut before: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..2 {
        assert!(read_line(&mut server).starts_with("accepted"));
    }
    send_signal(pid, libc::SIGTERM);
    assert_eq!(read_line(&mut server), "term");
    observer.wait_for_line(|line| line["type"] == "signal" && line["target"]["pid"] == pid);
    let after: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        assert!(read_line(&mut server).starts_with("accepted"));
    }
    command(&mut server, "exit");
    wait_timeout(&mut server);
    let events = observer.stop();

    let accepts: Vec<_> = events
        .of_type("tcp_accept")
        .filter(|a| a["pid"] == pid)
        .collect();
    let mut remotes: Vec<&str> = accepts
        .iter()
        .map(|a| a["remote"].as_str().unwrap())
        .collect();
    remotes.sort();
    let mut expected: Vec<String> = after
        .iter()
        .map(|c| c.local_addr().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(remotes, expected, "{}", events.dump());
    assert!(accepts.iter().all(|a| a["local"] == addr.to_string()));
    // Who the signal's target is, read while it keeps serving: its executable, command
    // line, and the listener it holds.
    let signal: Vec<_> = events
        .signals_to(pid)
        .into_iter()
        .filter(|s| s["sig"] == 15)
        .collect();
    let target = &signal[0]["target"];
    let testee = observer_tests::testee::testee_path();
    assert_eq!(target["exe"], testee.to_str().unwrap(), "{target}");
    assert_eq!(
        target["cmdline"],
        json!([
            testee.to_str().unwrap(),
            "tcp-server",
            "127.0.0.1:0",
            "handler"
        ])
    );
    assert_eq!(target["listening"], json!([addr.to_string()]));
    before
        .iter_mut()
        .for_each(|c| c.shutdown(Shutdown::Both).unwrap());
}

/// The accept program sits on syscall tracepoints, which slow every syscall on the host:
/// it is attached from a termination signal until its target exits, not otherwise.
#[test]
fn accepts_are_traced_only_while_a_process_shuts_down() {
    let observer = Observer::start(&[]);
    // sys_exit_accept's links: one per syscall, accept4() and accept(), when attached.
    let accept_links = || {
        let attached = linked_programs(observer.pid());
        assert!(
            attached.iter().any(|p| p == "tcp_state"),
            "the always-on programs are visible: {attached:?}"
        );
        attached.iter().filter(|p| *p == "sys_exit_accept").count()
    };
    assert_eq!(accept_links(), 0, "attached before any shutdown");
    let (mut server, port) = start_interactive(&["tcp-server", "127.0.0.1:0", "handler"]);
    let pid = server.id();
    send_signal(pid, libc::SIGTERM);
    assert_eq!(read_line(&mut server), "term");
    observer.wait_for_line(|line| line["type"] == "signal" && line["target"]["pid"] == pid);
    assert_eq!(
        accept_links(),
        2,
        "not attached once the signal was reported"
    );
    let _client = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    assert!(read_line(&mut server).starts_with("accepted"));
    command(&mut server, "exit");
    wait_timeout(&mut server);
    observer.wait_for_line(|line| line["type"] == "exit" && line["pid"] == pid);
    // Detached once no shutdown has been under way for a second (no flapping through a
    // rolling restart).
    let deadline = Instant::now() + Duration::from_secs(3);
    while accept_links() > 0 {
        assert!(Instant::now() < deadline, "still attached after the exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = observer.stop();
    let accepts = events.of_type("tcp_accept").filter(|a| a["pid"] == pid);
    assert_eq!(accepts.count(), 1, "{}", events.dump());
}

#[test]
fn clients_refused_after_the_server_exits_are_tied_to_its_port() {
    for host in LOOPBACKS {
        let observer = Observer::start(&["--resets", "each"]);
        let (mut server, port) = start_interactive(&["tcp-server", &format!("{host}:0")]);
        let pid = server.id();
        command(&mut server, "exit");
        wait_timeout(&mut server);
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let refusals = (0..3)
            .filter(|_| {
                TcpStream::connect(addr)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .count();
        let events = observer.stop();

        assert_eq!(refusals, 3);
        let refused: Vec<_> = events
            .of_type("tcp_reset")
            .filter(|r| r["direction"] == "sent" && r["local"] == addr.to_string())
            .collect();
        if !kernel_traces_rst_reasons() {
            // Not traced before 6.10; the refused clients still see their RSTs.
            assert!(refused.is_empty(), "{}", events.dump());
            let received = events
                .of_type("tcp_reset")
                .filter(|r| r["direction"] == "received" && r["remote"] == addr.to_string())
                .filter(|r| r["state"] == "SYN_SENT")
                .count();
            assert_eq!(received, 3, "{}", events.dump());
            continue;
        }
        assert_eq!(refused.len(), 3, "{}", events.dump());
        for reset in refused {
            assert_eq!(reset["pid"], json!(null), "{reset}");
            assert_eq!(reset["reason"], "NO_SOCKET", "{reset}");
            assert_eq!(
                reset["former_owner"],
                json!({"pid": pid, "comm": "testee"}),
                "{reset}"
            );
        }
    }
}

/// By default the refusals of an address are counted into one `tcp_refused` line (the
/// RSTs sent and those the clients received), in place of a `tcp_reset` each.
#[test]
fn refusals_are_counted_into_one_line_per_address() {
    for host in LOOPBACKS {
        let observer = Observer::start(&[]);
        let (mut server, port) = start_interactive(&["tcp-server", &format!("{host}:0")]);
        let pid = server.id();
        command(&mut server, "exit");
        wait_timeout(&mut server);
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        for _ in 0..3 {
            let refused = TcpStream::connect(addr).unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        let events = observer.stop();

        let lines: Vec<_> = events
            .of_type("tcp_refused")
            .filter(|r| r["refused"] == addr.to_string())
            .collect();
        assert_eq!(lines.len(), 1, "{}", events.dump());
        let line = lines[0];
        let sent = if kernel_traces_rst_reasons() { 3 } else { 0 };
        assert_eq!(
            (&line["port"], &line["sent"], &line["received"]),
            (
                &json!(port.parse::<u16>().unwrap()),
                &json!(sent),
                &json!(3)
            ),
            "{line}"
        );
        if kernel_traces_rst_reasons() {
            assert_eq!(line["former_owner"], json!({"pid": pid, "comm": "testee"}));
        } else {
            // Known from the RSTs sent, which are not traced before 6.10.
            assert_eq!(line["former_owner"], json!(null), "{line}");
        }
        // It exited on its own: no report counts them.
        assert_eq!(line["counted_for"], json!(null), "{line}");
        assert_eq!(line["clients"][0]["pid"], me(), "{line}");
        assert_eq!(line["clients"][0]["refused"], 3, "{line}");
        assert_eq!(line["clients_total"], 1, "{line}");
        let one_by_one = events
            .of_type("tcp_reset")
            .filter(|r| r["local"] == addr.to_string() || r["remote"] == addr.to_string())
            .count();
        assert_eq!(one_by_one, 0, "{}", events.dump());
    }
}

#[test]
fn without_btf_listeners_come_from_the_classic_tracepoint() {
    // Without BTF there are no socket offsets, and no typed tracepoint: the typed
    // inet_sock_set_state program cannot load; the classic one, whose record carries the
    // addresses, takes over.
    assert_check_attaches_the_classic_hot_path("/nonexistent/vmlinux");
    for host in LOOPBACKS {
        let observer = Observer::start_with_env(&[], &[("OBSERVER_BTF", "/nonexistent/vmlinux")]);
        let (mut server, port) = start_interactive(&["tcp-server", &format!("{host}:0")]);
        let pid = server.id();
        let server_addr = format!("{host}:{port}");
        command(&mut server, "exit");
        assert_eq!(wait_timeout(&mut server).code(), Some(0));
        std::thread::sleep(Duration::from_millis(100));
        let events = observer.stop();

        let actions: Vec<(&str, &str)> = events
            .of_type("tcp_listen")
            .filter(|l| l["pid"] == pid)
            .map(|l| (l["action"].as_str().unwrap(), l["local"].as_str().unwrap()))
            .collect();
        assert_eq!(
            actions,
            [
                ("open", server_addr.as_str()),
                ("close", server_addr.as_str())
            ],
            "{}",
            events.dump()
        );
    }
}

/// Connection owners are kept per socket address and never deleted, so a freed socket's
/// owner stays behind. The kernel reuses a freed socket's memory for the next socket
/// allocated on the same CPU: here, another process's aborted outbound socket is freed
/// just before our listener's next accepted socket is created. An RST that socket then
/// receives must not be laid at the other process's door.
#[test]
fn a_reused_socket_address_does_not_inherit_its_former_owner() {
    pin_to_cpu0();
    let target = TcpListener::bind("127.0.0.1:0").unwrap(); // never accepts
    let observer = Observer::start(&[]);
    // Seen opening, so observer knows who listens on its port.
    let ours = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut aborter, _) = start_interactive(&["tcp-server", "127.0.0.1:0"]);
    command(&mut aborter, "pin");
    assert_eq!(read_line(&mut aborter), "pinned");
    let abort = format!("abort {}", target.local_addr().unwrap().port());
    let mut clients = Vec::new();
    for _ in 0..20 {
        // Our client's sock is allocated first, so the accepted one comes next.
        let fd = sockets::unconnected_socket();
        command(&mut aborter, &abort);
        assert_eq!(read_line(&mut aborter), "aborted");
        let client = sockets::connect(fd, ours.local_addr().unwrap());
        let (mut accepted, _) = ours.accept().unwrap();
        set_linger_zero(&client);
        let client_addr = client.local_addr().unwrap();
        drop(client); // its RST is received by the accepted socket, in softirq
        wait_for_reset(&mut accepted);
        clients.push(client_addr);
    }
    command(&mut aborter, "exit");
    wait_timeout(&mut aborter);
    let events = observer.stop();

    let local = ours.local_addr().unwrap().to_string();
    for client in clients {
        let received = the_reset(&events, "received", &local, &client.to_string());
        // Its accept() was not traced: the sole process listening on the port.
        assert_eq!(received["pid"], me(), "{received}");
    }
}

/// A server started before observer was never seen opening its listener; the /proc read
/// at its SIGTERM teaches observer that it listens, so an RST one of its connections
/// (accepted before the signal, so untraced) receives during the drain names it.
#[test]
fn a_server_older_than_observer_is_named_for_resets_during_its_drain() {
    let (mut server, port) = start_interactive(&["tcp-server", "127.0.0.1:0", "handler"]);
    let pid = server.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = TcpStream::connect(addr).unwrap();
    assert!(read_line(&mut server).starts_with("accepted"));
    let observer = Observer::start(&[]);
    send_signal(pid, libc::SIGTERM);
    assert_eq!(read_line(&mut server), "term");
    observer.wait_for_line(|line| line["type"] == "signal" && line["target"]["pid"] == pid);
    let client_addr = client.local_addr().unwrap();
    set_linger_zero(&client);
    drop(client); // the server's socket receives the RST, in softirq
    std::thread::sleep(Duration::from_millis(100));
    command(&mut server, "exit");
    wait_timeout(&mut server);
    let events = observer.stop();

    let received = the_reset(
        &events,
        "received",
        &addr.to_string(),
        &client_addr.to_string(),
    );
    assert_eq!(
        (&received["pid"], &received["comm"]),
        (&json!(pid), &json!("testee")),
        "{received}"
    );
}
