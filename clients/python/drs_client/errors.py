"""The errors a drs call can end with: four outcomes a caller tells apart
(the remote answered drs.error, the remote failed with drs.exception, no
reply in time, the connection is gone), all DrsError."""


class DrsError(Exception):
    """Everything drs_client raises."""


class RemoteError(DrsError):
    """The remote handler answered with an application error (drs.error)."""

    def __init__(self, message, body=None):
        super().__init__(message)
        self.message = message
        self.body = body


class RemoteException(DrsError):
    """The remote handler failed unexpectedly (drs.exception): a panic, a bug."""

    def __init__(self, message, body=None):
        super().__init__(message)
        self.message = message
        self.body = body


class AuthError(RemoteError):
    """The server refused the token (drs.auth) or the name (drs.identify)."""


class Timeout(DrsError):
    """No reply arrived within the call's timeout (or no connection did)."""


class Closed(DrsError):
    """The connection is closed, or closed while the call was pending: the
    call may or may not have run on the server, and is never sent again."""


class ConnectError(Closed):
    """The client could not connect (refused, unreachable, TLS failure)."""


class WrongProtocol(ConnectError):
    """The port speaks another protocol, or HTTP (its first bytes showed
    it): the message says which, and what to change in the URL. Nothing was
    served."""


class ProtocolError(DrsError):
    """The peer sent something that is not a drs command."""
