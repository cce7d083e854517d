#!/usr/bin/env python3
"""A TCP server with one way of handling SIGTERM, for the shutdown-report tests.

usage: server.py MODE
  none        no handler: dies of SIGTERM's default action
  ignore      SIGTERM ignored (SIG_IGN)
  drain       correct: close the listener, wait for connections to finish, exit 0
  keepalive   close the listener, wait up to 1 s for connections (idle ones never
              finish), then the timeout fallback exit(1)
  accept      keep accepting for 1 s after SIGTERM, then close and exit 0
Prints "ready PORT", "accepted" per connection, "term" when SIGTERM is handled.
"""
import os, signal, socket, sys, threading, time

mode = sys.argv[1]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
listener.settimeout(0.02)
term = threading.Event()
connections = []

def say(line):
    print(line, flush=True)

if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode != "none":
    signal.signal(signal.SIGTERM, lambda *_: term.set())

say(f"ready {listener.getsockname()[1]}")
accept_until = None
while True:
    if term.is_set() and accept_until is None:
        say("term")
        accept_until = time.monotonic() + (1.0 if mode == "accept" else 0)
    if accept_until is not None and time.monotonic() >= accept_until:
        break
    try:
        conn, _ = listener.accept()
        connections.append(conn)
        say("accepted")
    except socket.timeout:
        pass

listener.close()
deadline = time.monotonic() + 1.0
for conn in connections:
    conn.settimeout(max(0.0, deadline - time.monotonic()) or 0.001)
    try:
        while conn.recv(4096):
            pass
        conn.close()
    except (socket.timeout, OSError):
        pass
if mode == "keepalive" and any(c.fileno() != -1 for c in connections):
    os._exit(1)
os._exit(0)
