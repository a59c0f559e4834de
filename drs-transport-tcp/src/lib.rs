//! TCP for drs: a [`TcpListener`] for servers, a [`TcpDialer`] (and
//! [`connect`]) for clients. Frames are delimited by the core framing layer
//! as the protocol asks (lines for JSON, length prefixes for binary
//! protocols); `TCP_NODELAY` is set on every connection.
//!
//! **Liveness.** TCP keepalive ([`Keepalive`]) is on for every accepted and
//! dialed socket: after 30 s of silence the kernel probes the peer every
//! 10 s, and after 3 unanswered probes the connection fails with
//! `TimedOut` (close reason `KeepaliveFailed`). `TCP_USER_TIMEOUT` is set
//! to the same total where the platform has it, so a peer that vanishes
//! while data is unacknowledged is found within the same minute.
//!
//! ```no_run
//! # async fn f() -> Result<(), drs_core::Error> {
//! use drs_core::{HandlerResult, Server};
//! use drs_protocol_json::Json;
//! use drs_transport_tcp::TcpListener;
//!
//! let server = Server::new();
//! server.on("echo", |body: drs_core::Body| async move { HandlerResult::Ok(body) });
//! let addr = server.listen(TcpListener::bind("127.0.0.1:0").await?, Json)?;
//!
//! let conn = drs_transport_tcp::connect(&addr, Json).await?;
//! let back: String = conn.call("echo", "hi").await?;
//! # Ok(()) }
//! ```

use std::{
    future::{ready, Ready},
    io,
    net::SocketAddr,
    time::Duration,
};

use drs_core::{Client, Conn, ConnInfo, Dialer, Error, FrameSpec, FramedIo, Listener, Protocol};
use tokio::net::{TcpStream, ToSocketAddrs};

/// A TCP connection framed for drs.
pub type TcpTransport = FramedIo<TcpStream>;

/// TCP keepalive: how a peer that vanished without closing is found.
///
/// The kernel sends a probe after [`idle`](Keepalive::idle) without
/// traffic, then one every [`interval`](Keepalive::interval); after
/// [`retries`](Keepalive::retries) unanswered probes the connection fails.
/// The defaults (30 s, 10 s, 3) find a vanished peer within about a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Silence before the first probe. Default 30 s.
    pub idle: Duration,
    /// Between probes. Default 10 s.
    pub interval: Duration,
    /// Unanswered probes before the connection fails. Default 3.
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            retries: 3,
        }
    }
}

impl Keepalive {
    /// Sets the silence before the first probe.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Sets the interval between probes.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the number of unanswered probes before failing.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries.max(1);
        self
    }

    /// How long a vanished peer may go unnoticed.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.retries
    }

    /// Applies keepalive (and, where the platform has it,
    /// `TCP_USER_TIMEOUT`) to a socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let sock = socket2::SockRef::from(stream);
        let params = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval);
        #[cfg(not(any(windows, target_os = "openbsd", target_os = "haiku")))]
        let params = params.with_retries(self.retries);
        sock.set_tcp_keepalive(&params)?;
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        sock.set_tcp_user_timeout(Some(self.detection_time()))?;
        Ok(())
    }
}

/// Applies `keepalive`, if any, and `TCP_NODELAY`.
pub fn configure(stream: &TcpStream, keepalive: Option<&Keepalive>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(keepalive) = keepalive {
        keepalive.apply(stream)?;
    }
    Ok(())
}

/// The next connection on `listener`, skipping peers that gave up before
/// it was accepted (not the listener's problem); other errors are the
/// listener's.
pub async fn accept(listener: &tokio::net::TcpListener) -> io::Result<TcpStream> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::debug!(error = %e, "connection aborted before accept");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts TCP connections for a [`drs_core::Server`].
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    keepalive: Option<Keepalive>,
}

impl TcpListener {
    /// Binds to `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self::from_tokio(tokio::net::TcpListener::bind(addr).await?))
    }

    /// Wraps a bound Tokio listener.
    pub fn from_tokio(inner: tokio::net::TcpListener) -> Self {
        Self {
            inner,
            keepalive: Some(Keepalive::default()),
        }
    }

    /// Sets TCP keepalive for accepted sockets (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection, configured (`TCP_NODELAY`, keepalive): what
    /// a transport over TCP (TLS) builds on.
    pub async fn accept_stream(&self) -> io::Result<TcpStream> {
        let stream = accept(&self.inner).await?;
        configure(&stream, self.keepalive.as_ref())?;
        Ok(stream)
    }
}

/// What is known of a TCP connection: `transport`'s name and the two
/// addresses (for transports over TCP: TLS, WebSocket).
pub fn conn_info(transport: &'static str, stream: &TcpStream) -> ConnInfo {
    let mut info = ConnInfo::new(transport);
    if let Ok(peer) = stream.peer_addr() {
        info = info.with_peer_addr(peer.to_string());
    }
    if let Ok(local) = stream.local_addr() {
        info = info.with_local_addr(local.to_string());
    }
    info
}

impl Listener for TcpListener {
    type Io = TcpTransport;
    type Handshake = Ready<io::Result<(TcpTransport, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let stream = self.accept_stream().await?;
        let info = conn_info("tcp", &stream);
        Ok(ready(Ok((FramedIo::new(stream, spec), info))))
    }

    fn local_addr(&self) -> io::Result<String> {
        self.inner.local_addr().map(|a| a.to_string())
    }
}

/// Dials a TCP address.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    addr: String,
    keepalive: Option<Keepalive>,
}

impl TcpDialer {
    /// A dialer for `addr` (`host:port`), with default keepalive.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            keepalive: Some(Keepalive::default()),
        }
    }

    /// Sets TCP keepalive (`None`: off).
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }
}

impl Dialer for TcpDialer {
    type Io = TcpTransport;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(TcpTransport, ConnInfo)> {
        let stream = TcpStream::connect(&self.addr).await?;
        configure(&stream, self.keepalive.as_ref())?;
        let info = conn_info("tcp", &stream);
        Ok((FramedIo::new(stream, spec), info))
    }
}

/// Connects to a drs server at `addr` with default settings.
/// Use [`drs_core::Client`] with a [`TcpDialer`] for handlers and settings.
pub async fn connect<P: Protocol>(addr: impl AsRef<str>, protocol: P) -> Result<Conn, Error> {
    Client::new()
        .connect(TcpDialer::new(addr.as_ref()), protocol)
        .await
}

/// `tcp://HOST:PORT` for a [`Registry`](drs_core::Registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpScheme;

impl drs_core::Scheme for TcpScheme {
    fn names(&self) -> &'static [&'static str] {
        &["tcp"]
    }

    fn dial<'a>(
        &'a self,
        client: Client,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, Conn> {
        Box::pin(client.connect(TcpDialer::new(&url.target), protocol))
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        drs_core::listen_bound(server, "tcp", TcpListener::bind(&url.target), protocol)
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        drs_core::open_dialed(TcpDialer::new(&url.target), spec)
    }
}
