"""Talks to the drs demo server over a Unix domain socket with nothing but
the standard library: one JSON command per line.

usage: python3 unix_client.py /tmp/drs-demo.sock
"""

import json
import socket
import sys

from check import check, done, expect

PATH = sys.argv[1]


class Lines:
    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(PATH)
        self.reader = self.sock.makefile("rb")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def recv(self):
        line = self.reader.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)

    def call(self, key, action, body=None):
        self.send(json.dumps({"key": key, "action": action, "body": body}))
        return self.recv()

    def close(self):
        self.reader.close()
        self.sock.close()


def calls():
    c = Lines()
    expect(c.call("1", "add", {"a": 1, "b": 2}), {"key": "1", "action": "drs.response", "body": 3.0})
    expect(c.call("2", "fail", {"message": "no"})["action"], "drs.error")
    expect(c.call("3", "kaboom")["action"], "drs.exception")
    c.send('{"key":"4","action":"echo","body":"crlf"}\r')
    expect(c.recv()["body"], "crlf")
    c.close()


def concurrency_is_visible():
    c = Lines()
    c.send(json.dumps({"key": "slow", "action": "sleep", "body": {"ms": 300}}))
    c.send(json.dumps({"key": "fast", "action": "echo", "body": 1}))
    expect(c.recv()["key"], "fast")
    expect(c.recv()["key"], "slow")
    c.close()


def garbage_and_half_close():
    c = Lines()
    c.send("garbage")
    expect(c.recv()["action"], "drs.error")
    c.send(json.dumps({"key": "last", "action": "echo", "body": "bye"}))
    c.sock.shutdown(socket.SHUT_WR)
    expect(c.recv(), {"key": "last", "action": "drs.response", "body": "bye"})
    assert c.reader.readline() == b"", "the server closes after a half-close"
    c.close()


def vanishing_mid_call_harms_no_one():
    gone = Lines()
    gone.send(json.dumps({"key": "1", "action": "sleep", "body": {"ms": 200}}))
    gone.close()
    c = Lines()
    expect(c.call("x", "echo", "fine")["body"], "fine")
    c.close()


check("calls over a Unix socket", calls)
check("replies come as handlers finish", concurrency_is_visible)
check("garbage answered, half-close still gets replies", garbage_and_half_close)
check("a client vanishing mid-call harms no one", vanishing_mid_call_harms_no_one)
done()
