"""The real Rembus Python client (PyPI `rembus`, unmodified) against drs.

Run by examples/tests/polyglot.rs against `demo_server --tcp ... --rembus
...`, with DRS_REMBUS=host:port (the Rembus endpoint) and DRS_TCP=host:port
(a drs JSON-lines listener of the same server). Every wait is bounded.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import rembus as rb

REMBUS = "ws://" + os.environ["DRS_REMBUS"]
TCP = os.environ["DRS_TCP"]
LIMIT = 10.0


def wait_for(cond, what):
    deadline = time.monotonic() + LIMIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class JsonLines:
    """A drs client in a few lines: JSON over TCP, one command per line."""

    def __init__(self):
        host, port = TCP.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=LIMIT)
        self.file = self.sock.makefile("rwb")

    def send(self, cmd):
        self.file.write(json.dumps(cmd).encode() + b"\n")
        self.file.flush()

    def recv(self):
        line = self.file.readline()
        assert line, "connection closed"
        return json.loads(line)

    def call(self, key, action, body):
        self.send({"key": key, "action": action, "body": body})
        while True:
            reply = self.recv()
            if reply.get("key") == key and reply["action"].startswith("drs."):
                return reply

    def close(self):
        self.file.close()
        self.sock.close()


@pytest.fixture
def nodes():
    made = []

    def node(name):
        n = rb.node(f"{REMBUS}/{name}")
        made.append(n)
        return n

    yield node
    for n in made:
        try:
            n.close()
        except Exception:
            pass


def test_rpc_between_rembus_components(nodes):
    def plus(x, y):
        return x + y

    calculator = nodes("calculator")
    calculator.expose(plus)
    caller = nodes("caller")
    assert caller.rpc("plus", 1, 2) == 3
    # The server's own handlers answer Rembus calls too.
    assert caller.rpc("echo", "hi") == "hi"
    with pytest.raises(Exception):
        caller.rpc("nobody_serves_this")


def test_publish_and_subscribe(nodes):
    got = []

    def alarm(slogan, severity):
        got.append((slogan, severity))

    listener = nodes("listener")
    listener.subscribe(alarm)
    listener.reactive()
    publisher = nodes("publisher")
    publisher.publish("alarm", "battery low", "CRITICAL")
    publisher.publish("alarm", "door open", "INFO", qos=rb.QOS1)
    wait_for(lambda: len(got) == 2, "two alarms")
    assert got == [("battery low", "CRITICAL"), ("door open", "INFO")]


def test_retroactive_subscriber_gets_what_it_missed(nodes):
    got = []

    def reading(value):
        got.append(value)

    keeper = rb.node(f"{REMBUS}/keeper")
    keeper.subscribe(reading, msgfrom=rb.LastReceived)
    keeper.reactive()
    publisher = nodes("publisher2")
    publisher.publish("reading", 0, qos=rb.QOS1)
    wait_for(lambda: got == [0], "the live reading")
    keeper.close()
    for i in (1, 2, 3):
        publisher.publish("reading", i, qos=rb.QOS1)
    keeper = nodes("keeper")
    keeper.subscribe(reading, msgfrom=rb.LastReceived)
    keeper.reactive()
    wait_for(lambda: len(got) == 4, "the three missed readings")
    assert got == [0, 1, 2, 3]


def test_a_name_in_use_is_refused(nodes):
    nodes("unique")
    # Another process: within one, the client itself replaces a node of
    # the same name.
    other = subprocess.run(
        [sys.executable, "-c", f"import rembus as rb; rb.node({REMBUS + '/unique'!r})"],
        capture_output=True,
        text=True,
        timeout=LIMIT * 3,
    )
    assert other.returncode != 0
    assert "login failed" in other.stderr, other.stderr[-500:]


def test_a_drs_json_client_calls_the_rembus_plus(nodes):
    def plus(x, y):
        return x + y

    def add(x, y):
        return "taken over"

    calculator = nodes("calculator2")
    calculator.expose(plus)
    # The demo's own `add` cannot be taken over by a component.
    with pytest.raises(Exception, match="expose not allowed: add"):
        calculator.expose(add)
    drs = JsonLines()
    try:
        # The exposer takes the positional arguments.
        reply = drs.call("1", "plus", [1, 2])
        assert reply == {"key": "1", "action": "drs.response", "body": 3}
        reply = drs.call("2", "add", {"a": 1, "b": 2})
        assert reply == {"key": "2", "action": "drs.response", "body": 3}
    finally:
        drs.close()


def test_publications_cross_between_drs_and_rembus(nodes):
    got = []

    def news(text):
        got.append(text)

    listener = nodes("reader")
    listener.subscribe(news)
    listener.reactive()
    drs = JsonLines()
    try:
        reply = drs.call("p", "drs.publish", {"topic": "news", "body": "from drs"})
        assert reply["action"] == "drs.response", reply
        wait_for(lambda: got == ["from drs"], "the drs publication")
        reply = drs.call("s", "drs.subscribe", {"topic": "sensors.*"})
        assert reply["action"] == "drs.response", reply
        publisher = nodes("sensor")
        publisher.publish("sensors/t1", 21.5)
        assert drs.recv() == {"action": "sensors.t1", "body": 21.5}
    finally:
        drs.close()


def test_a_rembus_component_calls_a_drs_exposer(nodes):
    drs = JsonLines()
    try:
        reply = drs.call("e", "drs.expose", {"action": "triple"})
        assert reply["action"] == "drs.response", reply
        caller = nodes("rcaller")
        answer = {}
        t = threading.Thread(target=lambda: answer.setdefault("v", caller.rpc("triple", 14)))
        t.start()
        call = drs.recv()
        assert call["action"] == "triple" and call["body"] == 14, call
        drs.send({"key": call["key"], "action": "drs.response", "body": 42})
        t.join(LIMIT)
        assert answer["v"] == 42
    finally:
        drs.close()
