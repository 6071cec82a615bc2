// A real TGrid (npm "tgrid", 1.2.1) client, driven by tests/system/test_tgrid_interop.py.
//
//   node client.js <url> <header-json> <scenario> [timeout-ms]
//
// Connects a TGrid WebSocketConnector to a wsrpc server, runs one scenario,
// prints ONE line of JSON with what it observed to stdout, and exits 0. It
// exits non-zero (with the error on stderr) only when the scenario itself
// breaks: the results, failed calls included, are for the Python test to
// judge. Scenarios:
//
//   calls   every kind of call (see runCalls) and the server's calls to us
//   reject  connect() is expected to fail: report the WebSocketError
//   close   start two calls the server never answers, report how they fail
//           when the server closes the connection
"use strict";

const { WebSocketConnector } = require("tgrid");

// Values that must survive TGrid -> wsrpc -> TGrid unchanged.
const JSON_VALUES = [
  0,
  -1,
  9007199254740991, // Number.MAX_SAFE_INTEGER
  -9007199254740991,
  1.5,
  0.1,
  -1e-300,
  1e300,
  "",
  "unicode: é ☃ 𝄞 and \"quotes\" \\ \n\t\u0000",
  true,
  false,
  [],
  {},
  [1, "two", [3.5, { k: [true, false] }], {}],
  { nested: { deeper: { list: [{}, [], ""] } }, "": "empty key", "a.b": 1 },
];

// What a rejected call carries: TGrid rejects with whatever the remote sent.
function describeError(error) {
  if (error === null || typeof error !== "object") {
    return { typeof: typeof error, value: error };
  }
  return {
    typeof: typeof error,
    isError: error instanceof Error,
    constructor: error.constructor ? error.constructor.name : null,
    keys: Object.keys(error).sort(),
    name: error.name,
    message: error.message,
    status: error.status,
    hasStack: typeof error.stack === "string" && error.stack.length > 0,
  };
}

async function settle(promise) {
  try {
    const value = await promise;
    return { ok: true, typeof: typeof value, value: value === undefined ? null : value };
  } catch (error) {
    return { ok: false, error: describeError(error) };
  }
}

function makeProvider(received) {
  return {
    // The server calls this, during one of our calls or on its own.
    onMessage(text) {
      received.push(text);
      return `ack ${text}`;
    },
    echo(value) {
      return value;
    },
  };
}

async function connect(url, header, provider, timeout) {
  const connector = new WebSocketConnector(header, provider);
  await connector.connect(url, { timeout });
  return connector;
}

async function runCalls(url, header, timeout) {
  const received = [];
  const connector = await connect(url, header, makeProvider(received), timeout);
  const driver = connector.getDriver();
  const result = {};
  result.add = await settle(driver.add(1, 2));
  result.concat = await settle(driver.concat("wsrpc", " ♥ ", "tgrid"));
  result.nested = await settle(driver.scientific.sqrt(16));
  result.nestedDeeper = await settle(driver.scientific.constants.pi());
  result.void = await settle(driver.reset());
  result.async = await settle(driver.slowDouble(21));
  // Calls run concurrently and may complete out of order.
  result.concurrent = await settle(
    Promise.all([driver.slowDouble(1), driver.add(2, 3), driver.slowDouble(4)]),
  );
  result.echo = [];
  for (const value of JSON_VALUES) {
    const reply = await settle(driver.echo(value));
    reply.same = reply.ok && JSON.stringify(reply.value) === JSON.stringify(value);
    result.echo.push(reply);
  }
  result.echoNull = await settle(driver.echo(null));
  result.undefinedArgument = await settle(driver.describe(undefined, null, 1, "s", [], {}));
  result.callback = await settle(driver.greet("ann"));
  result.error = await settle(driver.fail("boom"));
  result.nestedError = await settle(driver.scientific.sqrt(-1));
  result.refused = {
    private: await settle(driver._secret()),
    privateTrailing: await settle(driver.secret_()),
    nestedPrivate: await settle(driver.scientific._hidden()),
    valueOf: await settle(driver.valueOf()),
    toString: await settle(driver.toString()),
    constructor: await settle(driver.constructor()),
    dunder: await settle(driver.__class__.__init__()),
    data: await settle(driver.secretValue()),
    missing: await settle(driver.noSuchMethod()),
  };
  result.peers = await settle(driver.peers());
  // The server called onMessage("welcome") right after accepting us: wait
  // for the server to have our reply, then read what we received.
  result.welcome = await settle(driver.welcomed());
  result.received = received;
  await connector.close();
  result.stateAfterClose = connector.state;
  return result;
}

async function runReject(url, header, timeout) {
  const connector = new WebSocketConnector(header, makeProvider([]));
  try {
    await connector.connect(url, { timeout });
  } catch (error) {
    return { rejected: true, error: describeError(error), state: connector.state };
  }
  await connector.close();
  return { rejected: false };
}

async function runClose(url, header, timeout) {
  const connector = await connect(url, header, makeProvider([]), timeout);
  const driver = connector.getDriver();
  // hang() never returns: the server closes the connection while both wait.
  const pending = [settle(driver.hang("first")), settle(driver.scientific.hang("second"))];
  const results = await Promise.all(pending);
  // A call after the close fails at once, on our side.
  const after = await settle(driver.add(1, 2));
  return { pending: results, after, state: connector.state };
}

const SCENARIOS = { calls: runCalls, reject: runReject, close: runClose };

async function main() {
  const [url, headerJson, scenario, timeoutText] = process.argv.slice(2);
  const run = SCENARIOS[scenario];
  if (!url || headerJson === undefined || !run) {
    throw new Error(
      "usage: node client.js <url> <header-json> <calls|reject|close> [timeout-ms]",
    );
  }
  const header = JSON.parse(headerJson);
  const timeout = timeoutText ? Number(timeoutText) : 10000;
  const result = await run(url, header, timeout);
  return JSON.stringify(result) + "\n";
}

main().then(
  (line) => process.stdout.write(line, () => process.exit(0)),
  (error) => {
    process.stderr.write(`client.js failed: ${error && error.stack ? error.stack : error}\n`);
    process.exit(1);
  },
);
