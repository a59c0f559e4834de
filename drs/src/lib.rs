//! drs: services, and programs in any language, exchange commands
//! `{action, body, key}` over a transport they pick, in a protocol they
//! pick. This crate is the drs crates under one name: the core
//! ([`Server`], [`Client`], [`Conn`], handlers, layers) always, and behind
//! features the transports, protocols and plug-ins.
//!
//! | feature | what | module |
//! |---|---|---|
//! | `tcp` (default) | TCP | [`tcp`] |
//! | `ws` (default) | WebSocket, `ws://` and `wss://` | [`ws`] |
//! | `json` (default) | DRS v1 JSON | [`Json`] |
//! | `msgpack` | MessagePack | [`MsgPack`] |
//! | `ipc` | Unix sockets, Windows named pipes | [`ipc`] |
//! | `tls` | TLS over TCP (rustls), Mozilla roots | [`tls`] |
//! | `nats` | a service on NATS; with `broker`, `NatsBroker` | [`nats`], [`broker::NatsBroker`] |
//! | `redis` | a service on Redis | [`redis`] |
//! | `cerbas` | Cerbas mode: unmodified Cerbas clients served through Redis | [`cerbas`] |
//! | `rembus` | Rembus components | [`rembus`] |
//! | `broker` | pub/sub and broker RPC | [`broker`] |
//! | `session` | reconnecting sessions, pools | [`session`] |
//! | `layers` | worker pools, caches, timeouts for handlers | [`layers`] |
//! | `metrics` | Prometheus `/metrics` and a live dashboard | [`metrics`] |
//! | `tasks` | timers, cron, crontab files, file watches | [`tasks`] |
//! | `full` | all of them | |
//!
//! [`connect`] and [`listen`] take a URL:
//!
//! ```no_run
//! use drs::prelude::*;
//!
//! # async fn f() -> Result<(), drs::Error> {
//! let server = Server::new();
//! server.on("add", |(a, b): (i64, i64)| async move { HandlerResult::Ok(a + b) });
//! let url = drs::listen(&server, "tcp://127.0.0.1:0").await?; // "tcp://127.0.0.1:PORT"
//!
//! let conn = drs::connect(&url).await?;
//! let sum: i64 = conn.call("add", (1, 2)).await?;
//! # Ok(()) }
//! ```
//!
//! | URL | transport |
//! |---|---|
//! | `tcp://HOST:PORT` | TCP |
//! | `ws://HOST:PORT/PATH` | WebSocket |
//! | `wss://HOST:PORT/PATH` | WebSocket over TLS (Mozilla roots; `?ca=FILE` trusts a CA file instead) |
//! | `tls://HOST:PORT` | TLS over TCP (the same roots, `?ca=FILE`) |
//! | `ipc:///PATH` | a Unix socket (a named pipe on Windows: `ipc://NAME`) |
//! | `nats://HOST:PORT/SERVICE` | service `SERVICE` on NATS |
//! | `redis://HOST:PORT/DB/SERVICE` | service `SERVICE` on Redis database `DB` |
//!
//! `?protocol=msgpack` picks MessagePack (default `json`). A URL whose
//! scheme or protocol needs a feature that is off is an error that names
//! the feature.

mod url;

pub use drs_auth as auth;
pub use drs_auth::{
    is_always_allowed, not_allowed, ClientAuth, ConfigAuth, ConnAuth, CredentialSource,
    Credentials, Identity, Jail, ListenerTokens, MsgAuth, ServerAuth, AUTH, DEFAULT_FAILURE_WINDOW,
    DEFAULT_MAX_FAILURES, NOT_ALLOWED, UNAUTHENTICATED,
};
pub use drs_core::*;
pub use drs_names as names;
pub use drs_names::{
    ConnName, Identified, IdentifyBody, Names, Peer, ServerNames, IDENTIFY, MAX_NAMES_PER_CONN,
    MAX_NAME_LEN, NAME_TAKEN,
};
pub use drs_pubsub as pubsub;
pub use drs_pubsub::{topic, PubSub};
pub use drs_stats as stats;
pub use drs_stats::Stats;
pub use url::{connect, connect_with, listen, protocol_of, registry, Url};

#[cfg(feature = "json")]
pub use drs_protocol_json::Json;
#[cfg(feature = "msgpack")]
pub use drs_protocol_msgpack::MsgPack;

#[cfg(feature = "broker")]
pub use drs_broker as broker;
#[cfg(feature = "cerbas")]
pub use drs_cerbas as cerbas;
#[cfg(feature = "layers")]
pub use drs_layers as layers;
#[cfg(feature = "macros")]
pub use drs_macros::debug_handler;
#[cfg(feature = "metrics")]
pub use drs_metrics as metrics;
#[cfg(feature = "rembus")]
pub use drs_rembus as rembus;
#[cfg(feature = "session")]
pub use drs_session as session;
#[cfg(feature = "tasks")]
pub use drs_tasks as tasks;
#[cfg(feature = "tls")]
pub use drs_tls as tls;
#[cfg(feature = "ipc")]
pub use drs_transport_ipc as ipc;
#[cfg(feature = "nats")]
pub use drs_transport_nats as nats;
#[cfg(feature = "redis")]
pub use drs_transport_redis as redis;
#[cfg(feature = "tcp")]
pub use drs_transport_tcp as tcp;
#[cfg(feature = "ws")]
pub use drs_transport_ws as ws;

/// What most programs use: `use drs::prelude::*;`.
pub mod prelude {
    pub use crate::{connect, listen};
    pub use drs_auth::{ClientAuth, ConfigAuth, ConnAuth, MsgAuth, ServerAuth};
    pub use drs_core::{
        Body, Client, Conn, ConnConfig, Error, HandlerError, HandlerResult, Msg, Routes, Server,
        ServerConfig,
    };
    pub use drs_names::{ConnName, ServerNames};
    #[cfg(feature = "json")]
    pub use drs_protocol_json::Json;
    #[cfg(feature = "msgpack")]
    pub use drs_protocol_msgpack::MsgPack;
    pub use drs_pubsub::PubSub;
    #[cfg(feature = "session")]
    pub use drs_session::{Pool, Session};
}
