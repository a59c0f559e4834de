//! Redis for drs, through the [`redis`] crate (its tokio connection
//! manager: reconnects by itself, one multiplexed connection for commands
//! and one for the blocking pop, so a pop never holds up a reply).
//!
//! - [`queue`]: a drs service on Redis: workers share a queue
//!   (`BLMOVE` into a per-worker processing list; a reaper answers "worker
//!   lost" for what a dead worker held, or runs it again if its action is
//!   idempotent), drs connections with flow control and heartbeats, and
//!   plain requests from any Redis client; [`RedisBroadcast`] for
//!   broadcasts to the clients of every worker.
//!
//! Cerbas mode (unmodified Cerbas clients served by drs handlers) is the
//! crate `drs-cerbas`.
//!
//! Why `redis` and not `fred`: it is the crate most Redis users in Rust
//! already have, its `ConnectionManager` gives the reconnecting
//! multiplexed connection drs needs, and its pub/sub and blocking commands
//! are plain async calls; fred's extra machinery (pools, its own
//! reconnection policy, its own runtime hooks) would duplicate what drs's
//! sessions already do.

mod broadcast;
pub mod queue;

use std::io;

pub use broadcast::RedisBroadcast;
pub use drs_link::{LinkConfig, LinkSettings};
pub use queue::{connect, Keys, RedisConfig, RedisDialer, RedisIo, RedisListener};
pub use redis;

/// Checks a service name: letters, digits, `-`, `_` and `.` (it goes in
/// key names, between braces).
pub fn check_service(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid service name {name:?}: letters, digits, '-', '_' and '.'"),
        ))
    }
}

/// `redis://HOST:PORT/DB/SERVICE` for a [`Registry`](drs_core::Registry):
/// dials the service, or serves its queue as a worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisScheme;

/// `redis://HOST:PORT/DB/SERVICE` → (`redis://HOST:PORT/DB`, `SERVICE`).
fn redis_parts(url: &drs_core::Url) -> Result<(String, String), drs_core::Error> {
    let (host, path) = url.host_and_path()?;
    match path.split_once('/') {
        Some((db, service)) if !service.is_empty() && db.parse::<u32>().is_ok() => {
            Ok((format!("redis://{host}/{db}"), service.to_string()))
        }
        _ => Err(drs_core::Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "`redis://{}` needs a database and a service: redis://HOST:PORT/DB/SERVICE",
                url.target
            ),
        ))),
    }
}

impl drs_core::Scheme for RedisScheme {
    fn names(&self) -> &'static [&'static str] {
        &["redis"]
    }

    fn dial<'a>(
        &'a self,
        client: drs_core::Client,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, drs_core::Conn> {
        Box::pin(async move {
            let (redis, service) = redis_parts(url)?;
            client
                .connect(RedisDialer::new(redis, &service), protocol)
                .await
        })
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn drs_core::Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        Box::pin(async move {
            let (redis, service) = redis_parts(url)?;
            let listener =
                RedisListener::bind_with(&redis, &service, protocol.clone(), Default::default())
                    .await?;
            server.listen_arc(listener, protocol)?;
            Ok(format!("{redis}/{service}"))
        })
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        Box::pin(async move {
            let (redis, service) = redis_parts(url)?;
            drs_core::open_dialed(RedisDialer::new(redis, &service), spec).await
        })
    }
}
