"""A WSGI app for the `observer rehearse` tests, served by gunicorn:

    gunicorn --chdir tests/servers/rehearse --bind 127.0.0.1:0 app:app

  /        answers 200 at once
  /slow    answers 200 after SLOW seconds (env, default 1): a request still in flight
           when a stop signal comes
  /error   answers 500 after SLOW seconds: a handler that fails
  /hang    answers 200 after 30 s: longer than a worker timeout (gunicorn --timeout)
"""
import os
import time

SLOW = float(os.environ.get("SLOW", "1"))
ROUTES = {
    "/": (0, "200 OK"),
    "/slow": (SLOW, "200 OK"),
    "/error": (SLOW, "500 Internal Server Error"),
    "/hang": (30, "200 OK"),
}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    delay, status = ROUTES.get(path, (0, "404 Not Found"))
    time.sleep(delay)
    body = f"{status} {path}\n".encode()
    start_response(
        status,
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
