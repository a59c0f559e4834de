//! What a transport is: a [`Transport`] moves whole frames; a [`Listener`]
//! accepts them from peers; a [`Dialer`] connects to one.

use std::{borrow::Cow, future::Future, io, sync::Arc};

use bytes::Bytes;
use futures::{Sink, Stream};

use crate::frame::{FrameSpec, Inbound};

/// A connection's frames: a stream of inbound frames and a sink of outbound ones.
///
/// Implemented for every `Stream<Item = io::Result<Inbound>> + Sink<Bytes,
/// Error = io::Error>`: a [`FramedIo`](crate::FramedIo) over a socket, a
/// mapped WebSocket, a pair of channels. No adapter code is needed.
///
/// Contract: each item is one whole frame ([`Inbound::Frame`]), or a
/// framing problem ([`Inbound::Bad`], [`Inbound::TooLarge`]); an error
/// ends the connection. The stream ends (`None`) when the peer closes. The
/// sink may buffer: frames are only guaranteed to be sent after
/// `poll_flush`; sending a frame over the maximum is an error wrapping
/// [`FrameTooLarge`](crate::FrameTooLarge).
pub trait Transport:
    Stream<Item = io::Result<Inbound>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = io::Result<Inbound>> + Sink<Bytes, Error = io::Error> + Send + Unpin + 'static
{
}

/// Facts about a connection, known when it is established: which transport,
/// the addresses, and (for WebSocket) the request target with its query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The transport's name: `"tcp"`, `"ws"`, `"ipc"`, `"memory"`.
    pub transport: &'static str,
    /// The peer's address, as the transport writes it.
    pub peer_addr: Option<String>,
    /// The local address, as the transport writes it.
    pub local_addr: Option<String>,
    /// The request target (path and query, e.g. `/socket?token=abc`), for
    /// transports that have one.
    pub target: Option<String>,
    /// The request's `Authorization` header, for transports that have one
    /// (WebSocket).
    pub authorization: Option<String>,
    /// The certificate the peer presented over TLS (mutual TLS), verified.
    pub peer_certificate: Option<Arc<PeerCertificate>>,
    /// A connection of one request (a plain request through a broker):
    /// bounded by its listener, it does not count against the server's
    /// connection limit, so such requests never lock out socket clients.
    pub one_request: bool,
}

/// A verified TLS peer certificate, as connect hooks, authenticators and
/// handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCertificate {
    /// The subject's distinguished name (`CN=alice, O=Acme`).
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names: DNS names, IP addresses, e-mail
    /// addresses and URIs, as text.
    pub sans: Vec<String>,
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
}

impl PeerCertificate {
    /// A certificate's identity.
    pub fn new(
        subject: impl Into<String>,
        common_name: Option<String>,
        sans: Vec<String>,
        der: Vec<u8>,
    ) -> Self {
        Self {
            subject: subject.into(),
            common_name,
            sans,
            der,
        }
    }
}

impl ConnInfo {
    /// Info for a connection over `transport`.
    pub fn new(transport: &'static str) -> Self {
        Self {
            transport,
            ..Self::default()
        }
    }

    /// Sets the peer address.
    pub fn with_peer_addr(mut self, addr: impl Into<String>) -> Self {
        self.peer_addr = Some(addr.into());
        self
    }

    /// Marks a connection of one request (see
    /// [`one_request`](ConnInfo::one_request)).
    pub fn one_request(mut self) -> Self {
        self.one_request = true;
        self
    }

    /// Sets the local address.
    pub fn with_local_addr(mut self, addr: impl Into<String>) -> Self {
        self.local_addr = Some(addr.into());
        self
    }

    /// Sets the request target.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the TLS peer certificate.
    pub fn with_peer_certificate(mut self, cert: PeerCertificate) -> Self {
        self.peer_certificate = Some(Arc::new(cert));
        self
    }

    /// Sets the `Authorization` header's value.
    pub fn with_authorization(mut self, value: impl Into<String>) -> Self {
        self.authorization = Some(value.into());
        self
    }

    /// The path part of the request target.
    pub fn path(&self) -> Option<&str> {
        self.target
            .as_deref()
            .map(|t| t.split('?').next().unwrap_or(t))
    }

    /// The first value of query parameter `name` in the request target,
    /// percent-decoded (`+` reads as a space).
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        let query = self.target.as_deref()?.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Accepts connections for a server.
///
/// `accept` should return as soon as a peer is there; any handshake (a
/// WebSocket upgrade, TLS) belongs in the returned
/// [`Handshake`](Listener::Handshake) future, which the server runs on the
/// new connection's own task so that a slow peer cannot hold up others.
pub trait Listener: Send + 'static {
    /// The framed connection.
    type Io: Transport;
    /// Completes the connection: the framed I/O and what is known about it.
    type Handshake: Future<Output = io::Result<(Self::Io, ConnInfo)>> + Send + 'static;

    /// Waits for the next peer. An error here is logged by the server, which
    /// keeps accepting after a short pause.
    fn accept(
        &mut self,
        spec: FrameSpec,
    ) -> impl Future<Output = io::Result<Self::Handshake>> + Send;

    /// The address the listener is bound to, as people write it
    /// (`127.0.0.1:12000`, `/tmp/drs.sock`).
    fn local_addr(&self) -> io::Result<String>;
}

/// Connects to a server.
pub trait Dialer: Send + Sync + 'static {
    /// The framed connection.
    type Io: Transport;

    /// Opens one connection.
    fn dial(
        &self,
        spec: FrameSpec,
    ) -> impl Future<Output = io::Result<(Self::Io, ConnInfo)>> + Send;
}
