#!/usr/bin/env python3
"""A process stopped in one of the less common ways, for tests/tests/stops.rs.

usage: stops.py MODE
  winch     SIGWINCH is its stop signal (Apache's graceful stop): close the listener,
            exit 0
  sigwait   SIGTERM blocked and taken with sigwait() (no handler runs), then exit 0
  second    SIGTERM handled and ignored ("term"); SIGINT left to its default action
Prints "ready PORT" once it listens.
"""
import os, signal, socket, sys, time

mode = sys.argv[1]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)

def say(line):
    print(line, flush=True)

if mode == "winch":
    def stop(*_):
        listener.close()
        os._exit(0)
    signal.signal(signal.SIGWINCH, stop)
    say(f"ready {listener.getsockname()[1]}")
    while True:
        time.sleep(1)
elif mode == "sigwait":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    say(f"ready {listener.getsockname()[1]}")
    signal.sigwait({signal.SIGTERM})
    listener.close()
    os._exit(0)
elif mode == "second":
    signal.signal(signal.SIGTERM, lambda *_: say("term"))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    say(f"ready {listener.getsockname()[1]}")
    while True:
        time.sleep(1)
else:
    sys.exit(f"unknown mode {mode}")
