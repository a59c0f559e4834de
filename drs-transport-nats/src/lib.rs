//! NATS for drs: a server registers as a *service* on NATS, any number of
//! server processes on any machines share its load, and drs clients and plain
//! NATS clients in any language call it.
//!
//! ```text
//!  drs client ──┐                      ┌── worker 1 (NatsListener "calc")
//!  nats req ────┼── nats-server ── drs.calc (queue group drs.calc) ── worker 2
//!  drs client ──┘                      └── worker 3
//! ```
//!
//! # Subjects
//!
//! A service `NAME` listens on subject `drs.NAME` in queue group `drs.NAME`:
//! NATS hands each message on it to one worker of the group.
//!
//! - **A plain NATS request** whose payload is one drs frame (JSON or
//!   MessagePack, as the listener's protocol) is run by one worker and gets
//!   one reply message: the reply frame, with the same key. No headers or
//!   handshake are needed, so `nats req drs.calc '{"action":"add","body":[1,2],"key":"1"}'`
//!   is a working client. A fire (no key) sent this way is run and gets no
//!   reply; a frame that does not decode is answered with the protocol's
//!   `drs.error`.
//! - **A drs connection** ([`NatsDialer`]) is a session with one worker: the
//!   client sends a request with header `Drs-Connect: <its inbox>` to
//!   `drs.NAME`; the worker that takes it answers with header
//!   `Drs-Conn: <a subject of its own>`. From then on each side publishes
//!   one frame per message to the other's subject. Everything drs does on a
//!   socket works on such a connection: calls both ways, fires, broadcasts,
//!   streams with credit and cancel, identities, pub/sub through the
//!   server's broker. A [`drs_session::Session`](https://docs.rs/drs-session)
//!   over NATS reconnects to whichever worker the queue group picks next;
//!   a pool of sessions spreads over the workers.
//!
//! # Flow control
//!
//! NATS has no back-pressure: a publisher never waits for a slow
//! subscriber, the server drops what a subscriber cannot take. A drs
//! connection over NATS therefore carries its own window, in bytes, as
//! HTTP/2 does: a side sends while less than [`NatsConfig::window`] bytes
//! are unacknowledged, and the receiver acknowledges what its connection
//! has consumed (`Drs-Control: ack N`, in batches of a quarter window). A
//! slow reader thus holds up its peer's writer, and the server's own
//! outbound queue and slow-consumer policy apply as on TCP. A peer that
//! sends past its window (two windows queued) is disconnected.
//!
//! # Liveness
//!
//! NATS does not tell a subscriber that a publisher died. Each side of a
//! connection that has heard nothing from the other for
//! [`NatsConfig::heartbeat`] sends a ping request to the other's subject.
//! "No responders" (the other process is gone: NATS dropped its
//! subscriptions when its socket closed, e.g. after a SIGKILL) ends the
//! connection at once; [`NatsConfig::missed_heartbeats`] pings without an
//! answer end it too. The calls in flight on it then fail with
//! `Error::Closed`, not by their timeout, and a session reconnects to
//! another worker.
//!
//! # Limits
//!
//! A frame is at most the smaller of the connection's maximum frame size
//! and the NATS server's `max_payload` (1 MiB by default). A worker holds at
//! most [`LinkConfig::accept_queue`] connections not yet taken by its
//! server; past that a connect is refused (`Drs-Control: refused busy`) and
//! the queue group's other workers are tried by the caller's next attempt.
//! A plain request is a connection of one frame that ends when its reply
//! is sent, or after [`LinkConfig::oneshot_linger`] for a fire. It does
//! not count against the server's connection limit: a worker serves at
//! most [`LinkConfig::max_one_requests`] at once (past it a request is
//! answered `refused busy`, a fire dropped with a log line), so plain
//! requests never lock out socket clients.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use drs_core::{HandlerResult, Server};
//! use drs_protocol_json::Json;
//! use drs_transport_nats::{NatsDialer, NatsListener};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let server = Server::new();
//! server.on("add", |(a, b): (i64, i64)| async move { HandlerResult::Ok(a + b) });
//! server.listen(NatsListener::bind(&nats, "calc").await?, Json)?;
//!
//! let conn = drs_core::Client::new()
//!     .connect(NatsDialer::new(nats.clone(), "calc"), Json)
//!     .await?;
//! let sum: i64 = conn.call("add", (1, 2)).await?;
//! # Ok(()) }
//! ```

mod link;

use std::{
    collections::HashMap,
    future::{ready, Ready},
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use async_nats::{Client as Nats, HeaderMap, Message, Subject};
use bytes::Bytes;
use drs_core::{Client, Conn, ConnInfo, Dialer, Error, FrameSpec, Listener, Protocol};
use futures::StreamExt;
use tokio::{sync::mpsc, task::JoinHandle};

pub use async_nats;
use drs_link::{Link, LinkIo, Route};
pub use drs_link::{LinkConfig, LinkSettings};
use link::NatsOut;

/// A drs connection over NATS, as [`drs_core::Transport`].
pub type NatsIo = LinkIo;

/// The header a drs client's connect request carries: its inbox subject.
pub const CONNECT_HEADER: &str = "Drs-Connect";
/// The header of a worker's answer to a connect: its subject for this
/// connection.
pub const CONN_HEADER: &str = "Drs-Conn";
/// The header of the messages that carry no frame: `ack N`, `ping`,
/// `pong`, `close`, `gone`, `refused REASON`.
pub const CONTROL_HEADER: &str = "Drs-Control";

/// The subject (and queue group) of service `name`: `drs.<name>`.
pub fn service_subject(name: &str) -> String {
    format!("drs.{name}")
}

/// Checks a service name: dot-separated tokens of letters, digits, `-`
/// and `_` (so that `drs.<name>` is a plain subject, no wildcard).
pub fn check_service(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid service name {name:?}: dot-separated tokens of letters, digits, '-' and '_'"
            ),
        ))
    }
}

/// Settings of connections over NATS (both sides use the same defaults):
/// the bus settings every such transport shares ([`LinkConfig`], set with
/// [`LinkSettings`]: `NatsConfig::default().heartbeat(…).window(…)`), and
/// NATS's own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Heartbeat, window, timeouts and queues.
    pub link: LinkConfig,
    /// Unanswered pings in a row that end a connection. Default 2.
    pub missed_heartbeats: u32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            missed_heartbeats: 2,
        }
    }
}

impl LinkSettings for NatsConfig {
    fn link_mut(&mut self) -> &mut LinkConfig {
        &mut self.link
    }
}

impl NatsConfig {
    /// Sets [`missed_heartbeats`](Self::missed_heartbeats) (at least 1).
    pub fn missed_heartbeats(mut self, n: u32) -> Self {
        self.missed_heartbeats = n.max(1);
        self
    }
}

fn control(msg: &Message) -> Option<&str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(CONTROL_HEADER))
        .map(|v| v.as_str())
}

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

pub(crate) fn control_headers(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTROL_HEADER, value);
    h
}

/// A subject a peer may give as its own: no spaces, no wildcards.
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.bytes().any(|b| b.is_ascii_whitespace())
        })
}

fn max_payload(nats: &Nats) -> usize {
    match nats.server_info().max_payload {
        0 => 1 << 20,
        n => n,
    }
}

/// A connection the worker's task accepted, waiting for the server.
enum Accepted {
    Link {
        id: u64,
        peer: Subject,
        link: Link,
    },
    OneShot {
        frame: Bytes,
        reply: Option<Subject>,
        place: drs_link::OneRequestPlace,
    },
}

/// Serves a drs [`Server`](drs_core::Server) as service `name` on NATS:
/// subject and queue group `drs.<name>`.
#[derive(Debug)]
pub struct NatsListener {
    nats: Nats,
    subject: String,
    config: NatsConfig,
    incoming: mpsc::Receiver<Accepted>,
    gone: mpsc::UnboundedSender<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accepted::Link { id, peer, .. } => write!(f, "Link({id}, {peer})"),
            Accepted::OneShot { reply, .. } => write!(f, "OneShot({reply:?})"),
        }
    }
}

impl NatsListener {
    /// Joins service `name` with the default [`NatsConfig`].
    pub async fn bind(nats: &Nats, name: &str) -> io::Result<Self> {
        Self::bind_with(nats, name, NatsConfig::default()).await
    }

    /// Joins service `name`: subscribes to `drs.<name>` in queue group
    /// `drs.<name>`, and to a subject of this worker's own for its
    /// connections.
    pub async fn bind_with(nats: &Nats, name: &str, config: NatsConfig) -> io::Result<Self> {
        check_service(name)?;
        let subject = service_subject(name);
        let service = nats
            .queue_subscribe(subject.clone(), subject.clone())
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let prefix = nats.new_inbox();
        let links = nats
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        // Both subscriptions are registered with the server before `bind`
        // returns: a caller told the service is up can reach it.
        nats.flush()
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let (accepted_tx, incoming) = mpsc::channel(config.link.accept_queue);
        let (gone, gone_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            nats: nats.clone(),
            prefix,
            config: config.clone(),
            conns: HashMap::new(),
            next: AtomicU64::new(1),
            accepted: accepted_tx,
            one_requests: drs_link::OneRequests::new(config.link.max_one_requests),
        };
        let task = tokio::spawn(worker.run(service, links, gone_rx));
        Ok(Self {
            nats: nats.clone(),
            subject,
            config,
            incoming,
            gone,
            task,
        })
    }

    /// The service's subject, `drs.<name>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Drop for NatsListener {
    fn drop(&mut self) {
        // Its connections end with it (their senders go with the task).
        self.task.abort();
    }
}

impl Listener for NatsListener {
    type Io = NatsIo;
    type Handshake = Ready<io::Result<(NatsIo, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let accepted = self.incoming.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the NATS subscription ended")
        })?;
        let max_frame = spec.max_frame_len.min(max_payload(&self.nats));
        let io = match accepted {
            Accepted::Link { id, peer, link } => {
                // The listener's address, as for other transports; the
                // connection's own subject is a detail of this worker.
                let info = ConnInfo::new("nats")
                    .with_peer_addr(peer.to_string())
                    .with_local_addr(self.subject.clone());
                let gone = self.gone.clone();
                let nats = self.nats.clone();
                tokio::spawn(link::watch(
                    nats.clone(),
                    link.clone(),
                    peer.clone(),
                    self.config.clone(),
                ));
                let max_payload = max_payload(&nats);
                let io = LinkIo::link(
                    link,
                    Box::new(NatsOut {
                        nats,
                        peer,
                        max_payload,
                    }),
                    max_frame,
                    Some(Box::new(move || {
                        let _ = gone.send(id);
                    })),
                );
                (io, info)
            }
            Accepted::OneShot {
                frame,
                reply,
                place,
            } => {
                let mut info = ConnInfo::new("nats")
                    .with_local_addr(self.subject.clone())
                    .one_request();
                if let Some(r) = &reply {
                    info = info.with_peer_addr(r.to_string());
                }
                let nats = self.nats.clone();
                let io = LinkIo::oneshot(
                    frame,
                    max_frame,
                    self.config.link.oneshot_linger,
                    Box::new(move |frame| {
                        Box::pin(async move {
                            if let (Some(reply), Some(frame)) = (reply, frame) {
                                nats.publish(reply, frame)
                                    .await
                                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
                            }
                            Ok(())
                        })
                    }),
                )
                .holding(place);
                (io, info)
            }
        };
        Ok(ready(Ok(io)))
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.subject.clone())
    }
}

/// The task behind a [`NatsListener`]: takes connects and plain requests
/// from the queue group, and routes each connection's messages.
struct Worker {
    nats: Nats,
    prefix: String,
    config: NatsConfig,
    conns: HashMap<u64, Link>,
    next: AtomicU64,
    accepted: mpsc::Sender<Accepted>,
    one_requests: drs_link::OneRequests,
}

impl Worker {
    async fn run(
        mut self,
        mut service: async_nats::Subscriber,
        mut links: async_nats::Subscriber,
        mut gone: mpsc::UnboundedReceiver<u64>,
    ) {
        loop {
            tokio::select! {
                msg = service.next() => match msg {
                    Some(msg) => self.on_service(msg).await,
                    None => break,
                },
                msg = links.next() => match msg {
                    Some(msg) => self.on_link(msg).await,
                    None => break,
                },
                Some(id) = gone.recv() => {
                    self.conns.remove(&id);
                }
            }
        }
        tracing::warn!("NATS subscriptions of a drs service ended");
    }

    async fn on_service(&mut self, msg: Message) {
        if let Some(peer) = header(&msg, CONNECT_HEADER) {
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            if !valid_subject(peer) {
                let h = control_headers("refused invalid inbox subject");
                let _ = self.nats.publish_with_headers(reply, h, Bytes::new()).await;
                return;
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let local = format!("{}.{id}", self.prefix);
            let link = Link::new(self.config.link.window);
            let accepted = Accepted::Link {
                id,
                peer: Subject::from(peer),
                link: link.clone(),
            };
            // The answer goes out before the server can send anything on
            // the connection (the peer's inbox takes frames either way).
            if self.accepted.try_send(accepted).is_err() {
                let h = control_headers("refused busy");
                let _ = self.nats.publish_with_headers(reply, h, Bytes::new()).await;
                return;
            }
            self.conns.insert(id, link);
            let mut h = HeaderMap::new();
            h.insert(CONN_HEADER, local.as_str());
            let _ = self.nats.publish_with_headers(reply, h, Bytes::new()).await;
        } else if !msg.payload.is_empty() {
            let Some(place) = self.one_requests.try_take() else {
                match msg.reply {
                    Some(reply) => {
                        let h = control_headers("refused busy");
                        let _ = self.nats.publish_with_headers(reply, h, Bytes::new()).await;
                    }
                    None => tracing::warn!(
                        max = self.config.link.max_one_requests,
                        "nats worker: too many plain requests at once; a fire dropped"
                    ),
                }
                return;
            };
            let accepted = Accepted::OneShot {
                frame: msg.payload,
                reply: msg.reply.clone(),
                place,
            };
            if self.accepted.try_send(accepted).is_err() {
                if let Some(reply) = msg.reply {
                    let h = control_headers("refused busy");
                    let _ = self.nats.publish_with_headers(reply, h, Bytes::new()).await;
                }
            }
        }
    }

    async fn on_link(&mut self, msg: Message) {
        let id = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let Some(link) = id.and_then(|id| self.conns.get(&id)) else {
            // A ping for a connection this worker no longer has.
            if let Some(reply) = msg.reply {
                let _ = self
                    .nats
                    .publish_with_headers(reply, control_headers("gone"), Bytes::new())
                    .await;
            }
            return;
        };
        let id = id.unwrap_or_default();
        if let Route::End = link::route(&self.nats, link, msg).await {
            self.conns.remove(&id);
        }
    }
}

/// Connects drs clients to service `name` on NATS.
#[derive(Debug, Clone)]
pub struct NatsDialer {
    nats: Nats,
    subject: String,
    config: NatsConfig,
}

impl NatsDialer {
    /// Dials service `name` through `nats`.
    pub fn new(nats: Nats, name: &str) -> Self {
        Self {
            nats,
            subject: service_subject(name),
            config: NatsConfig::default(),
        }
    }

    /// Uses `config`.
    pub fn config(mut self, config: NatsConfig) -> Self {
        self.config = config;
        self
    }
}

impl Dialer for NatsDialer {
    type Io = NatsIo;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(NatsIo, ConnInfo)> {
        let nats = &self.nats;
        let inbox = nats.new_inbox();
        let sub = nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let link = Link::new(self.config.link.window);
        tokio::spawn(link::pump(nats.clone(), sub, link.clone()));
        let mut h = HeaderMap::new();
        h.insert(CONNECT_HEADER, inbox.as_str());
        let request = async_nats::Request::new()
            .headers(h)
            .timeout(Some(self.config.link.connect_timeout));
        let answer = nats
            .send_request(self.subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no drs service on NATS subject {}", self.subject),
                ),
                async_nats::RequestErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer from {} within {:?}",
                        self.subject, self.config.link.connect_timeout
                    ),
                ),
                async_nats::RequestErrorKind::Other => io::Error::new(io::ErrorKind::BrokenPipe, e),
            })?;
        let Some(peer) = header(&answer, CONN_HEADER).filter(|p| valid_subject(p)) else {
            let why = control(&answer)
                .and_then(|c| c.strip_prefix("refused "))
                .unwrap_or("no connection subject in the answer");
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{} refused the connection: {why}", self.subject),
            ));
        };
        let info = ConnInfo::new("nats")
            .with_peer_addr(peer.to_string())
            .with_local_addr(inbox);
        let max_frame = spec.max_frame_len.min(max_payload(nats));
        let peer = Subject::from(peer);
        tokio::spawn(link::watch(
            nats.clone(),
            link.clone(),
            peer.clone(),
            self.config.clone(),
        ));
        let io = LinkIo::link(
            link,
            Box::new(NatsOut {
                nats: nats.clone(),
                peer,
                max_payload: max_payload(nats),
            }),
            max_frame,
            None,
        );
        Ok((io, info))
    }
}

/// Connects to service `name` through `nats` with default settings.
pub async fn connect<P: Protocol>(nats: Nats, name: &str, protocol: P) -> Result<Conn, Error> {
    Client::new()
        .connect(NatsDialer::new(nats, name), protocol)
        .await
}

/// `nats://HOST:PORT/SERVICE` for a [`Registry`](drs_core::Registry):
/// dials the service, or joins it as a worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsScheme;

/// `nats://HOST:PORT/SERVICE` → a NATS connection to `HOST:PORT`, and
/// `SERVICE`.
async fn nats_service(url: &drs_core::Url) -> Result<(Nats, &str), Error> {
    let (host, service) = url.host_and_path()?;
    let nats = async_nats::connect(format!("nats://{host}"))
        .await
        .map_err(|e| {
            Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nats://{host}: {e}"),
            ))
        })?;
    Ok((nats, service))
}

impl drs_core::Scheme for NatsScheme {
    fn names(&self) -> &'static [&'static str] {
        &["nats"]
    }

    fn dial<'a>(
        &'a self,
        client: Client,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, Conn> {
        Box::pin(async move {
            let (nats, service) = nats_service(url).await?;
            client
                .connect(NatsDialer::new(nats, service), protocol)
                .await
        })
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        Box::pin(async move {
            let (nats, service) = nats_service(url).await?;
            let host = url.host_and_path()?.0;
            let listener = NatsListener::bind(&nats, service).await?;
            server.listen_arc(listener, protocol)?;
            Ok(format!("nats://{host}/{service}"))
        })
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        Box::pin(async move {
            let (nats, service) = nats_service(url).await?;
            drs_core::open_dialed(NatsDialer::new(nats, service), spec).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_plain_subjects() {
        for ok in ["calc", "a.b", "my-svc_2"] {
            check_service(ok).unwrap();
        }
        for bad in ["", "a..b", "*", "a.>", "a b", ".a", "a."] {
            let err = check_service(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(service_subject("calc"), "drs.calc");
    }

    #[test]
    fn peer_subjects_are_checked() {
        assert!(valid_subject("_INBOX.abc"));
        for bad in ["", "a.*", "a.>", "a b", "a..b"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }
}
