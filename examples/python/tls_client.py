"""TLS over TCP with a token, from Python's standard library (`ssl`):
the server's certificate checked against a CA, nothing served before
`drs.auth`, a bad token refused, then calls; and a plaintext socket to
the TLS port refused.

Then the same over `wss://` with the `websockets` package, the token in
the URL (`?token=`), and without it.

usage: python3 tls_client.py 127.0.0.1:12443 ca.pem TOKEN wss://localhost:12444/socket
"""

import json
import socket
import ssl
import sys

from check import check, done, expect

HOST, PORT = sys.argv[1].rsplit(":", 1)
CA, TOKEN, WSS = sys.argv[2], sys.argv[3], sys.argv[4]


class Tls:
    def __init__(self):
        context = ssl.create_default_context(cafile=CA)
        raw = socket.create_connection((HOST, int(PORT)), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.reader = self.sock.makefile("rb")

    def call(self, key, action, body=None):
        command = {"key": key, "action": action}
        if body is not None:
            command["body"] = body
        self.sock.sendall(json.dumps(command).encode() + b"\n")
        line = self.reader.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)


def authenticated_calls():
    c = Tls()
    expect(c.sock.version() in ("TLSv1.2", "TLSv1.3"), True)
    refused = c.call("1", "echo", "early")
    expect((refused["action"], refused["body"]["message"]), ("drs.error", "unauthenticated"))
    bad = c.call("2", "drs.auth", {"token": "wrong"})
    expect(bad["body"]["message"], "authentication failed: bad token")
    ok = c.call("3", "drs.auth", {"token": TOKEN})
    expect(ok["action"], "drs.response")
    echoed = c.call("4", "echo", {"over": "tls"})
    expect(echoed["body"], {"over": "tls"})


def wrong_ca_is_refused():
    context = ssl.create_default_context()  # the system CAs: not ours
    raw = socket.create_connection((HOST, int(PORT)), timeout=10)
    try:
        context.wrap_socket(raw, server_hostname="localhost")
    except ssl.SSLCertVerificationError:
        return
    raise AssertionError("a certificate from an unknown CA was accepted")


def plaintext_is_refused():
    s = socket.create_connection((HOST, int(PORT)), timeout=10)
    s.sendall(b'{"key":"1","action":"drs.ping"}\n')
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    # Whatever came back (a TLS alert at most), it is not a drs reply.
    expect(b"drs.response" in data, False)


def wss_with_a_token_in_the_url():
    from websockets.sync.client import connect

    context = ssl.create_default_context(cafile=CA)
    with connect(f"{WSS}?token={TOKEN}", ssl=context) as ws:
        ws.send(json.dumps({"key": "1", "action": "echo", "body": "over wss"}))
        reply = json.loads(ws.recv(timeout=10))
        expect(reply["body"], "over wss")
    with connect(WSS, ssl=context) as ws:
        ws.send(json.dumps({"key": "1", "action": "echo", "body": "no token"}))
        reply = json.loads(ws.recv(timeout=10))
        expect(reply["body"]["message"], "unauthenticated")


check("a token over TLS, calls after it", authenticated_calls)
check("wss:// with ?token=, and without", wss_with_a_token_in_the_url)
check("a certificate from another CA is refused", wrong_ca_is_refused)
check("plaintext to the TLS port gets no reply", plaintext_is_refused)
done()
