//! What a framed transport yields and what it needs: the framing
//! vocabulary shared by transports and the framing layer ([`Inbound`],
//! [`FrameSpec`], and the problems a frame can have).

use std::{fmt, io};

use bytes::Bytes;

use crate::{
    budget::ReadMeter,
    protocol::{FrameKind, Framing},
};

/// The default maximum frame size: 8 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// What a transport's stream yields: a frame, or a frame it could not
/// hand over. Framing problems are items of the stream, not errors: an
/// error (`Err`) is the transport failing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// One whole frame, without delimiter.
    Frame(Bytes),
    /// A frame of the wrong kind (a binary WebSocket message for a text
    /// protocol): skipped, answered with a keyless `drs.error`; the stream
    /// goes on.
    Bad(BadFrame),
    /// A frame over the maximum size: answered with a keyless `drs.error`,
    /// and the connection closes (a byte stream cannot resynchronise; the
    /// stream ends after it).
    TooLarge(FrameTooLarge),
    /// The peer's first bytes are another protocol's or HTTP: a server
    /// answers with a keyless `drs.error` saying what the port speaks, a
    /// client fails its calls with [`Error::WrongProtocol`](crate::Error::WrongProtocol);
    /// the connection closes (the stream ends after it).
    Foreign(Foreign),
}

impl Inbound {
    /// The frame, if this is one.
    pub fn frame(self) -> Option<Bytes> {
        match self {
            Inbound::Frame(frame) => Some(frame),
            _ => None,
        }
    }
}

/// What a transport needs to know to cut one connection into frames.
///
/// A server makes one per connection: its [`meter`](FrameSpec::meter) is
/// where the transport reports the bytes of a frame that has started and
/// not finished (for the frame deadline and the server's memory budget).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FrameSpec {
    /// Lines or length prefixes on byte streams; text or binary messages elsewhere.
    pub framing: Framing,
    /// The largest frame accepted or sent, in bytes.
    pub max_frame_len: usize,
    /// The connection's read meter.
    pub meter: ReadMeter,
}

impl PartialEq for FrameSpec {
    fn eq(&self, other: &Self) -> bool {
        self.framing == other.framing && self.max_frame_len == other.max_frame_len
    }
}

impl FrameSpec {
    /// A spec for `framing` with the default maximum frame size (8 MiB).
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            meter: ReadMeter::default(),
        }
    }

    /// Sets the maximum frame size.
    pub fn max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Sets the read meter.
    pub fn meter(mut self, meter: ReadMeter) -> Self {
        self.meter = meter;
        self
    }

    /// Text or binary messages, for message-based transports.
    pub fn frame_kind(&self) -> FrameKind {
        self.framing.frame_kind()
    }
}

/// A frame exceeded the maximum frame size. A transport yields it as an
/// item of its stream ([`Inbound::TooLarge`](crate::Inbound::TooLarge));
/// the connection answers with a keyless `drs.error` and closes. Sending
/// one is an [`io::Error`] wrapping it ([`into_io`](FrameTooLarge::into_io)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("frame exceeds the maximum frame size of {limit} bytes")]
pub struct FrameTooLarge {
    /// The configured maximum frame size.
    pub limit: usize,
}

impl FrameTooLarge {
    /// Wraps this error in an `io::Error` of kind `InvalidData`.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Finds a `FrameTooLarge` inside an `io::Error` (a refused send).
    pub fn find(err: &io::Error) -> Option<&FrameTooLarge> {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<FrameTooLarge>())
    }
}

/// A frame the transport could not hand over as a frame of the protocol's
/// kind (e.g. a binary WebSocket message for a text protocol). A transport
/// yields it as an item of its stream ([`Inbound::Bad`](crate::Inbound::Bad))
/// and keeps going; the connection answers with a keyless `drs.error` and
/// skips the frame, as it does for a frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadFrame {
    /// What was wrong with the frame.
    pub reason: String,
}

impl BadFrame {
    /// A bad frame, for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        BadFrame {
            reason: reason.into(),
        }
    }
}

/// What a peer's first bytes show it speaks, when it is not this
/// connection's framing: another protocol, or HTTP. A transport yields it
/// as an item of its stream ([`Inbound::Foreign`](crate::Inbound::Foreign));
/// the connection says so (a server to its peer, a client to its calls)
/// and closes: the stream cannot be read as frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Foreign {
    /// Binary data where a line of JSON was expected: MessagePack's
    /// length-prefixed frames begin with a zero byte.
    MessagePack,
    /// JSON text where a length-prefixed frame was expected.
    Json,
    /// An HTTP request (a browser, `curl`, a WebSocket handshake).
    HttpRequest,
    /// An HTTP response (the port is an HTTP or WebSocket server).
    HttpResponse,
}

impl Foreign {
    /// What the peer speaks, in words: `MessagePack`, `JSON`, `HTTP`.
    pub fn speaks(self) -> &'static str {
        match self {
            Foreign::MessagePack => "MessagePack",
            Foreign::Json => "JSON",
            Foreign::HttpRequest | Foreign::HttpResponse => "HTTP",
        }
    }
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Foreign::MessagePack => "MessagePack",
            Foreign::Json => "JSON",
            Foreign::HttpRequest => "an HTTP request",
            Foreign::HttpResponse => "an HTTP response",
        })
    }
}
