//! [`Server`]: accepts connections on any number of listeners, each with its
//! protocol, and serves them all with one routing table.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    budget::{MemoryBudget, ReadMeter, DEFAULT_MEMORY_BUDGET},
    close::CloseReason,
    command::{
        Identified, IdentifyBody, MessageBody, ERROR, IDENTIFY, MAX_NAME_LEN, NAME_TAKEN,
        SHUTTING_DOWN,
    },
    conn::{encode_frame, Conn, ConnConfig, PeerName},
    error::Error,
    handler::{Handler, HandlerError, Msg, Outcome},
    layer::Layer,
    protocol::{OutBody, Outgoing, Protocol},
    router::Router,
    sync::{lock, read, write},
    transport::{ConnInfo, Listener, Transport},
};

type ConnectHook =
    Arc<dyn Fn(Conn) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Conn) + Send + Sync>;
type IdentifyHook = Arc<dyn Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync>;

/// Settings of a server: what every connection gets, and the limits of the
/// whole server. `Default` gives the documented defaults; a [`ConnConfig`]
/// converts into one with the server-wide defaults.
///
/// ```
/// let config = drs_core::ServerConfig::default()
///     .max_connections(1000)
///     .memory_budget(64 << 20);
/// let server = drs_core::Server::with_config(config);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Settings of every connection.
    pub conn: ConnConfig,
    /// Connections served at once (admitted or not). Past it a new
    /// connection is accepted, sent a keyless `drs.error` saying so and
    /// closed at once; existing ones are untouched. Default 10,000.
    pub max_connections: usize,
    /// Bytes held for all peers together: unfinished frames and commands
    /// waiting to be served. Past it the connections holding the most are
    /// disconnected ([`CloseReason::BudgetExceeded`]). Default 256 MiB.
    pub memory_budget: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ConnConfig::default().into()
    }
}

impl From<ConnConfig> for ServerConfig {
    fn from(conn: ConnConfig) -> Self {
        Self {
            conn,
            max_connections: 10_000,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl ServerConfig {
    /// Sets the connection settings.
    pub fn conn(mut self, conn: ConnConfig) -> Self {
        self.conn = conn;
        self
    }

    /// Sets the connection limit (at least 1).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the server-wide memory budget in bytes.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
}

struct Inner {
    router: Arc<Router>,
    config: ConnConfig,
    max_connections: usize,
    budget: MemoryBudget,
    /// Connections being served, admitted or not.
    live: AtomicUsize,
    conns: RwLock<HashMap<u64, Conn>>,
    /// Authentication and jails, and whether their layer is installed.
    /// Names given with `drs.identify` → the connection holding each.
    names: std::sync::Mutex<HashMap<Arc<str>, u64>>,
    on_connect: RwLock<Vec<ConnectHook>>,
    on_disconnect: RwLock<Vec<DisconnectHook>>,
    on_identify: RwLock<Vec<IdentifyHook>>,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Starts the graceful drain of every connection.
    drain: CancellationToken,
    /// Closes every connection now.
    force: CancellationToken,
    tasks: TaskTracker,
    observer: std::sync::OnceLock<Arc<dyn crate::Observer>>,
    extensions: std::sync::Mutex<crate::Extensions>,
}

/// A drs server: one routing table, any number of listeners (each with its
/// own transport and protocol), and the set of live connections.
///
/// ```no_run
/// # async fn f<L: drs_core::Listener>(listener: L, json: impl drs_core::Protocol, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
/// use drs_core::{HandlerResult, Server};
/// #[derive(serde::Deserialize)]
/// struct Add { a: f64, b: f64 }
///
/// let server = Server::new();
/// server.on("add", |args: Add| async move { HandlerResult::Ok(args.a + args.b) });
/// let addr = server.listen(listener, json)?;
/// println!("listening on {addr}");
/// stop.await; // e.g. Ctrl-C
/// server.shutdown(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
///
/// Cloning gives another handle to the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

/// A [`Server`] handle that does not keep it alive
/// ([`Server::downgrade`]).
#[derive(Clone)]
pub struct WeakServer(std::sync::Weak<Inner>);

impl WeakServer {
    /// The server, if it still exists.
    pub fn upgrade(&self) -> Option<Server> {
        self.0.upgrade().map(|inner| Server { inner })
    }
}

impl fmt::Debug for WeakServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakServer")
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("connections", &self.connection_count())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with default connection settings.
    pub fn new() -> Self {
        Self::with_config(ConnConfig::default())
    }

    /// A server with `config` (a [`ServerConfig`], or a [`ConnConfig`]
    /// with the server-wide defaults).
    pub fn with_config(config: impl Into<ServerConfig>) -> Self {
        let config = config.into();
        let server = Self {
            inner: Arc::new(Inner {
                router: Router::root(),
                config: config.conn,
                max_connections: config.max_connections,
                budget: MemoryBudget::new(config.memory_budget),
                live: AtomicUsize::new(0),
                conns: RwLock::default(),
                names: std::sync::Mutex::default(),
                on_connect: RwLock::default(),
                on_disconnect: RwLock::default(),
                on_identify: RwLock::default(),
                stop_accepting: CancellationToken::new(),
                drain: CancellationToken::new(),
                force: CancellationToken::new(),
                tasks: TaskTracker::new(),
                observer: std::sync::OnceLock::new(),
                extensions: std::sync::Mutex::default(),
            }),
        };
        let weak = Arc::downgrade(&server.inner);
        server
            .inner
            .router
            .on(IDENTIFY, move |conn: Conn, args: IdentifyBody| {
                let claimed = match weak.upgrade() {
                    Some(inner) => inner.identify(&conn, &args.name),
                    None => Err(HandlerError::new("the server is gone")),
                };
                async move { claimed.map(Identified::new) }
            });
        server
    }

    /// Reports every connection accepted from now on, and the commands
    /// they serve, to `observer` (statistics: `drs-stats`). A server has
    /// one observer: false, and `observer` is dropped, if it has one.
    pub fn observe(&self, observer: impl crate::Observer) -> bool {
        self.inner.observer.set(Arc::new(observer)).is_ok()
    }

    /// The server's [`Extensions`](crate::Extensions): state that crates
    /// beside the core keep per server (the statistics, a broker's
    /// handle), by type.
    pub fn with_extensions<R>(&self, f: impl FnOnce(&mut crate::Extensions) -> R) -> R {
        f(&mut lock(&self.inner.extensions))
    }

    /// A clone of the server's extension of type `T`, if any.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.extensions).get::<T>().cloned()
    }

    /// The settings every connection gets.
    pub fn config(&self) -> &ConnConfig {
        &self.inner.config
    }

    /// Registers `handler` for `action` on every connection, replacing any
    /// previous one. A [`Chain`](crate::Chain) registers several in order.
    ///
    /// # Panics
    /// If `action` is reserved for the call machinery (`drs.response`,
    /// `drs.error`, `drs.exception`, `drs.next`, `drs.more`, `drs.cancel`).
    pub fn on<H: Handler<A>, A>(&self, action: impl Into<String>, handler: H) -> &Self {
        self.inner.router.on(action, handler);
        self
    }

    /// Whether the server has a handler of its own for `action` (one
    /// registered with [`on`](Server::on), built-in ones included).
    pub fn handles(&self, action: &str) -> bool {
        self.inner.router.snapshot().has_route(action)
    }

    /// A handle that does not keep the server alive (for hooks the server
    /// itself holds).
    pub fn downgrade(&self) -> WeakServer {
        WeakServer(Arc::downgrade(&self.inner))
    }

    /// Removes the handler for `action`; true if there was one.
    pub fn off(&self, action: &str) -> bool {
        self.inner.router.off(action)
    }

    /// Sets the handler deadline of `action` (`None`: the server's
    /// default, [`ConnConfig::handler_timeout`]). A handler still running
    /// past it is stopped and its caller gets `drs.exception` "handler
    /// deadline exceeded". A handler that finishes on its first poll is
    /// never stopped.
    pub fn timeout(&self, action: impl Into<String>, limit: Option<Duration>) -> &Self {
        self.inner.router.timeout(action, limit);
        self
    }

    /// The server-wide memory budget (to read how much is held).
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// Adds a [`Layer`] around every command served on every connection,
    /// commands with no handler included; inside the layers added before.
    pub fn layer(&self, layer: impl Layer) -> &Self {
        self.inner.router.layer(Arc::new(layer));
        self
    }

    /// Adds a [`Layer`] around the handler of `action` (kept when the
    /// handler is registered again); inside the layers added before for it,
    /// and inside the server-wide layers. One layer value shares its state
    /// between every connection: a worker pool or a cache added here is
    /// server-wide.
    pub fn layer_for(&self, action: impl Into<String>, layer: impl Layer) -> &Self {
        self.inner.router.layer_for(action, Arc::new(layer));
        self
    }

    /// Adds a hook that runs before the handler of every command, including
    /// commands with no handler. An error stops the command: the caller gets
    /// it as the reply (use it for authorization). A hook is a [`Layer`]
    /// that runs it and, if it passed, the rest.
    pub fn before<H: Handler<A>, A>(&self, hook: H) -> &Self {
        self.inner.router.before(hook);
        self
    }

    /// Adds a hook that sees every command with its outcome once it is
    /// served (logging, metrics). It runs before the reply is sent. A hook
    /// is a [`Layer`] outside every other one, so it sees every outcome,
    /// rejections by `before` hooks and layers included; hooks run in the
    /// order added.
    pub fn after(&self, hook: impl Fn(&Msg, &Outcome) + Send + Sync + 'static) -> &Self {
        self.inner.router.after(Arc::new(hook));
        self
    }

    /// Adds a hook that runs when a connection is established, before any of
    /// its commands is served and before it joins
    /// [`connections`](Server::connections) and broadcasts. An error rejects
    /// the connection: the peer gets a keyless `drs.error` with the message
    /// and is disconnected. Hooks run in the order added.
    ///
    /// The hook may fire to or call the peer; commands the peer sends in the
    /// meantime wait until the connection is admitted.
    pub fn on_connect<F, Fut, E>(&self, hook: F) -> &Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        let hook: ConnectHook = Arc::new(move |conn| {
            let fut = hook(conn);
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        write(&self.inner.on_connect).push(hook);
        self
    }

    /// Adds a hook that runs when a peer names itself with
    /// `drs.identify` and no live connection holds the name, before the
    /// answer is sent. It returns whether it holds state for that name
    /// from an earlier connection (subscriptions, undelivered messages):
    /// the answer's `resumed` is true if any hook says so. A hook refuses
    /// the name with `Err(reason)` (another identity owns it, a bound is
    /// reached): the peer gets `drs.error` with the reason and keeps the
    /// name it had. Hooks must not block; one that has work to do for the
    /// name spawns it.
    pub fn on_identify(
        &self,
        hook: impl Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync + 'static,
    ) -> &Self {
        write(&self.inner.on_identify).push(Arc::new(hook));
        self
    }

    /// Adds a layer outside every other, including those added later:
    /// a gate (`drs-auth`'s authentication and jails) that must see every
    /// command first. Layers added so run in reverse order of addition.
    pub fn layer_outermost(&self, layer: impl Layer) -> &Self {
        self.inner.router.layer_outermost(Arc::new(layer));
        self
    }

    /// Adds a hook that runs when an admitted connection has closed.
    pub fn on_disconnect(&self, hook: impl Fn(&Conn) + Send + Sync + 'static) -> &Self {
        write(&self.inner.on_disconnect).push(Arc::new(hook));
        self
    }

    /// Starts accepting connections from `listener`, speaking `protocol`, and
    /// returns the listener's local address. Must be called within a Tokio runtime.
    pub fn listen<L: Listener, P: Protocol>(&self, listener: L, protocol: P) -> io::Result<String> {
        self.listen_arc(listener, Arc::new(protocol))
    }

    /// [`listen`](Server::listen) with a shared protocol.
    pub fn listen_arc<L: Listener>(
        &self,
        listener: L,
        protocol: Arc<dyn Protocol>,
    ) -> io::Result<String> {
        let addr = listener.local_addr()?;
        if self.inner.stop_accepting.is_cancelled() {
            return Err(io::Error::other("the server is shut down"));
        }
        let server = self.clone();
        self.inner
            .tasks
            .spawn(async move { server.accept_loop(listener, protocol).await });
        Ok(addr)
    }

    async fn accept_loop<L: Listener>(self, mut listener: L, protocol: Arc<dyn Protocol>) {
        let mut spec = self
            .inner
            .config
            .frame_spec(&*protocol)
            .meter(self.inner.budget.meter());
        let stop = self.inner.stop_accepting.clone();
        let mut pause = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept(spec.clone()) => accepted,
            };
            match accepted {
                Ok(handshake) => {
                    pause = Duration::from_millis(5);
                    let server = self.clone();
                    let protocol = protocol.clone();
                    let slot = ConnSlot::take(&self.inner);
                    let meter = spec.meter.clone();
                    self.inner.tasks.spawn(async move {
                        let timeout = server.inner.config.handshake_timeout;
                        let established = tokio::select! {
                            _ = server.inner.force.cancelled() => return,
                            r = tokio::time::timeout(timeout, handshake) => r,
                        };
                        match (established, slot) {
                            // Bounded by its listener, not by the server's
                            // limit.
                            (Ok(Ok((io, info))), slot) if info.one_request => {
                                drop(slot);
                                server.serve(io, info, protocol, meter, None).await
                            }
                            (Ok(Ok((io, info))), Some(slot)) => {
                                server.serve(io, info, protocol, meter, Some(slot)).await
                            }
                            (Ok(Ok((io, info))), None) => {
                                server.refuse_full(io, info, &*protocol).await
                            }
                            (Ok(Err(e)), _) => tracing::debug!(error = %e, "handshake failed"),
                            (Err(_), _) => tracing::debug!(?timeout, "handshake timed out"),
                        }
                    });
                    spec = spec.meter(self.inner.budget.meter());
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, pause, retry.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Serves one established connection (from any transport) on this
    /// server, in a task of its own. For transports without a
    /// [`Listener`], and for tests.
    pub fn accept_transport<T: Transport>(
        &self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
    ) {
        let server = self.clone();
        let slot = ConnSlot::take(&self.inner);
        self.inner.tasks.spawn(async move {
            match slot {
                slot if info.one_request => {
                    drop(slot);
                    let meter = server.inner.budget.meter();
                    server.serve(io, info, protocol, meter, None).await
                }
                Some(slot) => {
                    let meter = server.inner.budget.meter();
                    server.serve(io, info, protocol, meter, Some(slot)).await
                }
                None => server.refuse_full(io, info, &*protocol).await,
            }
        });
    }

    /// Tells a connection over the limit why, and closes it.
    async fn refuse_full<T: Transport>(&self, mut io: T, info: ConnInfo, protocol: &dyn Protocol) {
        use futures::SinkExt;
        let max = self.inner.max_connections;
        tracing::warn!(
            peer = info.peer_addr.as_deref(),
            max,
            "connection limit reached; refusing"
        );
        let message = format!("the server is at its connection limit ({max}); try again later");
        let body = MessageBody(&message);
        let frame = encode_frame(
            protocol,
            usize::MAX,
            &Outgoing::new(ERROR).body(OutBody::Value(&body)),
        );
        if let Ok(frame) = frame {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                io.send(frame).await?;
                io.close().await
            })
            .await;
        }
    }

    async fn serve<T: Transport>(
        self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
        meter: ReadMeter,
        _slot: Option<ConnSlot>,
    ) {
        let inner = &self.inner;
        let router = Router::child(inner.router.clone());
        let (conn, mut driver) = Conn::new(
            io,
            info,
            protocol,
            router,
            inner.config.clone(),
            inner.force.child_token(),
            meter,
        );
        driver.set_drain(inner.drain.clone());
        if let Some(observer) = inner.observer.get() {
            driver.set_observer(observer.clone());
        }
        let hooks = read(&inner.on_connect).clone();
        let admitted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = {
            let conn = conn.clone();
            let server = self.clone();
            let admitted = admitted.clone();
            async move {
                for hook in hooks {
                    hook(conn.clone()).await?;
                }
                if server.inner.drain.is_cancelled() {
                    return Err(SHUTTING_DOWN.to_string());
                }
                write(&server.inner.conns).insert(conn.id(), conn.clone());
                admitted.store(true, std::sync::atomic::Ordering::Release);
                if let Some(observer) = server.inner.observer.get() {
                    observer.connected(&conn);
                }
                tracing::debug!(
                    id = conn.id(),
                    peer = conn.peer_addr(),
                    "connection admitted"
                );
                Ok(())
            }
        };
        driver.set_gate(Box::pin(gate));
        driver.run().await;
        write(&inner.conns).remove(&conn.id());
        let admitted = admitted.load(std::sync::atomic::Ordering::Acquire);
        if let Some(observer) = inner.observer.get() {
            observer.disconnected(&conn, admitted);
        }
        if admitted {
            for hook in read(&inner.on_disconnect).clone() {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&conn))).is_err() {
                    tracing::error!("an on_disconnect hook panicked");
                }
            }
        }
        // Last: whoever sees the name free sees the hooks' work done.
        inner.release_name(&conn);
    }

    /// The live (admitted) connections.
    pub fn connections(&self) -> Vec<Conn> {
        read(&self.inner.conns).values().cloned().collect()
    }

    /// The live connection with this id.
    pub fn connection(&self, id: u64) -> Option<Conn> {
        read(&self.inner.conns).get(&id).cloned()
    }

    /// The number of live connections.
    pub fn connection_count(&self) -> usize {
        read(&self.inner.conns).len()
    }

    /// The live connections with what is known of each peer: its name
    /// (from `drs.identify`), its address and transport.
    pub fn peers(&self) -> Vec<Peer> {
        read(&self.inner.conns)
            .values()
            .map(|conn| Peer {
                id: conn.id(),
                name: conn.name(),
                peer_addr: conn.peer_addr().map(str::to_string),
                transport: conn.info().transport,
            })
            .collect()
    }

    /// The live connection whose peer identified as `name`.
    pub fn named(&self, name: &str) -> Option<Conn> {
        let id = *lock(&self.inner.names).get(name)?;
        self.connection(id)
    }

    /// Calls `action` on the peer named `name` (see [`Conn::call`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    pub fn call_named<R>(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> Result<crate::Call<R>, Error> {
        let conn = self
            .named(name)
            .ok_or_else(|| Error::NoPeer(name.to_string()))?;
        Ok(conn.call(action, body))
    }

    /// Fires `action` to the peer named `name` (see [`Conn::fire`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    pub fn fire_named(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let fire = self
            .named(name)
            .ok_or_else(|| Error::NoPeer(name.to_string()))
            .map(|conn| conn.fire(action, body));
        async move { fire?.await }
    }

    /// Fires `action` with `body` to every live connection and returns how
    /// many it was queued for.
    ///
    /// The command is encoded once per protocol and the same bytes are queued
    /// on every connection. A connection whose outbound queue is full (in
    /// frames or bytes) is a slow consumer: it is disconnected
    /// ([`CloseReason::TooSlow`], logged), so that it never stalls the
    /// broadcast nor grows memory. That is why it is not async, unlike
    /// [`Conn::fire`], which waits for its one peer. Connections whose protocol cannot encode
    /// the command (e.g. a frame over the maximum size) are skipped and
    /// logged; the count says how many it reached.
    pub fn broadcast(&self, action: &str, body: impl Serialize) -> Result<usize, Error> {
        Ok(self.broadcast_out(action, OutBody::Value(&body)))
    }

    /// [`broadcast`](Server::broadcast) of a received [`Body`](crate::Body):
    /// to connections of the protocol it arrived in, its bytes are copied
    /// as they are (numbers keep their precision, strings their escapes);
    /// to others it is transcoded.
    pub fn broadcast_body(&self, action: &str, body: &crate::Body) -> usize {
        self.broadcast_out(action, OutBody::Raw(body))
    }

    fn broadcast_out(&self, action: &str, body: OutBody<'_>) -> usize {
        fanout(&self.connections(), action, body)
    }

    /// Shuts the server down gracefully: stops accepting, refuses new
    /// commands (answering them with `drs.error`), lets running handlers
    /// finish and their replies go out for up to `grace`, then closes every
    /// connection. Returns when all connection tasks have ended.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stop_accepting.cancel();
        inner.drain.cancel();
        inner.tasks.close();
        if tokio::time::timeout(grace, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                ?grace,
                "grace period over; closing the remaining connections"
            );
            inner.force.cancel();
            inner.tasks.wait().await;
        }
    }

    /// Whether [`shutdown`](Server::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stop_accepting.is_cancelled()
    }
}

/// Fires `action` with `body` to each of `conns` and returns how many it
/// was queued for: what [`Server::broadcast`] does, for any set of
/// connections (a pub/sub broker's subscribers).
///
/// The command is encoded once per protocol and the same bytes are queued
/// on every connection, without waiting. A connection whose outbound queue
/// is full (in frames or bytes) is a slow consumer: it is disconnected
/// ([`CloseReason::TooSlow`], logged), so that it never stalls the others
/// nor grows memory. Connections whose protocol cannot encode the command
/// (e.g. a frame over their maximum size) are skipped and logged.
pub fn fanout<'c>(
    conns: impl IntoIterator<Item = &'c Conn>,
    action: &str,
    body: OutBody<'_>,
) -> usize {
    let mut encoded: Vec<(&'static str, Option<Bytes>)> = Vec::with_capacity(1);
    let mut delivered = 0;
    for conn in conns {
        let protocol = conn.protocol();
        let frame = match encoded.iter().find(|(name, _)| *name == protocol.name()) {
            Some((_, frame)) => frame.clone(),
            None => {
                let max = conn.config().max_frame_len;
                let frame = match encode_frame(protocol, max, &Outgoing::new(action).body(body)) {
                    Ok(frame) => Some(frame),
                    Err(e) => {
                        tracing::warn!(
                            protocol = protocol.name(),
                            action,
                            error = %e,
                            "cannot be encoded for this protocol; its connections are skipped"
                        );
                        None
                    }
                };
                encoded.push((protocol.name(), frame.clone()));
                frame
            }
        };
        let Some(frame) = frame else { continue };
        match conn.try_send_frame(frame) {
            Ok(()) => delivered += 1,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    id = conn.id(),
                    peer = conn.peer_addr(),
                    "slow consumer disconnected"
                );
                conn.shared.close_for(CloseReason::TooSlow);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
    delivered
}

/// The body of `drs.auth`, as far as the core reads it.
/// A live connection as [`Server::peers`] lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Peer {
    /// The connection's id ([`Conn::id`]).
    pub id: u64,
    /// The name the peer gave with `drs.identify`.
    pub name: Option<Arc<str>>,
    /// The peer's address, when the transport knows it.
    pub peer_addr: Option<String>,
    /// The transport's name (`"tcp"`, `"ws"`, `"ipc"`, …).
    pub transport: &'static str,
}

/// How many different names one connection may take with `drs.identify`
/// over its life; past it `drs.identify` of a new name is refused.
pub const MAX_NAMES_PER_CONN: usize = 16;

/// The names a connection has taken, to bound them.
#[derive(Clone, Default)]
struct NamesTaken(Arc<std::sync::Mutex<Vec<Arc<str>>>>);

impl Inner {
    /// `drs.identify`: checks the name, takes it from no live connection,
    /// asks the hooks (any may refuse it), then gives it to `conn`,
    /// releasing the one it had.
    fn identify(&self, conn: &Conn, name: &str) -> Result<bool, HandlerError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(HandlerError::new(format!(
                "invalid name: it must be 1 to {MAX_NAME_LEN} bytes without control characters"
            )));
        }
        if conn.name().as_deref() == Some(name) {
            return self.run_identify_hooks(conn, &conn.name().unwrap_or_else(|| name.into()));
        }
        let taken = match conn.get::<NamesTaken>() {
            Some(taken) => taken,
            None => {
                let taken = NamesTaken::default();
                conn.insert(taken.clone());
                taken
            }
        };
        {
            let taken = lock(&taken.0);
            if taken.len() >= MAX_NAMES_PER_CONN && !taken.iter().any(|n| &**n == name) {
                return Err(HandlerError::new(format!(
                    "too many names for one connection (at most {MAX_NAMES_PER_CONN})"
                )));
            }
        }
        let name: Arc<str> = name.into();
        {
            let mut names = lock(&self.names);
            if let Some(&holder) = names.get(&name) {
                if holder != conn.id() && read(&self.conns).contains_key(&holder) {
                    return Err(HandlerError::new(NAME_TAKEN));
                }
            }
            // Reserved for `conn` while the hooks decide.
            names.insert(name.clone(), conn.id());
        }
        match self.run_identify_hooks(conn, &name) {
            Ok(resumed) => {
                let mut names = lock(&self.names);
                if let Some(old) = conn.name() {
                    if names.get(&old) == Some(&conn.id()) {
                        names.remove(&old);
                    }
                }
                conn.insert(PeerName(name.clone()));
                drop(names);
                let mut taken = lock(&taken.0);
                if !taken.contains(&name) {
                    taken.push(name);
                }
                Ok(resumed)
            }
            Err(refused) => {
                let mut names = lock(&self.names);
                if names.get(&name) == Some(&conn.id()) {
                    names.remove(&name);
                }
                Err(refused)
            }
        }
    }

    /// Every hook runs (each may start serving the name); the first
    /// refusal is the answer.
    fn run_identify_hooks(&self, conn: &Conn, name: &Arc<str>) -> Result<bool, HandlerError> {
        let hooks = read(&self.on_identify).clone();
        let mut resumed = false;
        for hook in hooks {
            resumed |= hook(conn, name).map_err(HandlerError::new)?;
        }
        Ok(resumed)
    }

    /// Frees the name of a connection that has ended.
    fn release_name(&self, conn: &Conn) {
        if let Some(name) = conn.name() {
            let mut names = lock(&self.names);
            if names.get(&name) == Some(&conn.id()) {
                names.remove(&name);
            }
        }
    }
}

/// One of the server's connection slots, given back when dropped.
struct ConnSlot(Arc<Inner>);

impl ConnSlot {
    fn take(inner: &Arc<Inner>) -> Option<Self> {
        let taken = inner
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_connections).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| ConnSlot(inner.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}
