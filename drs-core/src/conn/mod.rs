//! [`Conn`]: the handle to one connection, and its driver.

mod driver;
mod pending;
mod stream;

use std::{
    fmt,
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub(crate) use driver::Driver;
pub(crate) use pending::{remote_error, ItemFate, Pending, PendingGuard, Reply, ReplyKind};
pub use stream::CallStream;

use crate::{
    close::CloseReason,
    command::FromBody,
    error::Error,
    ext::Extensions,
    handler::Handler,
    protocol::{encode_into, OutBody, Outgoing, Protocol},
    router::Router,
    sync::lock,
    transport::{ConnInfo, FrameSpec, DEFAULT_MAX_FRAME_LEN},
};

/// Settings of a connection. `Default` gives the documented defaults.
///
/// ```
/// # use std::time::Duration;
/// let config = drs_core::ConnConfig::default()
///     .call_timeout(Duration::from_secs(2))
///     .max_in_flight(256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnConfig {
    /// Timeout of a call unless the call sets its own. Default 5 s.
    pub call_timeout: Duration,
    /// Inbound commands served at once; past this the connection stops
    /// reading until one finishes. Default 1024.
    pub max_in_flight: usize,
    /// The largest frame sent or accepted. Default 8 MiB.
    pub max_frame_len: usize,
    /// Frames that may wait in the outbound queue. A `fire` or `call` waits
    /// for room; a broadcast finding the queue full disconnects the slow
    /// consumer. Default 1024.
    pub outbound_queue: usize,
    /// How long a closing connection may take to write out what is queued;
    /// also how long handlers may go on after the peer closed its side (a
    /// half-close), so that it still gets their replies. Default 1 s.
    pub close_linger: Duration,
    /// How long a server waits for a transport handshake (e.g. a WebSocket
    /// upgrade). Default 10 s.
    pub handshake_timeout: Duration,
    /// Bytes that may wait to be written to the peer (queued by handles,
    /// handlers and broadcasts). Past this a `fire` or `call` waits for
    /// room, the connection stops serving new commands, and a broadcast
    /// disconnects the connection as a slow consumer. Default 32 MiB.
    pub max_outbound: usize,
    /// Bytes of commands read but waiting to be served (behind admission
    /// hooks, or for an in-flight slot); past this the connection stops
    /// reading. Counted against the server's memory budget too.
    /// Default 16 MiB.
    pub max_buffered: usize,
    /// Closes a connection that has had nothing in flight (no call, no
    /// command, nothing to write) and received nothing for this long
    /// ([`CloseReason::Idle`]). Default: off.
    pub idle_timeout: Option<Duration>,
    /// A frame the peer has started must be finished within this
    /// ([`CloseReason::FrameTimeout`]); not counted while the connection
    /// itself has stopped reading. Default 30 s.
    pub frame_timeout: Option<Duration>,
    /// Servers: `on_connect` hooks must admit a connection within this
    /// ([`CloseReason::AdmissionTimeout`]). Default 10 s.
    pub admission_timeout: Duration,
    /// A peer that takes nothing we write for this long is disconnected
    /// ([`CloseReason::TooSlow`]). Default 30 s.
    pub write_stall_timeout: Option<Duration>,
    /// A deadline for every handler that does not finish on its first poll
    /// (per-action deadlines override it); past it the handler is stopped
    /// and the caller gets `drs.exception` "handler deadline exceeded".
    /// Default: none.
    pub handler_timeout: Option<Duration>,
    /// Items a streamed call ([`Conn::call_stream`]) lets the peer send
    /// ahead of the reader: what a stream that nobody reads holds at most.
    /// Default 64. A stream of small items moves about half a window per
    /// round trip, so the window bounds its rate: on loopback, 16 gave a
    /// third of what 64 gives (`drs-bench --only Stream`).
    pub stream_window: u32,
    /// The actions this side may call or fire on the peer (a server's
    /// limit on what it asks of its clients, a client's of a server);
    /// others fail with [`Error::NotAllowed`] and are not sent. Default:
    /// none (all allowed).
    pub outbound_jail: Option<crate::Jail>,
    /// Commands with a `delay` the peer may have held here at once; past
    /// it a delayed call is answered `drs.error` "too many delayed
    /// commands". Default 1024.
    pub max_delayed: usize,
    /// The longest `delay` accepted; longer is answered `drs.error`
    /// "delay exceeds N ms". Default 1 hour.
    pub max_delay: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            outbound_queue: 1024,
            close_linger: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            max_outbound: 32 * 1024 * 1024,
            max_buffered: 16 * 1024 * 1024,
            idle_timeout: None,
            frame_timeout: Some(Duration::from_secs(30)),
            admission_timeout: Duration::from_secs(10),
            write_stall_timeout: Some(Duration::from_secs(30)),
            handler_timeout: None,
            stream_window: 64,
            outbound_jail: None,
            max_delayed: 1024,
            max_delay: Duration::from_secs(3600),
        }
    }
}

impl ConnConfig {
    /// Sets the default call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the in-flight limit (at least 1).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Sets the maximum frame size.
    pub fn max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Sets the outbound queue capacity (at least 1).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.outbound_queue = frames.max(1);
        self
    }

    /// Sets how long a closing connection may take to flush.
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.close_linger = linger;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the outbound byte bound (at least 1).
    pub fn max_outbound(mut self, bytes: usize) -> Self {
        self.max_outbound = bytes.max(1);
        self
    }

    /// Sets the bound on bytes of commands waiting to be served (at least 1).
    pub fn max_buffered(mut self, bytes: usize) -> Self {
        self.max_buffered = bytes.max(1);
        self
    }

    /// Sets the idle timeout (`None`: off).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the frame deadline (`None`: off).
    pub fn frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// Sets the admission deadline.
    pub fn admission_timeout(mut self, timeout: Duration) -> Self {
        self.admission_timeout = timeout;
        self
    }

    /// Sets the write-stall deadline (`None`: off).
    pub fn write_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_stall_timeout = timeout;
        self
    }

    /// Sets the default handler deadline (`None`: none).
    pub fn handler_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets the actions this side may call or fire on the peer.
    pub fn outbound_jail(mut self, jail: Option<crate::Jail>) -> Self {
        self.outbound_jail = jail;
        self
    }

    /// Sets how many delayed commands a peer may have held at once.
    pub fn max_delayed(mut self, commands: usize) -> Self {
        self.max_delayed = commands;
        self
    }

    /// Sets the longest `delay` a command may ask for.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the credit window of streamed calls (at least 1).
    pub fn stream_window(mut self, items: u32) -> Self {
        self.stream_window = items.max(1);
        self
    }

    pub(crate) fn frame_spec(&self, protocol: &dyn Protocol) -> FrameSpec {
        FrameSpec::new(protocol.framing()).max_frame_len(self.max_frame_len)
    }
}

/// The outbound queue's byte count, shared by handles and the driver.
///
/// Frames queued by handles are counted as they enter the channel (an
/// atomic add) and leave the count when the driver takes them; frames the
/// driver makes itself (replies) are counted in a plain field of the
/// driver, published here once per wake-up: an inline reply costs no
/// atomic operation.
pub(crate) struct Outbound {
    /// Bytes in the channel from handles to the driver.
    queued: AtomicUsize,
    /// Bytes in the driver's own queue, as last published.
    driver: AtomicUsize,
    limit: usize,
    room: Notify,
}

impl Outbound {
    fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            driver: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the queue is at or over its bound (one frame may pass it).
    pub(crate) fn is_full(&self) -> bool {
        self.bytes() >= self.limit
    }

    pub(crate) fn bytes(&self) -> usize {
        self.queued() + self.driver.load(Ordering::Relaxed)
    }

    /// Bytes in the channel from handles.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// `n` bytes joined the channel.
    pub(crate) fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes left the channel (taken by the driver, or never sent).
    pub(crate) fn sub(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        let driver = self.driver.load(Ordering::Relaxed);
        self.wake_if_room(before + driver, before.saturating_sub(n) + driver);
    }

    /// The driver's own queue now holds `n` bytes.
    pub(crate) fn publish(&self, n: usize) {
        let before = self.driver.swap(n, Ordering::Relaxed);
        let queued = self.queued();
        self.wake_if_room(before + queued, n + queued);
    }

    fn wake_if_room(&self, before: usize, after: usize) {
        if before >= self.limit && after < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Waits until the queue is under its bound.
    async fn room(&self) {
        while self.is_full() {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Shared {
    pub(crate) id: u64,
    /// Makes handles on demand (for a command's `Msg`) without keeping the
    /// connection open: it closes when the last strong handle goes.
    weak_tx: mpsc::WeakSender<Bytes>,
    info: ConnInfo,
    pub(crate) protocol: Arc<dyn Protocol>,
    pub(crate) router: Arc<Router>,
    pub(crate) config: ConnConfig,
    pub(crate) pending: Pending,
    next_key: AtomicU64,
    /// Cancelled to ask the driver to close.
    pub(crate) close: CancellationToken,
    /// Cancelled by the driver once the connection is closed.
    pub(crate) closed: CancellationToken,
    ext: Mutex<Extensions>,
    pub(crate) outbound: Outbound,
    /// Set by the driver when the connection ends; a close requested with
    /// a reason (a slow consumer) puts it here first.
    pub(crate) close_reason: Mutex<Option<CloseReason>>,
    /// Who the peer is, once authenticated.
    pub(crate) identity: std::sync::OnceLock<Arc<crate::Identity>>,
    /// Bytes and frames moved, counted by the driver.
    pub(crate) io: crate::observe::IoCounters,
    /// What the connection holds against the server's memory budget.
    pub(crate) meter: crate::budget::ReadMeter,
}

impl Shared {
    /// Queues a frame, waiting for room in bytes and frames; fails with
    /// [`Error::Closed`] if the connection closes meanwhile.
    pub(crate) async fn send(&self, tx: &mpsc::Sender<Bytes>, frame: Bytes) -> Result<(), Error> {
        // The driver says the connection is closed before it drops its end
        // of the channel: a frame sent in between would vanish unreported.
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        if self.outbound.is_full() {
            tokio::select! {
                () = self.outbound.room() => {}
                () = self.closed.cancelled() => return Err(Error::Closed),
            }
        }
        let len = frame.len();
        self.outbound.add(len);
        tx.send(frame).await.map_err(|_| {
            self.outbound.sub(len);
            Error::Closed
        })
    }

    /// Asks the driver to close for `reason` (unless it is already ending).
    pub(crate) fn close_for(&self, reason: CloseReason) {
        lock(&self.close_reason).get_or_insert(reason);
        self.close.cancel();
    }
}

/// A handle to one connection: cheap to clone, usable from any task.
///
/// Through it you register handlers for what the peer sends
/// ([`on`](Conn::on)), send one-way commands ([`fire`](Conn::fire)) and calls
/// ([`call`](Conn::call)), and close the connection. Servers and clients hold
/// the same type: a server can call a client exactly as a client calls it.
///
/// A driver task owns the transport. The connection closes when the peer
/// goes away, when [`close`](Conn::close) is called, or when every handle
/// (and every running handler) is gone. Every pending call then fails at once
/// with [`Error::Closed`] and running handlers are stopped.
#[derive(Clone)]
pub struct Conn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: mpsc::Sender<Bytes>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("info", &self.shared.info)
            .field("protocol", &self.shared.protocol.name())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Builds the handle and its driver; the caller runs the driver.
    pub(crate) fn new<T: crate::Transport>(
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
        router: Arc<Router>,
        config: ConnConfig,
        close: CancellationToken,
        meter: crate::budget::ReadMeter,
    ) -> (Conn, Driver<T>) {
        let (tx, rx) = mpsc::channel(config.outbound_queue);
        let shared = Arc::new(Shared {
            outbound: Outbound::new(config.max_outbound),
            close_reason: Mutex::new(None),
            identity: std::sync::OnceLock::new(),
            io: Default::default(),
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            weak_tx: tx.downgrade(),
            info,
            protocol,
            router,
            config,
            pending: Pending::default(),
            next_key: AtomicU64::new(1),
            close,
            closed: CancellationToken::new(),
            ext: Mutex::new(Extensions::new()),
            meter: meter.clone(),
        });
        let driver = Driver::new(io, shared.clone(), rx, meter);
        (Conn { shared, tx }, driver)
    }

    /// A handle for a connection known by its shared state; if every handle
    /// is already gone (the connection is closing), one whose sends fail
    /// with [`Error::Closed`].
    pub(crate) fn from_shared(shared: &Arc<Shared>) -> Conn {
        let tx = shared
            .weak_tx
            .upgrade()
            .unwrap_or_else(|| mpsc::channel(1).0);
        Conn {
            shared: shared.clone(),
            tx,
        }
    }

    /// A process-wide unique id of this connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// What is known about the connection: transport, addresses, request target.
    pub fn info(&self) -> &ConnInfo {
        &self.shared.info
    }

    /// The peer's address, as the transport writes it.
    pub fn peer_addr(&self) -> Option<&str> {
        self.shared.info.peer_addr.as_deref()
    }

    /// The protocol spoken on this connection.
    pub fn protocol(&self) -> &dyn Protocol {
        &*self.shared.protocol
    }

    /// The connection's settings.
    pub fn config(&self) -> &ConnConfig {
        &self.shared.config
    }

    /// Registers `handler` for `action`, replacing any previous one.
    ///
    /// On a client, this is the client's routing table. On a server
    /// connection, the handler applies to this connection only and takes
    /// precedence over the server's handlers.
    ///
    /// # Panics
    /// If `action` is reserved for the call machinery (`drs.response`,
    /// `drs.error`, `drs.exception`, `drs.next`, `drs.more`, `drs.cancel`).
    pub fn on<H: Handler<A>, A>(&self, action: impl Into<String>, handler: H) -> &Self {
        self.shared.router.on(action, handler);
        self
    }

    /// Removes the handler for `action`; true if there was one.
    pub fn off(&self, action: &str) -> bool {
        self.shared.router.off(action)
    }

    /// Adds a [`Layer`](crate::Layer) around everything this connection
    /// serves, inside the layers added to it before.
    ///
    /// On a server connection it wraps the server's layers and handlers
    /// (and the connection's own), for this connection only: a jail, a
    /// rate limit, a per-peer log. On a client it is the client's layer
    /// (see [`Client::layer`](crate::Client::layer)).
    pub fn layer(&self, layer: impl crate::Layer) -> &Self {
        self.shared.router.layer(Arc::new(layer));
        self
    }

    /// Sends a one-way command. The body is encoded before this returns; the
    /// future waits for room in the outbound queue (backpressure).
    ///
    /// Why `fire` is async when [`Server::broadcast`](crate::Server::broadcast)
    /// is not: a fire is one command to one peer, and waits for that peer
    /// as a write to a socket would; a broadcast goes to every peer and
    /// waits for none, so a peer with no room is dropped as a slow consumer
    /// instead of stalling the others. [`Server::fire_named`](crate::Server::fire_named)
    /// waits like `fire`.
    pub fn fire(
        &self,
        action: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let frame = self
            .check_outbound(action)
            .and_then(|()| self.encode(None, action, OutBody::Value(&body)));
        let conn = self.clone();
        async move { conn.shared.send(&conn.tx, frame?).await }
    }

    /// Calls `action` on the peer and waits for the reply, deserialized into `R`
    /// (or kept as a [`Body`](crate::Body)).
    ///
    /// Await the returned [`Call`]; set a timeout other than the connection's
    /// default with [`Call::timeout`]. The body is encoded before this returns.
    ///
    /// ```no_run
    /// # async fn f(conn: drs_core::Conn) -> Result<(), drs_core::Error> {
    /// # use std::time::Duration;
    /// let sum: f64 = conn.call("add", serde_json::json!({"a": 1, "b": 2})).await?;
    /// let echoed: String = conn.call("echo", "hi").timeout(Duration::from_millis(200)).await?;
    /// # Ok(()) }
    /// ```
    pub fn call<R>(&self, action: &str, body: impl Serialize) -> Call<R> {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let mut digits = KeyText::default();
        let frame = self
            .check_outbound(action)
            .and_then(|()| self.encode(Some(digits.format(key)), action, OutBody::Value(&body)));
        Call {
            conn: self.clone(),
            prepared: frame.map(|f| (key, f)),
            timeout: self.shared.config.call_timeout,
            _reply: PhantomData,
        }
    }

    /// Calls `action` to run `delay` from now on the peer, which holds the
    /// command until then (the `delay` field, docs/PROTOCOL.md §2, as extended in
    /// the README); the reply comes after it ran. The call's timeout
    /// counts from when it runs: `delay` plus the connection's call
    /// timeout, unless [`Call::timeout`] says otherwise. Dropping the call
    /// before it ran takes it back (`drs.cancel`). A peer holds at most
    /// [`ConnConfig::max_delayed`] such commands, each at most
    /// [`ConnConfig::max_delay`] ahead.
    pub fn call_after<R>(&self, delay: Duration, action: &str, body: impl Serialize) -> Call<R> {
        let ms = delay_ms(delay);
        let (key, frame) = self.keyed_frame(action, &body, |out| out.delay(Some(ms)));
        Call {
            conn: self.clone(),
            prepared: frame.map(|f| (key, f)),
            timeout: delay + self.shared.config.call_timeout,
            _reply: PhantomData,
        }
    }

    /// Fires `action` to run `delay` from now on the peer (see
    /// [`call_after`](Conn::call_after)); a delayed fire cannot be taken
    /// back.
    pub fn fire_after(
        &self,
        delay: Duration,
        action: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let frame = self.check_outbound(action).and_then(|()| {
            encode_frame(
                &*self.shared.protocol,
                self.shared.config.max_frame_len,
                &Outgoing::new(action)
                    .body(OutBody::Value(&body))
                    .delay(Some(delay_ms(delay))),
            )
        });
        let conn = self.clone();
        async move { conn.shared.send(&conn.tx, frame?).await }
    }

    /// A new call key, and the frame of a call of `action` with it, as
    /// `extra` completes it (a stream opt-in, a delay).
    fn keyed_frame(
        &self,
        action: &str,
        body: &impl Serialize,
        extra: impl for<'a> FnOnce(Outgoing<'a>) -> Outgoing<'a>,
    ) -> (u64, Result<Bytes, Error>) {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let mut digits = KeyText::default();
        let frame = self.check_outbound(action).and_then(|()| {
            let out = Outgoing::new(action)
                .key(Some(digits.format(key)))
                .body(OutBody::Value(body));
            encode_frame(
                &*self.shared.protocol,
                self.shared.config.max_frame_len,
                &extra(out),
            )
        });
        (key, frame)
    }

    /// Whether the outbound jail lets us send `action`.
    fn check_outbound(&self, action: &str) -> Result<(), Error> {
        match &self.shared.config.outbound_jail {
            Some(jail) if !jail.allows(action) => Err(Error::NotAllowed(action.to_string())),
            _ => Ok(()),
        }
    }

    fn encode(&self, key: Option<&str>, action: &str, body: OutBody<'_>) -> Result<Bytes, Error> {
        encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            &Outgoing::new(action).key(key).body(body),
        )
    }

    /// Calls `action` and receives its reply as a stream of items (docs/PROTOCOL.md
    /// §2): the call opts in with the connection's
    /// [`stream_window`](ConnConfig::stream_window) of credit, and grants
    /// more as the items are read, so a stream that is not read holds at
    /// most its window and never blocks other calls on the connection.
    ///
    /// The returned [`CallStream`] yields each item deserialized into `T`;
    /// after its last item, [`CallStream::final_value`] holds the value the
    /// handler returned. A stream that ends with `drs.error` or
    /// `drs.exception` yields that error last. Dropping the stream before
    /// its end sends `drs.cancel`, which stops the handler on the peer.
    /// Nothing is sent until the stream is first polled.
    ///
    /// ```no_run
    /// # async fn f(conn: drs_core::Conn) -> Result<(), drs_core::Error> {
    /// use futures::StreamExt;
    /// let mut items = conn.call_stream::<u64>("count", serde_json::json!({"n": 3}));
    /// while let Some(item) = items.next().await {
    ///     println!("{}", item?);
    /// }
    /// let total: Option<u64> = items.final_value()?;
    /// # Ok(()) }
    /// ```
    pub fn call_stream<T>(&self, action: &str, body: impl Serialize) -> CallStream<T> {
        let window = self.shared.config.stream_window;
        let (key, frame) = self.keyed_frame(action, &body, |out| out.stream(Some(window)));
        CallStream::new(self.clone(), key, frame, window)
    }

    /// Queues a small frame of the call machinery (`drs.cancel`,
    /// `drs.more`) without waiting: past the outbound bound (such frames
    /// are what lets the peer stop producing), and, when the channel is
    /// full, from a task of its own.
    pub(crate) fn send_control(&self, key: u64, action: &str, body: OutBody<'_>) {
        if self.is_closed() {
            return;
        }
        let mut digits = KeyText::default();
        let Ok(frame) = self.encode(Some(digits.format(key)), action, body) else {
            return;
        };
        let len = frame.len();
        self.shared.outbound.add(len);
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    self.shared.outbound.sub(len);
                    return;
                };
                let conn = self.clone();
                rt.spawn(async move {
                    if conn.tx.send(frame).await.is_err() {
                        conn.shared.outbound.sub(len);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.shared.outbound.sub(len),
        }
    }

    /// Tells the peer to stop serving our call `key`.
    pub(crate) fn send_cancel(&self, key: u64) {
        self.send_control(key, crate::command::CANCEL, OutBody::Absent);
    }

    /// Queues an encoded frame without waiting (used by broadcast); fails
    /// with `Full` when the queue is full in frames or bytes.
    pub(crate) fn try_send_frame(
        &self,
        frame: Bytes,
    ) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        if self.shared.outbound.is_full() {
            return Err(mpsc::error::TrySendError::Full(frame));
        }
        // Counted before it is queued: the driver may take it at once.
        let len = frame.len();
        self.shared.outbound.add(len);
        self.tx
            .try_send(frame)
            .inspect_err(|_| self.shared.outbound.sub(len))
    }

    /// Why the connection ended; `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        if !self.is_closed() {
            return None;
        }
        lock(&self.shared.close_reason).clone()
    }

    /// Bytes and frames this connection moved so far (published by its
    /// driver once per batch of frames).
    pub fn io(&self) -> crate::Io {
        self.shared.io.load()
    }

    /// Bytes waiting to be written to the peer.
    pub fn outbound_bytes(&self) -> usize {
        self.shared.outbound.bytes()
    }

    /// Asks the connection to close: what is queued is written out (within
    /// the close linger), running handlers are stopped, pending calls fail.
    pub fn close(&self) {
        self.shared.close.cancel();
    }

    /// Waits until the connection is closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// Whether the connection is closed. It is by the time its pending
    /// calls fail, so whoever learns of the end from one of them sees it
    /// closed too, with its [`close_reason`](Self::close_reason).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Whether the connection is ending or ended: a call made now fails
    /// with [`Error::Closed`]. True from the moment its pending calls
    /// fail (the peer closed, or a close began), which can be before
    /// [`is_closed`](Self::is_closed) (the last frames may still be
    /// written); routers pick among connections with it.
    pub fn is_ending(&self) -> bool {
        self.is_closed() || self.shared.pending.is_closed()
    }

    /// Holds `bytes` on this connection's behalf against the server's
    /// memory budget (what a plug-in keeps for it: subscriptions, a
    /// decoded frame's values), until the hold is dropped. Past the
    /// budget the connections holding the most are disconnected
    /// ([`CloseReason::BudgetExceeded`]). A client connection has no
    /// budget: its holds only count.
    pub fn hold_memory(&self, bytes: usize) -> crate::MemoryHold {
        self.shared.meter.hold(bytes)
    }

    /// How many calls on this connection are waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }

    /// Who the peer is, once something authenticated it
    /// ([`authenticate_as`](Conn::authenticate_as); `drs-auth`).
    pub fn identity(&self) -> Option<Arc<crate::Identity>> {
        self.shared.identity.get().cloned()
    }

    /// Records who the peer is, as a connect hook that authenticated it
    /// by other means would (a client certificate, a network it trusts);
    /// `false` (and nothing changes) when it already has an identity.
    pub fn authenticate_as(&self, identity: crate::Identity) -> bool {
        self.set_identity(identity)
    }

    /// Records the peer's identity; `false` (and nothing changes) when it
    /// already has one.
    pub(crate) fn set_identity(&self, identity: crate::Identity) -> bool {
        self.shared.identity.set(Arc::new(identity)).is_ok()
    }

    /// Confines what the peer may call on this connection to `jail`
    /// (inside any server, role or identity jail): anything else gets
    /// `drs.error` "action not allowed: …" and reaches no handler.
    /// `drs.ping` and `drs.auth` are always allowed.
    pub fn jail(&self, jail: crate::Jail) -> &Self {
        self.layer(crate::identity::JailLayer(Arc::new(jail)))
    }

    /// Tells the peer why (a keyless `drs.error`) and closes for `reason`.
    pub fn close_with_notice(&self, message: &str, reason: CloseReason) {
        let body = crate::command::MessageBody(message);
        if let Ok(frame) = self.encode(None, crate::command::ERROR, OutBody::Value(&body)) {
            let _ = self.try_send_frame(frame);
        }
        self.shared.close_for(reason);
    }

    /// The name the peer gave with `drs.identify` (on a server connection),
    /// if it gave one.
    pub fn name(&self) -> Option<Arc<str>> {
        lock(&self.shared.ext)
            .get::<PeerName>()
            .map(|n| n.0.clone())
    }

    /// Attaches a value to the connection (one per type), e.g. the user an
    /// `on_connect` hook authenticated.
    pub fn insert<T: Send + Sync + 'static>(&self, value: T) -> Option<T> {
        lock(&self.shared.ext).insert(value)
    }

    /// A copy of the value of type `T` attached to the connection.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.shared.ext).get::<T>().cloned()
    }

    /// Runs `f` with the connection's extensions.
    pub fn with_extensions<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        f(&mut lock(&self.shared.ext))
    }
}

/// The name a peer identified with, kept in the connection's extensions.
#[derive(Clone)]
pub(crate) struct PeerName(pub(crate) Arc<str>);

/// Encodes one frame, checking the maximum frame size.
pub(crate) fn encode_frame(
    protocol: &dyn Protocol,
    max_frame_len: usize,
    out: &Outgoing<'_>,
) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(128);
    encode_into(protocol, out, &mut buf)?;
    if buf.len() > max_frame_len {
        return Err(Error::FrameTooLarge {
            len: buf.len(),
            limit: max_frame_len,
        });
    }
    Ok(buf.freeze())
}

/// A call key written in decimal without allocating.
#[derive(Default)]
pub(crate) struct KeyText([u8; 20]);

impl KeyText {
    pub(crate) fn format(&mut self, mut n: u64) -> &str {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        std::str::from_utf8(&self.0[i..]).unwrap_or("0")
    }
}

/// A call on its way: await it for the reply. See [`Conn::call`].
#[must_use = "a call does nothing unless awaited"]
pub struct Call<R> {
    conn: Conn,
    prepared: Result<(u64, Bytes), Error>,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("conn", &self.conn.id())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<R> Call<R> {
    /// Sets this call's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

type ReplyRx = tokio::sync::oneshot::Receiver<Result<Reply, Error>>;

impl<R: FromBody + Send + 'static> Call<R> {
    /// Sends the call (waiting for room in the outbound queue) and returns
    /// once it is queued, with a [`SentCall`] to await for the reply.
    /// Calls sent one after another this way leave in that order, and
    /// their replies can be awaited together: a pipeline. The call's
    /// timeout covers both waits.
    pub async fn send(self) -> Result<SentCall<R>, Error> {
        let timeout = self.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (guard, rx) = tokio::time::timeout_at(deadline, self.start())
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        Ok(SentCall {
            guard,
            rx,
            deadline,
            timeout,
            _reply: PhantomData,
        })
    }

    /// Registers the call and queues its frame.
    async fn start(self) -> Result<(PendingGuard, ReplyRx), Error> {
        let (key, frame) = self.prepared?;
        let conn = self.conn;
        let rx = conn.shared.pending.register(key)?;
        let mut guard = PendingGuard {
            conn,
            key,
            armed: true,
            sent: false,
        };
        guard.conn.shared.send(&guard.conn.tx, frame).await?;
        guard.sent = true;
        Ok((guard, rx))
    }
}

/// Waits for the reply of a sent call. Dropped before it, the guard
/// cancels the call.
async fn reply<R: FromBody>(mut guard: PendingGuard, rx: ReplyRx) -> Result<R, Error> {
    let reply = rx.await.map_err(|_| Error::Closed)?;
    // Answered (perhaps by a reply that did not decode): nothing to cancel.
    guard.armed = false;
    reply?.into_result()
}

impl<R: FromBody + Send + 'static> IntoFuture for Call<R> {
    type Output = Result<R, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // One timer for the whole exchange, one allocation.
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async move {
                let (guard, rx) = self.start().await?;
                reply(guard, rx).await
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err(Error::Timeout(timeout)))
        })
    }
}

/// A call that has been sent: await it for the reply, within what is left
/// of the call's timeout. Dropping it before the reply cancels the call on
/// the peer (`drs.cancel`). See [`Call::send`].
#[must_use = "dropping a sent call cancels it"]
pub struct SentCall<R> {
    guard: PendingGuard,
    rx: ReplyRx,
    deadline: tokio::time::Instant,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for SentCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentCall")
            .field("conn", &self.guard.conn.id())
            .field("key", &self.guard.key)
            .finish_non_exhaustive()
    }
}

impl<R: FromBody + Send + 'static> IntoFuture for SentCall<R> {
    type Output = Result<R, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout_at(self.deadline, reply(self.guard, self.rx))
                .await
                .unwrap_or(Err(Error::Timeout(timeout)))
        })
    }
}

/// `delay` in whole milliseconds (rounded up), at most `u32::MAX`.
fn delay_ms(delay: Duration) -> u32 {
    let ms = delay.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::KeyText;

    #[test]
    fn key_text() {
        let mut k = KeyText::default();
        assert_eq!(k.format(0), "0");
        assert_eq!(k.format(7), "7");
        assert_eq!(k.format(1234567890), "1234567890");
        assert_eq!(k.format(u64::MAX), "18446744073709551615");
    }
}
