//! WebSocket for drs: [`WsListener`] for servers, [`WsDialer`] (and
//! [`connect`]) for clients.
//!
//! - One command per message: text messages for text protocols (JSON; a
//!   trailing newline is tolerated, the Go DRS sends one), binary messages
//!   for binary protocols (MessagePack). A message of the other kind is
//!   answered with a `drs.error` and skipped.
//! - Any path is accepted. The request target, with its query string, is in
//!   [`ConnInfo::target`](drs_core::ConnInfo), so an `on_connect` hook can
//!   authenticate (`conn.info().query_param("token")`) or reject; the
//!   `Authorization` header is in `ConnInfo::authorization`. Both feed
//!   `drs_auth::ServerAuth::authenticate`.
//! - Keepalive: a ping every [`WsConfig::keepalive`] interval (default 30 s);
//!   a peer that sends nothing for a whole interval after a ping is
//!   disconnected (close reason `KeepaliveFailed`), and its pending calls
//!   fail at once. When our write buffer is full the ping cannot go out,
//!   and the peer's silence counts just the same. TCP keepalive runs
//!   underneath too ([`WsConfig::tcp_keepalive`]).
//! - Memory: the bytes of a message under way count against the server's
//!   memory budget (through the connection's read meter).
//! - Limits: messages and frames up to the core's maximum frame size (8 MiB
//!   by default; larger ones get a `drs.error` and a disconnect), and a
//!   bounded write buffer. Close frames are answered and sent.
//! - A plain HTTP request (no upgrade) gets a page registered with
//!   [`WsListener::page`], or `426 Upgrade Required`.
//!
//! - TLS (`wss://`): [`WsListener::tls`] with a [`drs_tls::ServerTls`]
//!   (the handshake runs on the connection's task, bounded by the server's
//!   handshake timeout; the transport's name is `"wss"`), and
//!   [`WsDialer::tls`] with a [`drs_tls::ClientTls`] for `wss://` URLs. A
//!   client certificate's identity is in `ConnInfo::peer_certificate`.
//!
//! A browser needs nothing but `new WebSocket("ws://127.0.0.1:12001/socket")`
//! and `JSON.stringify`.
//!
//! ```no_run
//! # async fn f() -> Result<(), drs_core::Error> {
//! use drs_core::{HandlerResult, Server};
//! use drs_protocol_json::Json;
//! use drs_transport_ws::WsListener;
//!
//! let server = Server::new();
//! server.on("echo", |body: drs_core::Body| async move { HandlerResult::Ok(body) });
//! let addr = server.listen(WsListener::bind("127.0.0.1:0").await?, Json)?;
//!
//! let conn = drs_transport_ws::connect(&format!("ws://{addr}/socket"), Json).await?;
//! let back: String = conn.call("echo", "hi").await?;
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use drs_core::{
    BadFrame, Client, Conn, ConnInfo, Dialer, Error, FrameKind, FrameSpec, FrameTooLarge, Inbound,
    Listener, Protocol,
};
use futures::{Sink, Stream};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpStream, ToSocketAddrs},
    time::Sleep,
};
use tokio_tungstenite::{
    tungstenite::{
        self,
        error::CapacityError,
        handshake::server::{Request, Response},
        protocol::WebSocketConfig,
        Message, Utf8Bytes,
    },
    WebSocketStream,
};

/// Implements `AsyncRead` and `AsyncWrite` for a plain-or-TLS stream enum.
macro_rules! either_stream {
    ($name:ident) => {
        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::Plain(s) => s.is_write_vectored(),
                    $name::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

/// The byte stream under a server's WebSocket: TCP, or TLS over it.
#[derive(Debug)]
pub enum ServerStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<drs_tls::tokio_rustls::server::TlsStream<TcpStream>>),
}
either_stream!(ServerStream);

/// The byte stream under a client's WebSocket: TCP, or TLS over it.
#[derive(Debug)]
pub enum ClientStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<drs_tls::tokio_rustls::client::TlsStream<TcpStream>>),
}
either_stream!(ClientStream);

/// Settings of WebSocket connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// Interval between pings; `None` turns keepalive off. Default 30 s.
    pub keepalive: Option<Duration>,
    /// Bytes that may wait in the write buffer beyond one maximum frame
    /// before writes wait. Default 1 MiB.
    pub write_buffer: usize,
    /// TCP keepalive under the WebSocket (`None`: off); finds a peer that
    /// vanished even when pings are off. Default: on, as for TCP.
    pub tcp_keepalive: Option<drs_transport_tcp::Keepalive>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            keepalive: Some(Duration::from_secs(30)),
            write_buffer: 1 << 20,
            tcp_keepalive: Some(drs_transport_tcp::Keepalive::default()),
        }
    }
}

impl WsConfig {
    /// Sets the keepalive interval (`None`: no pings).
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// Sets TCP keepalive under the WebSocket (`None`: off).
    pub fn tcp_keepalive(mut self, keepalive: Option<drs_transport_tcp::Keepalive>) -> Self {
        self.tcp_keepalive = keepalive;
        self
    }

    /// Sets the write buffer allowance.
    pub fn write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes;
        self
    }

    fn tungstenite(&self, spec: &FrameSpec) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(64 * 1024)
            .max_write_buffer_size(64 * 1024 + spec.max_frame_len + self.write_buffer)
            .max_message_size(Some(spec.max_frame_len))
            .max_frame_size(Some(spec.max_frame_len))
    }
}

/// A WebSocket connection carrying drs frames.
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    kind: FrameKind,
    limit: usize,
    keepalive: Option<Keepalive>,
    /// A pong (or ping) is queued in tungstenite and must be flushed.
    flush_control: bool,
    /// Counts what the server side reads (see [`Replay`]); reset at each
    /// message, so it holds the bytes of the message under way.
    meter: drs_core::ReadMeter,
}

struct Keepalive {
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    /// A ping went out and nothing has come back since.
    waiting: bool,
}

impl<S> std::fmt::Debug for WsTransport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("kind", &self.kind)
            .field("limit", &self.limit)
            .field("keepalive", &self.keepalive.as_ref().map(|k| k.interval))
            .finish_non_exhaustive()
    }
}

impl<S> WsTransport<S> {
    /// Wraps an established WebSocket.
    pub fn new(ws: WebSocketStream<S>, spec: &FrameSpec, config: &WsConfig) -> Self {
        Self {
            ws,
            kind: spec.frame_kind(),
            limit: spec.max_frame_len,
            keepalive: config.keepalive.map(|interval| Keepalive {
                interval,
                timer: Box::pin(tokio::time::sleep(interval)),
                waiting: false,
            }),
            flush_control: false,
            meter: spec.meter.clone(),
        }
    }
}

fn ws_error(e: tungstenite::Error, limit: usize) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            FrameTooLarge { limit }.into_io()
        }
        tungstenite::Error::Capacity(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::NotConnected, "the WebSocket is closed")
        }
        tungstenite::Error::WriteBufferFull(_) => {
            io::Error::new(io::ErrorKind::WouldBlock, "write buffer full")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Text => "text",
        _ => "binary",
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsTransport<S> {
    type Item = io::Result<Inbound>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(ka) = &mut this.keepalive {
                if ka.timer.as_mut().poll(cx).is_ready() {
                    if ka.waiting {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer stopped answering pings",
                        ))));
                    }
                    // A peer silent for a whole interval is asked for a
                    // sign of life. When our write buffer is full the ping
                    // cannot go out, and the peer is not reading either:
                    // it gets the same interval to show it is alive.
                    ka.waiting = true;
                    if let Poll::Ready(Ok(())) = Pin::new(&mut this.ws).poll_ready(cx) {
                        if Pin::new(&mut this.ws)
                            .start_send(Message::Ping(Bytes::new()))
                            .is_ok()
                        {
                            this.flush_control = true;
                        }
                    }
                    let next = tokio::time::Instant::now() + ka.interval;
                    ka.timer.as_mut().reset(next);
                    continue;
                }
            }
            if this.flush_control {
                if let Poll::Ready(res) = Pin::new(&mut this.ws).poll_flush(cx) {
                    this.flush_control = false;
                    if let Err(e) = res {
                        return Poll::Ready(Some(Err(ws_error(e, this.limit))));
                    }
                }
            }
            let msg = match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))) => return Poll::Ready(None),
                // Over TLS, a peer that closes the socket without a TLS
                // close_notify reads as an unexpected EOF. Messages are
                // framed, so nothing is silently cut short: it closed.
                Poll::Ready(Some(Err(tungstenite::Error::Io(e))))
                    if e.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    return Poll::Ready(None)
                }
                Poll::Ready(Some(Err(tungstenite::Error::Capacity(
                    CapacityError::MessageTooLong { .. },
                )))) => {
                    return Poll::Ready(Some(Ok(Inbound::TooLarge(FrameTooLarge {
                        limit: this.limit,
                    }))))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(ws_error(e, this.limit))))
                }
                Poll::Ready(Some(Ok(msg))) => msg,
            };
            if let Some(ka) = &mut this.keepalive {
                ka.waiting = false;
            }
            if this.meter.partial() != 0 {
                this.meter.set_partial(0);
            }
            let (got, frame) = match msg {
                Message::Text(text) => (FrameKind::Text, trim_newline(Bytes::from(text))),
                Message::Binary(bytes) => (FrameKind::Binary, bytes),
                // Tungstenite queues the pong; it goes out with the next flush.
                Message::Ping(_) => {
                    this.flush_control = true;
                    continue;
                }
                Message::Pong(_) | Message::Frame(_) => continue,
                // Tungstenite answers the close; the stream then ends.
                Message::Close(_) => {
                    this.flush_control = true;
                    continue;
                }
            };
            if got != this.kind {
                return Poll::Ready(Some(Ok(Inbound::Bad(BadFrame::new(format!(
                    "expected a {} message, got a {} one",
                    kind_name(this.kind),
                    kind_name(got)
                ))))));
            }
            return Poll::Ready(Some(Ok(Inbound::Frame(frame))));
        }
    }
}

/// Drops one trailing `\n` or `\r\n`.
fn trim_newline(mut frame: Bytes) -> Bytes {
    if frame.last() == Some(&b'\n') {
        frame.truncate(frame.len() - 1);
        if frame.last() == Some(&b'\r') {
            frame.truncate(frame.len() - 1);
        }
    }
    frame
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for WsTransport<S> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.limit;
        Pin::new(&mut self.get_mut().ws)
            .poll_ready(cx)
            .map_err(|e| ws_error(e, limit))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        if frame.len() > this.limit {
            return Err(FrameTooLarge { limit: this.limit }.into_io());
        }
        let msg = match this.kind {
            FrameKind::Text => Message::Text(Utf8Bytes::try_from(frame).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a text frame must be UTF-8")
            })?),
            _ => Message::Binary(frame),
        };
        Pin::new(&mut this.ws)
            .start_send(msg)
            .map_err(|e| ws_error(e, this.limit))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.limit;
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(|e| ws_error(e, limit))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self.limit;
        match Pin::new(&mut self.get_mut().ws).poll_close(cx) {
            Poll::Ready(Err(
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
            )) => Poll::Ready(Ok(())),
            other => other.map_err(|e| ws_error(e, limit)),
        }
    }
}

/// What a page's body is made of.
#[derive(Clone)]
enum PageBody {
    Fixed(Bytes),
    /// Made for each request (e.g. metrics).
    Made(Arc<dyn Fn() -> Bytes + Send + Sync>),
}

impl std::fmt::Debug for PageBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageBody::Fixed(b) => write!(f, "Fixed({} bytes)", b.len()),
            PageBody::Made(_) => f.write_str("Made(..)"),
        }
    }
}

/// A page served to plain HTTP requests for one path.
#[derive(Debug, Clone)]
struct Page {
    content_type: &'static str,
    body: PageBody,
}

/// Accepts WebSocket connections for a [`drs_core::Server`].
#[derive(Debug)]
pub struct WsListener {
    inner: tokio::net::TcpListener,
    config: WsConfig,
    pages: Arc<HashMap<String, Page>>,
    tls: Option<drs_tls::ServerTls>,
}

impl WsListener {
    /// Binds to `addr` (port 0 picks a free port) with default settings.
    pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Self::bind_with(addr, WsConfig::default()).await
    }

    /// Binds to `addr` with `config`.
    pub async fn bind_with(addr: impl ToSocketAddrs, config: WsConfig) -> io::Result<Self> {
        Ok(Self {
            inner: tokio::net::TcpListener::bind(addr).await?,
            config,
            pages: Arc::default(),
            tls: None,
        })
    }

    /// Serves `wss://`: every connection starts with a TLS handshake
    /// (mutual when `tls` requires client certificates).
    pub fn tls(mut self, tls: drs_tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves `body` to plain HTTP `GET`s of `path` (e.g. the page of a
    /// browser client); WebSocket upgrades of that path are unaffected.
    pub fn page(mut self, path: &str, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Arc::make_mut(&mut self.pages).insert(
            path.to_string(),
            Page {
                content_type,
                body: PageBody::Fixed(body.into()),
            },
        );
        self
    }

    /// Serves what `make` returns, made for each plain HTTP `GET` of
    /// `path` (a metrics endpoint, a status page). `make` runs on the
    /// connection's task: keep it quick.
    pub fn page_fn(
        mut self,
        path: &str,
        content_type: &'static str,
        make: impl Fn() -> Bytes + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.pages).insert(
            path.to_string(),
            Page {
                content_type,
                body: PageBody::Made(Arc::new(make)),
            },
        );
        self
    }
}

impl Listener for WsListener {
    type Io = WsTransport<Replay<ServerStream>>;
    type Handshake = Pin<Box<dyn Future<Output = io::Result<(Self::Io, ConnInfo)>> + Send>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let stream = drs_transport_tcp::accept(&self.inner).await?;
        drs_transport_tcp::configure(&stream, self.config.tcp_keepalive.as_ref())?;
        let config = self.config.clone();
        let pages = self.pages.clone();
        let tls = self.tls.clone();
        let name = if tls.is_some() { "wss" } else { "ws" };
        let mut info = drs_transport_tcp::conn_info(name, &stream);
        Ok(Box::pin(async move {
            let stream = match tls {
                None => ServerStream::Plain(stream),
                Some(tls) => {
                    let (stream, cert) = tls.accept(stream).await?;
                    if let Some(cert) = cert {
                        info = info.with_peer_certificate(cert);
                    }
                    ServerStream::Tls(Box::new(stream))
                }
            };
            server_handshake(stream, info, spec, config, pages).await
        }))
    }

    fn local_addr(&self) -> io::Result<String> {
        self.inner.local_addr().map(|a| a.to_string())
    }
}

/// The most a request head may take.
const MAX_HEAD: usize = 16 * 1024;

/// What a raw (non-HTTP) client of a WebSocket port is told, as a drs
/// JSON line, before the connection is closed.
const NOT_HTTP: &str = "{\"action\":\"drs.error\",\"body\":{\"message\":\"this port speaks WebSocket (ws://HOST:PORT/PATH), not raw drs frames\"}}\n";

async fn server_handshake(
    mut stream: ServerStream,
    info: ConnInfo,
    spec: FrameSpec,
    config: WsConfig,
    pages: Arc<HashMap<String, Page>>,
) -> io::Result<(WsTransport<Replay<ServerStream>>, ConnInfo)> {
    // Read the request head ourselves, to answer plain HTTP; then replay it.
    let mut head = BytesMut::with_capacity(1024);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            let response = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            answer_and_close(stream, response).await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if stream.read_buf(&mut head).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        // Not an HTTP request (a method is upper-case letters): a raw
        // drs client on the wrong port. Told at once, in a JSON line it
        // can read, instead of waiting out the handshake timeout.
        if !head[0].is_ascii_uppercase() {
            answer_and_close(stream, NOT_HTTP.as_bytes()).await?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an HTTP request: a raw client on a WebSocket port",
            ));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let upgrade = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("websocket")
        });
    if !upgrade {
        let path = target.split('?').next().unwrap_or("/");
        let response = match pages.get(path) {
            Some(page) => {
                let body = match &page.body {
                    PageBody::Fixed(body) => body.clone(),
                    PageBody::Made(make) => make(),
                };
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                    page.content_type,
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            }
            None => {
                let body = "This is a drs WebSocket endpoint: connect with a WebSocket client.\n";
                format!(
                    "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        };
        answer_and_close(stream, &response).await?;
        return Err(io::Error::other(format!(
            "answered a plain HTTP request for {path}"
        )));
    }
    let replay = Replay {
        prefix: head.freeze(),
        inner: stream,
        meter: Some(spec.meter.clone()),
    };
    let mut seen_target = None;
    let mut seen_authorization = None;
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let remember_target = |req: &Request, resp: Response| {
        seen_target = Some(req.uri().to_string());
        seen_authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        replay,
        remember_target,
        Some(config.tungstenite(&spec)),
    )
    .await
    .map_err(|e| ws_error(e, spec.max_frame_len))?;
    let mut info = info.with_target(seen_target.unwrap_or(target));
    if let Some(authorization) = seen_authorization {
        info = info.with_authorization(authorization);
    }
    Ok((WsTransport::new(ws, &spec, &config), info))
}

/// Writes a response, then reads (a bounded amount, for a bounded time)
/// until the client closes: closing with unread input would reset the
/// connection and could destroy the response before the client reads it.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    response: &[u8],
) -> io::Result<()> {
    stream.write_all(response).await?;
    stream.shutdown().await?;
    let mut rest = (&mut stream).take(1 << 20);
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::copy(&mut rest, &mut sink),
    )
    .await;
    Ok(())
}

/// A stream that first yields bytes already read from it, and counts what
/// it reads on a [`ReadMeter`](drs_core::ReadMeter) (the server's memory
/// budget and frame deadline see a message under way).
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Bytes,
    inner: S,
    meter: Option<drs_core::ReadMeter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if let (Some(meter), true) = (&this.meter, read > 0) {
            meter.add_partial(read);
            if meter.is_evicted() {
                return Poll::Ready(Err(drs_core::BudgetExceeded::io()));
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Dials a WebSocket URL: `ws://host:port/path?query`, or `wss://…` with
/// [`tls`](WsDialer::tls) settings.
#[derive(Debug, Clone)]
pub struct WsDialer {
    url: String,
    config: WsConfig,
    tls: Option<drs_tls::ClientTls>,
}

impl WsDialer {
    /// A dialer for `url` with default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            config: WsConfig::default(),
            tls: None,
        }
    }

    /// Sets the WebSocket settings.
    pub fn config(mut self, config: WsConfig) -> Self {
        self.config = config;
        self
    }

    /// The TLS settings for `wss://` URLs (the certificate is checked for
    /// the URL's host).
    pub fn tls(mut self, tls: drs_tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

fn invalid_url(url: &str, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"))
}

/// A URL's scheme, host, port and target (`/path?query`).
fn parse_url(url: &str) -> io::Result<(&str, &str, u16, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid_url(url, "not a ws:// or wss:// URL"))?;
    let default_port = match scheme {
        "ws" => 80,
        "wss" => 443,
        _ => return Err(invalid_url(url, "not a ws:// or wss:// URL")),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let target = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{target}")
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid_url(url, "unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| invalid_url(url, "the port is not a number"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(invalid_url(url, "no host"));
    }
    Ok((scheme, host, port, target))
}

impl Dialer for WsDialer {
    type Io = WsTransport<ClientStream>;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(Self::Io, ConnInfo)> {
        let (scheme, host, port, target) = parse_url(&self.url)?;
        let tcp = TcpStream::connect((host, port)).await?;
        drs_transport_tcp::configure(&tcp, self.config.tcp_keepalive.as_ref())?;
        let name = if scheme == "wss" { "wss" } else { "ws" };
        let mut info = drs_transport_tcp::conn_info(name, &tcp);
        let stream = if scheme == "wss" {
            let tls = self.tls.as_ref().ok_or_else(|| {
                invalid_url(&self.url, "wss:// needs TLS settings (WsDialer::tls)")
            })?;
            let (stream, cert) = tls.connect(host, tcp).await?;
            if let Some(cert) = cert {
                info = info.with_peer_certificate(cert);
            }
            ClientStream::Tls(Box::new(stream))
        } else {
            ClientStream::Plain(tcp)
        };
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            stream,
            Some(self.config.tungstenite(&spec)),
        )
        .await
        .map_err(|e| match e {
            tungstenite::Error::Io(e) => e,
            tungstenite::Error::Http(response) => io::Error::other(format!(
                "{}: the WebSocket upgrade was refused: HTTP {}",
                self.url,
                response.status()
            )),
            // The answer was not HTTP at all: a raw drs port (which says
            // so in its own protocol), or another service.
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HttparseError(_)) => {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: this port does not speak WebSocket: its answer is not HTTP \
                         (a raw drs port? try tcp://)",
                        self.url
                    ),
                )
            }
            other => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: WebSocket handshake failed: {other}", self.url),
            ),
        })?;
        Ok((
            WsTransport::new(ws, &spec, &self.config),
            info.with_target(target),
        ))
    }
}

/// Connects to a drs server at a WebSocket `url` with default settings.
pub async fn connect<P: Protocol>(url: &str, protocol: P) -> Result<Conn, Error> {
    Client::new().connect(WsDialer::new(url), protocol).await
}

/// The dialer of a `ws://` or `wss://` URL: the query other than
/// `protocol` and `ca` goes to the server; `wss://` trusts `?ca=FILE`.
fn ws_dialer(url: &drs_core::Url) -> io::Result<WsDialer> {
    let target = format!("{}://{}{}", url.scheme, url.target, url.rest_of_query());
    let dialer = WsDialer::new(target);
    if url.scheme == "wss" {
        return Ok(dialer.tls(drs_tls::ClientTls::for_url(url)?));
    }
    Ok(dialer)
}

/// `ws://HOST:PORT/PATH` and `wss://…` (`?ca=FILE`) for a
/// [`Registry`](drs_core::Registry); the query other than `protocol` and
/// `ca` goes to the server (`?token=`). A `wss://` listener takes its
/// certificates from `?cert=FILE&key=FILE` (and `&client_ca=FILE`;
/// [`drs_tls::ServerTls::for_url`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct WsScheme;

impl drs_core::Scheme for WsScheme {
    fn names(&self) -> &'static [&'static str] {
        &["ws", "wss"]
    }

    fn dial<'a>(
        &'a self,
        client: drs_core::Client,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, drs_core::Conn> {
        Box::pin(async move { client.connect(ws_dialer(url)?, protocol).await })
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        Box::pin(async move {
            let dialer = ws_dialer(url)?.config(WsConfig::default().keepalive(None));
            drs_core::open_dialed(dialer, spec).await
        })
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        let host = url.target.split('/').next().unwrap_or_default();
        if url.scheme == "wss" {
            let bind = async move {
                let tls = drs_tls::ServerTls::for_url(url)?;
                Ok(WsListener::bind(host).await?.tls(tls))
            };
            return drs_core::listen_bound(server, "wss", bind, protocol);
        }
        drs_core::listen_bound(server, "ws", WsListener::bind(host), protocol)
    }
}
