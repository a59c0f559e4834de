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
    Body, BodyFormat, Command, DecodeError, EncodeError, Framing, OutBody, Outgoing, Protocol, Text,
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
        match fast::decode(&frame) {
            Some(cmd) => Ok(cmd),
            None => decode_serde(frame),
        }
    }

    fn encode(&self, cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode(cmd, dst)
    }

    fn body_format(&self) -> &'static dyn BodyFormat {
        &FORMAT
    }
}

/// The full decoder, with serde: every case, and the error messages.
fn decode_serde(frame: Bytes) -> Result<Command, DecodeError> {
    {
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
        let text = |s: Cow<'_, str>| match s {
            Cow::Borrowed(s) => Text::from_frame(&frame, s),
            Cow::Owned(s) => Text::from(s),
        };
        let key = wire.key.map(text);
        let Some(action) = wire.action else {
            return Err(DecodeError::new("missing field `action`").with_key(key.map(String::from)));
        };
        let body = match wire.body {
            Some(raw) => Body::from_raw(
                // Borrowed from the frame, so a slice of it.
                frame.slice_ref(raw.get().as_bytes()),
                &FORMAT,
            ),
            None => Body::absent(),
        };
        Ok(Command::new(text(action))
            .with_key(key)
            .with_body(body)
            .with_version(wire.version))
    }
}

fn is_plain(s: &str) -> bool {
    s.bytes().all(|b| PLAIN[usize::from(b)])
}

fn encode(cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let key_len = cmd.key.map_or(0, str::len);
    dst.reserve(cmd.action.len() + key_len + 32);
    if cmd.key.map_or(true, is_plain) && is_plain(cmd.action) {
        // The common case, in as few writes as possible.
        match cmd.key {
            Some(key) => {
                dst.put_slice(b"{\"key\":\"");
                dst.put_slice(key.as_bytes());
                dst.put_slice(b"\",\"action\":\"");
            }
            None => dst.put_slice(b"{\"action\":\""),
        }
        dst.put_slice(cmd.action.as_bytes());
        dst.put_u8(b'"');
    } else {
        dst.put_u8(b'{');
        if let Some(key) = cmd.key {
            dst.put_slice(b"\"key\":");
            write_str(dst, key);
            dst.put_u8(b',');
        }
        dst.put_slice(b"\"action\":");
        write_str(dst, cmd.action);
    }
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

/// Bytes a JSON string can hold as they are (no escape needed).
static PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = false;
        i += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

fn write_str(dst: &mut BytesMut, s: &str) {
    if is_plain(s) {
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
            if memchr::memchr2(b'\n', b'\r', &dst[start..]).is_some() {
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

/// The common case, decoded without serde's machinery: an object with
/// `key` and `action` strings free of escapes, and `body` (validated by
/// serde_json). Anything else returns `None`, and the full decoder runs,
/// with its error messages.
mod fast {
    use bytes::Bytes;
    use drs_core::{Body, Command, Text};
    use serde_json::value::RawValue;

    use super::FORMAT;

    fn ws(frame: &[u8], mut pos: usize) -> usize {
        while pos < frame.len() && matches!(frame[pos], b' ' | b'\t' | b'\n' | b'\r') {
            pos += 1;
        }
        pos
    }

    /// A string without escapes or control characters starting at `pos`
    /// (the opening quote); returns where its contents start and end. Its
    /// UTF-8 is checked once, where it becomes a [`Text`]. One pass, one
    /// table lookup a byte: names and keys are too short for SIMD to pay.
    fn plain_str(frame: &[u8], pos: usize) -> Option<(usize, usize)> {
        if frame.get(pos) != Some(&b'"') {
            return None;
        }
        let rest = &frame[pos + 1..];
        let len = rest.iter().position(|&b| !super::PLAIN[usize::from(b)])?;
        (rest[len] == b'"').then_some((pos + 1, pos + 1 + len))
    }

    fn text(frame: &Bytes, (start, end): (usize, usize)) -> Option<Text> {
        Text::from_utf8(frame.slice(start..end)).ok()
    }

    pub(super) fn decode(frame: &Bytes) -> Option<Command> {
        let f = &frame[..];
        let mut pos = ws(f, 0);
        if f.get(pos) != Some(&b'{') {
            return None;
        }
        pos = ws(f, pos + 1);
        let (mut key, mut action, mut body) = (None, None, None);
        if f.get(pos) == Some(&b'}') {
            return None;
        }
        loop {
            let (start, end) = plain_str(f, pos)?;
            let name = &f[start..end];
            pos = ws(f, end + 1);
            if f.get(pos) != Some(&b':') {
                return None;
            }
            pos = ws(f, pos + 1);
            match name {
                b"key" if key.is_none() => {
                    let range = plain_str(f, pos)?;
                    key = Some(text(frame, range)?);
                    pos = range.1 + 1;
                }
                b"action" if action.is_none() => {
                    let range = plain_str(f, pos)?;
                    action = Some(text(frame, range)?);
                    pos = range.1 + 1;
                }
                b"body" if body.is_none() => {
                    let mut de = serde_json::Deserializer::from_slice(&f[pos..]);
                    let raw: &RawValue = serde::Deserialize::deserialize(&mut de).ok()?;
                    let start = (raw.get().as_ptr() as usize) - (f.as_ptr() as usize);
                    pos = start + raw.get().len();
                    body = Some(if raw.get() == "null" {
                        Body::absent()
                    } else {
                        Body::from_raw(frame.slice(start..pos), &FORMAT)
                    });
                }
                _ => return None,
            }
            pos = ws(f, pos);
            match f.get(pos) {
                Some(b',') => pos = ws(f, pos + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
        if ws(f, pos + 1) != f.len() {
            return None;
        }
        Some(Command::from_parts(
            key,
            action?,
            body.unwrap_or_default(),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wherever the fast path answers, it answers as the full decoder does.
    #[test]
    fn fast_path_agrees_with_serde() {
        let keys = [
            None,
            Some(r#""k1""#),
            Some(r#""""#),
            Some(r#""a\"b""#),
            Some("null"),
            Some("7"),
        ];
        let actions = [
            Some(r#""echo""#),
            Some(r#""ec\u0068o""#),
            Some(r#""ünï""#),
            None,
            Some("\"a\tb\""),
        ];
        let bodies = [
            None,
            Some("null"),
            Some("[1, {\"x\": \"y\"}]"),
            Some("\"s\""),
            Some("tru"),
            Some("{}"),
        ];
        let extras = ["", r#","version":3"#, r#","other":{"a":[1]}"#];
        let mut checked = 0;
        for k in keys {
            for a in actions {
                for b in bodies {
                    for e in extras {
                        for space in ["", " ", "\n "] {
                            let mut fields = Vec::new();
                            if let Some(k) = k {
                                fields.push(format!(r#""key"{space}:{space}{k}"#));
                            }
                            if let Some(a) = a {
                                fields.push(format!(r#""action":{a}"#));
                            }
                            if let Some(b) = b {
                                fields.push(format!(r#"{space}"body":{b}{space}"#));
                            }
                            let text = format!("{space}{{{}{e}}}{space}", fields.join(","));
                            let frame = Bytes::from(text.clone());
                            let slow = decode_serde(frame.clone());
                            if let Some(fast) = fast::decode(&frame) {
                                let slow = slow.unwrap_or_else(|e| {
                                    panic!("{text}: fast accepted, serde said {e}")
                                });
                                assert_eq!(fast.action, slow.action, "{text}");
                                assert_eq!(fast.key, slow.key, "{text}");
                                assert_eq!(
                                    fast.body.raw().map(|r| r.0.clone()),
                                    slow.body.raw().map(|r| r.0.clone()),
                                    "{text}"
                                );
                                assert_eq!(fast.version, slow.version, "{text}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 50, "the fast path took {checked} cases");
    }
}
