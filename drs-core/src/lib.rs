//! The core of **drs**: services, and programs in any language, exchange
//! commands `{action, body, key}` over a transport they pick (TCP, WebSocket,
//! local sockets…) in a protocol they pick (JSON, MessagePack…).
//!
//! This crate holds what every transport and protocol shares: the
//! [`Command`], the [`Protocol`] and [`Transport`] contracts, the framing of
//! byte streams ([`FramedIo`]), connections ([`Conn`]), [`Server`] and
//! [`Client`]. Transports and protocols live in crates of their own
//! (`drs-transport-tcp`, `drs-protocol-json`, …).
//!
//! # Example
//!
//! Most programs use the `drs` crate, which has this crate and the
//! transports under one name and connects by URL
//! (`drs::connect("tcp://127.0.0.1:12000")`). With this crate and the TCP
//! transport alone:
//!
//! ```
//! use drs_core::{Client, Server};
//! use drs_protocol_json::Json;
//! use drs_transport_tcp::{TcpDialer, TcpListener};
//!
//! #[derive(serde::Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), drs_core::Error> {
//! let server = Server::new();
//! server.on("add", |args: Add| async move { args.a + args.b });
//! let addr = server.listen(TcpListener::bind("127.0.0.1:0").await?, Json)?;
//!
//! let conn = Client::new().connect(TcpDialer::new(&addr), Json).await?;
//! let sum: i64 = conn.call("add", serde_json::json!({"a": 1, "b": 2})).await?;
//! assert_eq!(sum, 3);
//! # Ok(()) }
//! ```
//!
//! A handler that can fail returns a `Result` (an `Err` is answered with
//! `drs.error`); one that cannot returns its value (see [`IntoOutcome`]).
//! [`memory`] has an in-process transport for tests.
//!
//! # Concepts
//!
//! - A **command** is `{key?, action, body?, version?}`. A command with a key
//!   is a *call* and gets exactly one reply with the same key and the action
//!   `drs.response`, `drs.error` or `drs.exception`; one without is a *fire*.
//! - A **handler** is a plain async function registered for an action
//!   ([`Server::on`], [`Conn::on`]); see [`Handler`] for the signatures.
//!   Each inbound command is served concurrently with the others; a panic
//!   becomes a `drs.exception` reply and nothing else notices.
//! - A **connection** ([`Conn`]) is a cheap handle; a driver task owns the
//!   transport. Calls time out (5 s by default); when a connection ends,
//!   its pending calls fail at once with [`Error::Closed`].
//! - A call can take its reply as a **stream** ([`Conn::call_stream`]):
//!   the handler writes items into an [`ItemSink`] or returns a
//!   [`Streamed`]; the caller's credit paces it. Any call can be
//!   **cancelled**: dropping its future sends `drs.cancel`, which stops the
//!   handler ([`Msg::cancel_token`] fires) and frees its slot.
//! - **Layers** ([`Layer`], [`layer_fn`]) wrap handlers, for a whole
//!   server, one action or one connection; `drs-layers` has worker pools,
//!   a result cache and timeouts.
//! - Everything is **bounded**, in bytes as well as counts: frame size
//!   (8 MiB), commands in flight (1024) and waiting (16 MiB) per
//!   connection, the outbound queue (32 MiB), memory held for all peers
//!   ([`MemoryBudget`], 256 MiB), connections ([`ServerConfig`], 10,000).
//!   Time too: a frame deadline, an admission deadline, a write-stall
//!   deadline, optional idle and handler deadlines. Why a connection ended
//!   is a [`CloseReason`].
//!
//! # Bad input
//!
//! - A frame that does not decode is **skipped**: the peer gets a short
//!   `drs.error` saying why — keyed when the frame is a call whose key
//!   and action could be read, keyless otherwise; a broken *reply* is never
//!   answered, it fails the call it answers — and the connection goes on.
//!   After 32 such frames within 10 s the peer is disconnected.
//! - A frame over the maximum size **disconnects** the peer, after a keyless
//!   `drs.error` saying so: past that point a byte stream cannot be trusted
//!   to be in sync.
//!
//! # Who may talk, and what they may ask
//!
//! The kernel runs no access control of its own; it gives the hooks:
//! [`Server::layer_outermost`] for a gate outside every layer,
//! [`Server::on_connect`] to admit or refuse, the connection's
//! [`Extensions`] to carry who the peer is, and
//! [`ConnConfig::outbound_check`] on what this side sends. The crate
//! `drs-auth` builds on them: `drs.auth`, WebSocket and TLS credentials,
//! identities, and server, role, connection and client jails. Peers named
//! with `drs.identify` are reached by name through `drs-names`.
//!
//! The in-memory transport ([`memory`]) is always built; the `test-util`
//! feature that once enabled it is kept, empty, so that old manifests
//! still resolve.

mod body;
mod budget;
mod client;
mod close;
mod codec;
mod command;
mod conn;
mod error;
mod explain;
mod ext;
mod frame;
mod handler;
mod layer;
pub mod memory;
pub mod observe;
mod protocol;
mod registry;
mod router;
mod routes;
mod server;
mod stream;
mod sync;
mod text;
mod transcode;
mod transport;

pub use body::{Body, BodyFormat, DecodeError, FromBody};
pub use budget::{BudgetExceeded, MemoryBudget, MemoryHold, ReadMeter, DEFAULT_MEMORY_BUDGET};
pub use client::{connect, Client};
pub use close::CloseReason;
pub use codec::{starts_http_request, FrameCodec, FrameError, FramedIo};
pub use command::{
    is_control_action, is_reply_action, Command, CANCEL, CANCELLED, DEADLINE_EXCEEDED, ERROR,
    EXCEPTION, INVALID_DELAY, INVALID_STREAM, MORE, NEXT, PING, RESPONSE, SHUTTING_DOWN,
};
pub use conn::{Call, CallStream, Conn, ConnConfig, OutboundCheck, SentCall};
pub use error::{Error, RemoteError};
pub use ext::Extensions;
pub use handler::{
    erase as box_handler, BoxedHandler, FromMsg, Handler, HandlerError, HandlerResult, Msg,
    Outcome, ReplyFuture,
};
pub use layer::{layer_fn, FnLayer, Layer, Next};
pub use observe::{ActionObserver, Io, Observer};
pub use protocol::{EncodeError, FrameKind, Framing, OutBody, Outgoing, Protocol};
pub use registry::{listen_bound, open_dialed, Registry, Scheme, SchemeFuture, Url};
pub use routes::Routes;

/// For [`protocol!`]: the `bytes` crate the contracts are written in.
#[doc(hidden)]
pub use bytes as __bytes;
pub use frame::{BadFrame, Foreign, FrameSpec, FrameTooLarge, Inbound, DEFAULT_MAX_FRAME_LEN};
pub use server::{fanout, Server, ServerConfig, WeakServer};
pub use stream::{IntoOutcome, IntoReply, ItemSink, Produced, Reply, Streamed};
pub use text::Text;
pub use transport::{ConnInfo, Dialer, Listener, PeerCertificate, Transport};

#[doc(hidden)]
pub use erased_serde;
