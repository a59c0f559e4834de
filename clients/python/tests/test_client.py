"""drs_client against the real demo_server: every API, over every
transport and protocol, through a restart, with auth and TLS. Every wait
is bounded."""

import asyncio
import os
import subprocess
import sys
import socket
import tempfile
import threading
import time

import pytest

import drs_client as drs
from drs_client import aio


def wait_for(cond, what, limit=10.0):
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


def urls(d):
    return {
        "tcp": "tcp://" + d.addr("tcp"),
        "ws": "ws://" + d.addr("ws") + "/socket",
        "ipc": "ipc://" + d.addr("ipc"),
    }


@pytest.fixture
def everywhere(demo):
    """One server on TCP, WebSocket and a Unix socket, JSON and MessagePack."""
    sock = os.path.join(tempfile.mkdtemp(prefix="drs-py-"), "demo.sock")
    msock = sock + ".mp"
    return demo(
        "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--ipc", sock,
        "--protocol", "msgpack",
        "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--ipc", msock,
    )


def all_urls(d):
    out = []
    for n, suffix in ((0, ""), (1, "?protocol=msgpack")):
        out += [
            "tcp://" + d.addr("tcp", n) + suffix,
            "ws://" + d.addr("ws", n) + "/socket" + suffix,
            "ipc://" + d.addr("ipc", n) + suffix,
        ]
    return out


def test_calls_and_their_four_failures_on_every_transport_and_protocol(everywhere):
    for url in all_urls(everywhere):
        with drs.connect(url, timeout=2) as c:
            assert c.call("add", {"a": 1, "b": 2}) == 3, url
            assert c.call("add", {"a": 1.5, "b": 1}) == 2.5, url
            assert c.call("echo", {"nested": [1, "two", None, True]}) == {"nested": [1, "two", None, True]}
            assert c.call("echo") is None
            with pytest.raises(drs.RemoteError) as e:
                c.call("fail", {"message": "nope"})
            assert e.value.message == "nope" and not isinstance(e.value, drs.RemoteException)
            with pytest.raises(drs.RemoteError, match="No handlers for missing"):
                c.call("missing")
            with pytest.raises(drs.RemoteException, match="kaboom"):
                c.call("kaboom")
            with pytest.raises(drs.Timeout):
                c.call("sleep", {"ms": 2000}, timeout=0.1)
            assert isinstance(c.ping(), int)


def test_timeouts_default_to_five_seconds_and_connect_failures_are_typed(demo):
    assert aio.DEFAULT_TIMEOUT == 5.0
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(drs.ConnectError):
        drs.connect("tcp://127.0.0.1:%d" % port, timeout=1)
    with pytest.raises(ValueError, match="not a drs URL"):
        drs.connect("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown protocol"):
        drs.connect("tcp://127.0.0.1:1?protocol=xml")


def test_fire_and_broadcast_reach_handlers(demo):
    d = demo("--tcp", "127.0.0.1:0")
    url = "tcp://" + d.addr("tcp")
    heard = []
    with drs.connect(url) as listener, drs.connect(url) as shouter:
        listener.on("shout", lambda body: heard.append(body))
        shouter.fire("shout", {"n": 1})
        assert shouter.call("shout", {"n": 2}) == 2
        wait_for(lambda: len(heard) == 2, "two broadcasts")
        assert heard == [{"n": 1}, {"n": 2}]


def test_the_server_calls_back_a_handler(demo):
    d = demo("--ws", "127.0.0.1:0")
    with drs.connect("ws://" + d.addr("ws") + "/socket") as c:
        c.on("triple", lambda n: n * 3)

        @c.on("refuse")
        def refuse(body):
            raise drs.RemoteError("not today")

        async def slow_double(n):
            await asyncio.sleep(0.01)
            return n * 2

        c.on("double", slow_double)
        assert c.call("ask_back", {"action": "triple", "body": 7}) == 21
        assert c.call("ask_back", {"action": "double", "body": 4}) == 8
        with pytest.raises(drs.RemoteError, match="not today"):
            c.call("ask_back", {"action": "refuse"})
        with pytest.raises(drs.RemoteError, match="No handlers for nobody"):
            c.call("ask_back", {"action": "nobody"})


def test_a_stream_with_credit_then_its_result(demo):
    d = demo("--tcp", "127.0.0.1:0")

    async def main():
        async with await aio.connect("tcp://" + d.addr("tcp")) as c:
            async with c.stream("count", {"n": 50}, window=4) as items:
                first = await items.__anext__()
                assert first == 0
                await asyncio.sleep(0.3)
                # The server sent at most the window ahead of what was read.
                assert items._items.qsize() <= 4
                rest = [n async for n in items]
            assert rest == list(range(1, 50))
            assert items.result == 50
            with pytest.raises(drs.RemoteError, match="at most"):
                async for _ in c.stream("count", {"n": 10**9}):
                    pass

    asyncio.run(asyncio.wait_for(main(), 30))
    with drs.connect("tcp://" + d.addr("tcp")) as c:
        s = c.stream("count", {"n": 3}, window=1)
        assert list(s) == [0, 1, 2] and s.result == 3


def test_cancel_stops_the_handler_on_the_server(demo):
    d = demo("--tcp", "127.0.0.1:0")

    async def main():
        async with await aio.connect("tcp://" + d.addr("tcp")) as c:
            # A stream, cancelled after three items.
            items = c.stream("count", {"n": 100000, "ms": 10})
            got = [await items.__anext__() for _ in range(3)]
            await items.cancel()
            assert got == [0, 1, 2] and items.done
            assert [n async for n in items] == []
            # pooled_sleep serves 2 at once, 2 waiting: cancelled calls
            # free their slots, or the fifth would be refused.
            tasks = [asyncio.ensure_future(c.call("pooled_sleep", {"ms": 20000})) for _ in range(4)]
            await asyncio.sleep(0.3)
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            # (The slots are freed as the server processes the cancels:
            # soon, not necessarily before the next call arrives;
            # uncancelled, they would be held 20 s.)
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert await c.call("pooled_sleep", {"ms": 1}, timeout=3) == 1
                    break
                except drs.RemoteError as e:
                    assert "queue full" in e.message and time.monotonic() < deadline, e
                    await asyncio.sleep(0.02)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_concurrent_async_calls(demo):
    d = demo("--tcp", "127.0.0.1:0", "--protocol", "msgpack", "--tcp", "127.0.0.1:0")

    async def main():
        for url in ("tcp://" + d.addr("tcp"), "tcp://" + d.addr("tcp", 1) + "?protocol=msgpack"):
            async with await aio.connect(url) as c:
                sums = await asyncio.gather(*(c.call("add", {"a": i, "b": i}) for i in range(200)))
                assert sums == [2 * i for i in range(200)]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_publish_subscribe_and_retroactive_delivery(demo):
    d = demo("--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0")
    tcp, ws = "tcp://" + d.addr("tcp"), "ws://" + d.addr("ws") + "/socket"
    got = []
    with drs.connect(tcp) as sub, drs.connect(ws) as pub:
        sub.subscribe("sensors.*", lambda body: got.append(("any", body)))
        sub.subscribe("sensors.t1", lambda body: got.append(("t1", body)))
        assert pub.publish("sensors.t1", 21.5, confirm=True) == 1
        pub.publish("sensors.t2", 19)
        wait_for(lambda: len(got) == 2, "two deliveries")
        # The most specific subscription serves a topic.
        assert got == [("t1", 21.5), ("any", 19)]
        sub.unsubscribe("sensors.*")
        assert pub.publish("sensors.t2", 0, confirm=True) == 0

    # A named, retroactive subscriber away while three are published.
    seen = []
    with drs.connect(tcp, name="py-auditor") as auditor:
        auditor.subscribe("orders.>", lambda body: seen.append(body), retroactive=True)
    with drs.connect(ws) as pub:
        wait_for(lambda: pub.publish("orders.new", 0, confirm=True) == 1, "the name kept")
        for n in (1, 2, 3):
            assert pub.publish("orders.new", n, confirm=True) == 1
    back = []
    wait_for(lambda: _try_identify(tcp, back), "the name released")
    try:
        back[0].subscribe("orders.>", lambda body: seen.append(body), retroactive=True)
        wait_for(lambda: len(seen) == 4, "what was kept")
        assert seen == [0, 1, 2, 3]
    finally:
        back[0].close()


def _try_identify(url, out):
    try:
        out.append(drs.connect(url, name="py-auditor"))
        return True
    except drs.AuthError as e:
        assert "name taken" in str(e)
        return False


def test_reconnects_through_a_server_restart(demo):
    d = demo("--tcp", "127.0.0.1:0")
    events = []
    c = drs.connect(
        "tcp://" + d.addr("tcp"),
        name="py-restart",
        on_connect=lambda: events.append("up"),
        on_disconnect=lambda: events.append("down"),
        backoff=(0.02, 0.2),
    )
    try:
        got = []
        c.subscribe("news", lambda body: got.append(body))
        assert c.call("session")["name"] == "py-restart"
        # A call in flight when the server dies fails with Closed, once.
        errors = []

        def in_flight():
            try:
                c.call("sleep", {"ms": 20000}, timeout=30)
            except drs.DrsError as e:
                errors.append(e)

        t = threading.Thread(target=in_flight)
        t.start()
        wait_for(lambda: c._client._link.pending, "the call sent")
        time.sleep(0.1)
        d.restart()
        t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], drs.Closed), errors
        # The next call waits for the new connection, named and subscribed again.
        assert c.call("session", timeout=10)["name"] == "py-restart"
        assert c.connections == 2 and events == ["up", "down", "up"]
        with drs.connect("tcp://" + d.addr("tcp")) as pub:
            assert pub.publish("news", "back", confirm=True) == 1
        wait_for(lambda: got == ["back"], "the subscription renewed")
    finally:
        c.close()


def test_calls_between_connections_wait_within_their_timeout(demo):
    d = demo("--tcp", "127.0.0.1:0")
    c = drs.connect("tcp://" + d.addr("tcp"), backoff=(0.02, 0.2))
    try:
        d.pin()
        d.stop()
        wait_for(lambda: not c.connected, "the loss noticed")
        with pytest.raises(drs.Timeout):
            c.call("echo", 1, timeout=0.3)
        d.start()
        assert c.call("echo", 2, timeout=10) == 2
    finally:
        c.close()


def test_a_token_is_required_and_checked(demo):
    d = demo("--token", "opensesame", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0")
    tcp, ws = "tcp://" + d.addr("tcp"), "ws://" + d.addr("ws") + "/socket"
    with drs.connect(tcp) as anonymous:
        assert isinstance(anonymous.ping(), int)  # ping needs no token
        with pytest.raises(drs.RemoteError, match="unauthenticated"):
            anonymous.call("echo", 1)
    with pytest.raises(drs.AuthError, match="authentication failed: bad token"):
        drs.connect(tcp, token="wrong")
    for url in (tcp, ws):
        with drs.connect(url, token="opensesame") as c:
            assert c.call("echo", "in") == "in"
    # On WebSocket the token may ride the URL.
    with drs.connect(ws + "?token=opensesame") as c:
        assert c.call("echo", "query") == "query"


def test_tls_and_wss(demo, tls):
    ca, cert, key = tls
    d = demo("--tls-cert", cert, "--tls-key", key, "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0")
    tls_port = d.addr("tls").rsplit(":", 1)[1]
    wss_port = d.addr("wss").rsplit(":", 1)[1]
    for url in (
        "tls://localhost:%s?ca=%s" % (tls_port, ca),
        "wss://localhost:%s/socket?ca=%s" % (wss_port, ca),
    ):
        with drs.connect(url) as c:
            assert c.call("add", {"a": 20, "b": 22}) == 42
    # Without the CA the server is not trusted.
    with pytest.raises(drs.ConnectError):
        drs.connect("tls://localhost:%s" % tls_port, timeout=2, reconnect=False)


def test_async_api_mirrors_the_sync_one(demo):
    d = demo("--ws", "127.0.0.1:0")

    async def main():
        url = "ws://" + d.addr("ws") + "/socket"
        heard = asyncio.Queue()
        async with await aio.connect(url) as c, await aio.connect(url) as other:
            async def on_shout(body):
                await heard.put(body)

            c.on("shout", on_shout)
            await c.subscribe("t.>", on_shout)
            await other.fire("shout", "a")
            assert await other.publish("t.x", "b", confirm=True) == 1
            assert {await heard.get(), await heard.get()} == {"a", "b"}
            assert await c.identify("py-async") is False
            assert (await c.call("session"))["name"] == "py-async"
            await c.expose("py.triple", lambda n: n * 3)
            assert await other.call("py.triple", 5) == 15

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_delayed_call_runs_later_and_a_cancelled_one_never(demo):
    d = demo("--tcp", "127.0.0.1:0")
    url = "tcp://" + d.addr("tcp")
    with drs.connect(url) as c:
        start = time.monotonic()
        assert c.call("echo", "later", delay=0.3) == "later"
        assert time.monotonic() - start >= 0.3
        with pytest.raises(ValueError):
            c.call("echo", 1, delay=-1)

    async def main():
        async with await aio.connect(url) as c:
            heard = []

            async def on_shout(body):
                heard.append(body)

            c.on("shout", on_shout)
            # Held by the server for 0.5 s, and taken back before.
            never = asyncio.ensure_future(c.call("shout", "never", delay=0.5))
            await asyncio.sleep(0.1)
            never.cancel()
            await c.fire("shout", "soon", delay=0.2)
            # Held until after the cancelled one's time: had that run, its
            # broadcast would have come first.
            assert await c.call("echo", "after", delay=0.6) == "after"
            await asyncio.sleep(0)
            assert heard == ["soon"], heard

    asyncio.run(asyncio.wait_for(main(), 30))


def test_timeouts_read_as_people_write_them(demo):
    d = demo("--tcp", "127.0.0.1:0")
    with drs.connect("tcp://" + d.addr("tcp")) as c:
        with pytest.raises(drs.Timeout) as e:
            c.call("sleep", {"ms": 2000}, timeout=0.3)
    assert str(e.value) == "sleep: no reply within 0.3s"
    assert aio._seconds(5) == "5s" and aio._seconds(12.25) == "12.25s"
    assert aio._seconds(0.2999976670000706) == "0.3s" and aio._seconds(0) == "0s"


def test_calls_after_close_raise_closed(demo):
    d = demo("--tcp", "127.0.0.1:0")
    c = drs.connect("tcp://" + d.addr("tcp"))
    assert c.call("add", {"a": 1, "b": 2}) == 3
    c.close()
    c.close()  # twice is fine
    for attempt in (
        lambda: c.call("add", {"a": 1, "b": 2}),
        lambda: c.fire("echo", 1),
        lambda: c.ping(),
        lambda: list(c.stream("count", {"n": 2})),
    ):
        with pytest.raises(drs.Closed):
            attempt()

    async def main():
        a = await aio.connect("tcp://" + d.addr("tcp"))
        await a.close()
        with pytest.raises(drs.Closed):
            await a.call("add", {"a": 1, "b": 2})

    asyncio.run(main())


def test_exits_are_quiet_with_or_without_close(demo):
    d = demo("--tcp", "127.0.0.1:0")
    url = "tcp://" + d.addr("tcp")
    programs = [
        # The README's one-liner: the client is never closed.
        "import drs_client; print(drs_client.connect(%r).call('add', {'a': 1, 'b': 2}))" % url,
        # Kept in a variable until the interpreter exits.
        "import drs_client; c = drs_client.connect(%r); print(c.call('add', {'a': 1, 'b': 2}))" % url,
        # Closed explicitly.
        "import drs_client\nwith drs_client.connect(%r) as c: print(c.call('add', {'a': 1, 'b': 2}))" % url,
    ]
    for program in programs:
        done = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(drs.__file__)))},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "3"
        assert done.stderr == "", program + "\n" + done.stderr


def test_a_subscriber_can_tell_which_topic_arrived(demo):
    d = demo("--tcp", "127.0.0.1:0")
    tcp = "tcp://" + d.addr("tcp")
    with_topic, body_only = [], []

    async def async_with_topic(body, topic):
        with_topic.append(("async", topic, body))

    with drs.connect(tcp) as sub, drs.connect(tcp) as pub:
        sub.subscribe("sensors.>", lambda body, topic: with_topic.append((topic, body)))
        sub.subscribe("alarms.*", async_with_topic)
        sub.subscribe("logs.*", lambda body: body_only.append(body))
        sub.subscribe("misc.*", print)  # *args: the body alone
        assert pub.publish("sensors.t1.raw", 21.5, confirm=True) == 1
        assert pub.publish("sensors.t2", 19, confirm=True) == 1
        assert pub.publish("alarms.fire", "hall", confirm=True) == 1
        assert pub.publish("logs.app", "started", confirm=True) == 1
        wait_for(lambda: len(with_topic) == 3 and len(body_only) == 1, "four deliveries")
    assert sorted(with_topic, key=str) == sorted(
        [("sensors.t1.raw", 21.5), ("sensors.t2", 19), ("async", "alarms.fire", "hall")], key=str
    )
    assert body_only == ["started"]


def test_the_wrong_protocol_or_transport_fails_at_once_saying_what_the_port_speaks(everywhere):
    d = everywhere
    cases = [
        (
            "tcp://" + d.addr("tcp", 1),
            drs.WrongProtocol,
            "this port speaks MessagePack, not drs JSON (add ?protocol=msgpack to the URL)",
        ),
        (
            "tcp://" + d.addr("tcp", 0) + "?protocol=msgpack",
            drs.WrongProtocol,
            "this port speaks JSON, not drs MessagePack (drop ?protocol=msgpack from the URL)",
        ),
        (
            "tcp://" + d.addr("ws", 0),
            drs.Closed,
            "the peer closed the connection: this port speaks WebSocket "
            "(ws://HOST:PORT/PATH), not raw drs frames",
        ),
    ]
    for url, kind, message in cases:
        started = time.monotonic()
        with drs.connect(url, timeout=5) as c:
            with pytest.raises(kind) as caught:
                c.call("add", {"a": 1, "b": 2})
        assert str(caught.value) == message, url
        assert time.monotonic() - started < 4, "at once, not at the call's timeout: " + url


def test_an_http_server_is_recognised():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with drs.connect("tcp://127.0.0.1:%d" % port, timeout=5) as c:
        with pytest.raises(drs.WrongProtocol) as caught:
            c.call("add", {"a": 1, "b": 2})
    assert str(caught.value) == (
        "this port speaks HTTP, not drs JSON (a ws:// URL, if it serves WebSocket)"
    )
    server.close()
