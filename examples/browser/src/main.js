// The page's script: a TGrid client of examples/browser/server.py.
//
// Bundled for the browser by esbuild (`npm run build`, see package.json):
// tgrid's WebSocketConnector uses the browser's own WebSocket when it does
// not run under Node.js, and esbuild resolves the `ws` package it loads only
// under Node.js to ws's browser stub, so no polyfill is needed.
//
// In TypeScript the contract would read (the Python side is server.py):
//
//   interface IHeader { name: string; token: string }
//   interface ISession {
//     add(a: number, b: number): number;
//     split(text: string): string[];
//     post(text: string): number;
//   }
//   interface IPage { addItem(text: string): void }
//   new WebSocketConnector<IHeader, IPage, ISession>(header, page)
import { WebSocketConnector } from "tgrid";

const $ = (id) => document.getElementById(id);
const CALLS = ["add", "split", "post"];

// What this page provides: the server calls addItem() to push to the list.
// A TGrid provider is a plain object.
const page = {
  addItem(text) {
    const item = document.createElement("li");
    item.textContent = text;
    $("items").append(item);
  },
};

let connector = null; // the open connection, if any

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = kind;
}

function enableCalls(enabled) {
  for (const id of CALLS) $(id).disabled = !enabled;
}

async function connect() {
  if (connector !== null) {
    const previous = connector;
    connector = null;
    // It may be closing already (the server went away): nothing to undo.
    await previous.close().catch(() => {});
  }
  enableCalls(false);
  $("error").textContent = "";
  setStatus("connecting…", "");
  // The same origin as the page: the only one the server admits.
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const candidate = new WebSocketConnector(
    { name: $("name").value, token: $("token").value }, // acceptor.header on the server
    page,
  );
  try {
    await candidate.connect(`${scheme}://${location.host}/rpc`, { timeout: 10000 });
  } catch (error) {
    // A rejection is TGrid's WebSocketError: `status` is the close code and
    // `message` the reason the server's handler gave to reject(). Anything
    // else (no server, a timeout) is a plain Error.
    if (error && typeof error.status === "number") {
      setStatus(`rejected: ${error.status} ${error.message}`, "bad");
    } else {
      setStatus(`failed: ${error && error.message}`, "bad");
    }
    return;
  }
  connector = candidate;
  setStatus(`connected as ${$("name").value}`, "ok");
  enableCalls(true);
  // join() settles once the connection is gone, whoever closed it.
  candidate.join().then(
    () => closed(candidate),
    () => closed(candidate),
  );
}

function closed(which) {
  if (connector !== which) return; // replaced by a newer connection
  connector = null;
  enableCalls(false);
  setStatus("closed", "bad");
}

// Run a call through the driver and show its result in the element `out`.
async function call(out, makeCall, show) {
  $("error").textContent = "";
  try {
    $(out).textContent = show(await makeCall(connector.getDriver()));
  } catch (error) {
    // An exception raised in Python arrives as a plain {name, message}.
    $("error").textContent = `${error.name}: ${error.message}`;
  }
}

$("connect").addEventListener("click", () => connect());
$("add").addEventListener("click", () =>
  call("sum", (server) => server.add(Number($("a").value), Number($("b").value)), String),
);
$("split").addEventListener("click", () =>
  call("words", (server) => server.split($("text").value), (words) => JSON.stringify(words)),
);
$("post").addEventListener("click", () =>
  call("posted", (server) => server.post($("message").value), (n) => `reached ${n} page(s)`),
);
