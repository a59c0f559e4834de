//! The DRS v1 JSON protocol: one JSON object per frame, newline-delimited on
//! byte streams, one text message per frame on WebSocket. Byte-compatible
//! with the Go DRS.
//!
//! ```text
//! {"key":"1","action":"add","body":{"a":1,"b":2}}
//! {"key":"1","action":"drs.response","body":3.0}
//! ```
//!
//! - Fields are written in the order `key`, `action`, `body`, `version`;
//!   absent ones are omitted. Unknown fields are ignored on input.
//! - `action` is required; `key` must be a string; `version` an integer.
//! - A body is kept as the exact JSON text it arrived as (no value tree is
//!   built) and is copied verbatim when sent on through JSON.
//! - A frame that is not a valid command is an error naming the problem; if
//!   its `key` could be read the error carries it, so that the sender gets a
//!   `drs.error` for that key.
//!
//! ```
//! use drs_core::{Outgoing, OutBody, Protocol};
//! use drs_protocol_json::Json;
//!
//! let cmd = Json.decode(br#"{"key":"7","action":"echo","body":[1, 2]}"#.to_vec().into()).unwrap();
//! assert_eq!(cmd.action, "echo");
//! assert_eq!(cmd.body.deserialize::<Vec<u8>>().unwrap(), vec![1, 2]);
//!
//! let mut out = bytes::BytesMut::new();
//! let reply = Outgoing::new("drs.response").key(Some("7")).body(OutBody::Raw(&cmd.body));
//! Json.encode(&reply, &mut out).unwrap();
//! assert_eq!(&out[..], br#"{"key":"7","action":"drs.response","body":[1, 2]}"#);
//! ```

use std::{borrow::Cow, io::Write};

use bytes::{BufMut, Bytes, BytesMut};
use drs_core::{
    Body, BodyFormat, Command, DecodeError, EncodeError, Framing, OutBody, Outgoing, Protocol,
};
use serde::{
    de::{IgnoredAny, MapAccess, Visitor},
    Deserialize,
};
use serde_json::value::RawValue;

/// The DRS v1 JSON protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

/// The body format of [`Json`]: bodies are JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

static FORMAT: JsonFormat = JsonFormat;

/// A command as it is on the wire, borrowing from the frame.
#[derive(Default)]
struct Wire<'a> {
    key: Option<Cow<'a, str>>,
    action: Option<Cow<'a, str>>,
    body: Option<&'a RawValue>,
    version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Key,
    Action,
    Body,
    Version,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Wire<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor(std::marker::PhantomData))
    }
}

struct WireVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for WireVisitor<'a> {
    type Value = Wire<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a command object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Wire<'a>, M::Error> {
        fn once<T, E: serde::de::Error>(
            slot: &mut Option<T>,
            value: T,
            name: &'static str,
        ) -> Result<(), E> {
            match slot.replace(value) {
                None => Ok(()),
                Some(_) => Err(E::duplicate_field(name)),
            }
        }
        let mut wire = Wire::default();
        let mut body_seen = false;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Key => {
                    let key: Option<Cow<'a, str>> =
                        map.next_value::<Option<BorrowedStr<'a>>>()?.map(|s| s.0);
                    if let Some(key) = key {
                        once(&mut wire.key, key, "key")?;
                    }
                }
                Field::Action => once(
                    &mut wire.action,
                    map.next_value::<BorrowedStr<'a>>()?.0,
                    "action",
                )?,
                Field::Body => {
                    if std::mem::replace(&mut body_seen, true) {
                        return Err(serde::de::Error::duplicate_field("body"));
                    }
                    let raw: &'a RawValue = map.next_value()?;
                    // `"body": null` reads as an absent body.
                    wire.body = (raw.get() != "null").then_some(raw);
                }
                Field::Version => {
                    if let Some(v) = map.next_value::<Option<i64>>()? {
                        once(&mut wire.version, v, "version")?;
                    }
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(wire)
    }
}

/// A string borrowed from the frame when it has no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(V).map(BorrowedStr)
    }
}

/// Reads just the key of a frame that failed to decode.
#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
}

impl Protocol for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn framing(&self) -> Framing {
        Framing::Lines
    }

    fn decode(&self, frame: Bytes) -> Result<Command, DecodeError> {
        let wire: Wire<'_> = match serde_json::from_slice(&frame) {
            Ok(wire) => wire,
            Err(e) => {
                let is_object = frame.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
                let key = is_object
                    .then(|| serde_json::from_slice::<KeyOnly<'_>>(&frame).ok())
                    .flatten()
                    .and_then(|k| k.key.map(Cow::into_owned));
                return Err(DecodeError::new(e.to_string()).with_key(key));
            }
        };
        let key = wire.key.map(Cow::into_owned);
        let Some(action) = wire.action else {
            return Err(DecodeError::new("missing field `action`").with_key(key));
        };
        let body = match wire.body {
            Some(raw) => Body::from_raw(slice_of(&frame, raw.get().as_bytes()), &FORMAT),
            None => Body::absent(),
        };
        Ok(Command::new(action.into_owned())
            .with_key(key)
            .with_body(body)
            .with_version(wire.version))
    }

    fn encode(&self, cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.reserve(64);
        dst.put_u8(b'{');
        if let Some(key) = cmd.key {
            dst.put_slice(b"\"key\":");
            write_str(dst, key);
            dst.put_u8(b',');
        }
        dst.put_slice(b"\"action\":");
        write_str(dst, cmd.action);
        match cmd.body {
            OutBody::Absent => {}
            OutBody::Raw(body) => {
                dst.put_slice(b",\"body\":");
                write_body(dst, body)?;
            }
            OutBody::Value(value) => {
                dst.put_slice(b",\"body\":");
                serde_json::to_writer(dst.writer(), value)
                    .map_err(|e| EncodeError::new(e.to_string()))?;
            }
            _ => return Err(EncodeError::new("unsupported body kind")),
        }
        if let Some(version) = cmd.version {
            // Writing to a BytesMut cannot fail.
            let _ = write!(dst.writer(), ",\"version\":{version}");
        }
        dst.put_u8(b'}');
        Ok(())
    }

    fn body_format(&self) -> &'static dyn BodyFormat {
        &FORMAT
    }
}

impl BodyFormat for JsonFormat {
    fn name(&self) -> &'static str {
        "json"
    }

    fn deserialize(
        &self,
        raw: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(raw);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))
            .map_err(|e| DecodeError::new(e.to_string()))?;
        de.end().map_err(|e| DecodeError::new(e.to_string()))
    }

    fn is_text(&self) -> bool {
        true
    }
}

/// `part` as a slice of `frame` without copying (it always is one when
/// serde_json borrowed it; otherwise it is copied).
fn slice_of(frame: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    if start <= frame.len() && part.len() <= frame.len() - start {
        frame.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

fn write_str(dst: &mut BytesMut, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        dst.reserve(s.len() + 2);
        dst.put_u8(b'"');
        dst.put_slice(s.as_bytes());
        dst.put_u8(b'"');
    } else {
        // Strings always serialize.
        let _ = serde_json::to_writer(dst.writer(), s);
    }
}

fn write_body(dst: &mut BytesMut, body: &Body) -> Result<(), EncodeError> {
    match body.raw() {
        None => dst.put_slice(b"null"),
        Some((raw, format)) if format.name() == FORMAT.name() => {
            // JSON text may hold raw newlines only as whitespace between
            // tokens (inside strings they are escaped), and a frame must be
            // one line: turn them into spaces.
            let start = dst.len();
            dst.put_slice(raw);
            if memchr2(&dst[start..]) {
                for b in &mut dst[start..] {
                    if *b == b'\n' || *b == b'\r' {
                        *b = b' ';
                    }
                }
            }
        }
        Some(_) => serde_json::to_writer(dst.writer(), body)
            .map_err(|e| EncodeError::new(e.to_string()))?,
    }
    Ok(())
}

fn memchr2(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b'\n' || b == b'\r')
}
