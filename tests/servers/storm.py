#!/usr/bin/env python3
"""Storms for the reliability tests. Each prints its ground truth on stdout: one
"PID STATUS" line per child it reaped (STATUS as waitpid() returned it).

usage: storm.py MODE ARGS
  exits N         fork N children, in batches of 100, that exit with code i % 200
  bomb SECONDS    for SECONDS, binary trees of processes 8 deep, four at a time, each
                  process reaping its children; forks refused by a pids cgroup (EAGAIN)
                  are retried a few times, then skipped
  signals PID N   kill(PID, SIGTERM) N times as fast as possible; prints "sent N"
  reuse           a child killed by SIGTERM, then one with the same pid (forced through
                  ns_last_pid) that exits 7, within a second
  drain N         a node drain: N children, each listening on loopback with two
                  connections from this process accepted, all sent SIGTERM within a
                  second (no handler: each dies of it); prints "signalled N in S s"
                  on stderr
"""
import os, resource, signal, socket, sys, time


def report(pid, status):
    os.write(1, f"{pid} {status}\n".encode())


def exits(count):
    for start in range(0, count, 100):
        children = []
        for i in range(start, min(start + 100, count)):
            pid = os.fork()
            if pid == 0:
                os._exit(i % 200)
            children.append(pid)
        for pid in children:
            report(*os.waitpid(pid, 0))


def fork_retrying(tries):
    """fork(), retried briefly while a pids cgroup refuses it (EAGAIN); None if it keeps
    refusing (waiting longer would deadlock: the slots are held by waiting parents)."""
    for _ in range(tries):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.001)
    return None


def subtree(depth):
    children = []
    for _ in range(2 if depth > 0 else 0):
        pid = fork_retrying(5)
        if pid == 0:
            children.clear()
            subtree(depth - 1)
            os._exit(depth)
        if pid is not None:
            children.append(pid)
    for pid in children:
        report(*os.waitpid(pid, 0))


def bomb(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        roots = []
        for _ in range(4):
            pid = fork_retrying(5)
            if pid == 0:
                subtree(8)
                os._exit(100)
            if pid is not None:
                roots.append(pid)
        for pid in roots:
            report(*os.waitpid(pid, 0))


def signals(target, count):
    for _ in range(count):
        os.kill(target, signal.SIGTERM)
    print(f"sent {count}", flush=True)


def reuse():
    for _ in range(50):
        first = os.fork()
        if first == 0:
            signal.pause()
            os._exit(0)
        time.sleep(0.01)
        os.kill(first, signal.SIGTERM)
        report(*os.waitpid(first, 0))
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(first - 1))
        second = os.fork()
        if second == 0:
            os._exit(7)
        report(*os.waitpid(second, 0))
        if second == first:
            return
    sys.exit("no pid reuse in 50 tries")


def serve_two(ready):
    """A drain child: listens, says its port, accepts two connections, says so, waits."""
    os.closerange(3, ready)  # the parent's sockets to earlier children are not ours
    os.closerange(ready + 1, 1 << 20)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    os.write(ready, listener.getsockname()[1].to_bytes(2, "big"))
    held = [listener.accept()[0] for _ in range(2)]
    os.write(ready, b"ok")
    while held:
        signal.pause()


def drain(count):
    files = 3 * count + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    children, clients = [], []
    for _ in range(count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            serve_two(w)
            os._exit(0)
        os.close(w)
        port = int.from_bytes(os.read(r, 2), "big")
        clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        if os.read(r, 2) != b"ok":
            sys.exit(f"drain child {pid} did not accept")
        os.close(r)
        children.append(pid)
    start = time.monotonic()
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    print(f"signalled {count} in {time.monotonic() - start:.3f} s", file=sys.stderr)
    for pid in children:
        report(*os.waitpid(pid, 0))
    for client in clients:
        client.close()


mode = sys.argv[1]
if mode == "exits":
    exits(int(sys.argv[2]))
elif mode == "bomb":
    bomb(float(sys.argv[2]))
elif mode == "signals":
    signals(int(sys.argv[2]), int(sys.argv[3]))
elif mode == "reuse":
    reuse()
elif mode == "drain":
    drain(int(sys.argv[2]))
else:
    sys.exit(f"unknown mode {mode}")
