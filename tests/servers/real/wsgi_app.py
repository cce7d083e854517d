"""The WSGI app gunicorn serves in tests/tests/real_servers.rs.

GET /           answers at once
GET /slow?s=N   sleeps N seconds (default 2), then answers
"""
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["2"])[0])
        time.sleep(seconds)
    body = f"ok {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
