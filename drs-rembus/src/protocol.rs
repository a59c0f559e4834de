//! The Rembus wire protocol (CBOR arrays in binary WebSocket frames) as a
//! drs [`Protocol`]: each Rembus message becomes a drs command and back.
//!
//! | Rembus | drs command |
//! |---|---|
//! | `[0, id, cid, meta]` Identity | call `drs.identify` `{"name": cid}`, key `i<id>` |
//! | `[1, topic, args]` Publish | fire `drs.publish` `{"topic", "body"}` |
//! | `[0x11 \| 0x31 (+0x40), id, topic, args, …]` QoS1/2 | call `drs.publish`, key `q<id>` (QoS 2: `w<id>`, repeats dropped until `[6, id]`): answered with `[5, id]` |
//! | `[2, id, name, null, args]` RPC | call `name` with the arguments, key `r<id>` |
//! | `[2, id, name, target, args]` direct RPC | call `rembus.direct` `{"target", "action", "body"}` |
//! | `[3, id, topic, {"cmd": …}]` Admin | call `drs.expose`, `drs.unexpose`, `drs.subscribe`, `drs.unsubscribe`, `rembus.reactive`, `rembus.setup` or `rembus.admin`, key `a<id>` |
//! | `[4, id, status, data]` Response | the reply to our call (status 0: `drs.response`, 40: `drs.exception`, others: `drs.error`) |
//! | `[5, id]` / `[6, id]` | fire `rembus.ack` `{"kind": 5 or 6, "id": hex}` |
//!
//! Arguments: a Rembus argument list of one becomes that value as the
//! body; any other list is the body as an array. The other way, an array
//! body is the argument list and any other body the one argument (an
//! absent body: none). Topics: `/` in a Rembus topic is `.` in drs, `**` is
//! `>`; deliveries go back with `/`.
//!
//! Bodies decoded from Rembus are MessagePack bodies (so every drs handler
//! and the broker read them like any other); CBOR half floats decode.

use bytes::{BufMut, Bytes, BytesMut};
use ciborium::Value;
use drs_auth::UNAUTHENTICATED;
use drs_core::{
    Body, BodyFormat, Command, DecodeError, EncodeError, Framing, OutBody, Outgoing, Protocol,
    Text, ERROR, EXCEPTION, RESPONSE,
};
use drs_names::{IDENTIFY, NAME_TAKEN};
use serde::Serialize;

/// Rembus message types.
pub(crate) mod kind {
    pub(crate) const IDENTITY: u64 = 0;
    pub(crate) const PUBLISH: u64 = 1;
    pub(crate) const RPC: u64 = 2;
    pub(crate) const ADMIN: u64 = 3;
    pub(crate) const RESPONSE: u64 = 4;
    pub(crate) const ACK: u64 = 5;
    pub(crate) const ACK2: u64 = 6;
}

/// Rembus status codes that drs sends.
pub mod status {
    /// Success.
    pub const OK: u64 = 0;
    /// A generic error.
    pub const GENERIC_ERROR: u64 = 10;
    /// The component is not identified or not authenticated: what a
    /// server that requires a token answers one that presented none.
    pub const IDENTIFICATION_ERROR: u64 = 20;
    /// The method raised an exception (data: its text).
    pub const METHOD_EXCEPTION: u64 = 40;
    /// No component serves the method (data: its name).
    pub const METHOD_NOT_FOUND: u64 = 42;
    /// No component of the direct call's target name is connected.
    pub const TARGET_NOT_FOUND: u64 = 45;
    /// The component serving the call went away.
    pub const TARGET_DOWN: u64 = 46;
    /// An unknown admin command.
    pub const UNKNOWN_ADMIN: u64 = 47;
}

/// The error text of an admin command drs does not know.
pub const UNKNOWN_ADMIN: &str = "unknown admin command";
/// The start of the error of a direct call to a name nobody holds.
pub const TARGET_NOT_FOUND: &str = "target not found";
/// What Rembus clients are told when their name is in use.
pub const ALREADY_CONNECTED: &str = "already connected";

/// `rembus.reactive` `{"status": bool}`: deliveries on or off.
pub const REACTIVE: &str = "rembus.reactive";
/// `rembus.setup` `{"exposers": […], "subscribers": […]}`.
pub const SETUP: &str = "rembus.setup";
/// `rembus.admin` `{"cmd": …}`: an admin command drs does not know.
pub const ADMIN: &str = "rembus.admin";
/// `rembus.ack`: a QoS acknowledgement from the peer.
pub const ACK: &str = "rembus.ack";
/// `rembus.direct` `{"target", "action", "body"}`: a call to one named
/// component.
pub const DIRECT: &str = "rembus.direct";

/// The Rembus protocol: CBOR messages in binary frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rembus;

fn msgpack() -> &'static dyn BodyFormat {
    drs_protocol_msgpack::MsgPack.body_format()
}

fn bad(message: impl Into<String>) -> DecodeError {
    DecodeError::new(message)
}

/// A drs body (MessagePack) holding `value`.
fn body_of<T: Serialize + ?Sized>(value: &T) -> Result<Body, DecodeError> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| bad(e.to_string()))?;
    Ok(Body::from_raw(Bytes::from(bytes), msgpack()))
}

/// The body a Rembus argument list stands for.
fn args_body(args: Value) -> Result<Body, DecodeError> {
    match args {
        Value::Array(mut items) if items.len() == 1 => body_of(&items.pop()),
        Value::Array(items) => body_of(&items),
        Value::Null => Ok(Body::absent()),
        other => body_of(&other),
    }
}

/// Rembus topic → drs topic.
pub fn topic_in(topic: &str) -> String {
    topic
        .split('/')
        .map(|s| if s == "**" { ">" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

/// drs topic → Rembus topic.
pub fn topic_out(topic: &str) -> String {
    topic.replace('.', "/")
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

fn id_of(value: &Value) -> Result<&[u8], DecodeError> {
    match value {
        Value::Bytes(b) if b.len() == 8 => Ok(b),
        _ => Err(bad("a Rembus message id must be 8 bytes")),
    }
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(i) => u64::try_from(i128::from(*i)).ok(),
        _ => None,
    }
}

fn field<'v>(map: &'v Value, name: &str) -> Option<&'v Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| text(k) == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn command(key: Option<String>, action: &str, body: Body) -> Command {
    Command::from_parts(key.map(Text::from), Text::from(action), body, None)
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Published<'a> {
    topic: String,
    body: &'a Body,
}

#[derive(Serialize)]
struct Topic {
    topic: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    retroactive: bool,
    /// Seconds; from a finite `msg_from` (nanoseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<f64>,
}

#[derive(Serialize)]
struct Action<'a> {
    action: &'a str,
}

#[derive(Serialize)]
struct Direct<'a> {
    target: &'a str,
    action: &'a str,
    body: &'a Body,
}

/// The body of [`ACK`]: which acknowledgement, of which id (hex).
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct Ack {
    pub(crate) kind: u64,
    pub(crate) id: String,
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

fn decode(frame: &[u8]) -> Result<Command, DecodeError> {
    crate::scan::decoded_size(frame, crate::scan::MAX_DECODED).map_err(|r| bad(r.0))?;
    let value: Value =
        ciborium::from_reader(frame).map_err(|e| bad(format!("invalid CBOR: {e}")))?;
    let Value::Array(mut items) = value else {
        return Err(bad("a Rembus message is a CBOR array"));
    };
    let ty = items
        .first()
        .and_then(int)
        .ok_or_else(|| bad("a Rembus message starts with its type"))?;
    let need = |n: usize, items: &[Value]| {
        if items.len() < n {
            Err(bad(format!(
                "a Rembus message of type {ty} has at least {n} elements"
            )))
        } else {
            Ok(())
        }
    };
    match ty {
        kind::IDENTITY => {
            need(3, &items)?;
            let key = format!("i{}", hex(id_of(&items[1])?));
            let name = text(&items[2]).ok_or_else(|| {
                bad("the component id must be a string").with_key(Some(key.clone()))
            })?;
            Ok(command(Some(key), IDENTIFY, body_of(&Named { name })?))
        }
        kind::PUBLISH => {
            need(3, &items)?;
            let args = items.swap_remove(2);
            let topic = text(&items[1]).ok_or_else(|| bad("the topic must be a string"))?;
            let body = args_body(args)?;
            let published = Published {
                topic: topic_in(topic),
                body: &body,
            };
            Ok(command(None, drs_pubsub::PUBLISH, body_of(&published)?))
        }
        t if t & 0x0f == kind::PUBLISH && t & 0x30 != 0 => {
            need(4, &items)?;
            // QoS 1 (0x10) or 2 (0x30): `w` keys are deduplicated.
            let tag = if t & 0x30 == 0x30 { 'w' } else { 'q' };
            let key = format!("{tag}{}", hex(id_of(&items[1])?));
            let args = std::mem::replace(&mut items[3], Value::Null);
            let topic = text(&items[2])
                .ok_or_else(|| bad("the topic must be a string").with_key(Some(key.clone())))?;
            let body = args_body(args)?;
            let published = Published {
                topic: topic_in(topic),
                body: &body,
            };
            Ok(command(
                Some(key),
                drs_pubsub::PUBLISH,
                body_of(&published)?,
            ))
        }
        kind::RPC => {
            need(5, &items)?;
            let key = format!("r{}", hex(id_of(&items[1])?));
            let args = items.swap_remove(4);
            let name = text(&items[2]).ok_or_else(|| {
                bad("the method name must be a string").with_key(Some(key.clone()))
            })?;
            let body = args_body(args)?;
            match &items[3] {
                Value::Null => Ok(command(Some(key), name, body)),
                Value::Text(target) => {
                    let direct = Direct {
                        target,
                        action: name,
                        body: &body,
                    };
                    Ok(command(Some(key), DIRECT, body_of(&direct)?))
                }
                _ => Err(bad("the RPC target must be a string or null").with_key(Some(key))),
            }
        }
        kind::ADMIN => {
            need(4, &items)?;
            let key = format!("a{}", hex(id_of(&items[1])?));
            let with_key = |e: DecodeError| e.with_key(Some(key.clone()));
            let topic =
                text(&items[2]).ok_or_else(|| with_key(bad("the topic must be a string")))?;
            let spec = &items[3];
            let cmd = field(spec, "cmd").and_then(text).unwrap_or("");
            let (action, body) = match cmd {
                "expose" => (drs_pubsub::EXPOSE, body_of(&Action { action: topic })),
                "unexpose" => (drs_pubsub::UNEXPOSE, body_of(&Action { action: topic })),
                "subscribe" => {
                    // msg_from, in ns: 0 is Now (live only), +inf is
                    // LastReceived (all that is kept), n the last n ns.
                    let msg_from = match field(spec, "msg_from") {
                        Some(Value::Float(f)) => *f,
                        Some(v) => int(v).map_or(0.0, |n| n as f64),
                        None => 0.0,
                    };
                    let t = Topic {
                        topic: topic_in(topic),
                        retroactive: msg_from != 0.0 && !msg_from.is_nan(),
                        window: (msg_from.is_finite() && msg_from > 0.0).then(|| msg_from / 1e9),
                    };
                    (drs_pubsub::SUBSCRIBE, body_of(&t))
                }
                "unsubscribe" => {
                    let t = Topic {
                        topic: topic_in(topic),
                        retroactive: false,
                        window: None,
                    };
                    (drs_pubsub::UNSUBSCRIBE, body_of(&t))
                }
                "reactive" => (REACTIVE, body_of(spec)),
                "setup" => (SETUP, body_of(spec)),
                _ => (ADMIN, body_of(spec)),
            };
            Ok(command(Some(key.clone()), action, body.map_err(with_key)?))
        }
        kind::RESPONSE => {
            need(4, &items)?;
            let id = id_of(&items[1])?;
            let key = u64::from_le_bytes(id.try_into().map_err(|_| bad("id"))?).to_string();
            let data = items.swap_remove(3);
            let status = int(&items[2]).ok_or_else(|| bad("the status must be an integer"))?;
            let (action, body) = match status {
                status::OK => (RESPONSE, body_of(&data)?),
                status::METHOD_EXCEPTION => (
                    EXCEPTION,
                    body_of(&Message {
                        message: &describe(&data),
                    })?,
                ),
                s => {
                    let message = match text(&data) {
                        Some(t) => t.to_string(),
                        None if data.is_null() => format!("Rembus status {s}"),
                        None => describe(&data),
                    };
                    (ERROR, body_of(&Message { message: &message })?)
                }
            };
            Ok(command(Some(key), action, body))
        }
        kind::ACK | kind::ACK2 => {
            need(2, &items)?;
            let ack = Ack {
                kind: ty,
                id: hex(id_of(&items[1])?),
            };
            Ok(command(None, ACK, body_of(&ack)?))
        }
        other => {
            let key = items
                .get(1)
                .and_then(|v| id_of(v).ok())
                .map(|id| format!("a{}", hex(id)));
            Err(bad(format!("Rembus message type {other} is not supported")).with_key(key))
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Text(t) => t.clone(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

fn enc(e: impl std::fmt::Display) -> EncodeError {
    EncodeError::new(e.to_string())
}

/// The value of an outgoing body.
fn value_of(body: OutBody<'_>) -> Result<Value, EncodeError> {
    match body {
        OutBody::Absent => Ok(Value::Null),
        OutBody::Raw(body) if body.is_absent() => Ok(Value::Null),
        OutBody::Raw(body) => Value::serialized(body).map_err(enc),
        OutBody::Value(value) => Value::serialized(&value).map_err(enc),
        _ => Err(EncodeError::new("unsupported body kind")),
    }
}

/// A body as a Rembus argument list.
fn args_of(body: OutBody<'_>) -> Result<Value, EncodeError> {
    Ok(match value_of(body)? {
        Value::Array(items) => Value::Array(items),
        Value::Null if matches!(body, OutBody::Absent) => Value::Array(Vec::new()),
        other => Value::Array(vec![other]),
    })
}

fn message_of(body: OutBody<'_>) -> Result<String, EncodeError> {
    let value = value_of(body)?;
    Ok(field(&value, "message")
        .and_then(text)
        .map(str::to_string)
        .unwrap_or_else(|| describe(&value)))
}

/// Whether an error reply is the gate's "unauthenticated".
fn is_unauthenticated(body: OutBody<'_>) -> bool {
    message_of(body).is_ok_and(|m| m == UNAUTHENTICATED)
}

/// The status a drs error reply gets.
fn error_status(message: &str) -> (u64, Value) {
    if let Some(action) = message.strip_prefix("No handlers for ") {
        return (status::METHOD_NOT_FOUND, Value::Text(action.to_string()));
    }
    if message == "closed" {
        return (status::TARGET_DOWN, Value::Text(message.to_string()));
    }
    if message.starts_with(TARGET_NOT_FOUND) {
        return (status::TARGET_NOT_FOUND, Value::Text(message.to_string()));
    }
    (status::METHOD_EXCEPTION, Value::Text(message.to_string()))
}

fn write(dst: &mut BytesMut, items: Vec<Value>) -> Result<(), EncodeError> {
    ciborium::into_writer(&Value::Array(items), dst.writer()).map_err(enc)
}

fn int_value(n: u64) -> Value {
    Value::Integer(n.into())
}

fn encode(cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let is_reply = matches!(cmd.action, RESPONSE | ERROR | EXCEPTION);
    match (cmd.key, is_reply) {
        (None, true) => {
            // A notice to the peer (a bad frame, a limit): a response to
            // no request, which clients ignore.
            let message = message_of(cmd.body)?;
            write(
                dst,
                vec![
                    int_value(kind::RESPONSE),
                    Value::Bytes(vec![0; 8]),
                    int_value(status::GENERIC_ERROR),
                    Value::Text(message),
                ],
            )
        }
        (Some(key), true) => {
            let (tag, id) = key.split_at(1);
            let id = unhex(id)
                .filter(|id| id.len() == 8)
                .ok_or_else(|| EncodeError::new(format!("not a Rembus request key: {key}")))?;
            let id = Value::Bytes(id);
            let ok = cmd.action == RESPONSE;
            let (status, data) = match (tag, ok) {
                ("q" | "w", _) => return write(dst, vec![int_value(kind::ACK), id]),
                ("i" | "a", true) => (status::OK, Value::Null),
                (_, false) if is_unauthenticated(cmd.body) => (
                    status::IDENTIFICATION_ERROR,
                    Value::Text(UNAUTHENTICATED.to_string()),
                ),
                ("i", false) => {
                    let message = message_of(cmd.body)?;
                    let message = if message == NAME_TAKEN {
                        ALREADY_CONNECTED.to_string()
                    } else {
                        message
                    };
                    (status::GENERIC_ERROR, Value::Text(message))
                }
                ("a", false) => {
                    let message = message_of(cmd.body)?;
                    if message == UNKNOWN_ADMIN {
                        (status::UNKNOWN_ADMIN, Value::Null)
                    } else {
                        (status::GENERIC_ERROR, Value::Text(message))
                    }
                }
                ("r", true) => (status::OK, value_of(cmd.body)?),
                ("r", false) if cmd.action == EXCEPTION => {
                    (status::METHOD_EXCEPTION, Value::Text(message_of(cmd.body)?))
                }
                ("r", false) => error_status(&message_of(cmd.body)?),
                _ => return Err(EncodeError::new(format!("not a Rembus request key: {key}"))),
            };
            write(
                dst,
                vec![int_value(kind::RESPONSE), id, int_value(status), data],
            )
        }
        (Some(key), false) => {
            if cmd.action.starts_with("drs.") {
                // Cancels, stream credit: Rembus has no such thing.
                return Err(EncodeError::new(format!(
                    "{} cannot be sent to a Rembus peer",
                    cmd.action
                )));
            }
            let n: u64 = key
                .parse()
                .map_err(|_| EncodeError::new(format!("not a drs call key: {key}")))?;
            write(
                dst,
                vec![
                    int_value(kind::RPC),
                    Value::Bytes(n.to_le_bytes().to_vec()),
                    Value::Text(cmd.action.to_string()),
                    Value::Null,
                    args_of(cmd.body)?,
                ],
            )
        }
        (None, false) => {
            if cmd.action.starts_with("drs.") {
                return Err(EncodeError::new(format!(
                    "{} cannot be sent to a Rembus peer",
                    cmd.action
                )));
            }
            write(
                dst,
                vec![
                    int_value(kind::PUBLISH),
                    Value::Text(topic_out(cmd.action)),
                    args_of(cmd.body)?,
                ],
            )
        }
    }
}

impl Protocol for Rembus {
    fn name(&self) -> &'static str {
        "rembus"
    }

    fn framing(&self) -> Framing {
        Framing::LengthPrefixed
    }

    fn decode(&self, frame: Bytes) -> Result<Command, DecodeError> {
        decode(&frame)
    }

    fn encode(&self, cmd: &Outgoing<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let start = dst.len();
        encode(cmd, dst).inspect_err(|_| dst.truncate(start))
    }

    fn body_format(&self) -> &'static dyn BodyFormat {
        msgpack()
    }
}
