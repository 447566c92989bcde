// node server.js
//
// A Node server on the agent's socket (fd 3) that is ready once it listens
// (docs/readiness.md): with `ready = "notify"` it says READY=1 through
// systemd-notify (Node has no unix datagram sockets; systemd-notify is a
// child of this process, so the agent counts its message for this
// generation); with `ready = "http://127.0.0.1:{port}/"` it answers the
// agent's probe.
const http = require("http");
const { execFile } = require("child_process");

const generation = process.env.BATON_GENERATION || "?";
// Stands for the work a real server does before it can answer.
const WARM_UP_MS = Number(process.env.WARM_UP_MS || 0);

const server = http.createServer((req, res) => {
  const body = `hello from generation ${generation}\n`;
  res.writeHead(200, {
    "Content-Type": "text/plain",
    "Content-Length": Buffer.byteLength(body),
    "X-Baton-Generation": generation,
    // server.close() leaves kept-alive connections open (Node 18) or closes
    // them under a sending client (Node 19+); README, "Third-party servers",
    // shows how to drain them instead.
    Connection: "close",
  });
  res.end(body);
});

setTimeout(() => {
  server.listen({ fd: 3 }, () => {
    if (process.env.BATON_PROBE_PORT) {
      // ready = "http://127.0.0.1:{port}/": answer the agent's probe on the
      // port it chose for this generation, now that the server listens.
      http
        .createServer((req, res) => res.end("ok\n"))
        .listen(Number(process.env.BATON_PROBE_PORT), "127.0.0.1");
    } else {
      // ready = "notify", the default.
      execFile("systemd-notify", ["--ready"]);
    }
  });
}, WARM_UP_MS);

process.on("SIGTERM", () => server.close(() => process.exit(0)));
