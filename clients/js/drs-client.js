// drsrpc: talk to drs services from JavaScript, in browsers and Node ≥ 18.
//
//   import { connect } from "drsrpc";
//   const c = await connect("ws://127.0.0.1:12001/socket");
//   console.log(await c.call("add", { a: 1, b: 2 }));   // 3
//
// URLs: ws://HOST:PORT/PATH and wss://… everywhere; tcp://HOST:PORT,
// tls://HOST:PORT (?ca=FILE) and ipc:///PATH (a Unix socket) in Node;
// ?protocol=msgpack for MessagePack; other query parameters (?token=) go to
// a WebSocket server. No dependency in browsers; in Node, the `ws` package
// when installed (else the global WebSocket of Node ≥ 22).
//
// A Client stays connected: a lost connection fails the calls pending on it
// with Closed (never sent again: they may have run), and the client
// reconnects with backoff, authenticating, identifying and subscribing
// again; calls made in between wait for the connection within their own
// timeout (5 s by default).

/** Everything drsrpc rejects with. */
export class DrsError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}
/** The remote handler answered with an application error (drs.error). */
export class RemoteError extends DrsError {
  constructor(message, body) {
    super(message);
    this.body = body;
  }
}
/** The remote handler failed unexpectedly (drs.exception). */
export class RemoteException extends DrsError {
  constructor(message, body) {
    super(message);
    this.body = body;
  }
}
/** The server refused the token (drs.auth) or the name (drs.identify). */
export class AuthError extends RemoteError {}
/** No reply (or no connection) within the call's timeout. */
export class Timeout extends DrsError {}
/** The connection is closed, or closed while the call was pending. */
export class Closed extends DrsError {}
/** The client could not connect. */
export class ConnectError extends Closed {}
/** The port speaks another protocol, or HTTP: the message says which, and what to change in the URL. */
export class WrongProtocol extends ConnectError {}
/** The call was cancelled through its AbortSignal. */
export class Cancelled extends DrsError {}

/** The default timeout of calls and of connecting, in milliseconds. */
export const DEFAULT_TIMEOUT = 5000;
/** The largest frame accepted, as the server's default. */
export const MAX_FRAME = 8 * 1024 * 1024;

const REPLIES = new Set(["drs.response", "drs.error", "drs.exception"]);
const isNode = typeof process !== "undefined" && !!process.versions?.node;

// ---- URLs -------------------------------------------------------------------

/** A parsed drs URL. */
export function parseUrl(text) {
  const m = /^([a-z]+):\/\/([^?]*)(?:\?(.*))?$/.exec(text);
  const schemes = ["tcp", "tls", "ipc", "unix", "ws", "wss"];
  if (!m || !schemes.includes(m[1])) {
    throw new TypeError(`${JSON.stringify(text)} is not a drs URL: the scheme is one of ${schemes.join(", ")}`);
  }
  const [, scheme, target, query = ""] = m;
  const params = new URLSearchParams(query);
  const protocol = params.get("protocol") ?? "json";
  if (protocol !== "json" && protocol !== "msgpack") {
    throw new TypeError(`unknown protocol ${JSON.stringify(protocol)} (json or msgpack)`);
  }
  const ca = params.get("ca");
  params.delete("protocol");
  params.delete("ca");
  const url = { text, scheme, protocol, ca, params };
  if (scheme === "ipc" || scheme === "unix") {
    if (!target) throw new TypeError(`${JSON.stringify(text)} names no socket path: ipc:///PATH`);
    url.path = target;
    return url;
  }
  const slash = target.indexOf("/");
  const hostport = slash < 0 ? target : target.slice(0, slash);
  const colon = hostport.lastIndexOf(":");
  const port = Number(hostport.slice(colon + 1));
  if (colon < 1 || !Number.isInteger(port) || port <= 0) {
    throw new TypeError(`${JSON.stringify(text)} needs a host and a port`);
  }
  url.host = hostport.slice(0, colon).replace(/^\[|\]$/g, "");
  url.port = port;
  url.path = slash < 0 ? (scheme.startsWith("ws") ? "/socket" : "") : target.slice(slash);
  return url;
}

// ---- MessagePack --------------------------------------------------------------

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Encodes `value` as MessagePack (maps, arrays, strings, numbers, bytes, booleans, null). */
export function packMsgpack(value) {
  let buf = new Uint8Array(256);
  let len = 0;
  const room = (n) => {
    if (len + n <= buf.length) return;
    let size = buf.length * 2;
    while (size < len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(buf.subarray(0, len));
    buf = next;
  };
  const byte = (b) => { room(1); buf[len++] = b; };
  const bytes = (a) => { room(a.length); buf.set(a, len); len += a.length; };
  const view = (n, f) => { room(n); f(new DataView(buf.buffer, buf.byteOffset + len, n)); len += n; };
  const head = (small, fix, b8, b16, b32, n) => {
    if (fix !== null && n < small) byte(fix | n);
    else if (b8 !== null && n < 0x100) { byte(b8); byte(n); }
    else if (n < 0x10000) view(3, (d) => { d.setUint8(0, b16); d.setUint16(1, n); });
    else view(5, (d) => { d.setUint8(0, b32); d.setUint32(1, n); });
  };
  const put = (v) => {
    if (v === null || v === undefined) byte(0xc0);
    else if (v === false) byte(0xc2);
    else if (v === true) byte(0xc3);
    else if (typeof v === "number") {
      if (Number.isInteger(v) && v >= 0 && v < 0x80) byte(v);
      else if (Number.isInteger(v) && v < 0 && v >= -32) byte(v & 0xff);
      else if (Number.isSafeInteger(v) && v >= 0) {
        if (v < 0x100) { byte(0xcc); byte(v); }
        else if (v < 0x10000) view(3, (d) => { d.setUint8(0, 0xcd); d.setUint16(1, v); });
        else if (v < 0x100000000) view(5, (d) => { d.setUint8(0, 0xce); d.setUint32(1, v); });
        else view(9, (d) => { d.setUint8(0, 0xcf); d.setBigUint64(1, BigInt(v)); });
      } else if (Number.isSafeInteger(v)) {
        if (v >= -0x80) view(2, (d) => { d.setUint8(0, 0xd0); d.setInt8(1, v); });
        else if (v >= -0x8000) view(3, (d) => { d.setUint8(0, 0xd1); d.setInt16(1, v); });
        else if (v >= -0x80000000) view(5, (d) => { d.setUint8(0, 0xd2); d.setInt32(1, v); });
        else view(9, (d) => { d.setUint8(0, 0xd3); d.setBigInt64(1, BigInt(v)); });
      } else view(9, (d) => { d.setUint8(0, 0xcb); d.setFloat64(1, v); });
    } else if (typeof v === "bigint") view(9, (d) => {
      if (v >= 0n) { d.setUint8(0, 0xcf); d.setBigUint64(1, v); } else { d.setUint8(0, 0xd3); d.setBigInt64(1, v); }
    });
    else if (typeof v === "string") {
      const s = encoder.encode(v);
      head(32, 0xa0, 0xd9, 0xda, 0xdb, s.length);
      bytes(s);
    } else if (v instanceof Uint8Array) {
      head(0, null, 0xc4, 0xc5, 0xc6, v.length);
      bytes(v);
    } else if (Array.isArray(v)) {
      head(16, 0x90, null, 0xdc, 0xdd, v.length);
      for (const x of v) put(x);
    } else if (typeof v === "object") {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      head(16, 0x80, null, 0xde, 0xdf, entries.length);
      for (const [k, x] of entries) { put(k); put(x); }
    } else throw new TypeError(`cannot encode a ${typeof v} as MessagePack`);
  };
  put(value);
  return buf.slice(0, len);
}

/** Decodes one MessagePack value that fills `bytes`. */
export function unpackMsgpack(bytes) {
  const d = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const need = (n) => { if (at + n > bytes.length) throw new DrsError("truncated MessagePack"); };
  const u8 = () => { need(1); return d.getUint8(at++); };
  const take = (n, f) => { need(n); const v = f(at); at += n; return v; };
  const str = (n) => { need(n); const s = decoder.decode(bytes.subarray(at, at + n)); at += n; return s; };
  const bin = (n) => { need(n); const b = bytes.slice(at, at + n); at += n; return b; };
  const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(get()); return a; };
  const map = (n) => {
    const o = {};
    for (let i = 0; i < n; i++) { const k = get(); o[String(k)] = get(); }
    return o;
  };
  const big = (v) => (v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v);
  const get = () => {
    const b = u8();
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(u8());
      case 0xc5: return bin(take(2, (i) => d.getUint16(i)));
      case 0xc6: return bin(take(4, (i) => d.getUint32(i)));
      case 0xca: return take(4, (i) => d.getFloat32(i));
      case 0xcb: return take(8, (i) => d.getFloat64(i));
      case 0xcc: return u8();
      case 0xcd: return take(2, (i) => d.getUint16(i));
      case 0xce: return take(4, (i) => d.getUint32(i));
      case 0xcf: return big(take(8, (i) => d.getBigUint64(i)));
      case 0xd0: return take(1, (i) => d.getInt8(i));
      case 0xd1: return take(2, (i) => d.getInt16(i));
      case 0xd2: return take(4, (i) => d.getInt32(i));
      case 0xd3: return big(take(8, (i) => d.getBigInt64(i)));
      case 0xd9: return str(u8());
      case 0xda: return str(take(2, (i) => d.getUint16(i)));
      case 0xdb: return str(take(4, (i) => d.getUint32(i)));
      case 0xdc: return arr(take(2, (i) => d.getUint16(i)));
      case 0xdd: return arr(take(4, (i) => d.getUint32(i)));
      case 0xde: return map(take(2, (i) => d.getUint16(i)));
      case 0xdf: return map(take(4, (i) => d.getUint32(i)));
      default: throw new DrsError(`unsupported MessagePack byte 0x${b.toString(16)}`);
    }
  };
  const value = get();
  if (at !== bytes.length) throw new DrsError("trailing bytes after a MessagePack value");
  return value;
}

function codec(protocol) {
  if (protocol === "msgpack") {
    return { binary: true, encode: packMsgpack, decode: unpackMsgpack };
  }
  return {
    binary: false,
    encode: (c) => encoder.encode(JSON.stringify(c)),
    decode: (bytes) => JSON.parse(typeof bytes === "string" ? bytes : decoder.decode(bytes)),
  };
}

// ---- transports ---------------------------------------------------------------

/** A transport: send(frame), onframe(frame), onclose(), close(). */
async function openWebSocket(url, codec, timeout) {
  const query = url.params.toString();
  const target = `${url.scheme}://${url.host.includes(":") ? `[${url.host}]` : url.host}:${url.port}${url.path}${query ? "?" + query : ""}`;
  let WS = globalThis.WebSocket;
  let options;
  if (isNode) {
    try {
      WS = (await import("ws")).default;
      options = { maxPayload: MAX_FRAME };
      if (url.ca) options.ca = (await import("node:fs")).readFileSync(url.ca);
    } catch (e) {
      if (!WS) throw new ConnectError("WebSocket needs Node ≥ 22 or the ws package (npm install ws)");
      if (url.ca) throw new ConnectError("?ca= on wss:// needs the ws package (npm install ws)");
    }
  }
  const ws = options ? new WS(target, options) : new WS(target);
  ws.binaryType = "arraybuffer";
  const t = {
    send: (frame) => ws.send(codec.binary ? frame : decoder.decode(frame)),
    close: () => ws.close(),
    onframe: null,
    onclose: null,
  };
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { ws.close(); reject(new ConnectError(`cannot connect to ${url.text}: no connection within ${timeout} ms`)); }, timeout);
    ws.onopen = () => { clearTimeout(timer); resolve(); };
    ws.onerror = (e) => { clearTimeout(timer); reject(new ConnectError(`cannot connect to ${url.text}: ${e?.message ?? e?.error?.message ?? "refused"}`)); };
  });
  ws.onerror = () => {};
  ws.onmessage = (e) => t.onframe?.(typeof e.data === "string" ? encoder.encode(e.data) : new Uint8Array(e.data));
  ws.onclose = () => t.onclose?.();
  return t;
}

async function openSocket(url, codec, timeout) {
  if (!isNode) throw new ConnectError(`${url.scheme}:// needs Node; browsers speak ws:// and wss://`);
  const net = await import("node:net");
  let socket;
  if (url.scheme === "tls") {
    const tls = await import("node:tls");
    const ca = url.ca ? (await import("node:fs")).readFileSync(url.ca) : undefined;
    socket = tls.connect({ host: url.host, port: url.port, servername: url.host, ca });
  } else if (url.scheme === "tcp") {
    socket = net.connect({ host: url.host, port: url.port });
  } else {
    socket = net.connect({ path: url.path });
  }
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.destroy(); reject(new ConnectError(`cannot connect to ${url.text}: no connection within ${timeout} ms`)); }, timeout);
    socket.once(url.scheme === "tls" ? "secureConnect" : "connect", () => { clearTimeout(timer); resolve(); });
    socket.once("error", (e) => { clearTimeout(timer); reject(new ConnectError(`cannot connect to ${url.text}: ${e.message}`)); });
  });
  socket.setNoDelay?.(true);
  const t = {
    send: (frame) => {
      if (codec.binary) {
        const head = new Uint8Array(4);
        new DataView(head.buffer).setUint32(0, frame.length);
        socket.write(head);
        socket.write(frame);
      } else {
        socket.write(frame);
        socket.write("\n");
      }
    },
    close: () => socket.end(),
    onframe: null,
    onclose: null,
    // What the port's first bytes showed it speaks instead, if anything.
    foreign: null,
  };
  let pending = new Uint8Array(0);
  let first = true;
  const foreign = (message) => { t.foreign = message; socket.destroy(); };
  socket.on("data", (chunk) => {
    const joined = new Uint8Array(pending.length + chunk.length);
    joined.set(pending);
    joined.set(chunk, pending.length);
    let at = 0;
    for (;;) {
      if (codec.binary) {
        if (joined.length - at < 4) break;
        const n = new DataView(joined.buffer, joined.byteOffset + at, 4).getUint32(0);
        if (n > MAX_FRAME) {
          const b = joined[at];
          if (first && (b === 0x7b || b === 0x5b)) return foreign("this port speaks JSON, not drs MessagePack (drop ?protocol=msgpack from the URL)");
          if (first && startsWith(joined.subarray(at), "HTTP")) return foreign("this port speaks HTTP, not drs MessagePack (a ws:// URL, if it serves WebSocket)");
          socket.destroy();
          return;
        }
        first = false;
        if (joined.length - at - 4 < n) break;
        t.onframe?.(joined.subarray(at + 4, at + 4 + n));
        at += 4 + n;
      } else {
        if (first) {
          // A zero byte starts MessagePack's length prefix: no line follows.
          const b = joined.subarray(at).find((x) => x !== 32 && x !== 9 && x !== 13 && x !== 10);
          if (b === 0) return foreign("this port speaks MessagePack, not drs JSON (add ?protocol=msgpack to the URL)");
        }
        const nl = joined.indexOf(10, at);
        if (nl < 0) {
          if (joined.length - at > MAX_FRAME) { socket.destroy(); return; }
          break;
        }
        const line = joined.subarray(at, nl);
        at = nl + 1;
        if (line.some((b) => b !== 13 && b !== 32)) {
          if (first && startsWith(line, "HTTP/")) return foreign("this port speaks HTTP, not drs JSON (a ws:// URL, if it serves WebSocket)");
          first = false;
          t.onframe?.(line);
        }
      }
    }
    pending = joined.slice(at);
  });
  socket.on("error", () => {});
  socket.on("close", () => t.onclose?.());
  return t;
}

/** Whether `bytes` begin with the ASCII `text`. */
function startsWith(bytes, text) {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) if (bytes[i] !== text.charCodeAt(i)) return false;
  return true;
}

function openTransport(url, codec, timeout) {
  return url.scheme.startsWith("ws") ? openWebSocket(url, codec, timeout) : openSocket(url, codec, timeout);
}

// ---- topics -------------------------------------------------------------------

/** Whether `topic` matches `pattern` (`*` one segment, `>` the rest). */
export function topicMatches(pattern, topic) {
  const p = pattern.split("."), t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return t.length > i;
    if (i >= t.length || (p[i] !== "*" && p[i] !== t[i])) return false;
  }
  return p.length === t.length;
}

function remote(action, body) {
  let message = body && typeof body === "object" ? body.message : undefined;
  if (message === undefined) message = body == null ? `${action} with no message` : String(body);
  return action === "drs.exception" ? new RemoteException(message, body) : new RemoteError(message, body);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A delay in whole milliseconds (0 for none). */
function delayMs(delay) {
  if (delay === undefined || delay === null) return 0;
  if (!(delay >= 0)) throw new RangeError("delay must be at least 0");
  return Math.ceil(delay);
}

// ---- the client -----------------------------------------------------------------

/** One connection: its transport, pending calls and streams. */
class Link {
  constructor(transport, codec) {
    this.transport = transport;
    this.codec = codec;
    this.pending = new Map();
    this.streams = new Map();
    this.closed = false;
    this.ended = new Promise((r) => (this.end = r));
  }
  send(command) {
    if (this.closed) throw new Closed("connection closed");
    this.transport.send(this.codec.encode(command));
  }
  /** Ends the link: calls fail with what `why` makes (by default Closed, quoting the server if it said why before closing). */
  fail(why) {
    if (this.closed) return;
    this.closed = true;
    const error = why ?? (() => new Closed(this.notice === undefined ? "connection closed" : `the peer closed the connection: ${this.notice}`));
    for (const p of this.pending.values()) p.reject(error());
    this.pending.clear();
    for (const s of this.streams.values()) s._end(undefined, error());
    this.streams.clear();
    this.end();
  }
}

/** A streamed reply: `for await (const item of stream)`, then `stream.result`. */
export class Stream {
  constructor(client, action, body, { window = 64, timeout, signal } = {}) {
    if (!(window >= 1)) throw new RangeError("window must be at least 1");
    this.client = client;
    this.action = action;
    this.body = body;
    this.window = window;
    this.timeout = timeout ?? client.timeout;
    this.signal = signal;
    this.items = [];
    this.waiter = null;
    this.read = 0;
    this.done = false;
    this.cancelled = false;
    this.result = undefined;
  }
  async _start() {
    this.link = await this.client._linkWithin(this.timeout);
    this.key = this.client._nextKey();
    this.link.streams.set(this.key, this);
    this.link.send({ key: this.key, action: this.action, body: this.body ?? null, stream: this.window });
    if (this.signal) {
      if (this.signal.aborted) this.cancel();
      else this.signal.addEventListener("abort", () => this.cancel(), { once: true });
    }
  }
  _push(entry) {
    this.items.push(entry);
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
  _item(body) { this._push({ item: body }); }
  _end(result, error) { this._push({ end: true, result, error }); }
  async next() {
    if (this.done) return { done: true, value: undefined };
    if (!this.link) await this._start();
    if (!this.items.length) {
      let timer;
      const arrived = new Promise((r) => (this.waiter = r));
      const late = new Promise((r) => (timer = setTimeout(() => r("late"), this.timeout)));
      const what = await Promise.race([arrived, late]);
      clearTimeout(timer);
      if (what === "late" && !this.items.length) {
        this.cancel();
        throw new Timeout(`no item within ${this.timeout} ms`);
      }
    }
    const entry = this.items.shift();
    if (entry.end) {
      this.done = true;
      this.link.streams.delete(this.key);
      this.result = entry.result;
      if (entry.error && !this.cancelled) throw entry.error;
      return { done: true, value: undefined };
    }
    this.read += 1;
    if (this.read * 2 >= this.window) {
      const granted = this.read;
      this.read = 0;
      try { this.link.send({ key: this.key, action: "drs.more", body: granted }); } catch {}
    }
    return { done: false, value: entry.item };
  }
  /** Stops the handler on the server (drs.cancel); the iteration ends. */
  cancel() {
    if (this.done || this.cancelled) return;
    this.cancelled = true;
    if (this.link) {
      this.link.streams.delete(this.key);
      try { this.link.send({ key: this.key, action: "drs.cancel" }); } catch {}
    }
    this._end(undefined, undefined);
  }
  async return() {
    if (!this.done) this.cancel();
    this.done = true;
    return { done: true, value: undefined };
  }
  [Symbol.asyncIterator]() { return this; }
}

export class Client {
  constructor(url, options = {}) {
    this.url = parseUrl(url);
    this.codec = codec(this.url.protocol);
    this.token = options.token;
    this.name = options.name;
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT;
    this.reconnect = options.reconnect ?? true;
    this.backoff = options.backoff ?? [50, 5000];
    this.handlerGrace = options.handlerGrace ?? 1000;
    this.onConnect = options.onConnect;
    this.onDisconnect = options.onDisconnect;
    this.handlers = new Map();
    this.subscriptions = new Map();
    this.parked = [];
    this.draining = false;
    this.key = 0;
    this.link = null;
    this.closing = false;
    this.connections = 0;
    this.waiters = [];
  }

  _nextKey() { return String(++this.key); }

  get connected() { return !!this.link && !this.link.closed; }

  async _open() {
    const transport = await openTransport(this.url, this.codec, this.timeout);
    const link = new Link(transport, this.codec);
    transport.onframe = (frame) => this._frame(link, frame);
    transport.onclose = () => link.fail(transport.foreign ? () => new WrongProtocol(transport.foreign) : undefined);
    try {
      if (this.token !== undefined) {
        try { await this._callOn(link, "drs.auth", { token: this.token }, this.timeout); }
        catch (e) { if (e instanceof RemoteError) throw new AuthError(`authentication failed: ${e.message}`, e.body); throw e; }
      }
      if (this.name !== undefined) {
        try { await this._callOn(link, "drs.identify", { name: this.name }, this.timeout); }
        catch (e) { if (e instanceof RemoteError) throw new AuthError(`cannot identify as ${JSON.stringify(this.name)}: ${e.message}`, e.body); throw e; }
      }
      for (const [pattern, { retroactive }] of this.subscriptions) {
        await this._callOn(link, "drs.subscribe", { topic: pattern, retroactive }, this.timeout);
      }
    } catch (e) {
      link.fail();
      transport.close();
      throw e;
    }
    return link;
  }

  _up(link) {
    this.link = link;
    this.connections += 1;
    for (const w of this.waiters.splice(0)) w();
    this.onConnect?.();
    link.ended.then(() => this._lost(link));
  }

  async _lost(link) {
    if (this.link !== link) return;
    this.onDisconnect?.();
    if (this.closing || !this.reconnect) { this.closing = true; return; }
    let delay = this.backoff[0];
    while (!this.closing) {
      await sleep(delay * (0.75 + Math.random() / 2));
      if (this.closing) return;
      try {
        this._up(await this._open());
        return;
      } catch (e) {
        if (e instanceof AuthError) { this.closing = true; return; }
        delay = Math.min(delay * 2, this.backoff[1]);
      }
    }
  }

  async _linkWithin(timeout) {
    if (this.connected) return this.link;
    if (this.closing) throw new Closed("the client is closed");
    let timer, waiter;
    const up = new Promise((r) => { waiter = r; this.waiters.push(r); });
    const late = new Promise((r) => (timer = setTimeout(() => r("late"), timeout)));
    const what = await Promise.race([up, late]);
    clearTimeout(timer);
    if (what === "late") {
      this.waiters = this.waiters.filter((w) => w !== waiter);
      throw new Timeout(`no connection within ${timeout} ms`);
    }
    return this.link;
  }

  _frame(link, frame) {
    // Nothing is served once the connection is closed on our side: a
    // delivery handled now could not be acknowledged, and comes again.
    if (link.closed) return;
    let command;
    try { command = this.codec.decode(frame); } catch { return; }
    if (!command || typeof command.action !== "string") return;
    const { action, key, body } = command;
    if (REPLIES.has(action)) {
      if ((key === undefined || key === null) && action !== "drs.response") {
        // Why, if the server closes next.
        link.notice = typeof body?.message === "string" ? body.message : JSON.stringify(body);
        return;
      }
      const stream = link.streams.get(key);
      if (stream) {
        link.streams.delete(key);
        if (action === "drs.response") stream._end(body);
        else stream._end(undefined, remote(action, body));
        return;
      }
      const p = link.pending.get(key);
      if (p) {
        link.pending.delete(key);
        if (action === "drs.response") p.resolve(body === undefined ? null : body);
        else p.reject(remote(action, body));
      }
      return;
    }
    if (action === "drs.next") { link.streams.get(key)?._item(body); return; }
    if (action === "drs.more" || action === "drs.cancel") return;
    if (key !== undefined && key !== null && action !== "drs.ping" && (this.parked.length || !this._handlerFor(action))) {
      // A call before its handler exists: a name's kept deliveries come as
      // it identifies, before subscribe() runs; answering "No handlers"
      // would acknowledge (and lose) them. It waits, in order.
      this.parked.push({ link, action, key, body, until: Date.now() + this.handlerGrace });
      this._drain();
      return;
    }
    this._serve(link, action, key, body);
  }

  async _drain() {
    if (this.draining) return;
    this.draining = true;
    while (this.parked.length) {
      const p = this.parked[0];
      if (p.link.closed) this.parked.shift();
      else if (this._handlerFor(p.action) || Date.now() >= p.until) {
        this.parked.shift();
        this._serve(p.link, p.action, p.key, p.body);
      } else await sleep(10);
    }
    this.draining = false;
  }

  _handlerFor(action) {
    let best = null;
    for (const [pattern, { handler }] of this.subscriptions) {
      if (topicMatches(pattern, action)) {
        const literal = pattern.split(".").filter((s) => s !== "*" && s !== ">").length;
        if (!best || literal > best[0]) best = [literal, handler];
      }
    }
    return best ? best[1] : this.handlers.get(action);
  }

  async _serve(link, action, key, body) {
    const handler = this._handlerFor(action);
    let reply;
    if (action === "drs.ping") reply = { action: "drs.response", body: Date.now() };
    else if (!handler) reply = { action: "drs.error", body: { message: `No handlers for ${action}` } };
    else {
      try {
        // The body, then the action: for a subscription, the topic the
        // message was published on (handlers written for the body alone
        // ignore it).
        const value = await handler(body === undefined ? null : body, action);
        reply = { action: "drs.response", body: value === undefined ? null : value };
      } catch (e) {
        reply = e instanceof RemoteError
          ? { action: "drs.error", body: { message: e.message } }
          : { action: "drs.exception", body: { message: `${e?.name ?? "Error"}: ${e?.message ?? e}` } };
      }
    }
    if (key === undefined || key === null || link.closed) return;
    try { link.send({ key, ...reply }); } catch {}
  }

  _callOn(link, action, body, timeout, signal, delay) {
    const key = this._nextKey();
    return new Promise((resolve, reject) => {
      let timer;
      const done = () => { clearTimeout(timer); link.pending.delete(key); signal?.removeEventListener("abort", abort); };
      const abort = () => {
        done();
        try { link.send({ key, action: "drs.cancel" }); } catch {}
        reject(new Cancelled(`${action}: cancelled`));
      };
      if (signal?.aborted) return reject(new Cancelled(`${action}: cancelled`));
      link.pending.set(key, {
        resolve: (v) => { done(); resolve(v); },
        reject: (e) => { done(); reject(e); },
      });
      timer = setTimeout(() => { done(); reject(new Timeout(`${action}: no reply within ${timeout} ms`)); }, timeout);
      signal?.addEventListener("abort", abort, { once: true });
      const command = { key, action };
      if (body !== undefined && body !== null) command.body = body;
      if (delay) command.delay = delay;
      try { link.send(command); } catch (e) { done(); reject(e); }
    });
  }

  /** Calls `action` and resolves with the reply's body; rejects with
   * RemoteError, RemoteException, Timeout, Closed, or Cancelled (when
   * `signal` aborts: drs.cancel stops the handler). With `delay` (ms) the
   * server holds the call and runs it that much later (the timeout then
   * counts from when it runs); aborting before takes it back. */
  async call(action, body = null, { timeout, signal, delay } = {}) {
    const limit = timeout ?? this.timeout;
    const ms = delayMs(delay);
    const start = Date.now();
    const link = await this._linkWithin(limit);
    return this._callOn(link, action, body, Math.max(limit - (Date.now() - start), 0) + ms, signal, ms);
  }

  /** Sends `action` without a reply; with `delay` (ms) the server runs it that much later. */
  async fire(action, body = null, { timeout, delay } = {}) {
    const link = await this._linkWithin(timeout ?? this.timeout);
    const command = { action };
    if (body !== undefined && body !== null) command.body = body;
    if (delayMs(delay)) command.delay = delayMs(delay);
    link.send(command);
  }

  /** Calls `action` for a streamed reply (see Stream). */
  stream(action, body = null, options = {}) { return new Stream(this, action, body, options); }

  /** The server's time in ms since the epoch (drs.ping). */
  ping(options) { return this.call("drs.ping", null, options); }

  /** Serves `action` for the server (broadcasts and calls): the handler gets
   * the body and returns (or resolves with) the reply; throw RemoteError for
   * drs.error, anything else is drs.exception. */
  on(action, handler) { this.handlers.set(action, handler); return this; }

  /** Subscribes to `pattern`; `handler` gets each published body and the
   * topic it was published on (`(body, topic) => …`). Kept
   * across reconnects; retroactive (with a name): what is published while
   * away is delivered on return, acknowledged by the handler's return. */
  async subscribe(pattern, handler, { retroactive = false, timeout } = {}) {
    const had = this.subscriptions.get(pattern);
    this.subscriptions.set(pattern, { handler, retroactive });
    try {
      await this.call("drs.subscribe", { topic: pattern, retroactive }, { timeout });
    } catch (e) {
      if (had) this.subscriptions.set(pattern, had); else this.subscriptions.delete(pattern);
      throw e;
    }
  }

  async unsubscribe(pattern, { timeout } = {}) {
    await this.call("drs.unsubscribe", { topic: pattern }, { timeout });
    this.subscriptions.delete(pattern);
  }

  /** Publishes `body` on `topic`; with `confirm`, resolves with how many
   * subscribers it reached or was stored for. */
  async publish(topic, body = null, { confirm = false, timeout } = {}) {
    if (confirm) return this.call("drs.publish", { topic, body }, { timeout });
    await this.fire("drs.publish", { topic, body }, { timeout });
    return undefined;
  }

  /** Names this client, now and on every reconnect; resolves with whether
   * the server resumed state kept for the name. */
  async identify(name, { timeout } = {}) {
    const reply = await this.call("drs.identify", { name }, { timeout });
    this.name = name;
    return !!(reply && reply.resumed);
  }

  /** Serves `action` for every client of the server's broker. */
  async expose(action, handler, { timeout } = {}) {
    this.on(action, handler);
    await this.call("drs.expose", { action }, { timeout });
  }

  /** Closes the connection; pending calls reject with Closed. */
  close() {
    this.closing = true;
    for (const w of this.waiters.splice(0)) w();
    if (this.link) {
      this.link.transport.close();
      this.link.fail();
    }
  }
}

/** Connects to the drs server at `url`. Options: token, name, timeout (ms,
 * default 5000), reconnect (default true), backoff ([first, max] ms),
 * handlerGrace (ms a call from the server waits for its handler to be
 * registered, default 1000), onConnect, onDisconnect. Rejects with
 * ConnectError or AuthError. */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  client._up(await client._open());
  return client;
}
