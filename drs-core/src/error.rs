//! The error type of drs and the error body that crosses the wire.

use crate::body::DecodeError;
use std::{fmt, io, time::Duration};

use serde::{Deserialize, Serialize};

use crate::protocol::EncodeError;

/// The body of a `drs.error` or `drs.exception` reply: `{"message": "…"}`.
///
/// This is what crosses the wire; [`Error`] is what a Rust caller matches on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// Human-readable description of what went wrong on the remote side.
    pub message: String,
}

impl RemoteError {
    /// Creates a remote error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// Everything that can go wrong with a call, a fire or a connection.
///
/// The four outcomes a caller usually distinguishes — the remote answered with
/// an application error, the remote handler failed unexpectedly, the call timed
/// out, the connection is gone — are separate variants, each with a predicate
/// ([`is_remote`](Error::is_remote), [`is_exception`](Error::is_exception),
/// [`is_timeout`](Error::is_timeout), [`is_closed`](Error::is_closed)) so that
/// callers need not match the (non-exhaustive) enum.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote handler returned an application error (`drs.error`).
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// The remote handler panicked or failed unexpectedly (`drs.exception`).
    #[error("remote exception: {0}")]
    Exception(RemoteError),
    /// No reply arrived within the call's timeout.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The connection is closed (or closed while the call was pending).
    /// A call that fails so may or may not have run on the peer.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection right after saying why (a keyless
    /// `drs.error`, such as a server's "connection limit reached"): its
    /// words.
    #[error("the peer closed the connection: {0}")]
    ClosedByPeer(String),
    /// The peer speaks another protocol or HTTP (its first bytes showed
    /// it): what it speaks, and what to change (`this port speaks
    /// MessagePack, not drs JSON (add ?protocol=msgpack to the URL)`). The
    /// connection is closed; nothing was served.
    #[error("{0}")]
    WrongProtocol(String),
    /// There was no connection to send on (a session between connections,
    /// set to fail at once): the command was not sent.
    #[error("not connected")]
    NotConnected,
    /// No live connection has this name (see `drs.identify`): the command
    /// was not sent.
    #[error("no connected peer is named {0:?}")]
    NoPeer(String),
    /// This side's outbound check refused the action
    /// ([`ConnConfig::outbound_check`](crate::ConnConfig::outbound_check);
    /// `drs-auth`'s outbound jail):
    /// the command was not sent.
    #[error("action not allowed: {0}")]
    NotAllowed(String),
    /// The caller's input was refused before anything was sent: a
    /// malformed topic or subscription pattern (`drs_pubsub::BadTopic`),
    /// or what another extension crate checks. Downcast the source to
    /// tell which.
    #[error(transparent)]
    Invalid(Box<dyn std::error::Error + Send + Sync>),
    /// A frame would exceed (or did exceed) the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum frame size of {limit} bytes")]
    FrameTooLarge {
        /// Size of the offending frame.
        len: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// A command or reply could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A command, reply or body could not be decoded (for example a reply body
    /// that does not deserialize into the type the caller asked for).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The remote handler returned an application error (`drs.error`).
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote(_))
    }

    /// The remote handler panicked or failed unexpectedly (`drs.exception`).
    pub fn is_exception(&self) -> bool {
        matches!(self, Error::Exception(_))
    }

    /// The call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// The connection is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed | Error::ClosedByPeer(_))
    }

    /// The command was never sent ([`NotConnected`](Error::NotConnected),
    /// [`NoPeer`](Error::NoPeer)): retrying it cannot run it twice.
    pub fn is_unsent(&self) -> bool {
        matches!(
            self,
            Error::NotConnected | Error::NoPeer(_) | Error::NotAllowed(_) | Error::Invalid(_)
        )
    }

    /// The caller's input was refused before sending (see
    /// [`Invalid`](Error::Invalid)).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid(_))
    }

    /// The error body sent by the remote side, for `drs.error` and `drs.exception`.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(e) | Error::Exception(e) => Some(e),
            _ => None,
        }
    }
}
