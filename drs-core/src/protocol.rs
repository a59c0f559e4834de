//! The [`Protocol`] trait: how a frame becomes a [`Command`] and back.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::{
    body::{Body, BodyFormat, DecodeError},
    command::Command,
};

/// How a byte-stream transport (TCP, IPC) delimits frames for a protocol, and
/// which kind of message a message transport (WebSocket) carries them in.
///
/// | framing | byte streams | WebSocket |
/// |---|---|---|
/// | [`Lines`](Framing::Lines) | one frame per line, `\n`-terminated (`\r\n` and blank lines tolerated) | one text message per frame (a trailing newline tolerated) |
/// | [`LengthPrefixed`](Framing::LengthPrefixed) | a 4-byte big-endian length, then the frame | one binary message per frame |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// Text frames, newline-delimited on byte streams. A frame never contains `\n`.
    Lines,
    /// Binary frames, length-prefixed (u32, big endian) on byte streams.
    LengthPrefixed,
}

impl Framing {
    /// The kind of message a message-based transport uses for this framing.
    pub fn frame_kind(self) -> FrameKind {
        match self {
            Framing::Lines => FrameKind::Text,
            Framing::LengthPrefixed => FrameKind::Binary,
        }
    }
}

/// Whether frames are text (valid UTF-8) or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// Frames are UTF-8 text.
    Text,
    /// Frames are arbitrary bytes.
    Binary,
}

/// The outgoing side of a command, borrowed: what [`Protocol::encode`] writes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Outgoing<'a> {
    /// Present when a reply is wanted (calls) and on every reply.
    pub key: Option<&'a str>,
    /// The action.
    pub action: &'a str,
    /// The body.
    pub body: OutBody<'a>,
    /// The optional version, carried through.
    pub version: Option<i64>,
    /// On a call: opts in to a streamed reply with this much initial credit.
    pub stream: Option<u32>,
    /// Asks the receiver to run the command this many milliseconds later.
    pub delay: Option<u32>,
}

impl<'a> Outgoing<'a> {
    /// A command with no key, body or version.
    pub fn new(action: &'a str) -> Self {
        Self {
            key: None,
            action,
            body: OutBody::Absent,
            version: None,
            stream: None,
            delay: None,
        }
    }

    /// Sets the delay in milliseconds (the receiver holds the command).
    pub fn delay(mut self, delay: Option<u32>) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the key.
    pub fn key(mut self, key: Option<&'a str>) -> Self {
        self.key = key;
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: OutBody<'a>) -> Self {
        self.body = body;
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: Option<i64>) -> Self {
        self.version = version;
        self
    }

    /// Sets the stream opt-in.
    pub fn stream(mut self, stream: Option<u32>) -> Self {
        self.stream = stream;
        self
    }
}

/// A body on its way out.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum OutBody<'a> {
    /// No body: the field is omitted (the peer reads it as null).
    Absent,
    /// A body that was received (or encoded) earlier. A protocol whose
    /// [`BodyFormat::name`] matches copies its bytes verbatim; any other
    /// protocol transcodes it through serde.
    Raw(&'a Body),
    /// A value to serialize.
    Value(&'a dyn erased_serde::Serialize),
}

impl fmt::Debug for OutBody<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutBody::Absent => f.write_str("Absent"),
            OutBody::Raw(b) => f.debug_tuple("Raw").field(b).finish(),
            OutBody::Value(_) => f.write_str("Value(..)"),
        }
    }
}

/// A wire protocol: turns one frame into a [`Command`] and a command into one frame.
///
/// Protocols are small, synchronous and stateless, and are tested on plain
/// buffers. The contract:
///
/// - [`decode`](Protocol::decode) receives exactly one whole frame, as
///   delimited by the transport according to [`framing`](Protocol::framing)
///   (no newline, no length prefix). It returns the command, or a
///   [`DecodeError`] saying what is wrong; if the key could be read, the error
///   carries it so that the sender can be answered with a `drs.error`.
///   Unknown fields are ignored.
/// - [`encode`](Protocol::encode) appends exactly one frame's bytes to `dst`
///   (again without delimiter). On error, whatever it appended is discarded by
///   the caller. For [`Framing::Lines`] the output must not contain `\n`.
/// - [`body_format`](Protocol::body_format) names the encoding of bodies, so a
///   body received through one protocol can be re-sent through another.
pub trait Protocol: Send + Sync + 'static {
    /// Short name, e.g. `"json"`.
    fn name(&self) -> &'static str;

    /// How frames of this protocol are delimited on byte streams.
    fn framing(&self) -> Framing;

    /// Decodes one frame.
    fn decode(&self, frame: Bytes) -> Result<Command, DecodeError>;

    /// Encodes one command, appending one frame to `dst`.
    fn encode(&self, cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError>;

    /// The encoding of bodies decoded by this protocol.
    fn body_format(&self) -> &'static dyn BodyFormat;
}

/// A command or body could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encode error: {message}")]
pub struct EncodeError {
    message: String,
}

impl EncodeError {
    /// An encode error with the given description.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Encodes `cmd` with `protocol`, appending to `dst`; on failure `dst` is left
/// as it was.
pub(crate) fn encode_into(
    protocol: &dyn Protocol,
    cmd: &Outgoing<'_>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = dst.len();
    let res = protocol.encode(cmd, dst);
    if res.is_err() {
        dst.truncate(start);
    }
    res
}

/// Declares a protocol: its unit type, the unit type of its body format,
/// and the [`Protocol`] impl tying a name, a framing, its body format
/// (a `&'static dyn BodyFormat`), a decoder and an encoder together. The skeleton every protocol crate would otherwise
/// write again; the decoder, the encoder and the [`BodyFormat`] impl are
/// the protocol's own.
///
/// ```
/// # use bytes::{Bytes, BytesMut};
/// # use drs_core::{Command, DecodeError, EncodeError, Outgoing};
/// # fn decode_line(_: Bytes) -> Result<Command, DecodeError> { unimplemented!() }
/// # fn encode_line(_: &Outgoing<'_>, _: &mut BytesMut) -> Result<(), EncodeError> { unimplemented!() }
/// # #[derive(Debug, Clone, Copy, Default)] pub struct LineFormat;
/// # impl drs_core::BodyFormat for LineFormat {
/// #     fn name(&self) -> &'static str { "line" }
/// #     fn is_text(&self) -> bool { true }
/// #     fn deserialize(&self, _: &[u8], _: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>) -> Result<(), DecodeError> { unimplemented!() }
/// # }
/// drs_core::protocol! {
///     /// A protocol of one's own.
///     pub Line: "line", Lines, format &LineFormat, decode decode_line, encode encode_line
/// }
/// assert_eq!(drs_core::Protocol::name(&Line), "line");
/// ```
#[macro_export]
macro_rules! protocol {
    (
        $(#[$doc:meta])*
        $vis:vis $name:ident : $label:literal, $framing:ident,
        format $format:expr, decode $decode:path, encode $encode:path
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        $vis struct $name;

        impl $crate::Protocol for $name {
            fn name(&self) -> &'static str {
                $label
            }

            fn framing(&self) -> $crate::Framing {
                $crate::Framing::$framing
            }

            fn decode(&self, frame: $crate::__bytes::Bytes) -> ::core::result::Result<$crate::Command, $crate::DecodeError> {
                $decode(frame)
            }

            fn encode(
                &self,
                cmd: &$crate::Outgoing<'_>,
                dst: &mut $crate::__bytes::BytesMut,
            ) -> ::core::result::Result<(), $crate::EncodeError> {
                $encode(cmd, dst)
            }

            fn body_format(&self) -> &'static dyn $crate::BodyFormat {
                $format
            }
        }
    };
}

macro_rules! forward_protocol {
    ($($ptr:ty),*) => {$(
        /// A shared or boxed protocol is a protocol, so one can be chosen at run time.
        impl<P: Protocol + ?Sized> Protocol for $ptr {
            fn name(&self) -> &'static str {
                (**self).name()
            }
            fn framing(&self) -> Framing {
                (**self).framing()
            }
            fn decode(&self, frame: Bytes) -> Result<Command, DecodeError> {
                (**self).decode(frame)
            }
            fn encode(&self, cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
                (**self).encode(cmd, dst)
            }
            fn body_format(&self) -> &'static dyn BodyFormat {
                (**self).body_format()
            }
        }
    )*};
}

forward_protocol!(std::sync::Arc<P>, Box<P>);

impl fmt::Debug for dyn Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
