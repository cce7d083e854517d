#!/usr/bin/env python3
"""An upstream for a reverse proxy under test: GET /slow is answered after SECONDS,
any other GET at once.

usage: upstream.py PORT SECONDS
Prints "ready" once it listens.
"""
import http.server, sys, time

port, seconds = int(sys.argv[1]), float(sys.argv[2])


class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(seconds)
        body = b"ok upstream\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Slow)
print("ready", flush=True)
server.serve_forever()
