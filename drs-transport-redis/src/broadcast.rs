//! Broadcasts to every client of a service on Redis, whichever worker it
//! is connected to: [`RedisBroadcast::broadcast`] publishes on channel
//! `drs:{NAME}:broadcast`, and each worker broadcasts what arrives there
//! to its own connections.
//!
//! The message is `<action>\n<body JSON>`. Redis pub/sub delivers to the
//! workers subscribed at that moment: a worker that is down misses it,
//! as its clients would miss a broadcast on a socket. Anyone who can
//! publish on the Redis can publish there, so a worker parses each
//! message before passing it on: one whose action is not UTF-8 or whose
//! body is not one JSON value is dropped (and logged), never written raw
//! into its clients' streams.

use std::io;

use drs_core::{Error, Server};
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
        let channel_name = channel.clone();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload: &[u8] = msg.get_payload_bytes();
                match parse(payload) {
                    Ok((action, body)) => {
                        // Refused only for a bad action name, which `parse`
                        // has already ruled out; nothing else to do.
                        let _ = local.broadcast(action, &body);
                    }
                    Err(why) => tracing::warn!(%channel_name, "broadcast dropped: {why}"),
                }
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

/// Splits a channel message into its action and body; the reason it was
/// dropped otherwise.
fn parse(payload: &[u8]) -> Result<(&str, serde_json::Value), String> {
    let nl = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no newline after the action")?;
    let action = std::str::from_utf8(&payload[..nl]).map_err(|_| "the action is not UTF-8")?;
    if action.is_empty() {
        return Err("the action is empty".into());
    }
    let body = serde_json::from_slice(&payload[nl + 1..])
        .map_err(|e| format!("the body of {action:?} is not one JSON value: {e}"))?;
    Ok((action, body))
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn a_message_is_an_action_a_newline_and_one_json_value() {
        assert_eq!(parse(b"alert\n[1,2]").unwrap(), ("alert", json!([1, 2])));
        assert_eq!(parse(b"alert\n").unwrap_err(), "the body of \"alert\" is not one JSON value: EOF while parsing a value at line 1 column 0");
        assert_eq!(parse(b"alert").unwrap_err(), "no newline after the action");
        assert_eq!(parse(b"\n1").unwrap_err(), "the action is empty");
        assert_eq!(parse(b"\xff\n1").unwrap_err(), "the action is not UTF-8");
        // A value and more after it.
        let e = parse(b"alert\n1}\n{\"action\":\"evil\"}").unwrap_err();
        assert!(
            e.starts_with("the body of \"alert\" is not one JSON value: trailing characters"),
            "{e}"
        );
    }
}
