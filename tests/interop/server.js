// A real TGrid (npm "tgrid", 1.2.1) server, driven by tests/system/test_tgrid_interop.py.
//
//   node server.js
//
// Listens on 127.0.0.1 only, on a port the system picks, and prints
// "PORT <n>" as its first line of stdout. It exits when its stdin closes
// (the test's way of stopping it) or on SIGTERM, with status 0; any crash
// (an uncaught exception, an unhandled rejection) exits non-zero, which the
// test reports.
//
// TGrid's own WebSocketServer.open(port) listens on every interface, so
// this attaches TGrid to an http server bound to 127.0.0.1 instead, with
// WebSocketAcceptor.upgrade() and a ws server in noServer mode.
//
// Clients must send the header {"token": "secret"}; any other header is
// rejected with close code 4003, reason "bad token". An accepted client
// gets the provider below, and the server calls the client's onMessage
// ("welcome") at once, as a server that greets its clients would.
"use strict";

const http = require("http");
const WebSocket = require("ws");
const { WebSocketAcceptor } = require("tgrid");

const TOKEN = "secret";

function makeProvider(acceptor, state) {
  const scientific = {
    sqrt(x) {
      if (x < 0) throw new RangeError(`sqrt of negative number ${x}`);
      return Math.sqrt(x);
    },
    constants: {
      pi() {
        return Math.PI;
      },
    },
    hang() {
      return new Promise(() => {});
    },
  };
  return {
    add(a, b) {
      return a + b;
    },
    scientific,
    reset() {
      // void: TGrid replies {"uid":n,"success":true} with no value
    },
    echo(value) {
      return value;
    },
    // What TGrid received: the JS type and value of each argument.
    describe(...args) {
      return args.map((value) => ({
        typeof: typeof value,
        value: value === undefined ? "<undefined>" : value,
      }));
    },
    async slowDouble(x) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      return 2 * x;
    },
    fail(message) {
      throw new TypeError(message);
    },
    failWithString(message) {
      throw message;
    },
    failWithObject(code) {
      throw { code, detail: "not an Error" };
    },
    // Calls the client back while the client's call is running.
    async greet(name) {
      const reply = await acceptor.getDriver().onMessage(`hello ${name}`);
      return `client said: ${reply}`;
    },
    // The reply the client gave to the welcome call sent right after accept.
    welcomed() {
      return state.welcome;
    },
    header() {
      return acceptor.header;
    },
    path() {
      return acceptor.path;
    },
    hang() {
      return new Promise(() => {});
    },
    // Close the connection (code, reason) while this call is pending.
    closeWhilePending(code, reason) {
      setImmediate(() => {
        acceptor.close(code, reason).catch(() => {});
      });
      return new Promise(() => {});
    },
    secretValue: "the provider's private data",
    _secret() {
      return "must not be reachable";
    },
  };
}

async function handle(acceptor) {
  const header = acceptor.header;
  if (header === null || typeof header !== "object" || header.token !== TOKEN) {
    await acceptor.reject(4003, "bad token");
    return;
  }
  const state = { welcome: null };
  await acceptor.accept(makeProvider(acceptor, state));
  // Call the client at once, before it calls us.
  state.welcome = acceptor
    .getDriver()
    .onMessage("welcome")
    .then(
      (value) => ({ ok: true, value }),
      (error) => ({ ok: false, error: String(error && error.message ? error.message : error) }),
    );
}

function main() {
  const wss = new WebSocket.Server({ noServer: true });
  const server = http.createServer((request, response) => {
    response.writeHead(426, { "Content-Type": "text/plain" });
    response.end("WebSocket only\n");
  });
  server.on("upgrade", (request, socket, head) => {
    wss.handleUpgrade(request, socket, head, (ws) => {
      WebSocketAcceptor.upgrade(request, ws, handle);
    });
  });

  let stopping = false;
  function stop() {
    if (stopping) return;
    stopping = true;
    for (const ws of wss.clients) ws.terminate();
    wss.close();
    server.close(() => process.exit(0));
    // Do not wait for ever on a client that ignores the termination.
    setTimeout(() => process.exit(0), 2000).unref();
  }
  process.on("SIGTERM", stop);
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);
  process.stdin.resume();

  server.listen(0, "127.0.0.1", () => {
    process.stdout.write(`PORT ${server.address().port}\n`);
  });
}

main();
