"""Talks MessagePack (4-byte big-endian length prefix, then a map) to the
drs demo server over TCP, and checks that a JSON client on another listener
of the same server sees its broadcasts, and the reverse.

usage: python3 msgpack_client.py MSGPACK_HOST:PORT JSON_HOST:PORT
"""

import json
import socket
import struct
import sys

import msgpack

from check import check, done, expect


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


MSGPACK, JSON = addr(sys.argv[1]), addr(sys.argv[2])


class MsgPackPeer:
    def __init__(self):
        self.sock = socket.create_connection(MSGPACK, timeout=10)

    def send(self, command):
        frame = msgpack.packb(command)
        self.sock.sendall(struct.pack(">I", len(frame)) + frame)

    def recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def recv(self):
        (length,) = struct.unpack(">I", self.recv_exact(4))
        return msgpack.unpackb(self.recv_exact(length))

    def call(self, key, action, body=None):
        self.send({"key": key, "action": action, "body": body})
        return self.recv()


class JsonPeer:
    def __init__(self):
        self.sock = socket.create_connection(JSON, timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, command):
        self.sock.sendall(json.dumps(command).encode() + b"\n")

    def recv(self):
        return json.loads(self.reader.readline())


def calls():
    p = MsgPackPeer()
    expect(p.call("1", "add", {"a": 1, "b": 2}), {"key": "1", "action": "drs.response", "body": 3.0})
    body = {"list": [1, -2, 3.5, None, True], "text": "ünï", "nested": {"x": {}}}
    expect(p.call("2", "echo", body)["body"], body)
    expect(p.call("3", "fail", {"message": "no"}), {"key": "3", "action": "drs.error", "body": {"message": "no"}})
    expect(p.call("4", "kaboom")["action"], "drs.exception")


def garbage_is_answered():
    p = MsgPackPeer()
    p.sock.sendall(struct.pack(">I", 3) + b"\x01\x02\x03")
    notice = p.recv()
    expect(notice["action"], "drs.error")
    assert "key" not in notice
    expect(p.call("ok", "echo", "still here")["body"], "still here")


def broadcasts_cross_protocols():
    mp, js = MsgPackPeer(), JsonPeer()
    mp.call("p", "drs.ping")
    js.send({"key": "p", "action": "drs.ping"})
    js.recv()
    mp.send({"key": "s1", "action": "shout", "body": {"from": "msgpack", "n": [1, 2]}})
    expect(js.recv(), {"action": "shout", "body": {"from": "msgpack", "n": [1, 2]}})
    got = [mp.recv(), mp.recv()]
    assert {"action": "shout", "body": {"from": "msgpack", "n": [1, 2]}} in got, got
    js.send({"key": "s2", "action": "shout", "body": {"from": "json", "ok": True}})
    got = [mp.recv()]
    expect(got[0], {"action": "shout", "body": {"from": "json", "ok": True}})


check("calls in MessagePack", calls)
check("garbage gets an error, the connection stays", garbage_is_answered)
check("JSON and MessagePack clients see each other's broadcasts", broadcasts_cross_protocols)
done()
