//! [`Command`], the unit of exchange, and the wire's built-in actions.

use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::{body::Body, text::Text};

/// The reply action for a handler's value.
pub const RESPONSE: &str = "drs.response";
/// The reply action for an application error.
pub const ERROR: &str = "drs.error";
/// The reply action for a panic or unexpected failure.
pub const EXCEPTION: &str = "drs.exception";
/// The built-in action answering with the current time in ms since the epoch.
pub const PING: &str = "drs.ping";
/// The message of the `drs.exception` answering a call whose handler ran
/// past its deadline (`ConnConfig::handler_timeout`, or the one a layer
/// set with `Msg::set_deadline`, as `drs-layers`' `Timeout` does).
pub const DEADLINE_EXCEEDED: &str = "handler deadline exceeded";
/// The message of the `drs.error` a draining server (shutting down)
/// answers new calls with: the call did not run, so it is safe to send it
/// again elsewhere or later.
pub const SHUTTING_DOWN: &str = "the server is shutting down";
/// One item of a streamed reply (callee to caller), keyed like the call.
pub const NEXT: &str = "drs.next";
/// More credit for a streamed reply (caller to callee); the body is the
/// number of items the caller can take.
pub const MORE: &str = "drs.more";
/// Stops the handler serving a call (caller to callee); the call ends with
/// `drs.error` "cancelled".
pub const CANCEL: &str = "drs.cancel";
/// The message of the `drs.error` that ends a cancelled call.
pub const CANCELLED: &str = "cancelled";

/// What a protocol says of a `stream` field that is not an integer from 1
/// to 2³²−1.
pub const INVALID_STREAM: &str = "invalid type: `stream` must be an integer from 1 to 4294967295";

/// What a command with a malformed `delay` field is refused with.
pub const INVALID_DELAY: &str =
    "invalid type: `delay` must be a number of milliseconds from 0 to 4294967295";

/// Whether `action` is one of the three reply actions.
pub fn is_reply_action(action: &str) -> bool {
    matches!(action, RESPONSE | ERROR | EXCEPTION)
}

/// Whether `action` is a frame of the call machinery rather than a command
/// for a handler: a reply, a stream item, credit or a cancel. No handler can
/// be registered for these.
pub fn is_control_action(action: &str) -> bool {
    matches!(action, RESPONSE | ERROR | EXCEPTION | NEXT | MORE | CANCEL)
}

/// One decoded command: `{"key": …, "action": …, "body": …, "version": …}`.
///
/// - `action` names what to do; names beginning with `drs.` are reserved.
/// - `key` is present when the sender wants a reply; replies carry the key of
///   the command they answer and one of [`RESPONSE`], [`ERROR`], [`EXCEPTION`].
/// - `body` is kept in its wire encoding until someone asks for a typed value
///   (see [`Body`]).
/// - `version` is carried through, unused by the core.
/// - `stream` is the caller's opt-in to a streamed reply: the number of
///   items it can take now (docs/PROTOCOL.md §2).
///
/// Serializing a `Command` with serde gives the DRS v1 shape with absent
/// fields omitted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Command {
    /// Present when the sender wants a reply.
    pub key: Option<Text>,
    /// What to do.
    pub action: Text,
    /// The payload.
    pub body: Body,
    /// Optional version, carried through.
    pub version: Option<i64>,
    /// On a call: the caller takes a streamed reply, and can take this many
    /// items now (at least 1).
    pub stream: Option<u32>,
    /// Run this many milliseconds after it arrives: the receiver holds the
    /// command until then (a `drs.cancel` of its key takes it back).
    pub delay: Option<u32>,
}

impl Command {
    /// A command with the given action, no key, an absent body and no version.
    pub fn new(action: impl Into<Text>) -> Self {
        Self {
            key: None,
            action: action.into(),
            body: Body::absent(),
            version: None,
            stream: None,
            delay: None,
        }
    }

    /// A command from all its parts at once.
    pub fn from_parts(key: Option<Text>, action: Text, body: Body, version: Option<i64>) -> Self {
        Self {
            key,
            action,
            body,
            version,
            stream: None,
            delay: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: Option<Text>) -> Self {
        self.key = key;
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: Option<i64>) -> Self {
        self.version = version;
        self
    }

    /// Sets the stream opt-in (the caller's initial credit).
    pub fn with_stream(mut self, stream: Option<u32>) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the delay in milliseconds.
    pub fn with_delay(mut self, delay: Option<u32>) -> Self {
        self.delay = delay;
        self
    }

    /// Whether this command is a reply (`drs.response`, `drs.error`, `drs.exception`).
    pub fn is_reply(&self) -> bool {
        is_reply_action(&self.action)
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 1
            + usize::from(self.key.is_some())
            + usize::from(!self.body.is_absent())
            + usize::from(self.version.is_some())
            + usize::from(self.stream.is_some())
            + usize::from(self.delay.is_some());
        let mut map = s.serialize_map(Some(len))?;
        if let Some(key) = &self.key {
            map.serialize_entry("key", key.as_str())?;
        }
        map.serialize_entry("action", self.action.as_str())?;
        if !self.body.is_absent() {
            map.serialize_entry("body", &self.body)?;
        }
        if let Some(v) = self.version {
            map.serialize_entry("version", &v)?;
        }
        if let Some(n) = self.stream {
            map.serialize_entry("stream", &n)?;
        }
        if let Some(ms) = self.delay {
            map.serialize_entry("delay", &ms)?;
        }
        map.end()
    }
}

/// Serializes `message` as the `{"message": …}` body of an error reply without
/// allocating a [`RemoteError`](crate::RemoteError).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageBody<'a>(pub(crate) &'a str);

impl Serialize for MessageBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("message", self.0)?;
        map.end()
    }
}
