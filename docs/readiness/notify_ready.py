# READY=1 to the agent, for servers without sd_notify (uvicorn): call it
# from the app's lifespan startup (docs/readiness.md).
import os
import socket


def notify_ready():
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", "\0" + path[1:] if path.startswith("@") else path)
