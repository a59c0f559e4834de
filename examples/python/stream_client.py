"""A streamed call with credit, a cancel, and the demo's pool and cache,
over a raw TCP socket with nothing but the standard library: what a
program in any language does to use drs streams (docs/PROTOCOL.md §2).

usage: python3 stream_client.py 127.0.0.1:12000
"""

import json
import socket
import sys

from check import check, done, expect

HOST, PORT = sys.argv[1].rsplit(":", 1)


class Lines:
    def __init__(self):
        self.sock = socket.create_connection((HOST, int(PORT)), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, **command):
        self.sock.sendall(json.dumps(command).encode() + b"\n")

    def recv(self):
        line = self.reader.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)

    def close(self):
        self.reader.close()
        self.sock.close()


def streamed_call_with_credit():
    c = Lines()
    c.send(key="s", action="count", body={"n": 5}, stream=2)
    expect(c.recv(), {"key": "s", "action": "drs.next", "body": 0})
    expect(c.recv(), {"key": "s", "action": "drs.next", "body": 1})
    # Out of credit: the next frame is the answer to this ping, not an item.
    c.send(key="p", action="drs.ping")
    expect(c.recv()["key"], "p")
    c.send(key="s", action="drs.more", body=3)
    expect([c.recv()["body"] for _ in range(3)], [2, 3, 4])
    expect(c.recv(), {"key": "s", "action": "drs.response", "body": 5})
    c.close()


def without_the_opt_in_one_array():
    c = Lines()
    c.send(key="a", action="count", body={"n": 3})
    expect(c.recv(), {"key": "a", "action": "drs.response", "body": [0, 1, 2]})
    c.close()


def cancel_a_stream_and_a_sleep():
    c = Lines()
    c.send(key="s", action="count", body={"n": 1000}, stream=1)
    expect(c.recv()["action"], "drs.next")
    c.send(key="s", action="drs.cancel")
    expect(c.recv(), {"key": "s", "action": "drs.error", "body": {"message": "cancelled"}})
    c.send(key="z", action="sleep", body={"ms": 60000})
    c.send(key="z", action="drs.cancel")
    expect(c.recv(), {"key": "z", "action": "drs.error", "body": {"message": "cancelled"}})
    # A cancel for a finished key gets no reply.
    c.send(key="z", action="drs.cancel")
    c.send(key="p", action="drs.ping")
    expect(c.recv()["key"], "p")
    c.close()


def pool_and_cache():
    c = Lines()
    for i in range(5):
        c.send(key=str(i), action="pooled_sleep", body={"ms": 300})
    replies = {}
    for _ in range(5):
        r = c.recv()
        replies[r["key"]] = r
    full = [k for k, r in replies.items() if r["action"] == "drs.error"]
    expect(full, ["4"])
    expect(replies["4"]["body"], {"message": "queue full"})
    c.send(key="t1", action="cached_time")
    first = c.recv()["body"]
    c.send(key="t2", action="cached_time")
    expect(c.recv()["body"], first)
    c.close()


check("streamed_call_with_credit", streamed_call_with_credit)
check("without_the_opt_in_one_array", without_the_opt_in_one_array)
check("cancel_a_stream_and_a_sleep", cancel_a_stream_and_a_sleep)
check("pool_and_cache", pool_and_cache)
done()
