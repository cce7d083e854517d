#!/usr/bin/env python3
"""A minimal process supervisor that stops a process the way platforms do.

usage: orchestrate.py GRACE [--signal-ready-pid] -- CMD ARGS…

Starts CMD and relays every line it prints. After CMD's first line ("ready …") it
prints "pid N", the process it will signal: CMD itself, or with --signal-ready-pid the
pid in CMD's "ready PID" line (a namespace init started by a helper). On "stop" from
stdin it sends SIGTERM, waits GRACE seconds, sends SIGKILL if the process still runs,
reaps CMD and prints "reaped RAW" with CMD's raw wait status.
"""
import os, signal, subprocess, sys, threading, time

args = sys.argv[1:]
grace = float(args.pop(0))
signal_ready_pid = args[0] == "--signal-ready-pid"
if signal_ready_pid:
    args.pop(0)
assert args.pop(0) == "--"
child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
first = child.stdout.readline()
print(first.strip(), flush=True)
target = int(first.split()[1]) if signal_ready_pid else child.pid
print(f"pid {target}", flush=True)

def relay():
    for line in child.stdout:
        print(line.strip(), flush=True)

relayer = threading.Thread(target=relay)
relayer.start()

def alive():
    try:
        os.kill(target, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists": it has stopped running.
    with open(f"/proc/{target}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"

assert sys.stdin.readline().strip() == "stop"
os.kill(target, signal.SIGTERM)
deadline = time.monotonic() + grace
while time.monotonic() < deadline and child.poll() is None and alive():
    time.sleep(0.01)
if child.poll() is None and alive():
    os.kill(target, signal.SIGKILL)
child.wait()
relayer.join()
rc = child.returncode
print(f"reaped {(rc << 8) if rc >= 0 else -rc}", flush=True)
