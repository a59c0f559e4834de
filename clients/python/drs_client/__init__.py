"""drs_client: talk to drs services from Python.

    import drs_client as drs

    with drs.connect("tcp://127.0.0.1:12000") as c:
        print(c.call("add", {"a": 1, "b": 2}))              # 3

The blocking API is here (drs_client.connect); the asyncio one is
drs_client.aio (await drs_client.aio.connect(url)). Both reconnect, time
calls out (5 s by default) and raise RemoteError, RemoteException, Timeout
or Closed.
"""

from . import aio
from .errors import (
    AuthError,
    Closed,
    ConnectError,
    DrsError,
    ProtocolError,
    RemoteError,
    RemoteException,
    Timeout,
    WrongProtocol,
)
from .sync import Client, Stream, connect

__version__ = "0.1.0"

__all__ = [
    "aio",
    "connect",
    "Client",
    "Stream",
    "DrsError",
    "RemoteError",
    "RemoteException",
    "AuthError",
    "Timeout",
    "Closed",
    "ConnectError",
    "ProtocolError",
    "WrongProtocol",
]
