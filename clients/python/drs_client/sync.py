"""The blocking client: the asyncio client run on an event loop of its own,
in a background thread. Same methods, without `await`; handlers run in a
thread pool, so they may block.

    import drs_client as drs

    with drs.connect("tcp://127.0.0.1:12000") as c:
        print(c.call("add", {"a": 1, "b": 2}))   # 3
        for n in c.stream("count", {"n": 3}):
            print(n)
"""

import asyncio
import concurrent.futures
import threading
import weakref

from . import aio


class _Loop:
    """An event loop running in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="drs_client", daemon=True)
        self.thread.start()

    def run(self, coro):
        if self.loop.is_closed() or not self.thread.is_alive():
            coro.close()
            raise aio.Closed("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Cancelling the call's task sends drs.cancel.
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            raise aio.Closed("cancelled") from None

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Stream:
    """A streamed reply: iterate it; `result` holds the final value after.
    `cancel()`, or leaving a `with` block early, stops the handler."""

    def __init__(self, loop, stream):
        self._loop, self._stream = loop, stream

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self._loop.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def result(self):
        return self._stream.result

    @property
    def done(self):
        return self._stream.done

    def cancel(self):
        self._loop.run(self._stream.cancel())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._stream.done:
            self.cancel()


class Client:
    """The blocking twin of drs_client.aio.Client; make one with connect()."""

    def __init__(self, loop, client):
        self._loop, self._client = loop, client
        # Closed when this handle is dropped, or at interpreter exit,
        # whichever comes first: a client never closed leaves no task
        # behind to be destroyed pending.
        self._finalizer = weakref.finalize(self, _shutdown, loop, client)

    @property
    def url(self):
        return self._client.url.url

    @property
    def connected(self):
        return self._client.connected

    @property
    def connections(self):
        return self._client.connections

    def call(self, action, body=None, *, timeout=None, delay=None):
        return self._loop.run(self._client.call(action, body, timeout=timeout, delay=delay))

    def fire(self, action, body=None, *, timeout=None, delay=None):
        self._loop.run(self._client.fire(action, body, timeout=timeout, delay=delay))

    def stream(self, action, body=None, *, window=64, timeout=None):
        return Stream(self._loop, self._client.stream(action, body, window=window, timeout=timeout))

    def ping(self, *, timeout=None):
        return self._loop.run(self._client.ping(timeout=timeout))

    def on(self, action, handler=None):
        return self._client.on(action, handler)

    def subscribe(self, pattern, handler, *, retroactive=False, timeout=None):
        self._loop.run(self._client.subscribe(pattern, handler, retroactive=retroactive, timeout=timeout))

    def unsubscribe(self, pattern, *, timeout=None):
        self._loop.run(self._client.unsubscribe(pattern, timeout=timeout))

    def publish(self, topic, body=None, *, confirm=False, timeout=None):
        return self._loop.run(self._client.publish(topic, body, confirm=confirm, timeout=timeout))

    def identify(self, name, *, timeout=None):
        return self._loop.run(self._client.identify(name, timeout=timeout))

    def expose(self, action, handler, *, timeout=None):
        self._loop.run(self._client.expose(action, handler, timeout=timeout))

    def close(self):
        """Closes the connection; later calls raise Closed."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _shutdown(loop, client):
    """Closes `client` and stops its loop (once)."""
    if threading.current_thread() is loop.thread:
        # From the loop's own thread (a handler dropping the last handle):
        # close in the background.
        loop.loop.create_task(client.close())
        return
    try:
        loop.run(client.close())
    except aio.Closed:
        pass
    finally:
        loop.stop()


def connect(url, **options):
    """Connects to the drs server at `url`, blocking; the options are
    drs_client.aio.connect's."""
    loop = _Loop()
    try:
        client = loop.run(aio.connect(url, **options))
    except BaseException:
        loop.stop()
        raise
    return Client(loop, client)
