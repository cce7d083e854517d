"""The ASGI app uvicorn serves in tests/tests/real_servers.rs.

GET /           answers at once
GET /slow?s=N   awaits N seconds (default 2), then answers
"""
import asyncio
from urllib.parse import parse_qs


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        seconds = float(parse_qs(scope["query_string"].decode()).get("s", ["2"])[0])
        await asyncio.sleep(seconds)
    body = f"ok {scope['path']}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
