"""The asyncio client.

    import asyncio, drs_client.aio as drs

    async def main():
        async with await drs.connect("tcp://127.0.0.1:12000") as c:
            print(await c.call("add", {"a": 1, "b": 2}))       # 3
            async with c.stream("count", {"n": 3}) as items:
                async for n in items:
                    print(n)
            await c.subscribe("sensors.*", lambda body: print(body))

    asyncio.run(main())

A Client stays connected: when the connection is lost, calls pending on it
fail with Closed (they are never sent again: they may have run), and the
client reconnects with backoff, authenticating, identifying and
subscribing again; calls made in between wait for the connection within
their own timeout.
"""

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import logging
import random
import time

from ._wire import Codec, Url, open_transport, topic_matches
from .errors import (  # noqa: F401 (re-exported)
    AuthError,
    Closed,
    ConnectError,
    DrsError,
    ProtocolError,
    RemoteError,
    RemoteException,
    Timeout,
    WrongProtocol,
)

log = logging.getLogger("drs_client")

#: The default timeout of calls and of connecting, in seconds.
DEFAULT_TIMEOUT = 5.0

_REPLIES = ("drs.response", "drs.error", "drs.exception")


class _Link:
    """One connection: its transport, its pending calls and streams."""

    def __init__(self, transport, codec):
        self.transport = transport
        self.codec = codec
        self.pending = {}
        self.streams = {}
        self.serving = {}
        self.closed = asyncio.Event()
        self.reader = None
        # The last keyless drs.error the server sent: why, if it then closes.
        self.notice = None

    async def send(self, command):
        if self.closed.is_set():
            raise Closed("connection closed")
        try:
            await self.transport.send(self.codec.encode(command))
        except (ConnectionError, OSError) as e:
            raise Closed("connection closed: %s" % e) from e
        except Exception as e:
            if type(e).__name__.startswith("ConnectionClosed"):
                raise Closed("connection closed") from e
            raise

    def fail(self, error=None):
        """Ends the link: its calls fail with `error`, or Closed (quoting
        the server if it said why before closing)."""
        self.closed.set()

        def why():
            if error is not None:
                return error
            if self.notice is not None:
                return Closed("the peer closed the connection: %s" % self.notice)
            return Closed("connection closed")

        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(why())
        self.pending.clear()
        for stream in list(self.streams.values()):
            stream._end(error=why())
        self.streams.clear()
        for task in self.serving.values():
            task.cancel()


def _remote(action, body):
    message = body.get("message") if isinstance(body, dict) else None
    if message is None:
        message = "%s with no message" % action if body is None else str(body)
    cls = RemoteException if action == "drs.exception" else RemoteError
    return cls(message, body)


class Stream:
    """A streamed reply: iterate it for the items (`async for`), then read
    `result` for the handler's final value. The server sends at most
    `window` items ahead of what is read. `cancel()`, or leaving an
    `async with` block early, stops the handler (drs.cancel)."""

    def __init__(self, client, action, body, window, timeout):
        if window < 1:
            raise ValueError("window must be at least 1")
        self._client = client
        self._action, self._body = action, body
        self.window, self.timeout = window, timeout
        self._items = asyncio.Queue()
        self._link = None
        self._key = None
        self._read = 0
        self.done = False
        self.cancelled = False
        self.result = None
        self._error = None

    async def _start(self):
        link = await self._client._link_within(self.timeout)
        self._link, self._key = link, self._client._next_key()
        link.streams[self._key] = self
        await link.send(
            {"key": self._key, "action": self._action, "body": self._body, "stream": self.window}
        )

    def _item(self, body):
        self._items.put_nowait(("item", body))

    def _end(self, result=None, error=None):
        self._items.put_nowait(("end", (result, error)))

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.done:
            raise StopAsyncIteration
        if self._link is None:
            await self._start()
        try:
            kind, value = await asyncio.wait_for(self._items.get(), self.timeout)
        except asyncio.TimeoutError:
            await self.cancel()
            raise Timeout("no item within %s" % _seconds(self.timeout)) from None
        if kind == "item":
            self._read += 1
            # More credit once half the window is read.
            if self._read * 2 >= self.window:
                granted, self._read = self._read, 0
                try:
                    await self._link.send({"key": self._key, "action": "drs.more", "body": granted})
                except Closed:
                    pass
            return value
        self.done = True
        self._link.streams.pop(self._key, None)
        self.result, error = value
        if error is not None and not self.cancelled:
            raise error
        raise StopAsyncIteration

    async def cancel(self):
        """Stops the handler on the server; the iteration ends."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        if self._link is not None:
            self._link.streams.pop(self._key, None)
            try:
                await self._link.send({"key": self._key, "action": "drs.cancel"})
            except Closed:
                pass
        self.done = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if not self.done:
            await self.cancel()


class Client:
    """A connection to a drs server that reconnects; see the module's docs.
    Make one with `await connect(url, ...)`."""

    def __init__(
        self,
        url,
        *,
        token=None,
        name=None,
        timeout=DEFAULT_TIMEOUT,
        reconnect=True,
        ssl=None,
        backoff=(0.05, 5.0),
        on_connect=None,
        on_disconnect=None,
        handler_grace=1.0,
    ):
        self.url = Url(url)
        self.codec = Codec(self.url.protocol)
        self.token, self.name = token, name
        self.timeout = timeout
        self.reconnect = reconnect
        self.handler_grace = handler_grace
        self._ssl = ssl
        self._backoff = backoff
        self._on_connect, self._on_disconnect = on_connect, on_disconnect
        self._handlers = {}
        self._subscriptions = {}
        self._keys = itertools.count(1)
        self._link = None
        self._connected = asyncio.Event()
        self._closing = False
        self._supervisor = None
        self._tasks = set()
        self._parked = collections.deque()
        self._drainer = None
        # Sync handlers run here, one at a time, in the order their
        # commands came (deliveries keep their order).
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="drs_client-handler")
        #: How many times the client has connected.
        self.connections = 0

    def _next_key(self):
        return str(next(self._keys))

    # -- connecting --------------------------------------------------------

    async def _open(self):
        """One connection, authenticated, identified, subscribed."""
        transport = await open_transport(self.url, self.codec, self._ssl)
        link = _Link(transport, self.codec)
        link.reader = asyncio.ensure_future(self._read(link))
        try:
            if self.token is not None:
                try:
                    await self._call_on(link, "drs.auth", {"token": self.token}, self.timeout)
                except RemoteError as e:
                    raise AuthError("authentication failed: %s" % e.message, e.body) from None
            if self.name is not None:
                try:
                    await self._call_on(link, "drs.identify", {"name": self.name}, self.timeout)
                except RemoteError as e:
                    raise AuthError("cannot identify as %r: %s" % (self.name, e.message), e.body) from None
            for pattern, (_, retroactive) in list(self._subscriptions.items()):
                await self._call_on(
                    link,
                    "drs.subscribe",
                    {"topic": pattern, "retroactive": retroactive},
                    self.timeout,
                )
        except BaseException:
            link.fail()
            link.reader.cancel()
            await transport.close()
            raise
        return link

    async def _start(self):
        try:
            link = await asyncio.wait_for(self._open(), self.timeout)
        except asyncio.TimeoutError:
            raise ConnectError("cannot connect to %s within %s" % (self.url.url, _seconds(self.timeout))) from None
        self._up(link)
        self._supervisor = asyncio.ensure_future(self._supervise())

    def _up(self, link):
        self._link = link
        self.connections += 1
        self._connected.set()
        if self._on_connect:
            self._on_connect()

    async def _supervise(self):
        """Waits for each connection's end and makes the next."""
        while True:
            link = self._link
            await link.closed.wait()
            self._connected.clear()
            if self._on_disconnect:
                self._on_disconnect()
            if self._closing or not self.reconnect:
                self._closing = True
                return
            delay = self._backoff[0]
            while not self._closing:
                await asyncio.sleep(delay * random.uniform(0.75, 1.25))
                try:
                    link = await asyncio.wait_for(self._open(), self.timeout)
                except AuthError as e:
                    log.error("drs_client: giving up on %s: %s", self.url.url, e)
                    self._closing = True
                    return
                except (DrsError, OSError, asyncio.TimeoutError) as e:
                    log.info("drs_client: reconnecting to %s: %s", self.url.url, e)
                    delay = min(delay * 2, self._backoff[1])
                    continue
                self._up(link)
                break

    async def _link_within(self, timeout):
        """The current connection, waiting for one up to `timeout`."""
        if self._closing and not self._connected.is_set():
            raise Closed("the client is closed")
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except asyncio.TimeoutError:
                raise Timeout("no connection within %s" % _seconds(timeout)) from None
        return self._link

    # -- reading -----------------------------------------------------------

    async def _read(self, link):
        failure = None
        try:
            while True:
                try:
                    frame = await link.transport.recv()
                except WrongProtocol as e:
                    log.warning("drs_client: %s", e)
                    failure = e
                    break
                if frame is None or link.closed.is_set():
                    # Closed on our side: a delivery served now could not
                    # be acknowledged, and comes again.
                    break
                try:
                    command = link.codec.decode(frame)
                except ProtocolError as e:
                    log.warning("drs_client: %s", e)
                    continue
                self._dispatch(link, command)
        finally:
            link.fail(failure)
            await link.transport.close()

    def _dispatch(self, link, command):
        action, key, body = command["action"], command.get("key"), command.get("body")
        if action in _REPLIES:
            stream = link.streams.pop(key, None)
            if stream is not None:
                if action == "drs.response":
                    stream._end(result=body)
                else:
                    stream._end(error=_remote(action, body))
                return
            if key is None and action != "drs.response":
                link.notice = _remote(action, body).message
                return
            fut = link.pending.pop(key, None)
            if fut is not None and not fut.done():
                if action == "drs.response":
                    fut.set_result(body)
                else:
                    fut.set_exception(_remote(action, body))
            return
        if action == "drs.next":
            stream = link.streams.get(key)
            if stream is not None:
                stream._item(body)
            return
        if action == "drs.cancel":
            task = link.serving.pop(key, None)
            if task is not None:
                task.cancel()
            return
        if action == "drs.more":
            return
        if key is not None and action != "drs.ping" and (self._parked or self._handler_for(action) is None):
            # A call for which no handler is registered yet: a retroactive
            # delivery that came as the name was granted, before its
            # subscribe() ran. Answering now would acknowledge (and lose)
            # it, so it waits, in order, up to `handler_grace` seconds.
            self._parked.append((link, action, key, body, time.monotonic() + self.handler_grace))
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.ensure_future(self._drain())
            return
        self._spawn(link, action, key, body)

    def _spawn(self, link, action, key, body):
        task = asyncio.ensure_future(self._serve(link, action, key, body))
        if key is not None:
            link.serving[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self):
        """Serves the parked calls in order as their handlers appear."""
        while self._parked:
            link, action, key, body, deadline = self._parked[0]
            if link.closed.is_set():
                self._parked.popleft()
            elif self._handler_for(action) is not None or time.monotonic() >= deadline:
                self._parked.popleft()
                self._spawn(link, action, key, body)
            else:
                await asyncio.sleep(0.01)

    def _handler_for(self, action):
        return self._handler_and_args(action, None)[0]

    def _handler_and_args(self, action, body):
        """The handler of `action` and what it is called with: the body,
        and for a subscription's handler that takes a second parameter,
        the topic the message arrived on."""
        best = None
        for pattern, (handler, _) in self._subscriptions.items():
            if topic_matches(pattern, action):
                literal = sum(1 for s in pattern.split(".") if s not in ("*", ">"))
                if best is None or literal > best[0]:
                    best = (literal, handler)
        if best is not None:
            handler = best[1]
            return handler, ((body, action) if _takes_topic(handler) else (body,))
        return self._handlers.get(action), (body,)

    async def _serve(self, link, action, key, body):
        handler, args = self._handler_and_args(action, body)
        if action == "drs.ping":
            reply = {"key": key, "action": "drs.response", "body": int(time.time() * 1000)}
        elif handler is None:
            reply = {"key": key, "action": "drs.error", "body": {"message": "No handlers for %s" % action}}
        else:
            try:
                if inspect.iscoroutinefunction(handler):
                    value = await handler(*args)
                else:
                    loop = asyncio.get_running_loop()
                    value = await loop.run_in_executor(self._worker, handler, *args)
                    if inspect.isawaitable(value):
                        value = await value
                reply = {"key": key, "action": "drs.response", "body": value}
            except asyncio.CancelledError:
                link.serving.pop(key, None)
                if key is not None and not link.closed.is_set():
                    reply = {"key": key, "action": "drs.error", "body": {"message": "cancelled"}}
                    try:
                        await link.send(reply)
                    except DrsError:
                        pass
                raise
            except RemoteError as e:
                reply = {"key": key, "action": "drs.error", "body": {"message": e.message}}
            except Exception as e:
                log.exception("drs_client: handler of %s failed", action)
                reply = {"key": key, "action": "drs.exception", "body": {"message": "%s: %s" % (type(e).__name__, e)}}
        link.serving.pop(key, None)
        if key is None:
            return
        if reply.get("body") is None:
            reply.pop("body")
        try:
            await link.send(reply)
        except DrsError:
            pass

    # -- calling -----------------------------------------------------------

    async def _call_on(self, link, action, body, timeout, delay_ms=None):
        key = self._next_key()
        fut = asyncio.get_running_loop().create_future()
        link.pending[key] = fut
        command = {"key": key, "action": action}
        if body is not None:
            command["body"] = body
        if delay_ms:
            command["delay"] = delay_ms
        try:
            await link.send(command)
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise Timeout("%s: no reply within %s" % (action, _seconds(timeout))) from None
        except asyncio.CancelledError:
            if not fut.done() and not link.closed.is_set():
                try:
                    await link.send({"key": key, "action": "drs.cancel"})
                except DrsError:
                    pass
            raise
        finally:
            link.pending.pop(key, None)
            if not fut.done():
                fut.cancel()

    async def call(self, action, body=None, *, timeout=None, delay=None):
        """Calls `action` and returns the reply's body. Raises RemoteError
        (drs.error), RemoteException (drs.exception), Timeout or Closed.
        Cancelling the awaiting task sends drs.cancel. With `delay`
        (seconds), the server holds the call and runs it that much later;
        the timeout then counts from when it runs."""
        timeout = self.timeout if timeout is None else timeout
        delay_ms = _delay_ms(delay)
        deadline = time.monotonic() + timeout
        link = await self._link_within(timeout)
        remaining = max(deadline - time.monotonic(), 0.0) + delay_ms / 1000.0
        return await self._call_on(link, action, body, remaining, delay_ms)

    async def fire(self, action, body=None, *, timeout=None, delay=None):
        """Sends `action` without a reply (a fire); with `delay` (seconds)
        the server runs it that much later."""
        link = await self._link_within(self.timeout if timeout is None else timeout)
        command = {"action": action}
        if body is not None:
            command["body"] = body
        if _delay_ms(delay):
            command["delay"] = _delay_ms(delay)
        await link.send(command)

    def stream(self, action, body=None, *, window=64, timeout=None):
        """Calls `action` for a streamed reply; see Stream."""
        return Stream(self, action, body, window, self.timeout if timeout is None else timeout)

    async def ping(self, *, timeout=None):
        """The server's time in ms since the epoch (drs.ping)."""
        return await self.call("drs.ping", timeout=timeout)

    def on(self, action, handler=None):
        """Serves `action` for the server (its broadcasts and calls): the
        handler gets the body and returns the reply. Raise RemoteError for
        drs.error; any other exception is drs.exception. An async handler
        runs on the event loop; a plain function runs on a thread of the
        client's, one at a time in the order the commands came (so it may
        block, and deliveries keep their order). Usable as a decorator."""
        if handler is None:
            return lambda h: self.on(action, h) or h
        self._handlers[action] = handler
        return handler

    async def subscribe(self, pattern, handler, *, retroactive=False, timeout=None):
        """Subscribes to `pattern` (`*` one segment, `>` the rest); `handler`
        gets each published body, and the topic it was published on if it
        takes a second parameter: `lambda body, topic: …`. Retroactive (with a name): what is
        published while away is delivered on return, each acknowledged by
        the handler's return. Kept across reconnects."""
        self._subscriptions[pattern] = (handler, retroactive)
        try:
            await self.call("drs.subscribe", {"topic": pattern, "retroactive": retroactive}, timeout=timeout)
        except BaseException:
            self._subscriptions.pop(pattern, None)
            raise

    async def unsubscribe(self, pattern, *, timeout=None):
        await self.call("drs.unsubscribe", {"topic": pattern}, timeout=timeout)
        self._subscriptions.pop(pattern, None)

    async def publish(self, topic, body=None, *, confirm=False, timeout=None):
        """Publishes `body` on `topic`; with confirm, returns how many
        subscribers it reached or was stored for."""
        message = {"topic": topic, "body": body}
        if confirm:
            return await self.call("drs.publish", message, timeout=timeout)
        await self.fire("drs.publish", message, timeout=timeout)
        return None

    async def identify(self, name, *, timeout=None):
        """Names this client (drs.identify), now and on every reconnect;
        returns whether the server resumed state kept for the name."""
        reply = await self.call("drs.identify", {"name": name}, timeout=timeout)
        self.name = name
        return bool(reply.get("resumed")) if isinstance(reply, dict) else False

    async def expose(self, action, handler, *, timeout=None):
        """Serves `action` for every client of the server's broker."""
        self.on(action, handler)
        await self.call("drs.expose", {"action": action}, timeout=timeout)

    @property
    def connected(self):
        return self._connected.is_set()

    async def close(self):
        """Closes the connection; pending calls fail with Closed."""
        self._closing = True
        link = self._link
        if link is not None:
            link.closed.set()
            await link.transport.close()
            if link.reader is not None:
                try:
                    await asyncio.wait_for(link.reader, 5)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    link.reader.cancel()
            link.fail()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
        for task in list(self._tasks):
            task.cancel()
        if self._drainer is not None:
            self._drainer.cancel()
        self._worker.shutdown(wait=False)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def _takes_topic(handler):
    """Whether a subscription handler takes the topic too: a second
    positional parameter (not merely *args, so `print` and body-only
    handlers get the body alone)."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2


def _seconds(t):
    """`t` seconds as people write them: 0.3s, 5s, 12.25s (to the ms)."""
    text = ("%.3f" % t).rstrip("0").rstrip(".")
    return (text or "0") + "s"


def _delay_ms(delay):
    """`delay` seconds as whole milliseconds (0 for none)."""
    if delay is None:
        return 0
    if delay < 0:
        raise ValueError("delay must be at least 0")
    return int(-(-delay * 1000 // 1))


async def connect(url, **options):
    """Connects to the drs server at `url` (tcp://, tls://, ws://, wss://,
    ipc:///PATH; ?protocol=msgpack). Options: token, name, timeout (default
    5 s), reconnect (default True), ssl (an ssl.SSLContext), backoff
    ((first, max) seconds), on_connect, on_disconnect, handler_grace (how
    long a call from the server waits for its handler to be registered
    before it is answered "No handlers": what a name's retroactive
    subscriptions kept arrives as soon as it connects, before subscribe()
    runs; default 1 s). Raises ConnectError, AuthError."""
    client = Client(url, **options)
    await client._start()
    return client
