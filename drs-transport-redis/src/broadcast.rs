//! Broadcasts to every client of a service on Redis, whichever worker it
//! is connected to: [`RedisBroadcast::broadcast`] publishes on channel
//! `drs:{NAME}:broadcast`, and each worker broadcasts what arrives there
//! to its own connections.
//!
//! The message is `<action>\n<body JSON>`. Redis pub/sub delivers to the
//! workers subscribed at that moment: a worker that is down misses it,
//! as its clients would miss a broadcast on a socket.

use std::io;

use bytes::Bytes;
use drs_core::{Body, Error, Protocol, Server};
use futures::StreamExt;
use redis::AsyncCommands;

use crate::queue::{io_err, Keys};

/// A worker's end of the service's broadcast channel.
pub struct RedisBroadcast {
    channel: String,
    redis: redis::aio::ConnectionManager,
    _task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisBroadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroadcast")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Drop for RedisBroadcast {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl RedisBroadcast {
    /// Subscribes `server` to the broadcasts of service `name` on the Redis
    /// at `url`.
    pub async fn attach(server: &Server, url: &str, name: &str) -> io::Result<Self> {
        crate::check_service(name)?;
        let channel = Keys::new(name).broadcast();
        let client = redis::Client::open(url)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}")))?;
        let refused = |e: redis::RedisError| {
            io::Error::new(io::ErrorKind::ConnectionRefused, format!("{url}: {e}"))
        };
        let mut pubsub = client.get_async_pubsub().await.map_err(refused)?;
        pubsub.subscribe(&channel).await.map_err(io_err)?;
        let redis = client.get_connection_manager().await.map_err(refused)?;
        let local = server.clone();
        let format = drs_protocol_json::Json.body_format();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: &[u8] = msg.get_payload_bytes();
                let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
                    continue;
                };
                let Ok(action) = std::str::from_utf8(&payload[..nl]) else {
                    continue;
                };
                let body = Body::from_raw(Bytes::copy_from_slice(&payload[nl + 1..]), format);
                local.broadcast_body(action, &body);
            }
        });
        Ok(Self {
            channel,
            redis,
            _task: task,
        })
    }

    /// Broadcasts `action` with `body` (as JSON) to every connection of
    /// every worker of the service.
    pub async fn broadcast(&self, action: &str, body: impl serde::Serialize) -> Result<(), Error> {
        let mut message = format!("{action}\n").into_bytes();
        serde_json::to_writer(&mut message, &body).map_err(|e| Error::Io(io::Error::other(e)))?;
        let mut redis = self.redis.clone();
        redis
            .publish::<_, _, ()>(&self.channel, message)
            .await
            .map_err(|e| Error::Io(io_err(e)))
    }
}
