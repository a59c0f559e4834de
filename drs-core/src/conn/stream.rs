//! [`CallStream`]: a call whose reply comes as a stream of items.

use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};

use super::{encode_frame, pending::StreamSlot, remote_error, Conn, KeyText, ReplyKind};
use crate::{
    body::{Body, DecodeError, FromBody},
    command::MORE,
    error::Error,
    protocol::{OutBody, Outgoing},
};

type Sending = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

enum State {
    /// Not polled yet: the call frame, encoded.
    Unsent(Result<Bytes, Error>),
    /// The call frame waits for room in the outbound queue.
    Sending(Sending),
    /// Sent: items arrive in the slot.
    Open,
    /// Ended (its last item, error or end has been yielded).
    Done,
}

/// A streamed call on its way: a [`Stream`] of `Result<T, Error>`, one per
/// item the peer sends. See [`Conn::call_stream`].
///
/// - The stream ends (`None`) after the peer's final `drs.response`; its
///   body is then [`final_value`](CallStream::final_value).
/// - A `drs.error` or `drs.exception` from the peer, a lost connection and
///   an idle timeout are yielded as the last item, an `Err`.
/// - An item that does not deserialize into `T` is yielded as an `Err`
///   and the stream goes on.
/// - No item for longer than the idle timeout (by default the connection's
///   call timeout; [`idle_timeout`](CallStream::idle_timeout)) ends the
///   stream with [`Error::Timeout`] and cancels the call.
/// - Dropping the stream before its end sends `drs.cancel`.
#[must_use = "a streamed call does nothing unless polled"]
pub struct CallStream<T> {
    conn: Conn,
    key: u64,
    window: u32,
    state: State,
    slot: Arc<StreamSlot>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Items read since credit was last granted.
    unacked: u32,
    final_body: Option<Body>,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("conn", &self.conn.id())
            .field("key", &self.key)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<T> CallStream<T> {
    pub(super) fn new(conn: Conn, key: u64, frame: Result<Bytes, Error>, window: u32) -> Self {
        let idle = conn.shared.config.call_timeout;
        Self {
            conn,
            key,
            window,
            state: State::Unsent(frame),
            slot: StreamSlot::new(window),
            idle,
            timer: None,
            unacked: 0,
            final_body: None,
            _item: PhantomData,
        }
    }

    /// Sets how long the stream may go without an item (or its end) before
    /// it fails with [`Error::Timeout`] and the call is cancelled.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Sets how many items the peer may send ahead of the reader (at least
    /// 1), instead of the connection's
    /// [`stream_window`](super::ConnConfig::stream_window). Takes effect
    /// only before the stream is first polled.
    pub fn window(mut self, items: u32) -> Self {
        let items = items.max(1);
        if let State::Unsent(Ok(frame)) = &self.state {
            if items != self.window {
                self.state = State::Unsent(self.reencode(frame.clone(), items));
                self.window = items;
                self.slot = StreamSlot::new(items);
            }
        }
        self
    }

    fn reencode(&self, frame: Bytes, window: u32) -> Result<Bytes, Error> {
        let shared = &self.conn.shared;
        let cmd = shared.protocol.decode(frame)?;
        let mut digits = KeyText::default();
        encode_frame(
            &*shared.protocol,
            shared.config.max_frame_len,
            &Outgoing::new(&cmd.action)
                .key(Some(digits.format(self.key)))
                .body(OutBody::Raw(&cmd.body))
                .stream(Some(window)),
        )
    }

    /// The body of the peer's final `drs.response`, once the stream has
    /// ended without error.
    pub fn final_body(&self) -> Option<&Body> {
        self.final_body.as_ref()
    }

    /// The value the handler ended the stream with, deserialized into `R`:
    /// `Ok(None)` until the stream has ended without error, or when it
    /// ended with no body.
    pub fn final_value<R: FromBody>(&self) -> Result<Option<R>, Error> {
        match &self.final_body {
            Some(body) if !body.is_absent() => R::from_body(body.clone())
                .map(Some)
                .map_err(|e| Error::Decode(DecodeError::new(format!("final value: {e}")))),
            _ => Ok(None),
        }
    }

    /// Ends the stream on our side: forgets the call and, if `cancel`,
    /// tells the peer to stop.
    fn abandon(&mut self, cancel: bool) {
        self.state = State::Done;
        self.conn.shared.pending.remove(self.key);
        if cancel {
            self.conn.send_cancel(self.key);
        }
    }

    /// Whether the idle deadline has passed (arming it on first use).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn read_item(&mut self, body: Body, live: bool) -> Result<T, Error>
    where
        T: FromBody,
    {
        if let Some(timer) = &mut self.timer {
            timer.as_mut().reset(Instant::now() + self.idle);
        }
        self.unacked += 1;
        if live && self.unacked >= (self.window / 2).max(1) {
            let more = std::mem::take(&mut self.unacked);
            self.slot.lock().credit += u64::from(more);
            self.conn
                .send_control(self.key, MORE, OutBody::Value(&more));
        }
        T::from_body(body).map_err(|e| Error::Decode(DecodeError::new(format!("stream item: {e}"))))
    }
}

impl<T: FromBody> Stream for CallStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Unsent(frame) => {
                    let frame = std::mem::replace(frame, Err(Error::Closed));
                    let registered = frame.and_then(|frame| {
                        this.conn
                            .shared
                            .pending
                            .register_stream(this.key, this.slot.clone())
                            .map(|()| frame)
                    });
                    match registered {
                        Ok(frame) => {
                            let conn = this.conn.clone();
                            this.state = State::Sending(Box::pin(async move {
                                conn.shared.send(&conn.tx, frame).await
                            }));
                        }
                        Err(e) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                State::Sending(sending) => match sending.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => this.state = State::Open,
                    Poll::Ready(Err(e)) => {
                        this.abandon(false);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => {
                        if this.idle_expired(cx) {
                            this.abandon(false);
                            return Poll::Ready(Some(Err(Error::Timeout(this.idle))));
                        }
                        return Poll::Pending;
                    }
                },
                State::Open => {
                    let mut slot = this.slot.lock();
                    if let Some(body) = slot.items.pop_front() {
                        // Credit only while the peer may still send.
                        let live = slot.end.is_none();
                        drop(slot);
                        return Poll::Ready(Some(this.read_item(body, live)));
                    }
                    if let Some(end) = slot.end.take() {
                        drop(slot);
                        this.state = State::Done;
                        return Poll::Ready(match end {
                            Ok(reply) if reply.kind == ReplyKind::Response => {
                                this.final_body = Some(reply.body);
                                None
                            }
                            Ok(reply) if reply.kind == ReplyKind::Error => {
                                Some(Err(Error::Remote(remote_error(&reply.body))))
                            }
                            Ok(reply) => Some(Err(Error::Exception(remote_error(&reply.body)))),
                            Err(e) => Some(Err(e)),
                        });
                    }
                    slot.waker = Some(cx.waker().clone());
                    drop(slot);
                    if this.idle_expired(cx) {
                        this.abandon(true);
                        return Poll::Ready(Some(Err(Error::Timeout(this.idle))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T> Drop for CallStream<T> {
    fn drop(&mut self) {
        match self.state {
            State::Unsent(_) | State::Done => {}
            // Sending: the frame may already be in the queue; a cancel for
            // a call the peer never saw is ignored by it.
            State::Sending(_) | State::Open => self.abandon(true),
        }
    }
}
