# gunicorn -c gunicorn.conf.py --workers 2 app:app
#
# READY=1 once every worker has loaded the app, not when gunicorn's arbiter
# has bound its sockets (docs/readiness.md).
import multiprocessing
import os
import socket

booted = multiprocessing.Value("i", 0)
notify_socket = None


def on_starting(server):
    # The arbiter sends READY=1 right after this hook, before any worker
    # exists: take the socket away from it and keep it for the workers.
    global notify_socket
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)


def post_worker_init(worker):
    with booted.get_lock():
        booted.value += 1
        every_worker = booted.value == worker.cfg.workers
    if every_worker and notify_socket:
        address = notify_socket
        if address.startswith("@"):
            address = "\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
