//! [`Conn`]: the handle to one connection, and its driver.

mod call;
mod config;
mod driver;
mod pending;
mod send;
mod shared;
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

use call::delay_ms;
pub use call::{Call, SentCall};
pub use config::{ConnConfig, OutboundCheck};
pub(crate) use driver::Driver;
pub(crate) use pending::{remote_error, ItemFate, Pending, PendingGuard, Reply, ReplyKind};
pub(crate) use send::{encode_frame, KeyText};
use shared::NEXT_CONN_ID;
pub(crate) use shared::{Outbound, Shared};
pub use stream::CallStream;

use crate::{
    body::FromBody,
    close::CloseReason,
    error::Error,
    ext::Extensions,
    frame::{FrameSpec, DEFAULT_MAX_FRAME_LEN},
    handler::Handler,
    protocol::{encode_into, OutBody, Outgoing, Protocol},
    router::Router,
    sync::lock,
    transport::ConnInfo,
};

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
        self.routes(crate::Routes::new().on(action, handler))
    }

    /// Serves `routes` on this connection (see [`on`](Conn::on) and
    /// [`layer`](Conn::layer) for where they apply): its handlers replace
    /// those of the same action, its layers go inside this connection's.
    pub fn routes(&self, routes: crate::Routes) -> &Self {
        self.shared.router.add(routes);
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
        self.routes(crate::Routes::new().layer(layer))
    }

    /// Sends a one-way command. The body is encoded before this returns; the
    /// future waits for room in the outbound queue (backpressure).
    ///
    /// Why `fire` is async when [`Server::broadcast`](crate::Server::broadcast)
    /// is not: a fire is one command to one peer, and waits for that peer
    /// as a write to a socket would; a broadcast goes to every peer and
    /// waits for none, so a peer with no room is dropped as a slow consumer
    /// instead of stalling the others. `drs_names::ServerNames::fire_named`
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

    /// Tells the peer why (a keyless `drs.error`) and closes for `reason`.
    pub fn close_with_notice(&self, message: &str, reason: CloseReason) {
        let body = crate::command::MessageBody(message);
        if let Ok(frame) = self.encode(None, crate::command::ERROR, OutBody::Value(&body)) {
            let _ = self.try_send_frame(frame);
        }
        self.shared.close_for(reason);
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
