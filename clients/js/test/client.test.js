// drs-client against the real demo_server: every API, over every
// transport and protocol, through a restart, with a token and TLS.

import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  AuthError,
  Cancelled,
  Closed,
  ConnectError,
  DEFAULT_TIMEOUT,
  RemoteError,
  RemoteException,
  Timeout,
  WrongProtocol,
  connect,
  packMsgpack,
  parseUrl,
  topicMatches,
  unpackMsgpack,
} from "../drs-client.js";
import { DEMO, Demo, waitFor } from "./demo.js";

const skip = DEMO ? false : "DRS_DEMO_SERVER is not set: run through `cargo test -p examples --test clients`";
const servers = [];
const demo = async (...args) => {
  const d = await Demo.start(...args);
  servers.push(d);
  return d;
};
after(async () => {
  for (const d of servers) await d.dispose();
});

test("urls, topics and MessagePack need no server", () => {
  assert.equal(DEFAULT_TIMEOUT, 5000);
  const u = parseUrl("ws://127.0.0.1:9/x?protocol=msgpack&token=t");
  assert.deepEqual([u.scheme, u.host, u.port, u.path, u.protocol, u.params.toString()], ["ws", "127.0.0.1", 9, "/x", "msgpack", "token=t"]);
  assert.equal(parseUrl("ws://h:1").path, "/socket");
  assert.equal(parseUrl("ipc:///tmp/a.sock").path, "/tmp/a.sock");
  assert.throws(() => parseUrl("http://h:1"), /not a drs URL/);
  assert.throws(() => parseUrl("tcp://h:1?protocol=xml"), /unknown protocol/);
  assert.throws(() => parseUrl("tcp://h"), /host and a port/);
  assert.ok(topicMatches("a.*", "a.b") && !topicMatches("a.*", "a.b.c") && topicMatches("a.>", "a.b.c") && !topicMatches("a.>", "a"));
  for (const v of [null, true, false, 0, 127, 128, 255, 256, 65536, 2 ** 32, 2 ** 40, -1, -33, -129, -40000, -(2 ** 31) - 1, 1.5, "", "é".repeat(40), "x".repeat(70000),
    [1, [2, {}]], { a: { b: [null] } }, new Uint8Array([1, 2, 3]), Array.from({ length: 20 }, (_, i) => i), Object.fromEntries(Array.from({ length: 20 }, (_, i) => ["k" + i, i]))]) {
    assert.deepEqual(unpackMsgpack(packMsgpack(v)), v);
  }
  assert.throws(() => unpackMsgpack(new Uint8Array([0x92, 1])), /truncated/);
  assert.throws(() => unpackMsgpack(new Uint8Array([1, 2])), /trailing/);
});

describe("against demo_server", { skip }, () => {
  let all;
  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), "drs-js-"));
    all = await demo(
      "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--ipc", join(dir, "j.sock"),
      "--protocol", "msgpack",
      "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--ipc", join(dir, "m.sock"),
    );
  });

  const urls = () => [0, 1].flatMap((n) => {
    const q = n ? "?protocol=msgpack" : "";
    return [`tcp://${all.addr("tcp", n)}${q}`, `ws://${all.addr("ws", n)}/socket${q}`, `ipc://${all.addr("ipc", n)}${q}`];
  });

  test("calls and their four failures on every transport and protocol", async () => {
    for (const url of urls()) {
      const c = await connect(url, { timeout: 2000 });
      try {
        assert.equal(await c.call("add", { a: 1, b: 2 }), 3, url);
        assert.equal(await c.call("add", { a: 1.5, b: 1 }), 2.5, url);
        assert.deepEqual(await c.call("echo", { nested: [1, "two", null, true] }), { nested: [1, "two", null, true] });
        assert.equal(await c.call("echo"), null);
        await assert.rejects(c.call("fail", { message: "nope" }), (e) => e instanceof RemoteError && !(e instanceof RemoteException) && e.message === "nope");
        await assert.rejects(c.call("missing"), /No handlers for missing/);
        await assert.rejects(c.call("kaboom"), (e) => e instanceof RemoteException && /kaboom/.test(e.message));
        await assert.rejects(c.call("sleep", { ms: 2000 }, { timeout: 100 }), Timeout);
        assert.equal(typeof (await c.ping()), "number");
      } finally {
        c.close();
      }
    }
  });

  test("connect failures are typed", async () => {
    const port = await new Promise((r) => { const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => r(p)); }); });
    await assert.rejects(connect(`tcp://127.0.0.1:${port}`, { timeout: 1000 }), ConnectError);
    await assert.rejects(connect(`ws://127.0.0.1:${port}/socket`, { timeout: 1000 }), ConnectError);
  });

  test("the wrong protocol or transport fails at once, saying what the port speaks", async () => {
    const cases = [
      [`tcp://${all.addr("tcp", 1)}`, WrongProtocol, "this port speaks MessagePack, not drs JSON (add ?protocol=msgpack to the URL)"],
      [`tcp://${all.addr("tcp", 0)}?protocol=msgpack`, WrongProtocol, "this port speaks JSON, not drs MessagePack (drop ?protocol=msgpack from the URL)"],
      [`tcp://${all.addr("ws", 0)}`, Closed, "the peer closed the connection: this port speaks WebSocket (ws://HOST:PORT/PATH), not raw drs frames"],
    ];
    for (const [url, kind, message] of cases) {
      const c = await connect(url, { timeout: 5000, reconnect: false });
      const started = Date.now();
      try {
        await assert.rejects(c.call("add", { a: 1, b: 2 }), (e) => e instanceof kind && e.message === message, url);
        assert.ok(Date.now() - started < 4000, `at once, not at the call's timeout: ${url}`);
      } finally {
        c.close();
      }
    }
    // An HTTP server.
    const http = createServer((s) => s.once("data", () => s.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")));
    await new Promise((r) => http.listen(0, "127.0.0.1", r));
    const c = await connect(`tcp://127.0.0.1:${http.address().port}`, { timeout: 5000, reconnect: false });
    try {
      await assert.rejects(c.call("add", { a: 1, b: 2 }), (e) => e instanceof WrongProtocol && e.message === "this port speaks HTTP, not drs JSON (a ws:// URL, if it serves WebSocket)");
    } finally {
      c.close();
      http.close();
    }
  });

  test("fire and broadcast reach handlers; the server calls back", async () => {
    const url = `ws://${all.addr("ws")}/socket`;
    const listener = await connect(url), shouter = await connect(`tcp://${all.addr("tcp")}`);
    try {
      const heard = [];
      listener.on("shout", (body) => { heard.push(body); });
      await shouter.fire("shout", { n: 1 });
      assert.ok((await shouter.call("shout", { n: 2 })) >= 2);
      await waitFor(() => heard.length === 2, "two broadcasts");
      assert.deepEqual(heard, [{ n: 1 }, { n: 2 }]);
      listener.on("triple", (n) => n * 3).on("refuse", () => { throw new RemoteError("not today"); });
      listener.on("later", async (n) => { await new Promise((r) => setTimeout(r, 5)); return n + 1; });
      assert.equal(await listener.call("ask_back", { action: "triple", body: 7 }), 21);
      assert.equal(await listener.call("ask_back", { action: "later", body: 1 }), 2);
      await assert.rejects(listener.call("ask_back", { action: "refuse" }), /not today/);
      await assert.rejects(listener.call("ask_back", { action: "nobody" }), /No handlers for nobody/);
    } finally {
      listener.close();
      shouter.close();
    }
  });

  test("a stream with credit, then its result", async () => {
    const c = await connect(`tcp://${all.addr("tcp")}`);
    try {
      const items = c.stream("count", { n: 50 }, { window: 4 });
      const first = await items.next();
      assert.equal(first.value, 0);
      await new Promise((r) => setTimeout(r, 300));
      // The server sent at most the window ahead of what was read.
      assert.ok(items.items.length <= 4, `${items.items.length} items buffered`);
      const rest = [];
      for await (const n of items) rest.push(n);
      assert.deepEqual(rest, Array.from({ length: 49 }, (_, i) => i + 1));
      assert.equal(items.result, 50);
      await assert.rejects(async () => { for await (const _ of c.stream("count", { n: 1e9 })); }, /at most/);
    } finally {
      c.close();
    }
  });

  test("cancel: breaking out of a stream and aborting a call stop the handler", async () => {
    const c = await connect(`tcp://${all.addr("tcp")}`);
    try {
      const got = [];
      const items = c.stream("count", { n: 100000, ms: 10 });
      for await (const n of items) { got.push(n); if (got.length === 3) break; }
      assert.deepEqual(got, [0, 1, 2]);
      assert.ok(items.cancelled && items.done);
      // pooled_sleep serves 2 at once, 2 waiting: aborted calls free their
      // slots, or the fifth would be refused.
      const abort = new AbortController();
      const calls = Array.from({ length: 4 }, () => c.call("pooled_sleep", { ms: 20000 }, { signal: abort.signal, timeout: 30000 }));
      await new Promise((r) => setTimeout(r, 300));
      abort.abort();
      for (const r of await Promise.allSettled(calls)) assert.ok(r.reason instanceof Cancelled, String(r.reason));
      // (The slots are freed as the server processes the cancels: soon,
      // not necessarily before the next call arrives; uncancelled, they
      // would be held 20 s.)
      await waitFor(() => c.call("pooled_sleep", { ms: 1 }, { timeout: 3000 }).then((n) => n === 1, () => false), "a free slot", 5000);
      const signal = new AbortController();
      const s = c.stream("count", { n: 1000, ms: 10 }, { signal: signal.signal });
      assert.equal((await s.next()).value, 0);
      signal.abort();
      const left = [];
      for await (const n of s) left.push(n);
      assert.ok(left.length < 100 && s.cancelled);
    } finally {
      c.close();
    }
  });

  test("many calls at once, JSON and MessagePack", async () => {
    for (const url of [`tcp://${all.addr("tcp")}`, `ws://${all.addr("ws", 1)}/socket?protocol=msgpack`]) {
      const c = await connect(url);
      const sums = await Promise.all(Array.from({ length: 200 }, (_, i) => c.call("add", { a: i, b: i })));
      assert.deepEqual(sums, Array.from({ length: 200 }, (_, i) => 2 * i));
      c.close();
    }
  });

  test("a subscriber can tell which topic arrived", async () => {
    const tcp = `tcp://${all.addr("tcp")}`;
    const got = [];
    const sub = await connect(tcp), pub = await connect(tcp);
    await sub.subscribe("sensors.>", (body, topic) => { got.push([topic, body]); });
    assert.equal(await pub.publish("sensors.t1.raw", 21.5, { confirm: true }), 1);
    assert.equal(await pub.publish("sensors.t2", 19, { confirm: true }), 1);
    await waitFor(() => got.length === 2, "two deliveries");
    assert.deepEqual(got.sort(), [["sensors.t1.raw", 21.5], ["sensors.t2", 19]]);
    sub.close();
    pub.close();
  });

  test("publish, subscribe and retroactive delivery", async () => {
    const tcp = `tcp://${all.addr("tcp")}`, ws = `ws://${all.addr("ws")}/socket`;
    const got = [];
    const sub = await connect(tcp), pub = await connect(ws);
    await sub.subscribe("sensors.*", (body) => { got.push(["any", body]); });
    await sub.subscribe("sensors.t1", (body) => { got.push(["t1", body]); });
    assert.equal(await pub.publish("sensors.t1", 21.5, { confirm: true }), 1);
    await pub.publish("sensors.t2", 19);
    await waitFor(() => got.length === 2, "two deliveries");
    assert.deepEqual(got, [["t1", 21.5], ["any", 19]]);
    await sub.unsubscribe("sensors.*");
    assert.equal(await pub.publish("sensors.t2", 0, { confirm: true }), 0);
    sub.close();

    const seen = [];
    const auditor = await connect(tcp, { name: "js-auditor" });
    await auditor.subscribe("orders.>", (body) => { seen.push(body); }, { retroactive: true });
    auditor.close();
    await waitFor(async () => (await pub.publish("orders.new", 0, { confirm: true })) === 1, "the name kept");
    for (const n of [1, 2, 3]) assert.equal(await pub.publish("orders.new", n, { confirm: true }), 1);
    let back;
    await waitFor(async () => {
      try { back = await connect(tcp, { name: "js-auditor" }); return true; } catch (e) { assert.ok(e instanceof AuthError && /name taken/.test(e.message), String(e)); return false; }
    }, "the name released");
    await back.subscribe("orders.>", (body) => { seen.push(body); }, { retroactive: true });
    await waitFor(() => seen.length === 4, "what was kept");
    assert.deepEqual(seen, [0, 1, 2, 3]);
    back.close();
    pub.close();
  });

  test("a token is required and checked", async () => {
    const d = await demo("--token", "opensesame", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0");
    const tcp = `tcp://${d.addr("tcp")}`, ws = `ws://${d.addr("ws")}/socket`;
    const anonymous = await connect(tcp);
    assert.equal(typeof (await anonymous.ping()), "number");
    await assert.rejects(anonymous.call("echo", 1), /unauthenticated/);
    anonymous.close();
    await assert.rejects(connect(tcp, { token: "wrong" }), (e) => e instanceof AuthError && /authentication failed: bad token/.test(e.message));
    for (const url of [tcp, ws]) {
      const c = await connect(url, { token: "opensesame" });
      assert.equal(await c.call("echo", "in"), "in");
      c.close();
    }
    const q = await connect(`${ws}?token=opensesame`);
    assert.equal(await q.call("echo", "query"), "query");
    q.close();
  });

  test("tls:// and wss://", { skip: !process.env.DRS_TLS_CA && "DRS_TLS_CA is not set" }, async () => {
    const { DRS_TLS_CA: ca, DRS_TLS_CERT: cert, DRS_TLS_KEY: key } = process.env;
    const d = await demo("--tls-cert", cert, "--tls-key", key, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0");
    const tlsPort = d.addr("tls").split(":").pop(), wssPort = d.addr("wss").split(":").pop();
    for (const url of [`tls://localhost:${tlsPort}?ca=${ca}`, `wss://localhost:${wssPort}/socket?ca=${ca}`]) {
      const c = await connect(url);
      assert.equal(await c.call("add", { a: 20, b: 22 }), 42);
      c.close();
    }
    await assert.rejects(connect(`tls://localhost:${tlsPort}`, { timeout: 2000 }), ConnectError);
  });

  test("reconnects through a server restart", async () => {
    const d = await demo("--tcp", "127.0.0.1:0");
    const events = [];
    const c = await connect(`tcp://${d.addr("tcp")}`, {
      name: "js-restart",
      backoff: [20, 200],
      onConnect: () => events.push("up"),
      onDisconnect: () => events.push("down"),
    });
    try {
      const got = [];
      await c.subscribe("news", (body) => { got.push(body); });
      assert.equal((await c.call("session")).name, "js-restart");
      // A call in flight when the server dies fails with Closed, once.
      const inFlight = c.call("sleep", { ms: 20000 }, { timeout: 30000 }).then(() => null, (e) => e);
      await waitFor(() => c.link.pending.size === 1, "the call sent");
      await d.restart();
      assert.ok((await inFlight) instanceof Closed);
      // The next call waits for the new connection, named and subscribed again.
      assert.equal((await c.call("session", null, { timeout: 10000 })).name, "js-restart");
      assert.equal(c.connections, 2);
      assert.deepEqual(events, ["up", "down", "up"]);
      const pub = await connect(`tcp://${d.addr("tcp")}`);
      assert.equal(await pub.publish("news", "back", { confirm: true }), 1);
      pub.close();
      await waitFor(() => got.length === 1, "the subscription renewed");
      assert.deepEqual(got, ["back"]);
      // Between connections, calls wait within their own timeout.
      d.pin();
      await d.stop();
      await waitFor(() => !c.connected, "the loss noticed");
      await assert.rejects(c.call("echo", 1, { timeout: 300 }), Timeout);
      await d.start();
      assert.equal(await c.call("echo", 2, { timeout: 10000 }), 2);
    } finally {
      c.close();
    }
    await assert.rejects(c.call("echo", 3), Closed);
  });

  test("a delayed call runs later; an aborted one never", async () => {
    const c = await connect(`tcp://${all.addr("tcp")}`);
    try {
      const start = Date.now();
      assert.equal(await c.call("echo", "later", { delay: 300 }), "later");
      assert.ok(Date.now() - start >= 290);
      const heard = [];
      c.on("shout", (body) => { heard.push(body); });
      const abort = new AbortController();
      const never = c.call("shout", "never", { delay: 400, signal: abort.signal });
      abort.abort();
      await assert.rejects(never, Cancelled);
      await c.fire("shout", "soon", { delay: 100 });
      // Held until after the aborted one's time: had that run, its
      // broadcast would have come first.
      assert.equal(await c.call("echo", "after", { delay: 500 }), "after");
      assert.deepEqual(heard, ["soon"]);
      await assert.rejects(c.call("echo", 1, { delay: -1 }), RangeError);
    } finally {
      c.close();
    }
  });

  test("identify and expose", async () => {
    const url = `ws://${all.addr("ws")}/socket`;
    const c = await connect(url), other = await connect(url);
    try {
      assert.equal(await c.identify("js-named"), false);
      assert.equal((await c.call("session")).name, "js-named");
      await c.expose("js.triple", (n) => n * 3);
      assert.equal(await other.call("js.triple", 5), 15);
    } finally {
      c.close();
      other.close();
    }
  });
});
