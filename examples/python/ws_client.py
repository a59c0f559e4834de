"""Talks to the drs demo server over WebSocket with the `websockets` package:
JSON text frames, as a browser or any other language would.

usage: python3 ws_client.py ws://127.0.0.1:12001/socket
"""

import json
import sys

from websockets.sync.client import connect

from check import check, done, expect

URL = sys.argv[1]


def call(ws, key, action, body=None):
    command = {"key": key, "action": action}
    if body is not None:
        command["body"] = body
    ws.send(json.dumps(command))
    return json.loads(ws.recv(timeout=10))


def calls():
    with connect(URL) as ws:
        expect(call(ws, "1", "add", {"a": 2, "b": 40}), {"key": "1", "action": "drs.response", "body": 42.0})
        expect(call(ws, "2", "echo", {"ünï": ["cödé", None, 1.5]}),
               {"key": "2", "action": "drs.response", "body": {"ünï": ["cödé", None, 1.5]}})
        expect(call(ws, "3", "fail", {"message": "nope"}),
               {"key": "3", "action": "drs.error", "body": {"message": "nope"}})
        boom = call(ws, "4", "kaboom")
        expect(boom["action"], "drs.exception")
        expect(call(ws, "5", "missing")["body"], {"message": "No handlers for missing"})


def trailing_newline_and_wrong_kind():
    with connect(URL) as ws:
        ws.send('{"key":"n","action":"echo","body":"with newline"}\n')
        expect(json.loads(ws.recv(timeout=10))["body"], "with newline")
        ws.send(b'{"key":"b","action":"echo","body":1}')  # a binary frame
        notice = json.loads(ws.recv(timeout=10))
        expect(notice["action"], "drs.error")
        assert "expected a text message" in notice["body"]["message"], notice
        expect(call(ws, "after", "echo", 7)["body"], 7)


def server_calls_back():
    with connect(URL) as ws:
        ws.send(json.dumps({"key": "1", "action": "ask_back", "body": {"action": "whoami", "body": {"q": 1}}}))
        asked = json.loads(ws.recv(timeout=10))
        expect((asked["action"], asked["body"]), ("whoami", {"q": 1}))
        ws.send(json.dumps({"key": asked["key"], "action": "drs.response", "body": "python"}))
        expect(json.loads(ws.recv(timeout=10)), {"key": "1", "action": "drs.response", "body": "python"})


def broadcast_between_clients():
    with connect(URL) as a, connect(URL) as b:
        call(a, "p", "drs.ping")
        call(b, "p", "drs.ping")
        a.send(json.dumps({"key": "s", "action": "shout", "body": "hi all"}))
        expect(json.loads(b.recv(timeout=10)), {"action": "shout", "body": "hi all"})
        got = [json.loads(a.recv(timeout=10)) for _ in range(2)]
        assert {"action": "shout", "body": "hi all"} in got, got
        replies = [m for m in got if m.get("key") == "s"]
        assert replies and replies[0]["body"] >= 2, got


def garbage_is_answered():
    with connect(URL) as ws:
        ws.send("this is not json")
        notice = json.loads(ws.recv(timeout=10))
        expect(notice["action"], "drs.error")
        expect(call(ws, "ok", "echo", "still connected")["body"], "still connected")


check("calls and the three reply kinds", calls)
check("trailing newline tolerated, binary frame refused", trailing_newline_and_wrong_kind)
check("the server calls the client back", server_calls_back)
check("broadcast reaches another client", broadcast_between_clients)
check("garbage gets an error, the connection stays", garbage_is_answered)
done()
