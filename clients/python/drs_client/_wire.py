"""URLs, codecs and transports: how commands travel.

- tcp://HOST:PORT, tls://HOST:PORT, ipc:///PATH (a Unix socket): JSON is one
  command per line; MessagePack is a 4-byte big-endian length, then a map.
- ws://HOST:PORT/PATH, wss://…: one command per text (JSON) or binary
  (MessagePack) message.
- ?protocol=msgpack picks MessagePack; ?ca=FILE trusts that CA for TLS; any
  other query parameter (e.g. ?token=) is passed to a WebSocket server.
"""

import asyncio
import json
import ssl as _ssl
import struct
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import ConnectError, ProtocolError, WrongProtocol

#: The largest frame accepted, as the server's default.
MAX_FRAME = 8 * 1024 * 1024

SCHEMES = ("tcp", "tls", "ipc", "unix", "ws", "wss")


class Url:
    """A parsed drs URL."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                "%r is not a drs URL: the scheme is one of %s" % (url, ", ".join(SCHEMES))
            )
        self.url = url
        self.scheme = parts.scheme
        query = parse_qsl(parts.query, keep_blank_values=True)
        params = dict(query)
        self.protocol = params.pop("protocol", "json")
        if self.protocol not in ("json", "msgpack"):
            raise ValueError("unknown protocol %r (json or msgpack)" % self.protocol)
        self.ca = params.pop("ca", None)
        self.rest = params
        if self.scheme in ("ipc", "unix"):
            self.path = parts.path or parts.netloc
            if not self.path:
                raise ValueError("%r names no socket path: ipc:///PATH" % url)
        else:
            if not parts.hostname or not parts.port:
                raise ValueError("%r needs a host and a port" % url)
            self.host, self.port = parts.hostname, parts.port
            self.path = parts.path or ("/socket" if self.scheme in ("ws", "wss") else "")

    @property
    def secure(self):
        return self.scheme in ("tls", "wss")

    def ws_uri(self):
        scheme = "wss" if self.scheme == "wss" else "ws"
        query = ("?" + urlencode(self.rest)) if self.rest else ""
        return "%s://%s:%d%s%s" % (scheme, self.host, self.port, self.path, query)


class Codec:
    """Commands (dicts) to frames (bytes) and back."""

    def __init__(self, protocol):
        self.binary = protocol == "msgpack"
        if self.binary:
            try:
                import msgpack
            except ImportError as e:  # pragma: no cover - depends on the machine
                raise ImportError(
                    "?protocol=msgpack needs the msgpack package: pip install drsrpc[msgpack]"
                ) from e
            self._msgpack = msgpack

    def encode(self, command):
        if self.binary:
            return self._msgpack.packb(command, use_bin_type=True)
        return json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, frame):
        try:
            if self.binary:
                command = self._msgpack.unpackb(frame, raw=False)
            else:
                command = json.loads(frame)
        except Exception as e:
            raise ProtocolError("a frame that is not a command: %s" % e) from e
        if not isinstance(command, dict) or not isinstance(command.get("action"), str):
            raise ProtocolError("a frame without an action: %r" % (command,))
        return command


def ssl_context(url, ssl=None):
    """The TLS settings of `url`: `ssl` if given, else the system's roots or
    ?ca=FILE."""
    if ssl is not None:
        return ssl
    if not url.secure:
        return None
    return _ssl.create_default_context(cafile=url.ca)


class StreamTransport:
    """TCP, TLS or a Unix socket."""

    def __init__(self, reader, writer, codec):
        self.reader, self.writer, self.codec = reader, writer, codec
        # The first frame's first bytes are checked for another protocol.
        self.first = True

    @classmethod
    async def open(cls, url, codec, ssl=None):
        try:
            if url.scheme in ("ipc", "unix"):
                reader, writer = await asyncio.open_unix_connection(url.path, limit=MAX_FRAME)
            else:
                reader, writer = await asyncio.open_connection(
                    url.host,
                    url.port,
                    ssl=ssl_context(url, ssl),
                    limit=MAX_FRAME,
                )
        except (OSError, _ssl.SSLError) as e:
            raise ConnectError("cannot connect to %s: %s" % (url.url, e)) from e
        return cls(reader, writer, codec)

    async def send(self, frame):
        if self.codec.binary:
            self.writer.write(struct.pack(">I", len(frame)) + frame)
        else:
            self.writer.write(frame + b"\n")
        await self.writer.drain()

    async def recv(self):
        """The next frame, or None at the end."""
        try:
            if self.codec.binary:
                head = await self.reader.readexactly(4)
                (length,) = struct.unpack(">I", head)
                if length > MAX_FRAME:
                    if self.first:
                        foreign = _sniff(head)
                        if foreign:
                            raise WrongProtocol(
                                "this port speaks %s, not drs MessagePack (%s)" % foreign
                            )
                    raise ProtocolError("a frame of %d bytes is too large" % length)
                self.first = False
                return await self.reader.readexactly(length)
            if self.first:
                # A zero byte starts MessagePack's length prefix; no line
                # follows it, so it is looked at before waiting for one.
                byte = await self.reader.readexactly(1)
                while byte in b" \t\r\n":
                    byte = await self.reader.readexactly(1)
                if byte == b"\0":
                    raise WrongProtocol(
                        "this port speaks MessagePack, not drs JSON "
                        "(add ?protocol=msgpack to the URL)"
                    )
                line = (byte + await self.reader.readline()).strip()
                self.first = False
                if line.startswith(b"HTTP/"):
                    raise WrongProtocol(
                        "this port speaks HTTP, not drs JSON (a ws:// URL, if it serves WebSocket)"
                    )
                return line
            while True:
                line = await self.reader.readline()
                if not line:
                    return None
                line = line.strip()
                if line:
                    return line
        except asyncio.IncompleteReadError:
            return None
        except (ConnectionError, OSError):
            return None
        except ValueError as e:  # a line past the limit
            raise ProtocolError(str(e)) from e

    async def close(self):
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError, _ssl.SSLError):
            pass


class WsTransport:
    """WebSocket through the websockets package."""

    def __init__(self, ws, codec):
        self.ws, self.codec = ws, codec

    @classmethod
    async def open(cls, url, codec, ssl=None, headers=None):
        try:
            from websockets.asyncio.client import connect
        except ImportError:  # websockets < 13
            from websockets import connect
        kwargs = {"max_size": MAX_FRAME, "open_timeout": None}
        if url.secure:
            kwargs["ssl"] = ssl_context(url, ssl)
        if headers:
            kwargs["additional_headers"] = headers
        try:
            ws = await connect(url.ws_uri(), **kwargs)
        except Exception as e:
            raise ConnectError("cannot connect to %s: %s" % (url.url, e)) from e
        return cls(ws, codec)

    async def send(self, frame):
        await self.ws.send(frame if self.codec.binary else frame.decode())

    async def recv(self):
        try:
            message = await self.ws.recv()
        except Exception:
            return None
        return message.encode() if isinstance(message, str) else message

    async def close(self):
        try:
            await self.ws.close()
        except Exception:
            pass


def _sniff(head):
    """What a MessagePack length prefix past the limit shows instead:
    (what the port speaks, what to do), or None."""
    if head[:1] in (b"{", b"["):
        return ("JSON", "drop ?protocol=msgpack from the URL")
    if head.startswith(b"HTTP"):
        return ("HTTP", "a ws:// URL, if it serves WebSocket")
    return None


async def open_transport(url, codec, ssl=None):
    if url.scheme in ("ws", "wss"):
        return await WsTransport.open(url, codec, ssl)
    return await StreamTransport.open(url, codec, ssl)


def topic_matches(pattern, topic):
    """Whether `topic` matches `pattern` (`*` one segment, `>` the rest)."""
    p, t = pattern.split("."), topic.split(".")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(t) > i
        if i >= len(t) or (seg != "*" and seg != t[i]):
            return False
    return len(p) == len(t)
