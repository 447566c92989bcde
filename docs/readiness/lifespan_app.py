# uvicorn --fd 3 lifespan_app:app
#
# A bare ASGI app whose lifespan startup says READY=1 (docs/readiness.md).
# With Starlette or FastAPI, call notify_ready() before the `yield` of the
# `lifespan` context manager instead.
import os

from notify_ready import notify_ready

GENERATION = os.environ.get("BATON_GENERATION", "?")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                notify_ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = ("hello from generation %s\n" % GENERATION).encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-baton-generation", GENERATION.encode()),
                    # uvicorn's shutdown closes idle keep-alive connections
                    # under clients that are sending; README, "Third-party
                    # servers", shows how to drain them instead.
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
