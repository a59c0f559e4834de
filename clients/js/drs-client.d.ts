// Types of drs-client (drs-client.js).

/** Everything drs-client rejects with. */
export class DrsError extends Error {}
/** The remote handler answered with an application error (drs.error). */
export class RemoteError extends DrsError {
  constructor(message: string, body?: unknown);
  body: unknown;
}
/** The remote handler failed unexpectedly (drs.exception). */
export class RemoteException extends DrsError {
  constructor(message: string, body?: unknown);
  body: unknown;
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

/** Milliseconds: 5000. */
export const DEFAULT_TIMEOUT: number;
/** Bytes: 8 MiB. */
export const MAX_FRAME: number;

/** Any JSON value (or, with MessagePack, bytes too). */
export type Body = null | boolean | number | string | Uint8Array | Body[] | { [key: string]: Body };

/** Serves a command from the server: gets its body, returns the reply. */
export type Handler = (body: any, action: string) => unknown | Promise<unknown>;
/** A subscription's handler: the body, and the topic it was published on. */
export type SubscriptionHandler = (body: any, topic: string) => unknown | Promise<unknown>;

export interface ConnectOptions {
  /** Sent as drs.auth {"token": …} on every connection. */
  token?: string;
  /** Sent as drs.identify {"name": …} on every connection. */
  name?: string;
  /** Milliseconds for connecting and for each call (default 5000). */
  timeout?: number;
  /** Reconnect when the connection is lost (default true). */
  reconnect?: boolean;
  /** [first, max] milliseconds between attempts (default [50, 5000]), with jitter. */
  backoff?: [number, number];
  /** Milliseconds a call from the server waits for its handler to be registered (default 1000). */
  handlerGrace?: number;
  onConnect?: () => void;
  onDisconnect?: () => void;
}

export interface CallOptions {
  /** Milliseconds (default: the client's). */
  timeout?: number;
  /** Milliseconds the server holds the call before running it. */
  delay?: number;
  /** Aborting it sends drs.cancel and rejects with Cancelled. */
  signal?: AbortSignal;
}

export interface StreamOptions extends CallOptions {
  /** Items the server may send ahead of what is read (default 64). */
  window?: number;
}

/** A streamed reply: `for await (const item of stream)`, then `result`. */
export class Stream<T = any> implements AsyncIterableIterator<T> {
  readonly window: number;
  /** The handler's final value, once the iteration ended. */
  result: unknown;
  done: boolean;
  cancelled: boolean;
  next(): Promise<IteratorResult<T, undefined>>;
  return(): Promise<IteratorResult<T, undefined>>;
  /** Stops the handler on the server (drs.cancel); the iteration ends. */
  cancel(): void;
  [Symbol.asyncIterator](): Stream<T>;
}

export interface DrsUrl {
  text: string;
  scheme: "tcp" | "tls" | "ipc" | "unix" | "ws" | "wss";
  protocol: "json" | "msgpack";
  ca: string | null;
  params: URLSearchParams;
  host?: string;
  port?: number;
  path?: string;
}

export class Client {
  constructor(url: string, options?: ConnectOptions);
  readonly connected: boolean;
  /** How many times the client has connected. */
  readonly connections: number;
  call<T = any>(action: string, body?: unknown, options?: CallOptions): Promise<T>;
  fire(action: string, body?: unknown, options?: { timeout?: number; delay?: number }): Promise<void>;
  stream<T = any>(action: string, body?: unknown, options?: StreamOptions): Stream<T>;
  ping(options?: CallOptions): Promise<number>;
  on(action: string, handler: Handler): this;
  subscribe(pattern: string, handler: SubscriptionHandler, options?: { retroactive?: boolean; timeout?: number }): Promise<void>;
  unsubscribe(pattern: string, options?: { timeout?: number }): Promise<void>;
  publish(topic: string, body?: unknown, options?: { confirm?: false; timeout?: number }): Promise<undefined>;
  publish(topic: string, body: unknown, options: { confirm: true; timeout?: number }): Promise<number>;
  identify(name: string, options?: { timeout?: number }): Promise<boolean>;
  expose(action: string, handler: Handler, options?: { timeout?: number }): Promise<void>;
  close(): void;
}

/** Connects to the drs server at `url` (ws://, wss://; in Node also tcp://, tls://, ipc:///PATH; ?protocol=msgpack). */
export function connect(url: string, options?: ConnectOptions): Promise<Client>;
export function parseUrl(url: string): DrsUrl;
export function topicMatches(pattern: string, topic: string): boolean;
export function packMsgpack(value: unknown): Uint8Array;
export function unpackMsgpack(bytes: Uint8Array): any;
