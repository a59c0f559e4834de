//! TCP for drs: a [`TcpListener`] for servers, a [`TcpDialer`] (and
//! [`connect`]) for clients. Frames are delimited by the core framing layer
//! as the protocol asks (lines for JSON, length prefixes for binary
//! protocols); `TCP_NODELAY` is set on every connection.
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
};

use drs_core::{Client, Conn, ConnInfo, Dialer, Error, FrameSpec, FramedIo, Listener, Protocol};
use tokio::net::{TcpStream, ToSocketAddrs};

/// A TCP connection framed for drs.
pub type TcpTransport = FramedIo<TcpStream>;

/// Accepts TCP connections for a [`drs_core::Server`].
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
}

impl TcpListener {
    /// Binds to `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
        })
    }

    /// Wraps a bound Tokio listener.
    pub fn from_tokio(inner: tokio::net::TcpListener) -> Self {
        Self { inner }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn framed(stream: TcpStream, spec: FrameSpec) -> io::Result<(TcpTransport, ConnInfo)> {
    stream.set_nodelay(true)?;
    let mut info = ConnInfo::new("tcp");
    if let Ok(peer) = stream.peer_addr() {
        info = info.with_peer_addr(peer.to_string());
    }
    if let Ok(local) = stream.local_addr() {
        info = info.with_local_addr(local.to_string());
    }
    Ok((FramedIo::new(stream, spec), info))
}

impl Listener for TcpListener {
    type Io = TcpTransport;
    type Handshake = Ready<io::Result<(TcpTransport, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) => return Ok(ready(framed(stream, spec))),
                // The peer gave up before we accepted: not the listener's problem.
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

    fn local_addr(&self) -> io::Result<String> {
        self.inner.local_addr().map(|a| a.to_string())
    }
}

/// Dials a TCP address.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    addr: String,
}

impl TcpDialer {
    /// A dialer for `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl Dialer for TcpDialer {
    type Io = TcpTransport;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(TcpTransport, ConnInfo)> {
        framed(TcpStream::connect(&self.addr).await?, spec)
    }
}

/// Connects to a drs server at `addr` with default settings.
/// Use [`drs_core::Client`] with a [`TcpDialer`] for handlers and settings.
pub async fn connect<P: Protocol>(addr: impl AsRef<str>, protocol: P) -> Result<Conn, Error> {
    Client::new()
        .connect(TcpDialer::new(addr.as_ref()), protocol)
        .await
}
