//! One drs connection over NATS: frames to the peer's subject, frames from
//! ours, a window of bytes each way, heartbeats.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use async_nats::{Client as Nats, Message, RequestErrorKind, Subject};
use bytes::Bytes;
use drs_core::FrameTooLarge;
use futures::{future::BoxFuture, task::AtomicWaker, FutureExt, Sink, Stream, StreamExt};
use tokio::{
    sync::mpsc,
    time::{Instant, Sleep},
};

use crate::{control, control_headers, NatsConfig};

/// What both ends of a connection's plumbing share.
#[derive(Debug)]
pub(crate) struct LinkState {
    /// Bytes this side may still send before the peer acknowledges more.
    credit: AtomicI64,
    credit_waker: AtomicWaker,
    /// Frame bytes received and not yet taken by the connection.
    queued: AtomicUsize,
    window: usize,
    /// When the peer was last heard from, in ms since `epoch`.
    heard: AtomicU64,
    epoch: Instant,
}

impl LinkState {
    pub(crate) fn new(window: usize) -> Arc<Self> {
        Arc::new(Self {
            credit: AtomicI64::new(window as i64),
            credit_waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            window,
            heard: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn heard_now(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heard.store(ms, Ordering::Relaxed);
    }

    fn last_heard(&self) -> Instant {
        self.epoch + Duration::from_millis(self.heard.load(Ordering::Relaxed))
    }

    fn add_credit(&self, n: u64) {
        let n = n.min(i64::MAX as u64 / 2) as i64;
        self.credit.fetch_add(n, Ordering::AcqRel);
        self.credit_waker.wake();
    }
}

/// Whether the connection a message was for goes on.
pub(crate) enum Control {
    Keep,
    End,
}

/// Handles one message from the peer: control, or a frame for the
/// connection.
pub(crate) async fn route(
    nats: &Nats,
    state: &LinkState,
    tx: &mpsc::UnboundedSender<io::Result<Bytes>>,
    msg: Message,
) -> Control {
    state.heard_now();
    match control(&msg) {
        Some("ping") => {
            if let Some(reply) = msg.reply {
                let _ = nats
                    .publish_with_headers(reply, control_headers("pong"), Bytes::new())
                    .await;
            }
            Control::Keep
        }
        Some("close") | Some("gone") => Control::End,
        Some(c) => {
            if let Some(n) = c.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()) {
                state.add_credit(n);
            }
            Control::Keep
        }
        None => {
            let len = msg.payload.len();
            let queued = state.queued.fetch_add(len, Ordering::AcqRel) + len;
            if queued > 2 * state.window {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the peer sent past its flow-control window ({} bytes unread)",
                        queued
                    ),
                )));
                return Control::End;
            }
            match tx.send(Ok(msg.payload)) {
                Ok(()) => Control::Keep,
                Err(_) => Control::End,
            }
        }
    }
}

/// A client connection's own reader: its inbox, until the connection or
/// the subscription goes.
pub(crate) async fn pump(
    nats: Nats,
    mut sub: async_nats::Subscriber,
    tx: mpsc::UnboundedSender<io::Result<Bytes>>,
    state: Arc<LinkState>,
) {
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => {
                    if let Control::End = route(&nats, &state, &tx, msg).await {
                        break;
                    }
                }
                None => break,
            },
            () = tx.closed() => break,
        }
    }
    let _ = sub.unsubscribe().await;
}

enum Ping {
    Alive,
    Gone,
    NoAnswer,
}

enum Kind {
    /// A connection with a peer of its own.
    Link {
        rx: mpsc::UnboundedReceiver<io::Result<Bytes>>,
        state: Arc<LinkState>,
        peer: Subject,
        config: NatsConfig,
        /// Consumed bytes not yet acknowledged.
        unacked: usize,
        acking: Option<BoxFuture<'static, ()>>,
        heartbeat: Pin<Box<Sleep>>,
        pinging: Option<BoxFuture<'static, Ping>>,
        missed: u32,
        close_sent: bool,
        on_drop: Option<Box<dyn FnOnce() + Send>>,
    },
    /// A plain NATS message: one frame in, at most one frame out.
    OneShot {
        frame: Option<Bytes>,
        reply: Option<Subject>,
        answered: bool,
        linger: Pin<Box<Sleep>>,
        waker: Option<Waker>,
    },
}

/// A drs connection over NATS, as [`drs_core::Transport`]: made by
/// [`NatsListener`](crate::NatsListener) and [`NatsDialer`](crate::NatsDialer).
pub struct NatsIo {
    nats: Nats,
    kind: Kind,
    max_frame_len: usize,
    sending: Option<BoxFuture<'static, io::Result<()>>>,
    ended: bool,
}

impl std::fmt::Debug for NatsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Link { peer, .. } => format!("link to {peer}"),
            Kind::OneShot { reply, .. } => format!("one message, reply to {reply:?}"),
        };
        f.debug_struct("NatsIo").field("kind", &kind).finish()
    }
}

impl NatsIo {
    pub(crate) fn link(
        nats: Nats,
        peer: Subject,
        state: Arc<LinkState>,
        rx: mpsc::UnboundedReceiver<io::Result<Bytes>>,
        max_frame_len: usize,
        config: NatsConfig,
        on_drop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        state.heard_now();
        let heartbeat = Box::pin(tokio::time::sleep(config.heartbeat));
        Self {
            nats,
            kind: Kind::Link {
                rx,
                state,
                peer,
                config,
                unacked: 0,
                acking: None,
                heartbeat,
                pinging: None,
                missed: 0,
                close_sent: false,
                on_drop,
            },
            max_frame_len,
            sending: None,
            ended: false,
        }
    }

    pub(crate) fn oneshot(
        nats: Nats,
        frame: Bytes,
        reply: Option<Subject>,
        max_frame_len: usize,
        linger: Duration,
    ) -> Self {
        Self {
            nats,
            kind: Kind::OneShot {
                frame: Some(frame),
                reply,
                answered: false,
                linger: Box::pin(tokio::time::sleep(linger)),
                waker: None,
            },
            max_frame_len,
            sending: None,
            ended: false,
        }
    }

    fn poll_sending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(f) = &mut self.sending {
            let r = futures::ready!(f.poll_unpin(cx));
            self.sending = None;
            r?;
        }
        Poll::Ready(Ok(()))
    }

    fn publish(&mut self, subject: Subject, frame: Bytes) {
        let nats = self.nats.clone();
        self.sending = Some(Box::pin(async move {
            nats.publish(subject, frame)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
        }));
    }
}

/// Acknowledges what the connection consumed, once it is a quarter window
/// and no acknowledgement is on its way (the next goes when that one is
/// out: the stream is woken by it).
fn ack(
    nats: &Nats,
    peer: &Subject,
    state: &LinkState,
    unacked: &mut usize,
    acking: &mut Option<BoxFuture<'static, ()>>,
    cx: &mut Context<'_>,
) {
    if acking.is_some() || *unacked < state.window / 4 {
        return;
    }
    let n = std::mem::take(unacked);
    let nats = nats.clone();
    let peer = peer.clone();
    let mut f: BoxFuture<'static, ()> = Box::pin(async move {
        let h = control_headers(&format!("ack {n}"));
        let _ = nats.publish_with_headers(peer, h, Bytes::new()).await;
    });
    if f.poll_unpin(cx).is_pending() {
        *acking = Some(f);
    }
}

fn ping(nats: Nats, peer: Subject, timeout: Duration) -> BoxFuture<'static, Ping> {
    Box::pin(async move {
        let request = async_nats::Request::new()
            .headers(control_headers("ping"))
            .timeout(Some(timeout));
        match nats.send_request(peer, request).await {
            Ok(answer) if control(&answer) == Some("gone") => Ping::Gone,
            Ok(_) => Ping::Alive,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Ping::Gone,
            Err(_) => Ping::NoAnswer,
        }
    })
}

impl Stream for NatsIo {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let max = this.max_frame_len;
        match &mut this.kind {
            Kind::OneShot {
                frame,
                answered,
                linger,
                waker,
                ..
            } => {
                if let Some(f) = frame.take() {
                    if f.len() > max {
                        this.ended = true;
                        return Poll::Ready(Some(Err(FrameTooLarge { limit: max }.into_io())));
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                if *answered || linger.as_mut().poll(cx).is_ready() {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Kind::Link {
                rx,
                state,
                peer,
                config,
                unacked,
                acking,
                heartbeat,
                pinging,
                missed,
                ..
            } => {
                if let Some(f) = acking {
                    if f.poll_unpin(cx).is_ready() {
                        *acking = None;
                    }
                }
                ack(&this.nats, peer, state, unacked, acking, cx);
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let len = frame.len();
                        state.queued.fetch_sub(len, Ordering::AcqRel);
                        *unacked += len;
                        ack(&this.nats, peer, state, unacked, acking, cx);
                        if len > max {
                            this.ended = true;
                            return Poll::Ready(Some(Err(FrameTooLarge { limit: max }.into_io())));
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(None) => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {}
                }
                // Nothing to read: is the peer still there?
                loop {
                    if let Some(p) = pinging {
                        match p.poll_unpin(cx) {
                            Poll::Pending => {}
                            Poll::Ready(Ping::Alive) => {
                                *pinging = None;
                                *missed = 0;
                                state.heard_now();
                            }
                            Poll::Ready(Ping::Gone) => {
                                this.ended = true;
                                return Poll::Ready(Some(Err(io::Error::new(
                                    io::ErrorKind::ConnectionReset,
                                    format!("the peer at {peer} is gone (no responders on NATS)"),
                                ))));
                            }
                            Poll::Ready(Ping::NoAnswer) => {
                                *pinging = None;
                                *missed += 1;
                                if *missed >= config.missed_heartbeats {
                                    this.ended = true;
                                    return Poll::Ready(Some(Err(io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        format!(
                                            "no heartbeat from the peer at {peer} in {:?}",
                                            config.heartbeat * *missed
                                        ),
                                    ))));
                                }
                            }
                        }
                    }
                    if heartbeat.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = state.last_heard() + config.heartbeat;
                    let now = Instant::now();
                    if due > now {
                        heartbeat.as_mut().reset(due);
                        continue;
                    }
                    heartbeat.as_mut().reset(now + config.heartbeat);
                    if pinging.is_none() {
                        *pinging = Some(ping(this.nats.clone(), peer.clone(), config.heartbeat));
                    }
                }
            }
        }
    }
}

impl Sink<Bytes> for NatsIo {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        futures::ready!(this.poll_sending(cx))?;
        if let Kind::Link { state, .. } = &this.kind {
            if state.credit.load(Ordering::Acquire) <= 0 {
                state.credit_waker.register(cx.waker());
                if state.credit.load(Ordering::Acquire) <= 0 {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        let limit = this.nats.server_info().max_payload;
        if limit > 0 && frame.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame of {} bytes exceeds the NATS server's max_payload of {limit} bytes",
                    frame.len()
                ),
            ));
        }
        match &mut this.kind {
            Kind::Link { state, peer, .. } => {
                state.credit.fetch_sub(frame.len() as i64, Ordering::AcqRel);
                let peer = peer.clone();
                this.publish(peer, frame);
            }
            Kind::OneShot {
                reply,
                answered,
                waker,
                ..
            } => {
                if *answered {
                    tracing::debug!("a plain NATS request is answered once; frame dropped");
                    return Ok(());
                }
                *answered = true;
                if let Some(w) = waker.take() {
                    w.wake();
                }
                if let Some(reply) = reply.clone() {
                    this.publish(reply, frame);
                }
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_sending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        futures::ready!(this.poll_sending(cx))?;
        if let Kind::Link {
            peer, close_sent, ..
        } = &mut this.kind
        {
            if !*close_sent {
                *close_sent = true;
                let nats = this.nats.clone();
                let peer = peer.clone();
                this.sending = Some(Box::pin(async move {
                    nats.publish_with_headers(peer, control_headers("close"), Bytes::new())
                        .await
                        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
                    nats.flush()
                        .await
                        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))
                }));
                futures::ready!(this.poll_sending(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for NatsIo {
    fn drop(&mut self) {
        if let Kind::Link {
            peer,
            close_sent,
            on_drop,
            ..
        } = &mut self.kind
        {
            if !*close_sent {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let nats = self.nats.clone();
                    let peer = peer.clone();
                    rt.spawn(async move {
                        let h = control_headers("close");
                        let _ = nats.publish_with_headers(peer, h, Bytes::new()).await;
                        // Written before this last handle on the NATS
                        // connection may go.
                        let _ = nats.flush().await;
                    });
                }
            }
            if let Some(f) = on_drop.take() {
                f();
            }
        }
    }
}
