//! MessagePack for drs: the same command as the DRS JSON protocol — a map
//! with the fields `key`, `action`, `body`, `version` — encoded as
//! MessagePack, length-prefixed on byte streams (a 4-byte big-endian length,
//! then the map) and one binary message per command on WebSocket.
//!
//! - Fields are written in the order `key`, `action`, `body`, `version`,
//!   `stream` (a call's opt-in to a streamed reply, docs/PROTOCOL.md §2), `delay`
//!   (run this many milliseconds later);
//!   absent ones are omitted; unknown ones are ignored on input; `nil` reads
//!   as absent.
//! - Rust structs in bodies are written as maps with their field names (not
//!   arrays), so a MessagePack peer sees the same shape a JSON peer does, and
//!   a body crosses from a JSON client to a MessagePack client through a
//!   server intact.
//! - Bodies stay slices of the frame until deserialized, like JSON bodies.
//!
//! ```
//! use drs_core::{OutBody, Outgoing, Protocol};
//! use drs_protocol_msgpack::MsgPack;
//!
//! let mut frame = bytes::BytesMut::new();
//! let body = serde_json::json!({"a": 1, "b": 2});
//! MsgPack.encode(&Outgoing::new("add").key(Some("1")).body(OutBody::Value(&body)), &mut frame).unwrap();
//! let cmd = MsgPack.decode(frame.freeze()).unwrap();
//! assert_eq!((cmd.action.as_str(), cmd.key.as_deref()), ("add", Some("1")));
//! assert_eq!(cmd.body.deserialize::<serde_json::Value>().unwrap(), body);
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use drs_core::{
    Body, BodyFormat, Command, DecodeError, EncodeError, OutBody, Outgoing, Text, INVALID_DELAY,
    INVALID_STREAM,
};
use serde::Serialize;

drs_core::protocol! {
    /// The MessagePack protocol.
    pub MsgPack: "msgpack", LengthPrefixed, format &FORMAT, decode decode_frame, encode encode
}

/// The body format of [`MsgPack`]: bodies are MessagePack values.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPackFormat;

static FORMAT: MsgPackFormat = MsgPackFormat;

fn decode_frame(frame: Bytes) -> Result<Command, DecodeError> {
    decode_command(&frame)
}

/// Writes `cmd` as one MessagePack map.
fn encode(cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let fields = 1
        + u32::from(cmd.key.is_some())
        + u32::from(!matches!(cmd.body, OutBody::Absent))
        + u32::from(cmd.version.is_some())
        + u32::from(cmd.stream.is_some())
        + u32::from(cmd.delay.is_some());
    let mut w = dst.writer();
    rmp::encode::write_map_len(&mut w, fields).map_err(enc)?;
    if let Some(key) = cmd.key {
        rmp::encode::write_str(&mut w, "key").map_err(enc)?;
        rmp::encode::write_str(&mut w, key).map_err(enc)?;
    }
    rmp::encode::write_str(&mut w, "action").map_err(enc)?;
    rmp::encode::write_str(&mut w, cmd.action).map_err(enc)?;
    let dst = w.into_inner();
    match cmd.body {
        OutBody::Absent => {}
        OutBody::Raw(body) => {
            put_str(dst, "body");
            match body.raw() {
                None => dst.put_u8(0xc0),
                Some((raw, format)) if format.name() == FORMAT.name() => dst.put_slice(raw),
                Some(_) => serialize(dst, body)?,
            }
        }
        OutBody::Value(value) => {
            put_str(dst, "body");
            serialize(dst, value)?;
        }
        _ => return Err(EncodeError::new("unsupported body kind")),
    }
    if let Some(version) = cmd.version {
        put_str(dst, "version");
        rmp::encode::write_sint(&mut dst.writer(), version).map_err(enc)?;
    }
    if let Some(stream) = cmd.stream {
        put_str(dst, "stream");
        rmp::encode::write_uint(&mut dst.writer(), u64::from(stream)).map_err(enc)?;
    }
    if let Some(delay) = cmd.delay {
        put_str(dst, "delay");
        rmp::encode::write_uint(&mut dst.writer(), u64::from(delay)).map_err(enc)?;
    }
    Ok(())
}

impl BodyFormat for MsgPackFormat {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn deserialize(
        &self,
        raw: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), DecodeError> {
        let mut r = Reader::new(raw);
        r.skip_value()?;
        if r.pos != raw.len() {
            return Err(DecodeError::new(format!(
                "{} bytes after the MessagePack value",
                raw.len() - r.pos
            )));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(raw);
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))
            .map_err(|e| DecodeError::new(e.to_string()))
    }

    fn is_text(&self) -> bool {
        false
    }

    fn field(&self, raw: &[u8], name: &str) -> Result<Option<std::ops::Range<usize>>, DecodeError> {
        let mut r = Reader::new(raw);
        let len = r.map_len()?;
        for _ in 0..len {
            let key = r.str_or_skip()?;
            if key.is_none() {
                r.skip_value()?;
            }
            let start = r.pos;
            r.skip_value()?;
            if key == Some(name) {
                return Ok(Some(start..r.pos));
            }
        }
        Ok(None)
    }
}

fn enc<E: std::fmt::Display>(e: E) -> EncodeError {
    EncodeError::new(e.to_string())
}

fn put_str(dst: &mut BytesMut, s: &str) {
    // Writing to a BytesMut cannot fail.
    let _ = rmp::encode::write_str(&mut dst.writer(), s);
}

fn serialize<T: Serialize + ?Sized>(dst: &mut BytesMut, value: &T) -> Result<(), EncodeError> {
    let mut ser = rmp_serde::Serializer::new(dst.writer()).with_struct_map();
    value.serialize(&mut ser).map_err(enc)
}

fn key_string(key: &Option<Text>) -> Option<String> {
    key.as_ref().map(|k| k.to_string())
}

/// Adds what could be read of the command to an error, and the field's
/// name to a depth refusal ("body nested deeper than 128 levels").
fn tagged(e: DecodeError, field: &str, key: &Option<Text>, action: &Option<Text>) -> DecodeError {
    let e = if e.message().starts_with("nested deeper") && !field.is_empty() {
        DecodeError::new(format!("{field} {}", e.message()))
    } else {
        e
    };
    e.with_key(key_string(key))
        .with_action(action.as_ref().map(|a| a.to_string()))
}

fn decode_command(frame: &Bytes) -> Result<Command, DecodeError> {
    let mut r = Reader::new(frame);
    let fields = r.map_len()?;
    if fields > frame.len() as u64 {
        return Err(truncated());
    }
    let mut key: Option<Text> = None;
    let mut action: Option<Text> = None;
    let mut body: Option<Body> = None;
    let mut version: Option<i64> = None;
    let mut stream: Option<u32> = None;
    let mut delay: Option<u32> = None;
    // A field of the wrong type is reported once the whole map has been
    // read, so that the key, wherever it stands, can go with the error.
    let mut problem: Option<String> = None;
    let mut seen = [false; 6];
    for _ in 0..fields {
        let name = match r.str_or_skip() {
            Ok(Some(name)) => name,
            Ok(None) => {
                r.skip_value()
                    .map_err(|e| tagged(e, "value", &key, &action))?;
                continue;
            }
            Err(e) => return Err(tagged(e, "", &key, &action)),
        };
        let slot = match name {
            "key" => 0,
            "action" => 1,
            "body" => 2,
            "version" => 3,
            "stream" => 4,
            "delay" => 5,
            _ => {
                r.skip_value().map_err(|e| tagged(e, name, &key, &action))?;
                continue;
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            problem.get_or_insert_with(|| format!("duplicate field `{name}`"));
        }
        let start = r.pos;
        let is_nil = r.peek() == Some(0xc0);
        r.skip_value().map_err(|e| tagged(e, name, &key, &action))?;
        let value = &frame[start..r.pos];
        if is_nil {
            continue;
        }
        match slot {
            0 | 1 => match Reader::new(value).str_or_skip() {
                Ok(Some(s)) if slot == 0 => key = Some(Text::from_frame(frame, s)),
                Ok(Some(s)) => action = Some(Text::from_frame(frame, s)),
                _ => {
                    problem
                        .get_or_insert_with(|| format!("invalid type: `{name}` must be a string"));
                }
            },
            2 => body = Some(Body::from_raw(frame.slice(start..r.pos), &FORMAT)),
            4 => match Reader::new(value)
                .int()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
            {
                Some(n) => stream = Some(n),
                None => {
                    problem.get_or_insert_with(|| INVALID_STREAM.into());
                }
            },
            5 => match Reader::new(value).int().and_then(|n| u32::try_from(n).ok()) {
                Some(ms) => delay = Some(ms),
                None => {
                    problem.get_or_insert_with(|| INVALID_DELAY.into());
                }
            },
            _ => match Reader::new(value).int() {
                Some(v) => version = Some(v),
                None => {
                    problem
                        .get_or_insert_with(|| "invalid type: `version` must be an integer".into());
                }
            },
        }
    }
    if r.pos != frame.len() {
        problem
            .get_or_insert_with(|| format!("{} bytes after the command map", frame.len() - r.pos));
    }
    if let Some(problem) = problem {
        return Err(tagged(DecodeError::new(problem), "", &key, &action));
    }
    let Some(action) = action else {
        return Err(DecodeError::new("missing field `action`")
            .with_key(key_string(&key))
            .read_whole());
    };
    Ok(Command::new(action)
        .with_key(key)
        .with_body(body.unwrap_or_default())
        .with_version(version)
        .with_stream(stream)
        .with_delay(delay))
}

/// How deeply arrays and maps may nest in a body (serde_json's limit too).
const MAX_DEPTH: usize = 128;

/// Just enough of a MessagePack reader to find the fields of a command and
/// the extent of any value, without building values.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated() -> DecodeError {
    DecodeError::new("truncated MessagePack data")
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(truncated)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn map_len(&mut self) -> Result<u64, DecodeError> {
        let not_a_map = || DecodeError::new("invalid type: a command must be a MessagePack map");
        match self.peek().ok_or_else(not_a_map)? {
            m @ 0x80..=0x8f => {
                self.pos += 1;
                Ok(u64::from(m & 0x0f))
            }
            0xde => {
                self.pos += 1;
                self.be(2)
            }
            0xdf => {
                self.pos += 1;
                self.be(4)
            }
            _ => Err(not_a_map()),
        }
    }

    /// Reads a string; `None` (after nothing is consumed) if the next value is not one.
    fn str_or_skip(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let len = match self.peek().ok_or_else(truncated)? {
            m @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xda => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdb => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => return Ok(None),
        };
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DecodeError::new("a string is not valid UTF-8"))
    }

    fn int(&mut self) -> Option<i64> {
        let m = self.peek()?;
        self.pos += 1;
        let v = match m {
            0x00..=0x7f => i64::from(m),
            0xe0..=0xff => i64::from(m as i8),
            0xcc => self.be(1).ok()? as i64,
            0xcd => self.be(2).ok()? as i64,
            0xce => self.be(4).ok()? as i64,
            0xcf => i64::try_from(self.be(8).ok()?).ok()?,
            0xd0 => i64::from(self.be(1).ok()? as u8 as i8),
            0xd1 => i64::from(self.be(2).ok()? as u16 as i16),
            0xd2 => i64::from(self.be(4).ok()? as u32 as i32),
            0xd3 => self.be(8).ok()? as i64,
            _ => return None,
        };
        Some(v)
    }

    /// Skips one whole value, iteratively, refusing arrays and maps nested
    /// deeper than [`MAX_DEPTH`] levels (the MessagePack deserializer
    /// recurses, so this check is what keeps a hostile body from overflowing
    /// the stack). The value itself is level 0; the items of a container at
    /// level d are at level d + 1.
    fn skip_value(&mut self) -> Result<(), DecodeError> {
        // Values still to read at each open level.
        let mut left = [0u64; MAX_DEPTH + 1];
        let mut depth = 0;
        left[0] = 1;
        loop {
            while left[depth] == 0 {
                if depth == 0 {
                    return Ok(());
                }
                depth -= 1;
            }
            left[depth] -= 1;
            let m = self.take(1)?[0];
            let (skip, items, container) = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, false),
                0x80..=0x8f => (0, 2 * u64::from(m & 0x0f), true),
                0x90..=0x9f => (0, u64::from(m & 0x0f), true),
                0xa0..=0xbf => (usize::from(m & 0x1f), 0, false),
                0xc4 | 0xd9 => (self.be(1)? as usize, 0, false),
                0xc5 | 0xda => (self.be(2)? as usize, 0, false),
                0xc6 | 0xdb => (self.be(4)? as usize, 0, false),
                0xc7 => (self.be(1)? as usize + 1, 0, false),
                0xc8 => (self.be(2)? as usize + 1, 0, false),
                0xc9 => (self.be(4)? as usize + 1, 0, false),
                0xca => (4, 0, false),
                0xcb => (8, 0, false),
                0xcc | 0xd0 => (1, 0, false),
                0xcd | 0xd1 => (2, 0, false),
                0xce | 0xd2 => (4, 0, false),
                0xcf | 0xd3 => (8, 0, false),
                0xd4 => (2, 0, false),
                0xd5 => (3, 0, false),
                0xd6 => (5, 0, false),
                0xd7 => (9, 0, false),
                0xd8 => (17, 0, false),
                0xdc => (0, self.be(2)?, true),
                0xdd => (0, self.be(4)?, true),
                0xde => (0, 2 * self.be(2)?, true),
                0xdf => (0, 2 * self.be(4)?, true),
                0xc1 => return Err(DecodeError::new("invalid MessagePack marker 0xc1")),
            };
            self.take(skip)?;
            if container {
                if depth == MAX_DEPTH {
                    return Err(DecodeError::new(format!(
                        "nested deeper than {MAX_DEPTH} levels"
                    )));
                }
                // Every value takes at least one byte: a count that cannot
                // fit in what is left is a lie, not a reason to loop.
                if items > (self.buf.len() - self.pos) as u64 {
                    return Err(truncated());
                }
                if items > 0 {
                    depth += 1;
                    left[depth] = items;
                }
            }
        }
    }
}
