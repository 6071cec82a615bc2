// A TGrid client (npm "tgrid" 1.2.1, Node.js 18 or later) for the wsrpc
// server of examples/tgrid_server.py.
//
//   python examples/tgrid_server.py            # prints PORT <n>
//   node examples/tgrid_client.js ws://127.0.0.1:<n>/
//
// It connects with the header {name: "ann"}, waits for the server's welcome
// (a call from the server, made right after it accepted us), calls the
// calculator, receives progress callbacks during countdown(), shows a
// rejected connection, prints what happened and closes.
//
// Where tgrid comes from: your own install wins (`npm install tgrid@1.2.1`
// in this folder or any folder above it, or a folder on NODE_PATH); else the
// copy wsrpc's tests install with `npm ci --prefix tests/interop`.
//
// The same code runs in a browser, bundled with any bundler: there, TGrid's
// WebSocketConnector uses the browser's WebSocket (see docs/tgrid.md).
"use strict";

const path = require("path");

function loadTgrid() {
  let where;
  try {
    where = require.resolve("tgrid", {
      paths: [__dirname, path.join(__dirname, "..", "tests", "interop")],
    });
  } catch (error) {
    throw new Error(
      "cannot find the tgrid package: run `npm install tgrid@1.2.1` " +
        "(or `npm ci --prefix tests/interop` in the wsrpc repository)",
    );
  }
  return require(where);
}

const { WebSocketConnector } = loadTgrid();

// In TypeScript, the server's provider is described by interfaces that
// mirror the Python classes (plain return types: TGrid's Driver<T> turns
// every method into one returning a Promise):
//
//   interface IScientific {
//     sqrt(x: number): number;
//     pow(base: number, exponent: number): number;
//   }
//   interface ICalculator {
//     scientific: IScientific;
//     add(a: number, b: number): number;
//     sub(a: number, b: number): number;
//     mul(a: number, b: number): number;
//     div(a: number, b: number): number;
//     countdown(n: number): string;
//   }
//   interface IListener {
//     notify(text: string): void;
//     progress(done: number, total: number): void;
//   }
//   const connector = new WebSocketConnector<{ name: string }, IListener, ICalculator>(
//     { name: "ann" }, listener);
//   const calc = connector.getDriver(); // Driver<ICalculator>

async function main(url) {
  // What this client provides: the server calls these.
  let welcomed;
  const welcome = new Promise((resolve) => {
    welcomed = resolve;
  });
  const listener = {
    notify(text) {
      welcomed(text);
    },
    progress(done, total) {
      console.log(`progress ${done}/${total}`);
    },
  };

  const connector = new WebSocketConnector({ name: "ann" }, listener);
  await connector.connect(url, { timeout: 10000 }); // milliseconds
  console.log("connected");
  console.log(`server says: ${await welcome}`);

  const calc = connector.getDriver();
  console.log(`1 + 2 = ${await calc.add(1, 2)}`);
  console.log(`sqrt(16) = ${await calc.scientific.sqrt(16)}`); // 4.0 in Python, 4 here
  console.log(`pow(2, 10) = ${await calc.scientific.pow(2, 10)}`);
  console.log(`3 / 3 = ${await calc.div(3, 3)}`);
  try {
    await calc.div(1, 0);
  } catch (error) {
    // A plain object {name, message}, not an Error instance.
    console.log(`div(1, 0) failed: ${error.name}: ${error.message}`);
  }
  // The server calls listener.progress() three times before answering.
  console.log(`countdown(3) = ${await calc.countdown(3)}`);

  // A header the server refuses: connect() rejects with a WebSocketError
  // carrying the close code and reason the server's handler chose.
  const stranger = new WebSocketConnector({}, null);
  try {
    await stranger.connect(url, { timeout: 10000 });
    console.log("unexpectedly accepted");
    await stranger.close();
  } catch (error) {
    console.log(`rejected: ${error.status} ${error.message}`);
  }

  await connector.close();
  console.log("closed");
}

const url = process.argv[2];
if (!url) {
  process.stderr.write("usage: node examples/tgrid_client.js ws://127.0.0.1:<port>/\n");
  process.exit(2);
}
main(url).then(
  // Exit at once: TGrid leaves its connect() timeout timers running.
  () => process.stdout.write("", () => process.exit(0)),
  (error) => {
    process.stderr.write(`tgrid_client.js failed: ${error && error.stack ? error.stack : error}\n`);
    process.exit(1);
  },
);
