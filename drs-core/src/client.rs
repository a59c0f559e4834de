//! [`Client`]: dial a transport with a protocol and get a [`Conn`].

use std::{fmt, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::{
    budget::ReadMeter,
    codec::FramedIo,
    conn::{Conn, ConnConfig},
    error::Error,
    handler::Handler,
    protocol::Protocol,
    router::Router,
    transport::{ConnInfo, Dialer, Transport},
};

/// Builds client connections, with handlers registered before the first
/// frame is read (so nothing the server sends right away is missed).
///
/// Three ways in: [`connect`](Client::connect) with a [`Dialer`] (what a
/// transport crate's `connect` uses), [`connect_io`](Client::connect_io) with
/// an already-open byte stream, [`connect_transport`](Client::connect_transport)
/// with any [`Transport`].
///
/// ```no_run
/// # async fn f<D: drs_core::Dialer>(dialer: D, json: impl drs_core::Protocol) -> Result<(), drs_core::Error> {
/// use drs_core::{Client, HandlerResult};
/// let conn = Client::new()
///     .on("shout", |text: String| async move { println!("{text}"); HandlerResult::Ok(()) })
///     .connect(dialer, json)
///     .await?;
/// let n: u64 = conn.call("drs.ping", ()).await?;
/// # Ok(()) }
/// ```
///
/// Cloning gives another handle to the same handlers and layers: a handler
/// registered through one clone serves the connections of all. Each
/// connection made with [`dial`](Client::dial) gets its own routes on top
/// ([`Conn::on`] on it stays with it), which is what lets a reconnecting
/// session keep its handlers from one connection to the next.
#[derive(Clone)]
pub struct Client {
    router: Arc<Router>,
    config: ConnConfig,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with default settings and the built-in `drs.ping` handler.
    pub fn new() -> Self {
        Self {
            router: Router::root(),
            config: ConnConfig::default(),
        }
    }

    /// Sets the connection settings.
    pub fn config(mut self, config: ConnConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves `routes` on every connection of this client: what the
    /// server fires or calls. Its handlers replace those of the same
    /// action, its layers go inside the client's.
    pub fn routes(self, routes: crate::Routes) -> Self {
        self.router.add(routes);
        self
    }

    /// Registers a handler for what the server fires or calls
    /// ([`Routes::on`](crate::Routes::on) added with
    /// [`routes`](Client::routes)).
    pub fn on<H: Handler<A>, A>(self, action: impl Into<String>, handler: H) -> Self {
        self.routes(crate::Routes::new().on(action, handler))
    }

    /// Adds a [`Layer`](crate::Layer) around every inbound command (see
    /// [`Server::layer`](crate::Server::layer)).
    pub fn layer(self, layer: impl crate::Layer) -> Self {
        self.routes(crate::Routes::new().layer(layer))
    }

    /// Adds a [`Layer`](crate::Layer) around the handler of one action.
    pub fn layer_for(self, action: impl Into<String>, layer: impl crate::Layer) -> Self {
        self.routes(crate::Routes::new().layer_for(action, layer))
    }

    /// The connection settings.
    pub fn settings(&self) -> &ConnConfig {
        &self.config
    }

    /// Dials and starts the connection. Must be called within a Tokio runtime.
    /// Dialing is bounded by the handshake timeout of the settings.
    pub async fn connect<D: Dialer, P: Protocol>(
        self,
        dialer: D,
        protocol: P,
    ) -> Result<Conn, Error> {
        self.dial(&dialer, Arc::new(protocol)).await
    }

    /// Dials one more connection with these handlers (see the type's
    /// docs), without consuming the client: what a reconnecting session or
    /// a pool uses. Must be called within a Tokio runtime; bounded by the
    /// handshake timeout of the settings.
    pub async fn dial<D: Dialer>(
        &self,
        dialer: &D,
        protocol: Arc<dyn Protocol>,
    ) -> Result<Conn, Error> {
        let spec = self.config.frame_spec(&*protocol);
        let meter = spec.meter.clone();
        let timeout = self.config.handshake_timeout;
        let (io, info) = tokio::time::timeout(timeout, dialer.dial(spec))
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        Ok(Self {
            router: Router::child(self.router.clone()),
            config: self.config.clone(),
        }
        .start(io, info, protocol, meter))
    }

    /// Starts a connection over an open byte stream, framed as the protocol wants.
    pub fn connect_io<IO>(self, io: IO, info: ConnInfo, protocol: Arc<dyn Protocol>) -> Conn
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let spec = self.config.frame_spec(&*protocol);
        let meter = spec.meter.clone();
        let framed = FramedIo::new(io, spec);
        self.start(framed, info, protocol, meter)
    }

    /// Starts a connection over any transport. Must be called within a Tokio runtime.
    pub fn connect_transport<T: Transport>(
        self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
    ) -> Conn {
        self.start(io, info, protocol, ReadMeter::default())
    }

    fn start<T: Transport>(
        self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
        meter: ReadMeter,
    ) -> Conn {
        let (conn, driver) = Conn::new(
            io,
            info,
            protocol,
            self.router,
            self.config,
            CancellationToken::new(),
            meter,
        );
        tokio::spawn(driver.run());
        conn
    }
}

/// Dials with default settings: `Client::new().connect(dialer, protocol)`.
pub async fn connect<D: Dialer, P: Protocol>(dialer: D, protocol: P) -> Result<Conn, Error> {
    Client::new().connect(dialer, protocol).await
}
