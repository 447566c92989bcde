//! The line echo service of the handoff tests: Python, standard library
//! only, speaking both sides of `docs/handoff.md`.

use std::path::Path;

/// A line echo server on the socket named `echo`: every line comes back as
/// sent, the line `generation` answers `BATON_GENERATION`. On its channel it
/// declares `HANDOFF=1` before `READY=1`, takes connections from its
/// predecessor, and on SIGTERM hands its own to its successor with the bytes
/// of an unfinished line, then reports `HANDED_OVER=n` and exits. The file
/// `flags` in the folder it is given changes what a generation started
/// afterwards does: `no-handoff` (it never declares), `bogus-handed-over`
/// (it reports a count while it serves), `flood-first` (150 messages of an
/// unknown key before `HANDOFF=1`), `flood-before-exit` (as many before
/// its `HANDED_OVER=`).
pub const LINE_ECHO: &str = r#"
import json, os, selectors, signal, socket, struct, sys, time

STATE = sys.argv[1]
GENERATION = int(os.environ["BATON_GENERATION"])
DRAIN_SECONDS = int(os.environ["BATON_DRAIN_TIMEOUT_MS"]) / 1000
HEADER = struct.Struct("<4sBBHQII")
MAGIC, CONNECTION, ACK, END = b"BHO1", 1, 2, 3
try:
    with open(os.path.join(STATE, "flags")) as f:
        FLAGS = set(f.read().split())
except FileNotFoundError:
    FLAGS = set()

assert os.environ["LISTEN_PID"] == str(os.getpid())
names = os.environ["LISTEN_FDNAMES"].split(":")
listener = socket.socket(fileno=3 + names.index("echo"))
listener.setblocking(False)
channel_fd = int(os.environ["BATON_CHANNEL_FD"])
channel = socket.socket(fileno=channel_fd)
channel.setblocking(False)

peer_pid = struct.unpack("3i", channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
described = os.path.join(STATE, "generation-%d.json" % GENERATION)
with open(described + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "channel_fd": channel_fd, "channel_type": int(channel.type),
               "peer_pid": peer_pid, "name": repr(channel.getsockname())}, f)
os.rename(described + ".tmp", described)

selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ, "accept")
selector.register(channel, selectors.EVENT_READ, "channel")
connections = {}
successor = None

class Connection:
    def __init__(self, sock, buffer):
        self.sock, self.buffer = sock, bytearray(buffer)

def serve(c):
    try:
        while b"\n" in c.buffer:
            line, _, rest = bytes(c.buffer).partition(b"\n")
            c.buffer = bytearray(rest)
            c.sock.sendall((str(GENERATION).encode() if line == b"generation" else line) + b"\n")
    except OSError:
        close(c)

def add(sock, buffer=b""):
    sock.setblocking(True)
    c = Connection(sock, buffer)
    connections[sock.fileno()] = c
    selector.register(sock, selectors.EVENT_READ, c)
    serve(c)

def close(c):
    if connections.pop(c.sock.fileno(), None) is not None:
        selector.unregister(c.sock)
        c.sock.close()

def read_connection(c):
    try:
        data = c.sock.recv(65536)
    except OSError:
        data = b""
    if not data:
        close(c)
    else:
        c.buffer += data
        serve(c)

def read_channel():
    global successor
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        except BlockingIOError:
            return
        if not message and not fds:
            selector.unregister(channel)
            return
        for line in message.decode().split("\n"):
            key, _, value = line.partition("=")
            if key == "PREDECESSOR" and fds:
                predecessor = socket.socket(fileno=fds.pop())
                predecessor.setblocking(False)
                selector.register(predecessor, selectors.EVENT_READ, "predecessor")
            elif key == "SUCCESSOR" and fds:
                successor = socket.socket(fileno=fds.pop())
        for fd in fds:
            os.close(fd)

def read_predecessor(pair):
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(pair, HEADER.size + 255 + 65536 + 16384, 1)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        if len(message) < HEADER.size:
            for fd in fds:
                os.close(fd)
            selector.unregister(pair)
            pair.close()
            return
        magic, kind, _, field, ident, buffer_len, _ = HEADER.unpack_from(message)
        if kind == END:
            selector.unregister(pair)
            pair.close()
            return
        if magic != MAGIC or kind != CONNECTION or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        name = message[HEADER.size:HEADER.size + field]
        buffer = message[HEADER.size + field:HEADER.size + field + buffer_len]
        sock = socket.socket(fileno=fds[0])
        status = 0 if name == b"echo" else 1
        try:
            pair.send(HEADER.pack(MAGIC, ACK, 0, status, ident, 0, 0))
        except OSError:
            sock.close()
            continue
        if status == 0:
            add(sock, buffer)
        else:
            sock.close()

def hand_over():
    read_channel()
    if successor is None:
        return None
    pair = successor
    pair.setblocking(True)
    pending, handed = {}, 0
    for ident, c in enumerate(list(connections.values()), start=1):
        # Every complete line was answered as it came: this is a boundary.
        message = HEADER.pack(MAGIC, CONNECTION, 0, 4, ident, len(c.buffer), 0) + b"echo" + bytes(c.buffer)
        try:
            socket.send_fds(pair, [message], [c.sock.fileno()])
        except OSError:
            break
        pending[ident] = c
    def acknowledged(ack):
        _, kind, _, status, ident, _, _ = HEADER.unpack_from(ack)
        c = pending.pop(ident, None)
        if c is not None and kind == ACK and status == 0:
            close(c)
            return 1
        return 0
    deadline = time.monotonic() + min(1.0, DRAIN_SECONDS / 2)
    while pending and time.monotonic() < deadline:
        pair.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            ack = pair.recv(64)
        except OSError:
            break
        if len(ack) < HEADER.size:
            break
        handed += acknowledged(ack)
    pair.shutdown(socket.SHUT_RD)
    pair.setblocking(False)
    while True:
        try:
            ack = pair.recv(64)
        except OSError:
            break
        if len(ack) < HEADER.size:
            break
        handed += acknowledged(ack)
    try:
        pair.send(HEADER.pack(MAGIC, END, 0, 0, 0, 0, 0))
    except OSError:
        pass
    pair.close()
    return handed

stopping = False
def on_stop(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_stop)

def mark(what):
    open(os.path.join(STATE, "%s-%d" % (what, GENERATION)), "w").close()

if "flood-first" in FLAGS:
    # The test stops the agent meanwhile: when it goes on, the declaration
    # is behind more than one wakeup's worth of messages it does not know,
    # and READY=1 is waiting on the other socket.
    mark("waiting")
    while not os.path.exists(os.path.join(STATE, "go-%d" % GENERATION)):
        time.sleep(0.01)
    for n in range(150):
        channel.send(b"X_FILLER=%d\n" % n)
if "no-handoff" not in FLAGS:
    channel.send(b"HANDOFF=1\n")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["NOTIFY_SOCKET"]
notify.sendto(b"READY=1", "\0" + path[1:] if path.startswith("@") else path)
mark("ready")
if "bogus-handed-over" in FLAGS:
    channel.send(b"HANDED_OVER=99\n")

while not stopping:
    for key, _ in selector.select(0.05):
        if key.data == "accept":
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            add(sock)
        elif key.data == "channel":
            read_channel()
        elif key.data == "predecessor":
            read_predecessor(key.fileobj)
        elif key.fileobj.fileno() in connections:
            read_connection(key.data)

selector.unregister(listener)
listener.close()
if "flood-before-exit" in FLAGS:
    # The test stops the agent meanwhile: when it goes on, this exit and a
    # count behind more than one wakeup's worth of other messages wait.
    mark("stopping")
    while not os.path.exists(os.path.join(STATE, "go-stop-%d" % GENERATION)):
        time.sleep(0.01)
handed = hand_over()
if "flood-before-exit" in FLAGS:
    for n in range(150):
        channel.send(b"X_FILLER=%d\n" % n)
if handed is not None:
    channel.send(b"HANDED_OVER=%d\n" % handed)
if "flood-before-exit" in FLAGS:
    mark("exiting")
for c in list(connections.values()):
    close(c)
sys.exit(0)
"#;

/// Writes [`LINE_ECHO`] into `dir` and returns the `[[service]]` table of
/// a service `name` running it there, its socket `echo` on `listen`.
pub fn line_echo_service(name: &str, dir: &Path, listen: &str) -> String {
    let script = dir.join("echo.py");
    std::fs::write(&script, LINE_ECHO).unwrap();
    format!(
        r#"
[[service]]
name = "{name}"
command = ["python3", "{script}", "{dir}"]
ready_timeout = "20s"
drain_timeout = "10s"

[[service.socket]]
name = "echo"
listen = "{listen}"
"#,
        script = script.display(),
        dir = dir.display()
    )
}
