#!/usr/bin/env python3
"""A line server run inside the test containers (tests/tests/containers.rs).

usage: app.py MODE PORT
  drain   SIGTERM handler: close the listener, let the connections finish (each client
          closes after its answer), exit 0 once they are gone (at most 5 s, else exit 1)
  none    no handler: dies of SIGTERM's default action (ignored by the kernel when this
          is its PID namespace's init)
Listens on 0.0.0.0:PORT. A client's line "ping" is answered "pong" at once; "slow" is
answered after 60 s (a request in flight). Prints "ready PORT", "accepted" per
connection and "term" when the handler runs (docker logs).
"""
import os, select, signal, socket, sys, time

mode, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(64)
term = False

def say(line):
    print(line, flush=True)

def on_term(*_):
    global term
    term = True

if mode == "drain":
    signal.signal(signal.SIGTERM, on_term)

say(f"ready {port}")
clients, slow = [], {}
deadline = None
while True:
    if term and deadline is None:
        say("term")
        listener.close()
        deadline = time.monotonic() + 5
    if deadline is not None and (not clients or time.monotonic() > deadline):
        break
    watched = clients + ([] if deadline else [listener])
    try:
        ready, _, _ = select.select(watched, [], [], 0.05)
    except InterruptedError:
        continue
    for sock in ready:
        if sock is listener:
            conn, _ = listener.accept()
            clients.append(conn)
            say("accepted")
            continue
        data = sock.recv(4096)
        if not data:
            clients.remove(sock)
            sock.close()
        elif data.strip() == b"ping":
            sock.sendall(b"pong\n")
        elif data.strip() == b"slow":
            slow[sock] = time.monotonic() + 60
    for sock, due in list(slow.items()):
        if time.monotonic() > due:
            sock.sendall(b"done\n")
            del slow[sock]
os._exit(0 if not clients else 1)
