//! The task that owns a connection's transport.
//!
//! One loop does everything for a connection, so a command costs no channel
//! hop and, when its handler finishes on first poll, no task spawn:
//!
//! 1. frames queued by [`Conn`](super::Conn) handles and replies of handlers
//!    that finished in their own tasks join the outbound queue;
//! 2. the outbound queue goes into the transport's buffer while it has room;
//! 3. inbound frames are read, up to a budget: replies complete pending calls;
//!    a command's handler is polled once right here, and its reply, if ready,
//!    is encoded straight into the outbound queue; a handler that is not
//!    ready moves to its own task (up to `max_in_flight` of them; past that
//!    the loop stops reading: backpressure);
//! 4. when nothing more can be done, the transport is flushed: one write for
//!    every reply produced since the last flush.

use std::{
    collections::VecDeque,
    future::{poll_fn, Future},
    io,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::{sync::mpsc, task::JoinSet, time::Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use super::{encode_frame, Reply, ReplyKind, Shared};
use crate::{
    codec::{BadFrame, FrameTooLarge},
    command::{Command, MessageBody, ERROR, EXCEPTION, RESPONSE},
    handler::{Msg, Outcome},
    protocol::{encode_into, DecodeError, OutBody, Outgoing},
    router::Snapshot,
    transport::Transport,
};

/// Frames read per turn of the loop before writing again.
const READ_BUDGET: usize = 64;
/// The loop stops reading while this many frames wait to be written.
const OUTQ_HIGH: usize = 256;
/// Undecodable frames in a row after which the peer is disconnected.
const MAX_BAD_FRAMES: u32 = 32;

/// Decides, at an admission gate, whether a connection may proceed.
pub(crate) type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The peer closed its side and everything owed to it was written.
    PeerClosed,
    /// `close()` was called, or the server forced it.
    Requested,
    /// Every handle was dropped.
    Dropped,
    /// The server's graceful shutdown finished with this connection.
    Drained,
    /// An `on_connect` hook refused the connection.
    Rejected,
    /// The peer sent an oversize frame, or too much garbage.
    BadPeer,
    /// The transport failed.
    Io(io::Error),
}

pub(crate) struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    routes: Snapshot,
    rx: mpsc::Receiver<Bytes>,
    rx_open: bool,
    tasks: JoinSet<Option<Bytes>>,
    outq: VecDeque<Bytes>,
    /// Replies produced in the loop are encoded here, then split off.
    wbuf: BytesMut,
    /// Written to the transport since the last flush.
    dirty: bool,
    reading: bool,
    accept_commands: bool,
    bad_frames: u32,
    gate: Option<Gate>,
    held: VecDeque<Command>,
    drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Resolves when `close()` is called; `None` once it has.
    close: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Set once the connection is ending: the reason, reported when the
    /// outbound queue is written and the transport closed (or the linger ends).
    ending: Option<End>,
    /// Set when closing: stop waiting for the peer to take our last frames.
    linger: Option<Pin<Box<Sleep>>>,
}

impl<T: Transport> Driver<T> {
    pub(super) fn new(io: T, shared: Arc<Shared>, rx: mpsc::Receiver<Bytes>) -> Self {
        let close = Some(Box::pin(shared.close.clone().cancelled_owned()));
        Self {
            io,
            routes: shared.router.snapshot(),
            shared,
            rx,
            rx_open: true,
            tasks: JoinSet::new(),
            outq: VecDeque::new(),
            wbuf: BytesMut::new(),
            dirty: false,
            reading: true,
            accept_commands: true,
            bad_frames: 0,
            gate: None,
            held: VecDeque::new(),
            drain: None,
            close,
            ending: None,
            linger: None,
        }
    }

    /// Holds commands until `gate` resolves; on `Err(reason)` the peer gets a
    /// keyless `drs.error` with the reason and is disconnected.
    pub(crate) fn set_gate(&mut self, gate: Gate) {
        self.gate = Some(gate);
    }

    /// When `token` is cancelled the connection stops taking new commands
    /// (answering them with `drs.error`), lets running handlers finish, then closes.
    pub(crate) fn set_drain(&mut self, token: tokio_util::sync::CancellationToken) {
        self.drain = Some(Box::pin(token.cancelled_owned()));
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(mut self) -> End {
        let span = tracing::info_span!(
            "conn",
            id = self.shared.id,
            transport = self.shared.info.transport,
            peer = self.shared.info.peer_addr.as_deref().unwrap_or("-"),
        );
        let end = poll_fn(|cx| self.poll_run(cx))
            .instrument(span.clone())
            .await;
        self.shared.pending.close();
        self.tasks.abort_all();
        self.shared.closed.cancel();
        let _enter = span.enter();
        match &end {
            End::Io(e) => tracing::debug!(error = %e, "connection failed"),
            other => tracing::debug!(reason = ?other, "connection closed"),
        }
        end
    }

    /// Starts ending the connection for `reason`: stop reading, fail pending
    /// calls, stop handlers now (or, if they may finish, when the close
    /// linger ends), and close once what is queued is written.
    fn begin_end(&mut self, reason: End, stop_handlers: bool) {
        if self.ending.is_some() {
            return;
        }
        self.reading = false;
        self.gate = None;
        self.held.clear();
        self.shared.pending.close();
        if stop_handlers {
            self.tasks.abort_all();
        }
        // Whatever is left after the linger is cut off: nothing waits on a
        // peer that is gone, or on a handler that never ends.
        let linger = self.shared.config.close_linger;
        self.linger = Some(Box::pin(tokio::time::sleep(linger)));
        self.ending = Some(reason);
    }

    /// Requests to close or drain, and the admission gate: they change
    /// rarely, so they are looked at once per wake-up, not on every turn.
    fn poll_control(&mut self, cx: &mut Context<'_>) {
        if self
            .close
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready())
        {
            self.close = None;
            // Frames queued before close() was called still go out.
            while let Ok(frame) = self.rx.try_recv() {
                self.outq.push_back(frame);
            }
            // A close request overrides a gentler ending already under way.
            self.ending = None;
            self.begin_end(End::Requested, true);
        }
        if let Some(drain) = &mut self.drain {
            if drain.as_mut().poll(cx).is_ready() {
                self.drain = None;
                self.accept_commands = false;
                self.held.clear();
                if self.gate.take().is_some() {
                    self.begin_end(End::Drained, true);
                } else {
                    self.begin_end_keep_reading(End::Drained);
                }
            }
        }
        if let Some(gate) = &mut self.gate {
            match gate.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.gate = None;
                    while let Some(cmd) = self.held.pop_front() {
                        self.dispatch(cmd, cx);
                    }
                }
                Poll::Ready(Err(reason)) => {
                    self.gate = None;
                    tracing::info!(%reason, "connection rejected");
                    self.notice(&format!("connection rejected: {reason}"));
                    self.begin_end(End::Rejected, true);
                }
                Poll::Pending => {}
            }
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.poll_control(cx);
        loop {
            let mut progress = false;
            // 1. Frames from handles and from finished handler tasks.
            while self.rx_open && self.outq.len() < OUTQ_HIGH {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => {
                        self.outq.push_back(frame);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        self.rx_open = false;
                        self.begin_end(End::Dropped, true);
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            while !self.tasks.is_empty() {
                let Poll::Ready(Some(done)) = self.tasks.poll_join_next(cx) else {
                    break;
                };
                progress = true;
                if let Ok(Some(frame)) = done {
                    self.outq.push_back(frame);
                }
            }

            // 2. Write what is queued, while the transport takes it.
            while !self.outq.is_empty() {
                match Pin::new(&mut self.io).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let frame = self.outq.pop_front().expect("queue is not empty");
                        if let Err(e) = Pin::new(&mut self.io).start_send(frame) {
                            return Poll::Ready(End::Io(e));
                        }
                        self.dirty = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Io(e)),
                    Poll::Pending => break,
                }
            }

            // 3. Read and serve.
            let mut budget = READ_BUDGET;
            while budget > 0 && self.can_read() {
                budget -= 1;
                match Pin::new(&mut self.io).poll_next(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        progress = true;
                        self.on_frame(frame, cx);
                    }
                    Poll::Ready(Some(Err(e))) if BadFrame::find(&e).is_some() => {
                        progress = true;
                        let reason = BadFrame::find(&e)
                            .map(|b| b.reason.clone())
                            .unwrap_or_default();
                        self.on_bad_frame(DecodeError::new(reason));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        progress = true;
                        match FrameTooLarge::find(&e) {
                            Some(too_large) => {
                                tracing::warn!(
                                    limit = too_large.limit,
                                    "peer sent an oversize frame"
                                );
                                self.notice(&too_large.to_string());
                                self.begin_end(End::BadPeer, true);
                            }
                            None => {
                                self.shared.pending.close();
                                return Poll::Ready(End::Io(e));
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        progress = true;
                        // The peer will send nothing more: fail our calls now.
                        // It may still read (a half-close): its handlers get
                        // the close linger to finish and send their replies.
                        self.begin_end(End::PeerClosed, false);
                    }
                    Poll::Pending => break,
                }
            }

            if progress {
                continue;
            }

            // 4. Nothing more to do right now: send what was written.
            if self.dirty {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.dirty = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Io(e)),
                    Poll::Pending => {}
                }
            }
            if self.outq.is_empty() && self.wbuf.capacity() > 0 {
                // Idle: hold no reply buffer until there is a reply to write
                // (one allocation per batch of replies, not per reply).
                self.wbuf = BytesMut::new();
            }
            if self.ending.is_some() {
                if let Some(linger) = &mut self.linger {
                    if linger.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(self.ending.take().expect("ending is set"));
                    }
                }
                if self.tasks.is_empty() && self.outq.is_empty() && !self.dirty {
                    return match Pin::new(&mut self.io).poll_close(cx) {
                        Poll::Ready(_) => Poll::Ready(self.ending.take().expect("ending is set")),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            return Poll::Pending;
        }
    }

    /// Graceful drain: keep reading (replies to our own calls must still
    /// arrive) but refuse new commands; close once handlers are done.
    fn begin_end_keep_reading(&mut self, reason: End) {
        if self.ending.is_none() {
            self.ending = Some(reason);
        }
    }

    fn can_read(&self) -> bool {
        self.reading
            && self.outq.len() < OUTQ_HIGH
            && self.tasks.len() < self.shared.config.max_in_flight
            && self.held.len() < self.shared.config.max_in_flight
    }

    fn on_frame(&mut self, frame: Bytes, cx: &mut Context<'_>) {
        let cmd = match self.shared.protocol.decode(frame) {
            Ok(cmd) => {
                self.bad_frames = 0;
                cmd
            }
            Err(e) => return self.on_bad_frame(e),
        };
        if cmd.is_reply() {
            return self.on_reply(cmd);
        }
        if self.gate.is_some() {
            self.held.push_back(cmd);
        } else if !self.accept_commands {
            if let Some(key) = &cmd.key {
                let msg = "the server is shutting down";
                self.push_reply(key, &Outcome::Error(msg.to_owned()));
            }
        } else {
            self.dispatch(cmd, cx);
        }
    }

    fn on_bad_frame(&mut self, e: DecodeError) {
        self.bad_frames += 1;
        tracing::warn!(error = %e, "invalid frame");
        let message = format!("invalid command: {e}");
        match e.key() {
            Some(key) => self.push_reply(key, &Outcome::Error(message)),
            None => self.notice(&message),
        }
        if self.bad_frames >= MAX_BAD_FRAMES {
            self.notice("too many invalid commands in a row; disconnecting");
            self.begin_end(End::BadPeer, true);
        }
    }

    fn on_reply(&mut self, cmd: Command) {
        let kind = ReplyKind::of(&cmd.action);
        match cmd.key {
            Some(key) => {
                let reply = Reply {
                    kind,
                    body: cmd.body,
                };
                if !self.shared.pending.complete(&key, reply) {
                    tracing::debug!(%key, "reply for no pending call dropped");
                }
            }
            None if kind != ReplyKind::Response => {
                let err = super::remote_error(&cmd.body);
                tracing::warn!(action = %cmd.action, message = %err, "peer reported an error");
            }
            None => tracing::debug!("reply without key dropped"),
        }
    }

    fn dispatch(&mut self, cmd: Command, cx: &mut Context<'_>) {
        if !self.shared.router.is_current(&self.routes) {
            self.routes = self.shared.router.snapshot();
        }
        let msg = Msg::new(self.shared.clone(), cmd);
        // Only when someone listens: building a span costs even when it is
        // discarded (e.g. with tracing's `log` feature on).
        let span = if tracing::span_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!("command", action = msg.action(), key = msg.key())
        } else {
            tracing::Span::none()
        };
        let mut fut = self.routes.serve(msg.clone());
        let first = {
            let _enter = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
        };
        match first {
            Ok(Poll::Ready(outcome)) => {
                log_outcome(&msg, &outcome);
                if let Some(key) = msg.key() {
                    self.push_reply(key, &outcome);
                }
            }
            Ok(Poll::Pending) => {
                let shared = self.shared.clone();
                let task = async move {
                    let outcome = AssertUnwindSafe(fut)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(Outcome::from_panic);
                    log_outcome(&msg, &outcome);
                    let key = msg.key()?;
                    let mut buf = BytesMut::with_capacity(128);
                    encode_reply(&shared, key, &outcome, &mut buf);
                    Some(buf.freeze())
                };
                self.tasks.spawn(task.instrument(span));
            }
            Err(panic) => {
                let outcome = Outcome::from_panic(panic);
                log_outcome(&msg, &outcome);
                if let Some(key) = msg.key() {
                    self.push_reply(key, &outcome);
                }
            }
        }
    }

    fn push_reply(&mut self, key: &str, outcome: &Outcome) {
        // Frames the handler queued before it returned go out before its reply.
        while self.rx_open {
            match self.rx.try_recv() {
                Ok(frame) => self.outq.push_back(frame),
                Err(_) => break,
            }
        }
        if self.wbuf.capacity() - self.wbuf.len() < 512 {
            // Replies are carved out of 4 KiB chunks (a split buffer would
            // otherwise reallocate at the size of each reply).
            self.wbuf = BytesMut::with_capacity(4096);
        }
        encode_reply(&self.shared, key, outcome, &mut self.wbuf);
        let frame = self.wbuf.split().freeze();
        self.outq.push_back(frame);
    }

    /// A keyless `drs.error` telling the peer what went wrong.
    fn notice(&mut self, message: &str) {
        let body = MessageBody(message);
        match encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            None,
            ERROR,
            OutBody::Value(&body),
        ) {
            Ok(frame) => self.outq.push_back(frame),
            Err(e) => tracing::error!(error = %e, "could not encode a notice"),
        }
    }
}

fn log_outcome(msg: &Msg, outcome: &Outcome) {
    match outcome {
        Outcome::Exception(m) => tracing::error!(action = msg.action(), key = msg.key(), "{m}"),
        Outcome::Error(m) => tracing::debug!(action = msg.action(), key = msg.key(), "error: {m}"),
        _ => {}
    }
}

/// Encodes the reply for `outcome` into `dst`. A value that cannot be
/// encoded, or a reply over the maximum frame size, becomes a `drs.exception`
/// saying so.
pub(crate) fn encode_reply(shared: &Shared, key: &str, outcome: &Outcome, dst: &mut BytesMut) {
    let protocol = &*shared.protocol;
    let max = shared.config.max_frame_len;
    let (action, body) = match outcome {
        Outcome::Value(v) => (RESPONSE, OutBody::Value(&**v)),
        Outcome::Body(b) => (RESPONSE, OutBody::Raw(b)),
        Outcome::Error(m) => (
            ERROR,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
        Outcome::Exception(m) => (
            EXCEPTION,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
    };
    let start = dst.len();
    let problem = match encode_into(
        protocol,
        &Outgoing::new(action).key(Some(key)).body(body),
        dst,
    ) {
        Err(e) => Some(format!("failed to encode the reply: {e}")),
        Ok(()) if dst.len() - start > max => Some(format!(
            "reply of {} bytes exceeds the maximum frame size of {max} bytes",
            dst.len() - start
        )),
        Ok(()) => None,
    };
    if let Some(message) = problem {
        dst.truncate(start);
        tracing::error!(key, "{message}");
        let body = MessageBody(&message);
        let out = Outgoing::new(EXCEPTION)
            .key(Some(key))
            .body(OutBody::Value(&body));
        if let Err(e) = encode_into(protocol, &out, dst) {
            tracing::error!(error = %e, "could not encode an exception reply");
        }
    }
}
