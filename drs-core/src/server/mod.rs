//! [`Server`]: accepts connections on any number of listeners, each with its
//! protocol, and serves them all with one routing table.

mod accept;
mod broadcast;
mod config;

pub use broadcast::fanout;
pub use config::ServerConfig;

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
    command::{MessageBody, ERROR, SHUTTING_DOWN},
    conn::{encode_frame, Conn, ConnConfig},
    error::Error,
    handler::Handler,
    layer::Layer,
    protocol::{OutBody, Outgoing, Protocol},
    router::Router,
    routes::Routes,
    sync::{lock, read, write},
    transport::{ConnInfo, Listener, Transport},
};

type ConnectHook =
    Arc<dyn Fn(Conn) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Conn) + Send + Sync>;

struct Inner {
    router: Arc<Router>,
    config: ConnConfig,
    max_connections: usize,
    budget: MemoryBudget,
    /// Connections being served, admitted or not.
    live: AtomicUsize,
    conns: RwLock<HashMap<u64, Conn>>,
    on_connect: RwLock<Vec<ConnectHook>>,
    on_disconnect: RwLock<Vec<DisconnectHook>>,
    /// Run after every `on_disconnect` hook, admitted or not.
    on_disconnect_last: RwLock<Vec<DisconnectHook>>,
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
        Self {
            inner: Arc::new(Inner {
                router: Router::root(),
                config: config.conn,
                max_connections: config.max_connections,
                budget: MemoryBudget::new(config.memory_budget),
                live: AtomicUsize::new(0),
                conns: RwLock::default(),
                on_connect: RwLock::default(),
                on_disconnect: RwLock::default(),
                on_disconnect_last: RwLock::default(),
                stop_accepting: CancellationToken::new(),
                drain: CancellationToken::new(),
                force: CancellationToken::new(),
                tasks: TaskTracker::new(),
                observer: std::sync::OnceLock::new(),
                extensions: std::sync::Mutex::default(),
            }),
        }
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

    /// Serves `routes` on every connection: its handlers replace those of
    /// the same action, its layers go inside the server's. `on`, `layer`
    /// and `layer_for` are this for one entry.
    pub fn routes(&self, routes: Routes) -> &Self {
        self.inner.router.add(routes);
        self
    }

    /// Registers `handler` for `action` on every connection, replacing any
    /// previous one: [`Routes::on`] added with [`routes`](Server::routes).
    /// (`drs_layers::Chain` registers several in order.)
    ///
    /// # Panics
    /// If `action` is reserved for the call machinery (`drs.response`,
    /// `drs.error`, `drs.exception`, `drs.next`, `drs.more`, `drs.cancel`).
    pub fn on<H: Handler<A>, A>(&self, action: impl Into<String>, handler: H) -> &Self {
        self.routes(Routes::new().on(action, handler))
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

    /// The server-wide memory budget (to read how much is held).
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// Adds a [`Layer`] around every command served on every connection,
    /// commands with no handler included; inside the layers added before.
    pub fn layer(&self, layer: impl Layer) -> &Self {
        self.routes(Routes::new().layer(layer))
    }

    /// Adds a [`Layer`] around the handler of `action` (kept when the
    /// handler is registered again); inside the layers added before for it,
    /// and inside the server-wide layers. One layer value shares its state
    /// between every connection: a worker pool or a cache added here is
    /// server-wide.
    pub fn layer_for(&self, action: impl Into<String>, layer: impl Layer) -> &Self {
        self.routes(Routes::new().layer_for(action, layer))
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

    /// Adds a layer outside every other, including those added later:
    /// a gate (`drs-auth`'s authentication and jails) that must see every
    /// command first, or an observer that must see every outcome
    /// (`drs_layers::after`). Layers added so nest in reverse order of
    /// addition: the last added is the outermost.
    pub fn layer_outermost(&self, layer: impl Layer) -> &Self {
        self.inner.router.layer_outermost(Arc::new(layer));
        self
    }

    /// Adds a hook that runs when an admitted connection has closed.
    pub fn on_disconnect(&self, hook: impl Fn(&Conn) + Send + Sync + 'static) -> &Self {
        write(&self.inner.on_disconnect).push(Arc::new(hook));
        self
    }

    /// Adds a hook that runs when any connection has closed, after every
    /// [`on_disconnect`](Server::on_disconnect) hook, whenever those were
    /// added: releasing what others wait on to know the hooks' work is done
    /// (`drs-names` frees the connection's name so).
    pub fn on_disconnect_last(&self, hook: impl Fn(&Conn) + Send + Sync + 'static) -> &Self {
        write(&self.inner.on_disconnect_last).push(Arc::new(hook));
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
