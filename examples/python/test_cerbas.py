"""A Cerbas client, step by step as Cerbas's Python driver does it, against
demo_server --cerbas (pytest; run by examples/tests/polyglot.rs).

Each request: INCR CERBAS-COUNTER -> k; SET CERBAS-REQUEST-<k:010> <JSON>;
RPUSH CERBAS-QUEUE k; only then SUBSCRIBE CERBAS-RESPONSE-<db>-<k:010>
(MSGPACK: prefixed for MessagePack) and take the first message. The
environment gives the Redis URL (CERBAS_REDIS_URL, with the database).
Packages: redis and u-msgpack-python, as Cerbas's requirements.txt.
"""

import hashlib
import json
import os
import time

import pytest
import redis
import umsgpack

URL = os.environ["CERBAS_REDIS_URL"]
DB = int(URL.rsplit("/", 1)[1])
WAIT = 15  # seconds: no reply within this fails the test (Cerbas waits forever)


@pytest.fixture(scope="module")
def r():
    conn = redis.Redis.from_url(URL)
    yield conn
    conn.close()


def push(r, func, args=None, source="cerbastest", extra=None):
    """Steps 1-3: the request is stored and queued. Returns k and the text."""
    request = {"func": func, "source": source, "user": "foo"}
    if args:
        request["args"] = args
    if extra:
        request.update(extra)
    text = json.dumps(request)
    k = r.incr("CERBAS-COUNTER")
    r.set("CERBAS-REQUEST-%010d" % k, text)
    r.rpush("CERBAS-QUEUE", k)
    return k, text


def take(r, k, msgpack=False):
    """Step 4: subscribe after the push, take the first message."""
    channel = "CERBAS-RESPONSE-%d-%010d" % (DB, k)
    if msgpack:
        channel = "MSGPACK:" + channel
    p = r.pubsub()
    p.subscribe(channel)
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            m = p.get_message(timeout=0.5)
            if m and m["type"] == "message":
                return m["data"]
        raise AssertionError("no reply on %s within %d s" % (channel, WAIT))
    finally:
        p.unsubscribe(channel)
        p.close()


def request(r, func, args=None, msgpack=False, **kw):
    k, _ = push(r, func, args, **kw)
    data = take(r, k, msgpack)
    return umsgpack.unpackb(data) if msgpack else json.loads(data)


def test_hello_over_messagepack(r):
    assert request(r, "hello", msgpack=True) == {"status": "ok", "data": "hello world!"}


def test_hello_json_is_the_exact_cerbas_reply(r):
    k, _ = push(r, "hello")
    assert take(r, k) == b'{"data":"hello world!","status":"ok"}'


def test_named_arguments(r):
    assert request(r, "echo", {"message": "yes, sir"}) == {"status": "ok", "data": "yes, sir"}
    assert request(r, "withargs", {"foo": [1, "two"]}) == {"status": "ok", "data": [1, "two"]}
    assert request(r, "sum", {"a": 2, "b": 3}) == {"status": "ok", "data": 5}
    assert request(r, "sum", {"a": 2, "b": 3}, msgpack=True) == {"status": "ok", "data": 5}
    assert request(r, "sum", {"a": 1.5, "b": 0}, msgpack=True)["data"] == 1.5


def test_errors_carry_cerbas_strings(r):
    assert request(r, "witherror") == {"status": "error", "data": "unexpected error"}
    assert request(r, "sum", {"a": "x", "b": 1}) == {"status": "error", "data": "bad arguments"}
    assert request(r, "sum", {"a": 1}) == {"status": "error", "data": "invalid arguments"}
    assert request(r, "echo") == {"status": "error", "data": "invalid arguments"}
    assert request(r, "nosuch") == {"status": "error", "data": "Undefined function"}
    assert request(r, "hello", source="mallory") == {
        "status": "error",
        "data": "cerbas authorization - invalid source",
    }


def test_a_request_that_is_not_json_is_refused_as_cerbas_does(r):
    k = r.incr("CERBAS-COUNTER")
    r.set("CERBAS-REQUEST-%010d" % k, "{not json")
    r.rpush("CERBAS-QUEUE", k)
    assert json.loads(take(r, k)) == {
        "status": "error",
        "data": "cerbas authorization - invalid source",
    }


def test_a_queue_entry_that_is_not_a_number_is_skipped(r):
    r.rpush("CERBAS-QUEUE", "garbage")
    assert request(r, "hello")["data"] == "hello world!"


def test_async_functions_are_answered_at_once(r):
    assert request(r, "asyncfunc") == {"status": "ok", "data": ""}


def test_delay_is_waited_before_the_function(r):
    started = time.monotonic()
    assert request(r, "hello", extra={"delay": 400})["data"] == "hello world!"
    assert time.monotonic() - started >= 0.4


def test_the_request_key_is_deleted_once_taken(r):
    k, _ = push(r, "echo", {"message": 1})
    take(r, k)
    assert r.get("CERBAS-REQUEST-%010d" % k) is None


def test_hello_is_cached_for_twenty_seconds(r):
    k, text = push(r, "hello", extra={"tag": "cache"})
    assert json.loads(take(r, k))["data"] == "hello world!"
    key = "CERBASREQ_" + hashlib.sha1(text.encode()).hexdigest()
    assert json.loads(r.get(key)) == {"data": "hello world!", "status": "ok"}
    assert 0 < r.ttl(key) <= 20
    # The same text again is answered (from the cache).
    k2 = r.incr("CERBAS-COUNTER")
    r.set("CERBAS-REQUEST-%010d" % k2, text)
    r.rpush("CERBAS-QUEUE", k2)
    assert json.loads(take(r, k2))["data"] == "hello world!"


def test_no_reply_is_lost_to_the_subscribe_race(r):
    # Push many at once and subscribe only afterwards: the worker has
    # answered most before anyone listens, and publishes again until
    # someone does.
    pushed = [push(r, "echo", {"message": i})[0] for i in range(100)]
    p = r.pubsub()
    channels = {"CERBAS-RESPONSE-%d-%010d" % (DB, k): i for i, k in enumerate(pushed)}
    p.subscribe(*channels)
    got = {}
    deadline = time.monotonic() + WAIT
    while len(got) < len(channels):
        assert time.monotonic() < deadline, "missing: %d" % (len(channels) - len(got))
        m = p.get_message(timeout=0.5)
        if m and m["type"] == "message":
            channel = m["channel"].decode()
            assert channel not in got, "answered twice"
            got[channel] = json.loads(m["data"])
    p.close()
    for channel, i in channels.items():
        assert got[channel] == {"data": i, "status": "ok"}


def test_a_request_without_response_is_still_run(r):
    k, _ = push(r, "echo", {"message": "nobody listens"})
    deadline = time.monotonic() + WAIT
    while r.get("CERBAS-REQUEST-%010d" % k) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_slow_times_out_after_five_seconds(r):
    started = time.monotonic()
    assert request(r, "slow") == {"status": "error", "data": "timeout"}
    assert 4.5 <= time.monotonic() - started < 6


def test_halt_stops_the_worker_after_its_delay(r):
    # Last: the worker takes nothing after this.
    assert request(r, "halt", {"delay": 300}) == {"status": "ok", "data": ""}
    # Until the halt takes effect requests are still answered; then one
    # stays queued, and stays.
    r.delete("CERBAS-QUEUE")
    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, "the worker did not halt"
        k, _ = push(r, "hello")
        p = r.pubsub()
        p.subscribe("CERBAS-RESPONSE-%d-%010d" % (DB, k))
        answered = False
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            m = p.get_message(timeout=0.2)
            if m and m["type"] == "message":
                answered = True
                break
        p.close()
        if answered:
            continue
        # Unanswered for a second: halted, or only slow (a loaded machine).
        # Halted, it stays queued past the worker's poll; taken, it was slow.
        time.sleep(1.0)
        if r.lrange("CERBAS-QUEUE", 0, -1) == [str(k).encode()]:
            break
        r.delete("CERBAS-QUEUE")
