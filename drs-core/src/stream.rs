//! Streamed replies on the serving side: a handler writes items into an
//! [`ItemSink`], or returns a [`Streamed`] stream of them.
//!
//! On the wire (docs/PROTOCOL.md §2) a caller opts in with `"stream": N`, the N items
//! it can take now; each item goes out as `{"key":K,"action":"drs.next",
//! "body":item}` and the caller grants more with `drs.more`. The handler's
//! return value ends the stream as `drs.response` (an error as `drs.error`
//! or `drs.exception`). A caller that did not opt in gets one
//! `drs.response` whose body is the array of all items (a `drs.error` if
//! that reply would exceed the maximum frame size); a fire's items go
//! nowhere.

use std::{fmt, future::Future, pin::Pin, sync::Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::{
    body::Body,
    command::NEXT,
    conn::encode_frame,
    error::Error,
    handler::{FromMsg, HandlerError, Msg, Outcome},
    protocol::{OutBody, Outgoing},
    sync::lock,
};

/// Most credit a caller may hold at once; grants past it are clamped.
const MAX_CREDIT: usize = u32::MAX as usize;
/// Bytes of a reply frame besides its items (key, action, brackets).
const ENVELOPE: usize = 256;

/// The serving side of one call's streamed reply, made when its handler
/// first asks for an [`ItemSink`].
pub(crate) enum Producer {
    /// A fire: nobody to send items to.
    Discard,
    /// The caller did not opt in: items are collected into one array reply.
    Collect(Mutex<Collected>),
    /// The caller opted in: items go out within its credit.
    Stream(Semaphore),
}

/// The items of a reply collected for a caller that did not ask for a
/// stream: their encodings back to back and where each ends (a few bytes
/// an item beyond its encoding), held against the server's memory budget
/// as they come. An item with no body is an empty range.
#[derive(Default)]
pub(crate) struct Collected {
    buf: bytes::BytesMut,
    ends: Vec<u32>,
    format: Option<&'static dyn crate::BodyFormat>,
    overflow: bool,
    hold: Option<crate::MemoryHold>,
}

impl Collected {
    /// Bytes the reply will take: items, separators, envelope.
    fn reply_len(&self) -> usize {
        self.buf.len() + self.ends.len() + ENVELOPE
    }

    /// The items as one array value (the hold goes with it, until the
    /// reply is encoded).
    fn take(&mut self) -> CollectedItems {
        CollectedItems {
            buf: std::mem::take(&mut self.buf).freeze(),
            ends: std::mem::take(&mut self.ends),
            format: self.format,
            _hold: self.hold.take(),
        }
    }
}

/// Collected items, serialized as an array.
struct CollectedItems {
    buf: Bytes,
    ends: Vec<u32>,
    format: Option<&'static dyn crate::BodyFormat>,
    _hold: Option<crate::MemoryHold>,
}

impl Serialize for CollectedItems {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.ends.len()))?;
        let mut start = 0;
        for &end in &self.ends {
            let end = end as usize;
            let item = match self.format {
                Some(format) if end > start => Body::from_raw(self.buf.slice(start..end), format),
                _ => Body::absent(),
            };
            seq.serialize_element(&item)?;
            start = end;
        }
        seq.end()
    }
}

impl Producer {
    pub(crate) fn new(key: bool, stream: Option<u32>) -> Self {
        match (key, stream) {
            (false, _) => Producer::Discard,
            (true, None) => Producer::Collect(Mutex::default()),
            (true, Some(n)) => Producer::Stream(Semaphore::new(n as usize)),
        }
    }

    /// The caller granted `n` more items.
    pub(crate) fn grant(&self, n: u64) {
        if let Producer::Stream(credit) = self {
            let room = MAX_CREDIT.saturating_sub(credit.available_permits());
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(room);
            if n > 0 {
                credit.add_permits(n);
            }
        }
    }

    /// The reply that ends the call, given what the handler returned.
    pub(crate) fn finish(&self, outcome: Outcome, max_frame_len: usize) -> Outcome {
        let Producer::Collect(collected) = self else {
            return outcome;
        };
        let mut collected = lock(collected);
        if collected.overflow {
            return Outcome::Error(format!(
                "the streamed reply exceeds the maximum frame size of {max_frame_len} bytes; \
                 call with \"stream\" to receive it item by item"
            ));
        }
        if !outcome.is_ok() {
            return outcome;
        }
        Outcome::Value(Box::new(collected.take()))
    }
}

/// Where a handler writes the items of a streamed reply: take it as a
/// handler argument.
///
/// [`send`](ItemSink::send) waits for the caller's credit, so a caller
/// that reads slowly slows the handler down rather than filling memory.
/// The handler's return value ends the stream. Items sent before the
/// handler returns always precede its final reply.
///
/// ```
/// use drs_core::{HandlerResult, ItemSink, Server};
///
/// let server = Server::new();
/// server.on("count", |n: u64, items: ItemSink| async move {
///     for i in 0..n {
///         items.send(&i).await?;
///     }
///     HandlerResult::Ok(n)
/// });
/// ```
///
/// A caller that did not ask for a stream gets the array of all items as
/// its one reply (the handler's value is then not sent); a fire's items
/// are dropped.
#[derive(Clone)]
pub struct ItemSink {
    msg: Msg,
}

impl fmt::Debug for ItemSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSink")
            .field("action", &self.msg.action())
            .field("key", &self.msg.key())
            .field("streaming", &self.is_streaming())
            .finish()
    }
}

impl FromMsg for ItemSink {
    fn from_msg(msg: &Msg) -> Result<Self, HandlerError> {
        Ok(ItemSink::new(msg))
    }
}

impl ItemSink {
    fn new(msg: &Msg) -> Self {
        msg.producer();
        Self { msg: msg.clone() }
    }

    /// Whether the caller asked for a streamed reply (items go out one by
    /// one) rather than one array.
    pub fn is_streaming(&self) -> bool {
        matches!(&**self.msg.producer(), Producer::Stream(_))
    }

    /// Sends one item: waits for the caller's credit and for room in the
    /// outbound queue.
    ///
    /// Fails with [`Error::FrameTooLarge`] when the item does not fit in a
    /// frame (or, when items are collected, when all of them would not fit
    /// in one reply: the call then ends with `drs.error`), with
    /// [`Error::Encode`] when it cannot be encoded, and with
    /// [`Error::Closed`] when the connection is gone.
    ///
    /// The item is encoded before this returns, so it need not outlive
    /// the call.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        item: &T,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let frame = self.prepare(item);
        async move {
            let Some(frame) = frame? else {
                return Ok(());
            };
            let msg = &self.msg;
            if let Producer::Stream(credit) = &**msg.producer() {
                credit.acquire().await.map_err(|_| Error::Closed)?.forget();
            }
            let conn = msg.conn();
            msg.shared().send(&conn.tx, frame).await
        }
    }

    /// Encodes an item: the frame to send, or `None` when it is collected
    /// (or dropped) instead.
    fn prepare<T: Serialize + ?Sized>(&self, item: &T) -> Result<Option<Bytes>, Error> {
        let msg = &self.msg;
        let shared = msg.shared();
        let max = shared.config.max_frame_len;
        match &**msg.producer() {
            Producer::Discard => Ok(None),
            Producer::Collect(collected) => {
                let body = msg.encode_body(&item)?;
                let raw = body.raw();
                let len = raw.map_or(4, |(b, _)| b.len());
                let mut c = lock(collected);
                let wanted = c.reply_len() + len + 1;
                if c.overflow || wanted > max {
                    *c = Collected {
                        overflow: true,
                        ..Collected::default()
                    };
                    return Err(Error::FrameTooLarge {
                        len: wanted,
                        limit: max,
                    });
                }
                if let Some((bytes, format)) = raw {
                    c.buf.extend_from_slice(bytes);
                    c.format.get_or_insert(format);
                }
                let end = u32::try_from(c.buf.len()).map_err(|_| Error::FrameTooLarge {
                    len: wanted,
                    limit: max,
                })?;
                c.ends.push(end);
                let size = len + std::mem::size_of::<u32>();
                c.hold
                    .get_or_insert_with(|| shared.meter.hold(0))
                    .grow(size);
                Ok(None)
            }
            Producer::Stream(_) => encode_frame(
                &*shared.protocol,
                max,
                &Outgoing::new(NEXT)
                    .key(msg.key())
                    .body(OutBody::Value(&item)),
            )
            .map(Some),
        }
    }
}

type Pump = Box<
    dyn FnOnce(ItemSink) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>> + Send,
>;

/// A stream of items as a handler's return value: the other way to stream
/// a reply (see [`ItemSink`] for the first).
///
/// Each item is sent as the caller's credit allows; the stream's end ends
/// the call with `drs.response` and no body. With
/// [`try_new`](Streamed::try_new) an `Err` item ends the call with that
/// error instead.
///
/// ```
/// use drs_core::{HandlerResult, Server, Streamed};
///
/// let server = Server::new();
/// server.on("letters", || async {
///     HandlerResult::Ok(Streamed::new(futures::stream::iter(["a", "b", "c"])))
/// });
/// ```
pub struct Streamed {
    pump: Pump,
}

impl fmt::Debug for Streamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streamed").finish_non_exhaustive()
    }
}

impl Streamed {
    /// A reply made of the items of `items`.
    pub fn new<S>(items: S) -> Self
    where
        S: Stream + Send + 'static,
        S::Item: Serialize + Send,
    {
        Self::try_new(items.map(Ok::<_, HandlerError>))
    }

    /// A reply made of the items of `items`, ended early by the first `Err`
    /// (answered like a handler's error: `drs.error`, or `drs.exception`
    /// for [`HandlerError::exception`] and drs errors that are).
    pub fn try_new<S, T, E>(items: S) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        T: Serialize + Send,
        E: fmt::Display + Send + 'static,
    {
        Self {
            pump: Box::new(move |sink| {
                Box::pin(async move {
                    let mut items = std::pin::pin!(items);
                    while let Some(item) = items.next().await {
                        match item {
                            Ok(item) => sink.send(&item).await?,
                            Err(e) => {
                                return Err(HandlerError::from_outcome(Outcome::from_error(e)))
                            }
                        }
                    }
                    Ok(())
                })
            }),
        }
    }

    pub(crate) async fn run(self, msg: &Msg) -> Outcome {
        match (self.pump)(ItemSink::new(msg)).await {
            Ok(()) => Outcome::Body(Body::absent()),
            Err(e) => e.into_outcome(),
        }
    }
}

/// What a handler's reply becomes: a value (any `Serialize`, answered
/// with one `drs.response`) or a [`Streamed`] reply.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub enum Produced {
    Outcome(Outcome),
    Stream(Streamed),
}

/// A handler's successful return type: any `Serialize` value (a [`Body`]
/// is passed on as received), or a [`Streamed`] reply.
pub trait IntoReply: Send + 'static {
    #[doc(hidden)]
    fn into_reply(self) -> Produced;
}

impl<T: Serialize + Send + 'static> IntoReply for T {
    fn into_reply(self) -> Produced {
        Produced::Outcome(Outcome::from_value(self))
    }
}

impl IntoReply for Streamed {
    fn into_reply(self) -> Produced {
        Produced::Stream(self)
    }
}

/// What a handler's future may resolve to: a `Result<R, E>` (`R` any
/// [`IntoReply`], `E: Display` answered with `drs.error`), or, for a
/// handler that cannot fail, the value itself: numbers, `bool`, `char`,
/// `String`, `&'static str`, `()`, [`Body`](crate::Body),
/// `serde_json::Value`, `Vec`, `Option`, maps, tuples, a [`Streamed`], or
/// any `Serialize` type wrapped in [`Reply`], as axum's `IntoResponse`
/// has it.
///
/// ```
/// # let server = drs_core::Server::new();
/// server.on("double", |x: i64| async move { x * 2 });
/// server.on("greet", |name: String| async move { format!("hello {name}") });
/// #[derive(serde::Serialize)]
/// struct Point { x: f64, y: f64 }
/// server.on("origin", || async { drs_core::Reply(Point { x: 0.0, y: 0.0 }) });
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be what a handler returns",
    label = "not a handler's result",
    note = "a handler returns `Result<T, E>` (`T: Serialize` the reply, `E: Display` the drs.error), or, when it cannot fail, the reply itself: a number, `String`, `()`, `serde_json::Value`, … or any `Serialize` type wrapped in `Reply`"
)]
pub trait IntoOutcome: Send + 'static {
    #[doc(hidden)]
    fn into_produced(self) -> Produced;
}

impl<R: IntoReply, E: std::fmt::Display + Send + 'static> IntoOutcome for Result<R, E> {
    fn into_produced(self) -> Produced {
        match self {
            Ok(reply) => reply.into_reply(),
            Err(e) => Produced::Outcome(Outcome::from_error(e)),
        }
    }
}

/// A reply of any `Serialize` type from a handler that cannot fail:
/// `|| async { Reply(point) }` (a `Result` needs no wrapper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reply<T>(pub T);

impl<T: Serialize + Send + 'static> IntoOutcome for Reply<T> {
    fn into_produced(self) -> Produced {
        Produced::Outcome(Outcome::from_value(self.0))
    }
}

impl IntoOutcome for Streamed {
    fn into_produced(self) -> Produced {
        Produced::Stream(self)
    }
}

macro_rules! infallible {
    ($($t:ty),* $(,)?) => {$(
        impl IntoOutcome for $t {
            fn into_produced(self) -> Produced {
                Produced::Outcome(Outcome::from_value(self))
            }
        }
    )*};
}

infallible!(
    (),
    bool,
    char,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    f32,
    f64,
    String,
    &'static str,
    crate::Body,
    serde_json::Value,
);

macro_rules! infallible_generic {
    ($([$($p:ident),*] $t:ty),* $(,)?) => {$(
        impl<$($p: Serialize + Send + 'static),*> IntoOutcome for $t {
            fn into_produced(self) -> Produced {
                Produced::Outcome(Outcome::from_value(self))
            }
        }
    )*};
}

infallible_generic!(
    [T] Vec<T>,
    [T] Option<T>,
    [T] Box<T>,
    [K, V] std::collections::BTreeMap<K, V>,
    [A, B] (A, B),
    [A, B, C] (A, B, C),
    [A, B, C, D] (A, B, C, D),
);

impl<K, V, S> IntoOutcome for std::collections::HashMap<K, V, S>
where
    K: Serialize + Send + 'static,
    V: Serialize + Send + 'static,
    S: Send + 'static,
{
    fn into_produced(self) -> Produced {
        Produced::Outcome(Outcome::from_value(self))
    }
}
