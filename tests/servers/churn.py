#!/usr/bin/env python3
"""Steady, ordinary churn for the soak test: what a CI runner or a shell-heavy host does
all day, compressed. Stops by itself after SECONDS.

usage: churn.py SECONDS [PROCESSES_PER_SECOND] [CONNECTIONS_PER_SECOND]
  - short-lived processes (fork, exit with code i % 200), PROCESSES_PER_SECOND of them
    (default 100); a quarter of them run until SIGTERM, sent 50-150 ms later;
  - loopback connections (connect, a byte each way, close) to a listener of its own,
    CONNECTIONS_PER_SECOND of them (default 300);
  - every few seconds a "server" child that listens, gets SIGTERM and exits 0.
Prints "ready" once its listener is up, then one line at the end:
  "done EXITS SIGTERMS CONNECTIONS" with what it did (its ground truth).
"""
import os, signal, socket, sys, threading, time

seconds = float(sys.argv[1])
process_rate = int(sys.argv[2]) if len(sys.argv) > 2 else 100
connection_rate = int(sys.argv[3]) if len(sys.argv) > 3 else 300
deadline = time.monotonic() + seconds
counts = {"exits": 0, "sigterms": 0, "connections": 0}

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(512)
port = listener.getsockname()[1]


def serve():
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            conn.recv(1)
            conn.sendall(b"y")
        except OSError:
            pass
        conn.close()


def connect():
    interval = 1.0 / connection_rate
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"x")
                s.recv(1)
            counts["connections"] += 1
        except OSError:
            pass
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def server_child():
    """A tiny server that stops on SIGTERM, as a deploy would stop it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    signal.sigwait({signal.SIGTERM})
    s.close()
    os._exit(0)


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    threading.Thread(target=serve, daemon=True).start()
    threading.Thread(target=connect, daemon=True).start()
    print("ready", flush=True)
    pending = []  # (when to SIGTERM, pid)
    interval = 1.0 / process_rate
    next_at = time.monotonic()
    i = 0
    next_server = time.monotonic()
    while time.monotonic() < deadline:
        i += 1
        long_lived = i % 4 == 0
        pid = os.fork()
        if pid == 0:
            if long_lived:
                time.sleep(30)
            os._exit(i % 200)
        if long_lived:
            pending.append((time.monotonic() + 0.05 + (i % 10) / 100, pid))
        if time.monotonic() >= next_server:
            next_server += 5
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            server = os.fork()
            if server == 0:
                server_child()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            pending.append((time.monotonic() + 0.5, server))
        now = time.monotonic()
        for when, victim in [p for p in pending if p[0] <= now]:
            os.kill(victim, signal.SIGTERM)
            counts["sigterms"] += 1
            pending.remove((when, victim))
        while True:
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break
            counts["exits"] += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    for _, victim in pending:
        os.kill(victim, signal.SIGTERM)
        counts["sigterms"] += 1
    while True:
        try:
            os.waitpid(-1, 0)
            counts["exits"] += 1
        except ChildProcessError:
            break
    print(f"done {counts['exits']} {counts['sigterms']} {counts['connections']}", flush=True)


main()
