//! One drs connection over a message bus: what drs-transport-nats and
//! drs-transport-redis share.
//!
//! A bus (NATS subjects, Redis lists) moves whole messages and pushes
//! nothing back. A [`LinkIo`] turns one peer-to-peer conversation on it into
//! a [`drs_core::Transport`]:
//!
//! - **Frames go in batches**: what the connection writes between two
//!   flushes goes to [`Out::send`] at once (one `RPUSH` of many values, a
//!   run of NATS publishes), at most [`BATCH`] before the writer waits.
//! - **A window of bytes each way**, as HTTP/2 has: a side sends while less
//!   than the window is unacknowledged; the receiver acknowledges what its
//!   connection consumed, a quarter window at a time ([`Kind::Ack`]). A slow
//!   reader thus holds its peer's writer up, and the server's own outbound
//!   limits and slow-consumer policy apply as on a socket. A peer that sends
//!   past two windows is cut off.
//! - **One-request connections**: a plain request from another language is
//!   a connection of one frame that ends with its one reply
//!   ([`LinkIo::oneshot`]).
//!
//! What receives the bus's messages routes them to the [`Link`]
//! ([`Link::route`]); liveness is the transport's business (NATS pings,
//! Redis heartbeat keys), which ends a link with [`Link::fail`] and can ask
//! [`Link::last_heard`].

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use drs_core::{FrameTooLarge, Inbound};
use futures::{future::BoxFuture, task::AtomicWaker, FutureExt, Sink, Stream};
use tokio::{sync::mpsc, time::Sleep};

/// What a message between the two sides is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame.
    Data,
    /// An acknowledgement of bytes consumed (the payload: a decimal count).
    Ack,
    /// The sender closed.
    Close,
}

/// Sends messages of one kind to the peer, in order, in one go.
pub trait Out: Send + Sync + 'static {
    /// Sends `payloads`, each a message of `kind`.
    fn send(&self, kind: Kind, payloads: Vec<Bytes>) -> BoxFuture<'static, io::Result<()>>;

    /// The largest frame the bus carries, if it has a limit.
    fn max_payload(&self) -> Option<usize> {
        None
    }
}

/// Frames a connection holds before it waits for those on their way.
pub const BATCH: usize = 256;

/// The settings every transport over a bus shares (NATS, Redis), set
/// through [`LinkSettings`] on the transport's own config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// How long a side may hear nothing from the other before it checks
    /// (NATS: pings; Redis: heartbeat keys). Default 1 s.
    pub heartbeat: Duration,
    /// Bytes a side may send before the other acknowledges them. Default
    /// 1 MiB.
    pub window: usize,
    /// How long a connect waits for a worker's answer. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a plain request without a reply (a fire) is held as a
    /// connection while its handler runs. Default 30 s.
    pub oneshot_linger: Duration,
    /// Connections a worker holds before its server takes them. Default
    /// 1024.
    pub accept_queue: usize,
    /// Plain requests a worker serves at once (each a connection of one
    /// request, not counted against the server's connection limit).
    /// Default 256. What happens past it is the transport's (NATS answers
    /// `refused busy`; a Redis worker leaves the queue to the others).
    pub max_one_requests: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            window: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            oneshot_linger: Duration::from_secs(30),
            accept_queue: 1024,
            max_one_requests: 256,
        }
    }
}

/// The setters of [`LinkConfig`], on any config that holds one
/// (`NatsConfig`, `RedisConfig`), so that they are written once.
pub trait LinkSettings: Sized {
    /// The settings shared by bus transports.
    fn link_mut(&mut self) -> &mut LinkConfig;

    /// Sets [`heartbeat`](LinkConfig::heartbeat) (at least 10 ms).
    fn heartbeat(mut self, every: Duration) -> Self {
        self.link_mut().heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Sets [`window`](LinkConfig::window) (at least 1 KiB).
    fn window(mut self, bytes: usize) -> Self {
        self.link_mut().window = bytes.max(1024);
        self
    }

    /// Sets [`connect_timeout`](LinkConfig::connect_timeout).
    fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.link_mut().connect_timeout = timeout;
        self
    }

    /// Sets [`oneshot_linger`](LinkConfig::oneshot_linger).
    fn oneshot_linger(mut self, linger: Duration) -> Self {
        self.link_mut().oneshot_linger = linger;
        self
    }

    /// Sets [`accept_queue`](LinkConfig::accept_queue) (at least 1).
    fn accept_queue(mut self, n: usize) -> Self {
        self.link_mut().accept_queue = n.max(1);
        self
    }

    /// Sets [`max_one_requests`](LinkConfig::max_one_requests) (at least 1).
    fn max_one_requests(mut self, n: usize) -> Self {
        self.link_mut().max_one_requests = n.max(1);
        self
    }
}

impl LinkSettings for LinkConfig {
    fn link_mut(&mut self) -> &mut LinkConfig {
        self
    }
}

type Frames = mpsc::UnboundedReceiver<io::Result<Bytes>>;

/// The receiving side's plumbing, shared by the connection and whoever
/// routes messages to it.
#[derive(Clone, Debug)]
pub struct Link(Arc<LinkState>);

#[derive(Debug)]
struct LinkState {
    credit: AtomicI64,
    credit_waker: AtomicWaker,
    queued: AtomicUsize,
    window: usize,
    tx: Mutex<Option<mpsc::UnboundedSender<io::Result<Bytes>>>>,
    rx: Mutex<Option<Frames>>,
    /// When the peer was last heard from, in ms since `epoch`.
    heard: AtomicU64,
    epoch: Instant,
}

/// Whether a link goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It does.
    Keep,
    /// It has ended: forget it.
    End,
}

impl Link {
    /// A link allowing `window` unacknowledged bytes each way.
    pub fn new(window: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Link(Arc::new(LinkState {
            credit: AtomicI64::new(window as i64),
            credit_waker: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            window,
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(Some(rx)),
            heard: AtomicU64::new(0),
            epoch: Instant::now(),
        }))
    }

    /// Notes that the peer was heard from (any message counts).
    pub fn heard(&self) {
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.heard.store(ms, Ordering::Relaxed);
    }

    /// When the peer was last heard from (the link's creation, if never).
    pub fn last_heard(&self) -> Instant {
        self.0.epoch + Duration::from_millis(self.0.heard.load(Ordering::Relaxed))
    }

    /// Whether the link has ended (its connection gone, or failed).
    pub fn is_ended(&self) -> bool {
        self.0
            .tx
            .lock()
            .unwrap()
            .as_ref()
            .is_none_or(|tx| tx.is_closed())
    }

    /// Handles one message from the peer.
    pub fn route(&self, kind: Kind, payload: Bytes) -> Route {
        let s = &self.0;
        self.heard();
        match kind {
            Kind::Data => {
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
            Kind::Ack => {
                let n = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    .min(i64::MAX as u64 / 2) as i64;
                s.credit.fetch_add(n, Ordering::AcqRel);
                s.credit_waker.wake();
                Route::Keep
            }
            Kind::Close => {
                s.tx.lock().unwrap().take();
                Route::End
            }
        }
    }

    /// Ends the link with `err` (what the connection reads last).
    pub fn fail(&self, err: io::Error) {
        if let Some(tx) = self.0.tx.lock().unwrap().take() {
            let _ = tx.send(Err(err));
        }
    }
}

/// The bound of a listener's one-request connections (plain requests
/// through a broker): they have places of their own, so that however many
/// arrive they never take the server's connection slots from socket
/// clients.
#[derive(Debug, Clone)]
pub struct OneRequests(Arc<tokio::sync::Semaphore>);

/// One of the places of [`OneRequests`].
#[derive(Debug)]
pub struct OneRequestPlace(tokio::sync::OwnedSemaphorePermit);

impl OneRequests {
    /// At most `max` at once (at least 1).
    pub fn new(max: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(max.max(1))))
    }

    /// A place now, if one is free.
    pub fn try_take(&self) -> Option<OneRequestPlace> {
        self.0.clone().try_acquire_owned().ok().map(OneRequestPlace)
    }

    /// A place, once one is free.
    pub async fn take(&self) -> OneRequestPlace {
        // The semaphore is never closed.
        OneRequestPlace(self.0.clone().acquire_owned().await.expect("never closed"))
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Answers a one-request connection: with its reply frame, or `None` when
/// it ended without one.
pub type Reply = Box<dyn FnOnce(Option<Bytes>) -> BoxFuture<'static, io::Result<()>> + Send>;

enum Mode {
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
    kind: Mode,
    /// A place among its listener's one-request connections, given back
    /// when the connection is dropped.
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
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
            Mode::Link { .. } => "link",
            Mode::OneShot { .. } => "one request",
        };
        f.debug_struct("LinkIo").field("kind", &kind).finish()
    }
}

impl LinkIo {
    /// The connection of `link`, sending through `out`; `on_drop` runs
    /// when it is dropped (to forget the link where messages are routed).
    pub fn link(
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
            kind: Mode::Link {
                rx,
                link,
                out,
                unacked: 0,
                acking: None,
                close_sent: false,
                on_drop,
            },
            _place: None,
            max_frame_len,
            sending: None,
            batch: Vec::new(),
            ended: false,
        }
    }

    /// A connection of one frame in and at most one out, answered through
    /// `reply`; it ends once answered, or after `linger` (a fire).
    pub fn oneshot(frame: Bytes, max_frame_len: usize, linger: Duration, reply: Reply) -> Self {
        Self {
            kind: Mode::OneShot {
                frame: Some(frame),
                answered: false,
                linger: Box::pin(tokio::time::sleep(linger)),
                waker: None,
                reply: Some(reply),
            },
            _place: None,
            max_frame_len,
            sending: None,
            batch: Vec::new(),
            ended: false,
        }
    }

    /// Holds `place` (one of its listener's [`OneRequests`]) for as long as
    /// the connection lives.
    pub fn holding(mut self, place: OneRequestPlace) -> Self {
        self._place = Some(place.0);
        self
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
            if let Mode::Link { out, .. } = &self.kind {
                self.sending = Some(out.send(Kind::Data, std::mem::take(&mut self.batch)));
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
    let mut f = out.send(Kind::Ack, vec![Bytes::from(n.to_string())]);
    if f.poll_unpin(cx).is_pending() {
        *acking = Some(f);
    }
}

impl Stream for LinkIo {
    type Item = io::Result<Inbound>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let max = this.max_frame_len;
        match &mut this.kind {
            Mode::OneShot {
                frame,
                answered,
                linger,
                waker,
                ..
            } => {
                if let Some(f) = frame.take() {
                    if f.len() > max {
                        this.ended = true;
                        return Poll::Ready(Some(Ok(Inbound::TooLarge(FrameTooLarge {
                            limit: max,
                        }))));
                    }
                    return Poll::Ready(Some(Ok(Inbound::Frame(f))));
                }
                if *answered || linger.as_mut().poll(cx).is_ready() {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Mode::Link {
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
                            return Poll::Ready(Some(Ok(Inbound::TooLarge(FrameTooLarge {
                                limit: max,
                            }))));
                        }
                        Poll::Ready(Some(Ok(Inbound::Frame(frame))))
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
        if let Mode::Link { link, .. } = &this.kind {
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
        if let Mode::Link { out, .. } = &this.kind {
            if let Some(limit) = out.max_payload().filter(|l| frame.len() > *l) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a frame of {} bytes exceeds the bus's largest message of {limit} bytes",
                        frame.len()
                    ),
                ));
            }
        }
        match &mut this.kind {
            Mode::Link { link, out, .. } => {
                let _ = out;
                link.0
                    .credit
                    .fetch_sub(frame.len() as i64, Ordering::AcqRel);
                this.batch.push(frame);
            }
            Mode::OneShot {
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
        if let Mode::Link {
            out, close_sent, ..
        } = &mut this.kind
        {
            if !*close_sent {
                *close_sent = true;
                this.sending = Some(out.send(Kind::Close, vec![Bytes::new()]));
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
            Mode::Link {
                out,
                close_sent,
                on_drop,
                ..
            } => {
                if !*close_sent {
                    *close_sent = true;
                    if let Some(rt) = &rt {
                        rt.spawn(out.send(Kind::Close, vec![Bytes::new()]));
                    }
                }
                if let Some(f) = on_drop.take() {
                    f();
                }
            }
            Mode::OneShot { reply, .. } => {
                // Never answered (a fire, or the linger ran out): the
                // entry still leaves the worker's processing list.
                if let (Some(reply), Some(rt)) = (reply.take(), rt) {
                    rt.spawn(reply(None));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_settings_are_set_once_for_every_bus_config() {
        let c = LinkConfig::default()
            .heartbeat(Duration::from_millis(1))
            .window(10)
            .accept_queue(0)
            .max_one_requests(0)
            .connect_timeout(Duration::from_secs(2))
            .oneshot_linger(Duration::from_secs(3));
        assert_eq!(c.heartbeat, Duration::from_millis(10), "at least 10 ms");
        assert_eq!((c.window, c.accept_queue, c.max_one_requests), (1024, 1, 1));
        assert_eq!(
            (c.connect_timeout, c.oneshot_linger),
            (Duration::from_secs(2), Duration::from_secs(3))
        );
    }

    use super::*;

    #[tokio::test]
    async fn one_request_places_are_bounded_and_given_back() {
        let places = OneRequests::new(2);
        let a = places.try_take().expect("a place");
        let _b = places.try_take().expect("a place");
        assert!(places.try_take().is_none(), "the bound holds");
        assert_eq!(places.available(), 0);
        let io = LinkIo::oneshot(
            Bytes::from_static(b"x"),
            1024,
            Duration::from_secs(30),
            Box::new(|_| Box::pin(async { Ok(()) })),
        )
        .holding(a);
        drop(io);
        let _c = tokio::time::timeout(Duration::from_secs(5), places.take())
            .await
            .expect("given back when the connection goes");
        assert_eq!(OneRequests::new(0).available(), 1);
    }

    use futures::{SinkExt, StreamExt};

    /// Delivers straight into the peer's link.
    struct Direct(Link);

    impl Out for Direct {
        fn send(&self, kind: Kind, payloads: Vec<Bytes>) -> BoxFuture<'static, io::Result<()>> {
            for p in payloads {
                self.0.route(kind, p);
            }
            Box::pin(async { Ok(()) })
        }
    }

    /// Two connected ends with `window` bytes each way.
    fn pair(window: usize) -> (LinkIo, LinkIo) {
        let (a, b) = (Link::new(window), Link::new(window));
        let a_io = LinkIo::link(a.clone(), Box::new(Direct(b.clone())), 1 << 20, None);
        let b_io = LinkIo::link(b, Box::new(Direct(a)), 1 << 20, None);
        (a_io, b_io)
    }

    #[tokio::test]
    async fn the_writer_waits_at_the_window_until_the_reader_reads() {
        let (mut a, mut b) = pair(4096);
        let frame = Bytes::from(vec![b'x'; 1024]);
        // Four frames fill the window; the fifth waits.
        for _ in 0..4 {
            a.send(frame.clone()).await.unwrap();
        }
        let fifth = tokio::time::timeout(Duration::from_millis(50), a.send(frame.clone())).await;
        assert!(fifth.is_err(), "the writer waits at the window");
        // Reading acknowledges (a quarter window at a time): room again.
        for _ in 0..4 {
            assert_eq!(
                b.next().await.unwrap().unwrap().frame().unwrap().len(),
                1024
            );
        }
        a.send(frame.clone()).await.unwrap();
        assert_eq!(
            b.next().await.unwrap().unwrap().frame().unwrap().len(),
            1024
        );
    }

    #[tokio::test]
    async fn a_peer_that_ignores_the_window_is_cut_off() {
        let link = Link::new(1024);
        let mut io = LinkIo::link(
            link.clone(),
            Box::new(Direct(Link::new(1024))),
            1 << 20,
            None,
        );
        // Past two windows unread.
        for _ in 0..3 {
            link.route(Kind::Data, Bytes::from(vec![0; 1000]));
        }
        let mut got = Vec::new();
        while let Some(item) = io.next().await {
            got.push(item);
        }
        let err = got.pop().unwrap().unwrap_err();
        assert!(err.to_string().contains("flow-control window"), "{err}");
        assert!(link.is_ended());
    }

    #[tokio::test]
    async fn a_close_ends_the_peer_and_a_oneshot_answers_once() {
        let (mut a, mut b) = pair(4096);
        a.close().await.unwrap();
        assert!(b.next().await.is_none());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut one = LinkIo::oneshot(
            Bytes::from_static(b"req"),
            1024,
            Duration::from_secs(60),
            Box::new(move |frame| {
                let _ = tx.send(frame);
                Box::pin(async { Ok(()) })
            }),
        );
        assert_eq!(
            one.next().await.unwrap().unwrap(),
            Inbound::Frame(Bytes::from_static(b"req"))
        );
        one.send(Bytes::from_static(b"reply")).await.unwrap();
        one.send(Bytes::from_static(b"more")).await.unwrap();
        assert!(one.next().await.is_none(), "answered: it ends");
        assert_eq!(rx.await.unwrap(), Some(Bytes::from_static(b"reply")));
    }
}
