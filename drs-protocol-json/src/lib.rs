//! The DRS v1 JSON protocol: one JSON object per frame, newline-delimited on
//! byte streams, one text message per frame on WebSocket. Byte-compatible
//! with the Go DRS.
//!
//! ```text
//! {"key":"1","action":"add","body":{"a":1,"b":2}}
//! {"key":"1","action":"drs.response","body":3}
//! ```
//!
//! - Fields are written in the order `key`, `action`, `body`, `version`,
//!   `delay` (run this many milliseconds later), `stream` (a call's opt-in
//!   to a streamed reply, docs/PROTOCOL.md §2); absent ones are omitted. Unknown
//!   fields are ignored on input.
//! - `action` is required; `key` must be a string; `version` an integer;
//!   `stream` an integer from 1 to 2³²−1; `delay` one from 0 to 2³²−1.
//! - A body is kept as the exact JSON text it arrived as (no value tree is
//!   built) and is copied verbatim when sent on through JSON.
//! - A frame that is not a valid command is an error naming the problem and
//!   where (`column N`); it carries the `key` and `action` when they could be
//!   read, so that a broken call can be answered with a `drs.error` for its key.
//! - Frames are read in one pass by a hand-written parser that validates the
//!   whole frame (UTF-8, escapes, numbers) and keeps the body as a slice.
//!   Values nested deeper than [`MAX_DEPTH`] (128) levels are refused — the
//!   command object itself is not a level, so a body may hold 128 levels.
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
    Body, BodyFormat, Command, DecodeError, EncodeError, OutBody, Outgoing, Text, INVALID_DELAY,
    INVALID_STREAM,
};

/// How deeply arrays and objects may nest in a value of a command (the
/// command object itself is not counted). MessagePack has the same limit.
pub const MAX_DEPTH: usize = 128;

drs_core::protocol! {
    /// The DRS v1 JSON protocol.
    pub Json: "json", Lines, format &FORMAT, decode decode::command, encode encode
}

/// The body format of [`Json`]: bodies are JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

static FORMAT: JsonFormat = JsonFormat;

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
            serde_json::to_writer(dst.writer(), value).map_err(encode_error)?;
        }
        _ => return Err(EncodeError::new("unsupported body kind")),
    }
    if let Some(version) = cmd.version {
        // Writing to a BytesMut cannot fail.
        let _ = write!(dst.writer(), ",\"version\":{version}");
    }
    if let Some(delay) = cmd.delay {
        let _ = write!(dst.writer(), ",\"delay\":{delay}");
    }
    if let Some(stream) = cmd.stream {
        let _ = write!(dst.writer(), ",\"stream\":{stream}");
    }
    dst.put_u8(b'}');
    Ok(())
}

/// serde_json's error for a failed serialization. Its `Display` is safe to
/// call whatever failed (a custom error from a value's `Serialize`, or from
/// a body being transcoded).
fn encode_error(e: serde_json::Error) -> EncodeError {
    EncodeError::new(e.to_string())
}

impl BodyFormat for JsonFormat {
    fn name(&self) -> &'static str {
        "json"
    }

    /// Checks the depth of `raw` first (bytes given to `Body::from_raw`
    /// may come from anywhere), then deserializes.
    fn deserialize(
        &self,
        raw: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), DecodeError> {
        decode::check_value(raw)?;
        CHECKED.deserialize(raw, visit)
    }

    fn is_text(&self) -> bool {
        true
    }

    fn field(&self, raw: &[u8], name: &str) -> Result<Option<std::ops::Range<usize>>, DecodeError> {
        field_of(raw, name)
    }
}

/// The format of bodies the decoder produced: JSON already validated and
/// checked for depth in the decoder's single pass, so deserializing them
/// needs neither a second check nor serde_json's own recursion limit (127,
/// one short of ours). Same name as [`JsonFormat`]: the same encoding.
#[derive(Debug)]
struct CheckedJson;

static CHECKED: CheckedJson = CheckedJson;

impl BodyFormat for CheckedJson {
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
        de.disable_recursion_limit();
        visit(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut de))
            .map_err(|e| DecodeError::new(e.to_string()))?;
        de.end().map_err(|e| DecodeError::new(e.to_string()))
    }

    fn is_text(&self) -> bool {
        true
    }

    fn field(&self, raw: &[u8], name: &str) -> Result<Option<std::ops::Range<usize>>, DecodeError> {
        field_of(raw, name)
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
        Some(_) => serde_json::to_writer(dst.writer(), body).map_err(encode_error)?,
    }
    Ok(())
}

/// The decoder: one pass over the frame, no value tree, no recursion.
///
/// Syntax errors stop the pass (what follows cannot be trusted); a field of
/// the wrong type or a duplicate field is remembered and reported once the
/// whole object has been read, so that the key can go with the error
/// wherever it stands.
pub mod decode {
    use super::*;

    /// Why a frame is not a command, with what could be read of it.
    struct Fail {
        message: String,
        /// A depth refusal: named after the field it is in.
        too_deep: bool,
    }

    type R<T> = Result<T, Fail>;

    /// Bytes that end the plain run of a string: quote, backslash, control
    /// characters, and the bytes of UTF-8 sequences (checked apart).
    static STOP: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = i < 0x20 || i >= 0x80 || i == b'"' as usize || i == b'\\' as usize;
            i += 1;
        }
        t
    };

    const FIELDS: [&str; 6] = ["key", "action", "body", "version", "stream", "delay"];

    struct Parser<'a> {
        f: &'a [u8],
        pos: usize,
    }

    /// A string's contents in the frame, and whether it holds escapes.
    struct Str {
        start: usize,
        end: usize,
        escaped: bool,
    }

    fn fail(message: impl Into<String>) -> Fail {
        Fail {
            message: message.into(),
            too_deep: false,
        }
    }

    impl<'a> Parser<'a> {
        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.f.get(self.pos) {
                self.pos += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.f.get(self.pos).copied()
        }

        fn expected(&self, what: &str) -> Fail {
            match self.peek() {
                None => fail(format!("expected {what}, found the end of the frame")),
                Some(_) => fail(format!("expected {what} at column {}", self.pos + 1)),
            }
        }

        fn eat(&mut self, byte: u8, what: &str) -> R<()> {
            self.ws();
            if self.peek() == Some(byte) {
                self.pos += 1;
                Ok(())
            } else {
                Err(self.expected(what))
            }
        }

        /// A string starting at `pos` (which must be its opening quote).
        ///
        /// Long runs are crossed with `memchr2` to the next quote or
        /// backslash; the run is then checked for control characters and,
        /// if it is not all ASCII, for UTF-8, each in a loop the compiler
        #[inline(always)]
        fn string(&mut self) -> R<Str> {
            if self.peek() != Some(b'"') {
                return Err(self.expected("a string"));
            }
            let start = self.pos + 1;
            // Names and keys are short: a plain loop finds their end before
            // memchr would have set up.
            let head = &self.f[start..self.f.len().min(start + 16)];
            for (i, &b) in head.iter().enumerate() {
                if b == b'"' {
                    self.pos = start + i + 1;
                    return Ok(Str {
                        start,
                        end: start + i,
                        escaped: false,
                    });
                }
                if STOP[usize::from(b)] {
                    break;
                }
            }
            self.long_string(start)
        }

        /// The rest of [`string`](Self::string): long strings, escapes,
        /// control characters, UTF-8.
        #[inline(never)]
        fn long_string(&mut self, start: usize) -> R<Str> {
            self.pos = start;
            let (mut escaped, mut non_ascii) = (false, false);
            loop {
                let rest = &self.f[self.pos..];
                let Some(i) = memchr::memchr2(b'"', b'\\', rest) else {
                    return Err(fail("unterminated string"));
                };
                let run = &rest[..i];
                if run.iter().fold(false, |c, &b| c | (b < 0x20)) {
                    let at = self.pos + run.iter().position(|&b| b < 0x20).unwrap_or(0);
                    return Err(fail(format!(
                        "control character in a string at column {}",
                        at + 1
                    )));
                }
                non_ascii |= !run.is_ascii();
                self.pos += i;
                if rest[i] == b'"' {
                    break;
                }
                escaped = true;
                self.escape()?;
            }
            let end = self.pos;
            self.pos += 1;
            if non_ascii && std::str::from_utf8(&self.f[start..end]).is_err() {
                return Err(fail(format!("invalid UTF-8 in a string at column {start}")));
            }
            Ok(Str {
                start,
                end,
                escaped,
            })
        }

        fn escape(&mut self) -> R<()> {
            let at = self.pos + 1;
            match self.f.get(self.pos + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                Some(b'u') => {
                    let hex = self.f.get(self.pos + 2..self.pos + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return Err(fail(format!("invalid \\u escape at column {at}")));
                    }
                    self.pos += 6;
                }
                _ => return Err(fail(format!("invalid escape at column {at}"))),
            }
            Ok(())
        }

        fn digits(&mut self) -> usize {
            let start = self.pos;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1;
            }
            self.pos - start
        }

        /// A number; true if it is an integer (no fraction, no exponent).
        fn number(&mut self) -> R<bool> {
            let start = self.pos;
            if self.peek() == Some(b'-') {
                self.pos += 1;
            }
            let bad = |_: &Self| fail(format!("invalid number at column {}", start + 1));
            match self.peek() {
                Some(b'0') => self.pos += 1,
                Some(b'1'..=b'9') => {
                    self.digits();
                }
                _ => return Err(bad(self)),
            }
            let mut integer = true;
            if self.peek() == Some(b'.') {
                self.pos += 1;
                integer = false;
                if self.digits() == 0 {
                    return Err(bad(self));
                }
            }
            if let Some(b'e' | b'E') = self.peek() {
                self.pos += 1;
                integer = false;
                if let Some(b'+' | b'-') = self.peek() {
                    self.pos += 1;
                }
                if self.digits() == 0 {
                    return Err(bad(self));
                }
            }
            Ok(integer)
        }

        fn literal(&mut self, word: &'static [u8]) -> R<()> {
            if self.f[self.pos..].starts_with(word) {
                self.pos += word.len();
                Ok(())
            } else {
                Err(self.expected("a value"))
            }
        }

        /// Skips one whole value (after whitespace), validating it, without
        /// recursion; arrays and objects may nest [`MAX_DEPTH`] levels.
        fn value(&mut self) -> R<()> {
            // Level i (from 0) is an object when bit i is set.
            let mut objects: u128 = 0;
            let mut depth = 0usize;
            'value: loop {
                self.ws();
                match self.peek() {
                    Some(open @ (b'{' | b'[')) => {
                        if depth == MAX_DEPTH {
                            return Err(Fail {
                                message: format!("nested deeper than {MAX_DEPTH} levels"),
                                too_deep: true,
                            });
                        }
                        self.pos += 1;
                        self.ws();
                        let close = if open == b'{' { b'}' } else { b']' };
                        if self.peek() == Some(close) {
                            self.pos += 1;
                        } else {
                            if open == b'{' {
                                objects |= 1 << depth;
                                self.member_name()?;
                            } else {
                                objects &= !(1 << depth);
                            }
                            depth += 1;
                            continue 'value;
                        }
                    }
                    Some(b'"') => {
                        self.string()?;
                    }
                    Some(b'-' | b'0'..=b'9') => {
                        self.number()?;
                    }
                    Some(b't') => self.literal(b"true")?,
                    Some(b'f') => self.literal(b"false")?,
                    Some(b'n') => self.literal(b"null")?,
                    _ => return Err(self.expected("a value")),
                }
                // A value is complete: close what it completes.
                loop {
                    if depth == 0 {
                        return Ok(());
                    }
                    self.ws();
                    let object = objects & (1 << (depth - 1)) != 0;
                    match (self.peek(), object) {
                        (Some(b','), _) => {
                            self.pos += 1;
                            if object {
                                self.ws();
                                self.member_name()?;
                            }
                            continue 'value;
                        }
                        (Some(b'}'), true) | (Some(b']'), false) => {
                            self.pos += 1;
                            depth -= 1;
                        }
                        (_, true) => return Err(self.expected("`,` or `}`")),
                        (_, false) => return Err(self.expected("`,` or `]`")),
                    }
                }
            }
        }

        /// `"name":` inside an object.
        fn member_name(&mut self) -> R<()> {
            self.string()?;
            self.eat(b':', "`:`")
        }
    }

    /// Unescapes a string known to be well-formed JSON (quotes excluded).
    fn unescape(raw: &[u8]) -> R<String> {
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        serde_json::from_slice(&quoted).map_err(|e| fail(format!("invalid string: {e}")))
    }

    fn text(frame: &Bytes, s: &Str) -> R<Text> {
        if s.escaped {
            return unescape(&frame[s.start..s.end]).map(Text::from);
        }
        Text::from_utf8(frame.slice(s.start..s.end)).map_err(|_| fail("invalid UTF-8"))
    }

    /// Decodes one frame into a command.
    pub(crate) fn command(frame: Bytes) -> Result<Command, DecodeError> {
        let mut key: Option<Text> = None;
        let mut action: Option<Text> = None;
        let mut body = Body::absent();
        let mut numbers: [Option<i64>; 3] = [None, None, None];
        let mut problem: Option<String> = None;
        let result = fields(
            &frame,
            &mut key,
            &mut action,
            &mut body,
            &mut numbers,
            &mut problem,
        );
        let [version, stream, delay] = numbers;
        if problem.is_none() && result.is_ok() {
            if let Some(n) = stream {
                if !(1..=i64::from(u32::MAX)).contains(&n) {
                    problem = Some(INVALID_STREAM.to_owned());
                }
            }
            if let Some(n) = delay {
                if !(0..=i64::from(u32::MAX)).contains(&n) {
                    problem = Some(INVALID_DELAY.to_owned());
                }
            }
        }
        let message = match (result, problem) {
            (Err(f), _) => f.message,
            (Ok(()), Some(problem)) => problem,
            (Ok(()), None) => match action {
                Some(action) => {
                    let cmd = Command::from_parts(key, action, body, version);
                    let cmd = match delay {
                        None => cmd,
                        Some(ms) => cmd.with_delay(Some(ms as u32)),
                    };
                    return Ok(match stream {
                        None => cmd,
                        Some(n) => cmd.with_stream(Some(n as u32)),
                    });
                }
                None => {
                    return Err(DecodeError::new("missing field `action`")
                        .with_key(key.map(String::from))
                        .read_whole());
                }
            },
        };
        Err(DecodeError::new(message)
            .with_key(key.map(String::from))
            .with_action(action.map(String::from)))
    }

    /// What a frame that does not start a command object is told: another
    /// JSON value, or what it seems to be instead (an HTTP request,
    /// MessagePack, text), naming what this port speaks.
    fn not_a_command(rest: &[u8]) -> Fail {
        const SPEAKS: &str = "this port speaks drs JSON, one command object per line";
        let json_value = match rest.first() {
            Some(b'[' | b'"' | b'-' | b'0'..=b'9') => true,
            Some(b't') => rest.starts_with(b"true"),
            Some(b'f') => rest.starts_with(b"false"),
            Some(b'n') => rest.starts_with(b"null"),
            _ => false,
        };
        if json_value {
            return fail("expected a command object, found another JSON value");
        }
        let http = drs_core::starts_http_request(rest) && rest.windows(6).any(|w| w == b" HTTP/");
        if http {
            return fail(format!(
            "an HTTP request, not a command: {SPEAKS} (HTTP and WebSocket clients go to a ws:// port)"
        ));
        }
        if matches!(rest.first(), Some(0x00 | 0x80..=0x8f | 0xde | 0xdf)) {
            return fail(format!("binary data, as MessagePack sends it: {SPEAKS}"));
        }
        fail(format!("not JSON: {SPEAKS}"))
    }

    /// Reads the fields into the caller's slots, which keep what was read
    /// when reading fails (the error carries key and action). Slots, not a
    /// returned struct: moving one costs about 10% of a 64 B decode.
    fn fields(
        frame: &Bytes,
        key: &mut Option<Text>,
        action: &mut Option<Text>,
        body: &mut Body,
        numbers: &mut [Option<i64>; 3],
        problem: &mut Option<String>,
    ) -> R<()> {
        let mut p = Parser { f: frame, pos: 0 };
        p.ws();
        if p.peek() != Some(b'{') {
            return Err(not_a_command(&frame[p.pos..]));
        }
        p.pos += 1;
        p.ws();
        if p.peek() == Some(b'}') {
            p.pos += 1;
        } else {
            let mut seen = [false; 6];
            loop {
                p.ws();
                let name = p.string()?;
                p.eat(b':', "`:`")?;
                p.ws();
                let name: Cow<'_, [u8]> = if name.escaped {
                    Cow::Owned(unescape(&frame[name.start..name.end])?.into_bytes())
                } else {
                    Cow::Borrowed(&frame[name.start..name.end])
                };
                let slot = match &*name {
                    b"key" => Some(0),
                    b"action" => Some(1),
                    b"body" => Some(2),
                    b"version" => Some(3),
                    b"stream" => Some(4),
                    b"delay" => Some(5),
                    _ => None,
                };
                let mut note = |message: String| {
                    problem.get_or_insert(message);
                };
                match slot {
                    None => p.value().map_err(|f| in_field(f, &name))?,
                    Some(slot) => {
                        let field = FIELDS[slot];
                        if std::mem::replace(&mut seen[slot], true) {
                            note(format!("duplicate field `{field}`"));
                        }
                        let start = p.pos;
                        match (slot, p.peek()) {
                            (_, Some(b'n')) if p.f[p.pos..].starts_with(b"null") => {
                                // null reads as absent.
                                p.pos += 4;
                            }
                            (0 | 1, Some(b'"')) => {
                                let s = p.string()?;
                                let t = text(frame, &s)?;
                                let slot = if slot == 0 { &mut *key } else { &mut *action };
                                slot.get_or_insert(t);
                            }
                            (2, _) => {
                                p.value().map_err(|f| in_field(f, &name))?;
                                *body = Body::from_raw(frame.slice(start..p.pos), &CHECKED);
                            }
                            (3..=5, Some(b'-' | b'0'..=b'9')) => {
                                let integer = p.number()?;
                                match std::str::from_utf8(&frame[start..p.pos])
                                    .ok()
                                    .filter(|_| integer)
                                    .and_then(|s| s.parse::<i64>().ok())
                                {
                                    Some(v) => numbers[slot - 3] = Some(v),
                                    None if slot == 3 => note(
                                        "invalid type: `version` must be a 64-bit integer".into(),
                                    ),
                                    None if slot == 5 => note(INVALID_DELAY.into()),
                                    None => note(INVALID_STREAM.into()),
                                }
                            }
                            _ => {
                                p.value().map_err(|f| in_field(f, &name))?;
                                note(match slot {
                                    3 => format!("invalid type: `{field}` must be an integer"),
                                    4 => INVALID_STREAM.into(),
                                    5 => INVALID_DELAY.into(),
                                    _ => format!("invalid type: `{field}` must be a string"),
                                });
                            }
                        }
                    }
                }
                p.ws();
                match p.peek() {
                    Some(b',') => p.pos += 1,
                    Some(b'}') => {
                        p.pos += 1;
                        break;
                    }
                    _ => return Err(p.expected("`,` or `}`")),
                }
            }
        }
        p.ws();
        if p.pos != frame.len() {
            return Err(fail(format!(
                "trailing characters after the command at column {}",
                p.pos + 1
            )));
        }
        Ok(())
    }

    /// Depth refusals name the field they are in ("body nested deeper…").
    fn in_field(f: Fail, name: &[u8]) -> Fail {
        if f.too_deep {
            fail(format!("{} {}", String::from_utf8_lossy(name), f.message))
        } else {
            f
        }
    }

    /// Checks that `raw` is one JSON value nested at most [`MAX_DEPTH`]
    /// levels, with nothing but whitespace around it.
    pub fn check_value(raw: &[u8]) -> Result<(), DecodeError> {
        let mut p = Parser { f: raw, pos: 0 };
        p.value().map_err(|f| DecodeError::new(f.message))?;
        p.ws();
        if p.pos != raw.len() {
            return Err(DecodeError::new(format!(
                "trailing characters at column {}",
                p.pos + 1
            )));
        }
        Ok(())
    }
}

/// Where the value of the top-level member `name` of the JSON object
/// `raw` lies (the first such member).
fn field_of(raw: &[u8], name: &str) -> Result<Option<std::ops::Range<usize>>, DecodeError> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct Find<'n>(&'n str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<&'de serde_json::value::RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let value: &'de serde_json::value::RawValue = map.next_value()?;
                if found.is_none() && key == self.0 {
                    found = Some(value);
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    de.disable_recursion_limit();
    let found = (&mut de)
        .deserialize_map(Find(name))
        .map_err(|e| DecodeError::new(e.to_string()))?;
    Ok(found.map(|value| {
        let start = value.get().as_ptr() as usize - raw.as_ptr() as usize;
        start..start + value.get().len()
    }))
}
