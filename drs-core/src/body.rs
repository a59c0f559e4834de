//! [`Body`], a command's payload kept in wire form; [`BodyFormat`], the
//! encoding that reads it; [`DecodeError`], what a frame, command or body
//! that does not decode is.

use std::fmt;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize, Serializer};

/// A command's payload, kept in the encoding it arrived in.
///
/// Decoding a frame does not build a tree of values: the body stays a slice of
/// the frame, and is deserialized once, straight into the type a handler or a
/// caller asks for ([`Body::deserialize`]). Re-sending a body through the same
/// protocol copies its bytes; through another protocol, it is transcoded
/// (`Body` implements [`Serialize`]).
///
/// An absent body reads as null: it deserializes into `()`, `Option::None`,
/// or `serde_json::Value::Null`.
#[derive(Clone, Default)]
pub struct Body {
    raw: Option<(Bytes, &'static dyn BodyFormat)>,
}

impl Body {
    /// The absent body.
    pub const fn absent() -> Self {
        Self { raw: None }
    }

    /// A body holding `bytes` encoded in `format`. The bytes are not validated here.
    pub fn from_raw(bytes: Bytes, format: &'static dyn BodyFormat) -> Self {
        Self {
            raw: Some((bytes, format)),
        }
    }

    /// Whether the body was absent on the wire.
    pub fn is_absent(&self) -> bool {
        self.raw.is_none()
    }

    /// The encoded bytes and their format, unless the body is absent.
    pub fn raw(&self) -> Option<(&Bytes, &'static dyn BodyFormat)> {
        self.raw.as_ref().map(|(b, f)| (b, *f))
    }

    /// Deserializes the body into `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let Some((bytes, format)) = &self.raw else {
            return T::deserialize(
                serde::de::value::UnitDeserializer::<serde::de::value::Error>::new(),
            )
            .map_err(|e| DecodeError::new(e.to_string()));
        };
        let mut out = None;
        format.deserialize(bytes, &mut |de| {
            out = Some(erased_serde::deserialize::<T>(de)?);
            Ok(())
        })?;
        out.ok_or_else(|| DecodeError::new("body format produced no value"))
    }

    /// The value of the top-level field `name` of this body (a map), as a
    /// body of the same format sharing its bytes: `Ok(None)` when there is
    /// no such field (or no body), an error when the body is no map.
    pub fn field(&self, name: &str) -> Result<Option<Body>, DecodeError> {
        let Some((bytes, format)) = &self.raw else {
            return Ok(None);
        };
        Ok(format.field(bytes, name)?.map(|range| Body {
            raw: Some((bytes.slice(range), *format)),
        }))
    }

    /// Whether this body is encoded in `format` (compared by name).
    pub fn is_format(&self, format: &dyn BodyFormat) -> bool {
        matches!(&self.raw, Some((_, f)) if f.name() == format.name())
    }
}

/// What a call's reply body can be read as: any `T: DeserializeOwned`, or
/// the [`Body`] itself (to pass it on untouched).
///
/// A type that holds no data (`()`, a unit struct) accepts any reply: a
/// call made for its side effect, `conn.call::<()>("log", entry).await?`,
/// succeeds whatever the handler answered, as long as it answered
/// `drs.response`.
pub trait FromBody: Sized {
    /// Reads the value out of the body.
    fn from_body(body: Body) -> Result<Self, DecodeError>;
}

impl<T: DeserializeOwned> FromBody for T {
    fn from_body(body: Body) -> Result<Self, DecodeError> {
        match body.deserialize() {
            Ok(value) => Ok(value),
            // Nothing to lose: the reply is ignored.
            Err(e) if std::mem::size_of::<T>() == 0 => {
                T::deserialize(serde::de::value::UnitDeserializer::<serde::de::value::Error>::new())
                    .map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }
}

impl FromBody for Body {
    fn from_body(body: Body) -> Result<Self, DecodeError> {
        Ok(body)
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((bytes, format)) = &self.raw else {
            return s.serialize_unit();
        };
        let mut serializer = Some(s);
        let mut out = None;
        let res = format.deserialize(bytes, &mut |de| {
            if let Some(s) = serializer.take() {
                out = Some(crate::transcode::transcode(de, s));
            }
            Ok(())
        });
        match (out, res) {
            (Some(Ok(ok)), Ok(())) => Ok(ok),
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(serde::ser::Error::custom(e)),
            (None, Ok(())) => Err(serde::ser::Error::custom("body format produced no value")),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.raw {
            None => f.write_str("Body(absent)"),
            Some((bytes, format)) if format.is_text() => {
                const MAX: usize = 256;
                let shown = &bytes[..bytes.len().min(MAX)];
                write!(
                    f,
                    "Body({}: {}",
                    format.name(),
                    String::from_utf8_lossy(shown)
                )?;
                if bytes.len() > MAX {
                    write!(f, "… ({} bytes)", bytes.len())?;
                }
                f.write_str(")")
            }
            Some((bytes, format)) => write!(f, "Body({}: {} bytes)", format.name(), bytes.len()),
        }
    }
}

impl PartialEq for Body {
    /// Bodies are equal when they are both absent, or hold the same bytes in
    /// the same format.
    fn eq(&self, other: &Self) -> bool {
        match (&self.raw, &other.raw) {
            (None, None) => true,
            (Some((a, fa)), Some((b, fb))) => fa.name() == fb.name() && a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for dyn BodyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The encoding of a [`Body`]: lets any code deserialize (or transcode) a body
/// without knowing which protocol it came from.
pub trait BodyFormat: Send + Sync + 'static {
    /// Unique name of the encoding; two formats with the same name must encode
    /// identically (bodies are then copied verbatim between them).
    fn name(&self) -> &'static str;

    /// Runs `visit` with a deserializer over `raw`, then checks that nothing
    /// but whitespace follows the value.
    fn deserialize(
        &self,
        raw: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), DecodeError>;

    /// Whether the encoding is text; used only to show bodies in `Debug` output.
    fn is_text(&self) -> bool;

    /// Where, in `raw` (a map), the value of its top-level field `name`
    /// lies: `Ok(None)` when the map has no such field, an error when
    /// `raw` is no map. Lets a body be taken apart without decoding what
    /// it carries ([`Body::field`](crate::Body::field)); the default says
    /// the format cannot.
    fn field(&self, raw: &[u8], name: &str) -> Result<Option<std::ops::Range<usize>>, DecodeError> {
        let _ = (raw, name);
        Err(DecodeError::new(format!(
            "the {} format cannot take a field out of a body",
            self.name()
        )))
    }
}

/// A frame, a command or a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    message: String,
    key: Option<String>,
    action: Option<String>,
    whole: bool,
}

impl DecodeError {
    /// A decode error with the given description.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            key: None,
            action: None,
            whole: false,
        }
    }

    /// Attaches the key of the command that failed to decode, when it could be read.
    pub fn with_key(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }

    /// The key of the offending command, if it could be read.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Attaches the action of the command that failed to decode, when it
    /// could be read. The connection answers a broken frame with a keyed
    /// `drs.error` only when its action was read and is not a reply action:
    /// a broken *reply* must not be answered with a reply (its key names a
    /// call of ours, and the peer may have a call of its own with that key).
    pub fn with_action(mut self, action: Option<String>) -> Self {
        self.action = action;
        self
    }

    /// Marks a frame that was read whole and is well-formed, but is not a
    /// command (e.g. it has no action): such a frame, with a key, is a
    /// broken call, not a broken reply (a reply has a reply action).
    pub fn read_whole(mut self) -> Self {
        self.whole = true;
        self
    }

    /// Whether the frame was read whole (see [`read_whole`](Self::read_whole)).
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// The action of the offending command, if it could be read.
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}
