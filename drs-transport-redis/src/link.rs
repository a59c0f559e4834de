//! One drs connection over Redis lists: frames and control messages to the
//! peer's list, a window of bytes each way. Liveness is the heartbeat keys'
//! business (see [`crate::queue`]), which end a link with [`Link::fail`].

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use drs_core::FrameTooLarge;
use futures::{future::BoxFuture, task::AtomicWaker, FutureExt, Sink, Stream};
use tokio::{sync::mpsc, time::Sleep};

/// A data frame.
pub(crate) const DATA: u8 = b'D';
/// An acknowledgement of bytes consumed (decimal).
pub(crate) const ACK: u8 = b'A';
/// The peer closed.
pub(crate) const CLOSE: u8 = b'C';

/// Sends frames or a control message to the peer, in order, in one go.
pub(crate) trait Out: Send + Sync + 'static {
    fn send(&self, kind: u8, payloads: Vec<Bytes>) -> BoxFuture<'static, io::Result<()>>;
}

/// Frames a connection holds before it waits for those on their way.
const BATCH: usize = 256;

type Frames = mpsc::UnboundedReceiver<io::Result<Bytes>>;

/// The receiving side's plumbing, shared by the connection and whoever
/// routes messages to it.
#[derive(Clone, Debug)]
pub(crate) struct Link(Arc<LinkState>);

#[derive(Debug)]
pub(crate) struct LinkState {
    credit: AtomicI64,
    credit_waker: AtomicWaker,
    queued: AtomicUsize,
    window: usize,
    tx: Mutex<Option<mpsc::UnboundedSender<io::Result<Bytes>>>>,
    rx: Mutex<Option<Frames>>,
}

/// Whether a link goes on after a message.
pub(crate) enum Route {
    Keep,
    End,
}

impl Link {
    pub(crate) fn new(window: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Link(Arc::new(LinkState {
            credit: AtomicI64::new(window as i64),
            credit_waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            window,
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
        }))
    }

    /// Handles one message from the peer.
    pub(crate) fn route(&self, kind: u8, payload: Bytes) -> Route {
        let s = &self.0;
        match kind {
            DATA => {
                let len = payload.len();
                let queued = s.queued.fetch_add(len, Ordering::AcqRel) + len;
                if queued > 2 * s.window {
                    self.fail(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the peer sent past its flow-control window ({queued} bytes unread)"
                        ),
                    ));
                    return Route::End;
                }
                let sent =
                    s.tx.lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|tx| tx.send(Ok(payload)).is_ok());
                if sent {
                    Route::Keep
                } else {
                    Route::End
                }
            }
            ACK => {
                let n = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(i64::MAX as u64 / 2) as i64;
                s.credit.fetch_add(n, Ordering::AcqRel);
                s.credit_waker.wake();
                Route::Keep
            }
            CLOSE => {
                s.tx.lock().unwrap().take();
                Route::End
            }
            _ => Route::Keep,
        }
    }

    /// Ends the link with `err` (what the connection reads last).
    pub(crate) fn fail(&self, err: io::Error) {
        if let Some(tx) = self.0.tx.lock().unwrap().take() {
            let _ = tx.send(Err(err));
        }
    }
}

type Reply = Box<dyn FnOnce(Option<Bytes>) -> BoxFuture<'static, io::Result<()>> + Send>;

enum Kind {
    Link {
        rx: Frames,
        link: Link,
        out: Box<dyn Out>,
        unacked: usize,
        acking: Option<BoxFuture<'static, io::Result<()>>>,
        close_sent: bool,
        on_drop: Option<Box<dyn FnOnce() + Send>>,
    },
    OneShot {
        frame: Option<Bytes>,
        answered: bool,
        linger: Pin<Box<Sleep>>,
        waker: Option<Waker>,
        reply: Option<Reply>,
    },
}

/// A drs connection over a message bus, as [`drs_core::Transport`].
pub struct LinkIo {
    kind: Kind,
    max_frame_len: usize,
    sending: Option<BoxFuture<'static, io::Result<()>>>,
    /// Frames written and not yet sent: they go together on the next
    /// flush (one round trip for a burst).
    batch: Vec<Bytes>,
    ended: bool,
}

impl std::fmt::Debug for LinkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Link { .. } => "link",
            Kind::OneShot { .. } => "one request",
        };
        f.debug_struct("LinkIo").field("kind", &kind).finish()
    }
}

impl LinkIo {
    pub(crate) fn link(
        link: Link,
        out: Box<dyn Out>,
        max_frame_len: usize,
        on_drop: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let rx = link
            .0
            .rx
            .lock()
            .unwrap()
            .take()
            .expect("a link is taken by one connection");
        Self {
            kind: Kind::Link {
                rx,
                link,
                out,
                unacked: 0,
                acking: None,
                close_sent: false,
                on_drop,
            },
            max_frame_len,
            sending: None,
            batch: Vec::new(),
            ended: false,
        }
    }

    pub(crate) fn oneshot(
        frame: Bytes,
        max_frame_len: usize,
        linger: Duration,
        reply: Reply,
    ) -> Self {
        Self {
            kind: Kind::OneShot {
                frame: Some(frame),
                answered: false,
                linger: Box::pin(tokio::time::sleep(linger)),
                waker: None,
                reply: Some(reply),
            },
            max_frame_len,
            sending: None,
            batch: Vec::new(),
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

    /// Sends what is batched (after what is on its way) until all is out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            futures::ready!(self.poll_sending(cx))?;
            if self.batch.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Kind::Link { out, .. } = &self.kind {
                self.sending = Some(out.send(DATA, std::mem::take(&mut self.batch)));
            } else {
                self.batch.clear();
            }
        }
    }
}

/// Acknowledges what was consumed once it is a quarter window and no
/// acknowledgement is on its way.
fn ack(
    out: &dyn Out,
    link: &Link,
    unacked: &mut usize,
    acking: &mut Option<BoxFuture<'static, io::Result<()>>>,
    cx: &mut Context<'_>,
) {
    if acking.is_some() || *unacked < link.0.window / 4 {
        return;
    }
    let n = std::mem::take(unacked);
    let mut f = out.send(ACK, vec![Bytes::from(n.to_string())]);
    if f.poll_unpin(cx).is_pending() {
        *acking = Some(f);
    }
}

impl Stream for LinkIo {
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
                link,
                out,
                unacked,
                acking,
                ..
            } => {
                if let Some(f) = acking {
                    if f.poll_unpin(cx).is_ready() {
                        *acking = None;
                    }
                }
                ack(out.as_ref(), link, unacked, acking, cx);
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let len = frame.len();
                        link.0.queued.fetch_sub(len, Ordering::AcqRel);
                        *unacked += len;
                        ack(out.as_ref(), link, unacked, acking, cx);
                        if len > max {
                            this.ended = true;
                            return Poll::Ready(Some(Err(FrameTooLarge { limit: max }.into_io())));
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.ended = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(None) => {
                        this.ended = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Sink<Bytes> for LinkIo {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.batch.len() >= BATCH {
            futures::ready!(this.poll_drain(cx))?;
        } else if this.sending.is_some() {
            // Progress for what is on its way; waiting on it only when
            // the batch is full.
            if let Poll::Ready(r) = this.poll_sending(cx) {
                r?;
            }
        }
        if let Kind::Link { link, .. } = &this.kind {
            let s = &link.0;
            if s.credit.load(Ordering::Acquire) <= 0 {
                s.credit_waker.register(cx.waker());
                if s.credit.load(Ordering::Acquire) <= 0 {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Link { link, out, .. } => {
                let _ = out;
                link.0
                    .credit
                    .fetch_sub(frame.len() as i64, Ordering::AcqRel);
                this.batch.push(frame);
            }
            Kind::OneShot {
                answered,
                waker,
                reply,
                ..
            } => {
                if *answered {
                    tracing::debug!("a request through the queue is answered once; frame dropped");
                    return Ok(());
                }
                *answered = true;
                if let Some(w) = waker.take() {
                    w.wake();
                }
                if let Some(reply) = reply.take() {
                    this.sending = Some(reply(Some(frame)));
                }
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        futures::ready!(this.poll_drain(cx))?;
        if let Kind::Link {
            out, close_sent, ..
        } = &mut this.kind
        {
            if !*close_sent {
                *close_sent = true;
                this.sending = Some(out.send(CLOSE, vec![Bytes::new()]));
                futures::ready!(this.poll_sending(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LinkIo {
    fn drop(&mut self) {
        let rt = tokio::runtime::Handle::try_current().ok();
        match &mut self.kind {
            Kind::Link {
                out,
                close_sent,
                on_drop,
                ..
            } => {
                if !*close_sent {
                    *close_sent = true;
                    if let Some(rt) = &rt {
                        rt.spawn(out.send(CLOSE, vec![Bytes::new()]));
                    }
                }
                if let Some(f) = on_drop.take() {
                    f();
                }
            }
            Kind::OneShot { reply, .. } => {
                // Never answered (a fire, or the linger ran out): the
                // entry still leaves the worker's processing list.
                if let (Some(reply), Some(rt)) = (reply.take(), rt) {
                    rt.spawn(reply(None));
                }
            }
        }
    }
}
