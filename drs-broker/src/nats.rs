//! [`NatsBroker`]: a service's workers' brokers joined through NATS.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::Broker;
use async_nats::{
    jetstream::{self, consumer::pull, AckKind},
    Client as Nats, HeaderMap,
};
use bytes::Bytes;
use drs_core::{Body, BodyFormat, Conn, Error, Layer, Msg, Next, Outcome, ReplyFuture, Server};
use drs_names::{ConnName, ServerNames};
use drs_pubsub::{check_pattern, check_topic, SubscribeBody, PUBLISH, SUBSCRIBE, UNSUBSCRIBE};
use futures::StreamExt;

/// The header naming a published body's format (`json`, `msgpack`).
pub const FORMAT_HEADER: &str = "Drs-Format";
/// The header naming a service-wide broadcast's action.
pub const ACTION_HEADER: &str = "Drs-Action";

/// Settings of a [`NatsBroker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsBrokerConfig {
    /// Keep retroactive topics of named components in JetStream. Default
    /// on.
    pub jetstream: bool,
    /// How long the stream keeps a message. Default 24 h.
    pub max_age: Duration,
    /// How many bytes the stream keeps (the oldest go). Default 1 GiB.
    pub max_bytes: i64,
    /// How many messages the stream keeps (the oldest go). Default 1 M.
    pub max_messages: i64,
    /// How long a delivery waits for its acknowledgement before it is
    /// handed back. Default 30 s.
    pub ack_timeout: Duration,
}

impl Default for NatsBrokerConfig {
    fn default() -> Self {
        Self {
            jetstream: true,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
            ack_timeout: Duration::from_secs(30),
        }
    }
}

impl NatsBrokerConfig {
    /// Sets [`jetstream`](Self::jetstream).
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
        self
    }

    /// Sets [`ack_timeout`](Self::ack_timeout).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }
}

struct Inner {
    nats: Nats,
    broadcast: String,
    js: Option<jetstream::Context>,
    prefix: String,
    stream: String,
    broker: Broker,
    config: NatsBrokerConfig,
    /// Deliveries from JetStream, by connection.
    deliveries: Mutex<HashMap<u64, Vec<(String, tokio::task::AbortHandle)>>>,
}

/// Pub/sub across the workers of a service, through NATS, with JetStream
/// keeping what named components miss.
///
/// Each worker of a service has a drs [`Broker`] for its own connections.
/// [`NatsBroker::attach`] makes them one broker:
///
/// - **Topics are NATS subjects**: topic `a.b` of service `NAME` is subject
///   `drs.NAME.topic.a.b` (the wildcards `*` and `>` are NATS's own). A
///   `drs.publish` on any worker is published there; every worker
///   subscribes to `drs.NAME.topic.>` and hands what arrives to its own
///   broker, which delivers it to its own subscribers (so a publisher
///   receives its own publication through NATS, like everyone).
/// - **Retroactive subscriptions of named components use JetStream**: the
///   service has a stream `DRS_NAME` on `drs.NAME.topic.>` (file storage;
///   bounded by [`NatsBrokerConfig`]); a named connection's retroactive
///   `drs.subscribe` creates a durable consumer for that name and pattern.
///   Whichever worker the name connects to next delivers from it: what was
///   published while it was away, then live, as calls, one at a time in
///   publish order; a reply of any kind acknowledges (JetStream `ack`); a
///   delivery cut by the connection's end is handed back (`nak`) and comes
///   first next time. The stream and the consumers live in NATS: they
///   survive worker and NATS restarts (JetStream's own durability).
///   `drs.unsubscribe` of that pattern deletes the consumer.
/// - A confirmed `drs.publish` (a call) is answered once JetStream stored
///   it, with `1`; a worker cannot count the other workers' subscribers,
///   so the answer is not a count of subscribers here.
/// - Jails are the local broker's: a publish or subscribe it would refuse
///   is refused.
///
/// **Broadcasts** to every client of the service, on any worker:
/// [`NatsBroker::broadcast`] publishes on `drs.NAME.broadcast`, and each
/// worker broadcasts what arrives there to its own connections.
///
/// Without JetStream ([`NatsBrokerConfig::jetstream`] off), retroactive
/// subscriptions are the local broker's (kept by the worker that took
/// them).
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("subjects", &format!("{}>", self.inner.prefix))
            .field("stream", &self.inner.stream)
            .finish()
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn nats_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())
}

impl NatsBroker {
    /// [`attach`](NatsBroker::attach), keeping retroactive topics in
    /// JetStream when the NATS server has it, and without (logged: named
    /// components' retroactive topics then stay with each worker) when it
    /// has not.
    pub async fn attach_or_plain(
        server: &Server,
        broker: &Broker,
        nats: &Nats,
        name: &str,
        config: NatsBrokerConfig,
    ) -> io::Result<Self> {
        match Self::attach(server, broker, nats, name, config.clone()).await {
            Ok(joined) => Ok(joined),
            Err(e) if config.jetstream => {
                tracing::warn!(error = %e, "no JetStream on this NATS server: retroactive topics stay with each worker");
                Self::attach(server, broker, nats, name, config.jetstream(false)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Joins `broker` (attached to `server`) to the brokers of the other
    /// workers of service `name` through `nats`.
    pub async fn attach(
        server: &Server,
        broker: &Broker,
        nats: &Nats,
        name: &str,
        config: NatsBrokerConfig,
    ) -> io::Result<Self> {
        drs_transport_nats::check_service(name)?;
        let prefix = format!("drs.{name}.topic.");
        let stream = format!("DRS_{}", name.replace(['.', '-'], "_"));
        let js = if config.jetstream {
            let js = jetstream::new(nats.clone());
            js.get_or_create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{prefix}>")],
                max_age: config.max_age,
                max_bytes: config.max_bytes,
                max_messages: config.max_messages,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(nats_err)?;
            Some(js)
        } else {
            None
        };
        let mut sub = nats
            .subscribe(format!("{prefix}>"))
            .await
            .map_err(nats_err)?;
        let broadcast = format!("drs.{name}.broadcast");
        let mut broadcasts = nats.subscribe(broadcast.clone()).await.map_err(nats_err)?;
        nats.flush().await.map_err(nats_err)?;
        let local = server.clone();
        let formats = broker.formats();
        tokio::spawn(async move {
            while let Some(msg) = broadcasts.next().await {
                let action = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ACTION_HEADER))
                    .map(|v| v.as_str().to_string());
                let Some(action) = action else {
                    continue;
                };
                let Some(body) = body_of(&msg.headers, msg.payload, formats) else {
                    tracing::warn!(%action, "nats broker: an undecodable broadcast; dropped");
                    continue;
                };
                local.broadcast_body(&action, &body);
            }
        });
        let inner = Arc::new(Inner {
            nats: nats.clone(),
            broadcast,
            js,
            prefix,
            stream,
            broker: broker.clone(),
            config,
            deliveries: Mutex::new(HashMap::new()),
        });
        // What anyone published, to this worker's own subscribers.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let Some(topic) = msg.subject.strip_prefix(inner.prefix.as_str()) else {
                    continue;
                };
                let Some(body) = body_of(&msg.headers, msg.payload, inner.broker.formats()) else {
                    tracing::warn!(%topic, "nats broker: an undecodable publication; dropped");
                    continue;
                };
                if let Err(e) = inner.broker.publish(topic, &body).await {
                    tracing::warn!(%topic, error = %e, "nats broker: local delivery failed");
                }
            }
        });
        let this = Self { inner };
        let b = this.clone();
        server.on_identify(move |conn, name| {
            let (b, conn, name) = (b.clone(), conn.clone(), name.clone());
            tokio::spawn(async move { b.resume(&conn, &name).await });
            Ok(false)
        });
        let b = this.clone();
        server.on_disconnect(move |conn| {
            if let Some(tasks) = b.inner.deliveries.lock().unwrap().remove(&conn.id()) {
                for (_, task) in tasks {
                    task.abort();
                }
            }
        });
        server.layer(BridgeLayer {
            broker: this.clone(),
        });
        Ok(this)
    }

    /// Publishes `body` on `topic` to the whole service (JSON), stored by
    /// JetStream when it is on.
    pub async fn publish(&self, topic: &str, body: impl serde::Serialize) -> Result<(), Error> {
        check_topic(topic)?;
        let payload = serde_json::to_vec(&body).map_err(|e| Error::Io(io::Error::other(e)))?;
        self.send(topic, Bytes::from(payload), "json", true)
            .await
            .map_err(Error::Io)
    }

    /// Broadcasts `action` with `body` (JSON) to every connection of every
    /// worker of the service.
    pub async fn broadcast(&self, action: &str, body: impl serde::Serialize) -> Result<(), Error> {
        let payload = serde_json::to_vec(&body).map_err(|e| Error::Io(io::Error::other(e)))?;
        let mut headers = HeaderMap::new();
        headers.insert(FORMAT_HEADER, "json");
        headers.insert(ACTION_HEADER, action);
        self.inner
            .nats
            .publish_with_headers(self.inner.broadcast.clone(), headers, Bytes::from(payload))
            .await
            .map_err(|e| Error::Io(nats_err(e)))
    }

    async fn send(
        &self,
        topic: &str,
        payload: Bytes,
        format: &str,
        confirm: bool,
    ) -> io::Result<()> {
        let inner = &self.inner;
        let subject = format!("{}{topic}", inner.prefix);
        let mut headers = HeaderMap::new();
        headers.insert(FORMAT_HEADER, format);
        match (&inner.js, confirm) {
            (Some(js), true) => {
                let ack = js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(nats_err)?;
                ack.await.map_err(nats_err)?;
            }
            _ => inner
                .nats
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(nats_err)?,
        }
        Ok(())
    }

    fn durable(name: &str, pattern: &str) -> String {
        format!("{}__{}", hex(name), hex(pattern))
    }

    /// A named connection subscribes retroactively: its consumer, and its
    /// deliveries on this connection.
    async fn subscribe_named(&self, conn: &Conn, name: &str, pattern: &str) -> io::Result<()> {
        let inner = &self.inner;
        let js = inner
            .js
            .as_ref()
            .ok_or_else(|| nats_err("JetStream is off"))?;
        let durable = Self::durable(name, pattern);
        if inner
            .deliveries
            .lock()
            .unwrap()
            .get(&conn.id())
            .is_some_and(|d| d.iter().any(|(n, _)| *n == durable))
        {
            return Ok(());
        }
        let stream = js.get_stream(&inner.stream).await.map_err(nats_err)?;
        stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(format!("{name} {pattern}")),
                    filter_subject: format!("{}{pattern}", inner.prefix),
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: inner.config.ack_timeout,
                    max_ack_pending: 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        self.deliver(conn, durable);
        Ok(())
    }

    /// A name identified: deliveries from each of its consumers.
    async fn resume(&self, conn: &Conn, name: &str) {
        let inner = &self.inner;
        let Some(js) = &inner.js else {
            return;
        };
        let Ok(mut stream) = js.get_stream(&inner.stream).await else {
            return;
        };
        let prefix = format!("{}__", hex(name));
        let mut names = stream.consumer_names();
        let mut mine = Vec::new();
        while let Some(Ok(consumer)) = names.next().await {
            if consumer.starts_with(&prefix) {
                mine.push(consumer);
            }
        }
        let _ = stream.info().await;
        for durable in mine {
            self.deliver(conn, durable);
        }
    }

    fn deliver(&self, conn: &Conn, durable: String) {
        let this = self.clone();
        let c = conn.clone();
        let d = durable.clone();
        let task = tokio::spawn(async move { this.delivery(c, d).await });
        let mut deliveries = self.inner.deliveries.lock().unwrap();
        deliveries
            .entry(conn.id())
            .or_default()
            .push((durable, task.abort_handle()));
        if conn.is_closed() {
            task.abort();
        }
    }

    /// Delivers from consumer `durable` to `conn`, one at a time, until
    /// the connection ends.
    async fn delivery(self, conn: Conn, durable: String) {
        let inner = &self.inner;
        let Some(js) = &inner.js else {
            return;
        };
        while !conn.is_closed() {
            let messages = async {
                let stream = js.get_stream(&inner.stream).await.map_err(nats_err)?;
                let consumer: jetstream::consumer::PullConsumer =
                    stream.get_consumer(&durable).await.map_err(nats_err)?;
                consumer.messages().await.map_err(nats_err)
            }
            .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    // NATS restarting, or the consumer deleted.
                    tracing::debug!(%durable, error = %e, "nats broker: consumer unavailable");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        () = conn.closed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    () = conn.closed() => return,
                };
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::debug!(%durable, error = %e, "nats broker: consumer stream failed");
                        break;
                    }
                    None => break,
                };
                let Some(topic) = msg.subject.strip_prefix(inner.prefix.as_str()) else {
                    let _ = msg.ack().await;
                    continue;
                };
                let Some(body) = body_of(&msg.headers, msg.payload.clone(), inner.broker.formats())
                else {
                    // Sent again it would fail again, forever: terminated,
                    // and the next message comes.
                    tracing::warn!(%durable, %topic, "nats broker: an undecodable message; terminated");
                    if let Err(e) = msg.ack_with(AckKind::Term).await {
                        tracing::debug!(%durable, error = %e, "nats broker: term failed");
                    }
                    continue;
                };
                let answer = conn
                    .call::<Body>(topic, &body)
                    .timeout(inner.config.ack_timeout)
                    .await;
                match answer {
                    Ok(_)
                    | Err(
                        Error::Remote(_)
                        | Error::Exception(_)
                        | Error::Decode(_)
                        | Error::Encode(_),
                    ) => {
                        // The acknowledgement is confirmed by the server:
                        // once it returns, this message is not delivered
                        // again.
                        if let Err(e) = msg.double_ack().await {
                            tracing::debug!(%durable, error = %e, "nats broker: ack failed");
                        }
                    }
                    Err(_) => {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        if conn.is_closed() {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn unsubscribe_named(&self, conn: &Conn, name: &str, pattern: &str) {
        let inner = &self.inner;
        let durable = Self::durable(name, pattern);
        if let Some(tasks) = inner.deliveries.lock().unwrap().get_mut(&conn.id()) {
            tasks.retain(|(n, task)| {
                let keep = *n != durable;
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        if let Some(js) = &inner.js {
            if let Ok(stream) = js.get_stream(&inner.stream).await {
                let _ = stream.delete_consumer(&durable).await;
            }
        }
    }
}

/// A body from NATS: its bytes in the format its header names (JSON when
/// none does), if they are a well-formed value of it. Anyone with access
/// to the subjects can publish there: what does not decode, or names a
/// format neither drs nor the broker's registry
/// ([`BrokerConfig::formats`](crate::BrokerConfig::formats)) knows, is
/// `None`, never copied into a client's frames.
fn body_of(
    headers: &Option<HeaderMap>,
    payload: Bytes,
    formats: Option<&'static drs_core::Registry>,
) -> Option<Body> {
    if payload.is_empty() {
        return Some(Body::absent());
    }
    let format = headers
        .as_ref()
        .and_then(|h| h.get(FORMAT_HEADER))
        .map(|v| v.as_str().to_string());
    let format: &'static dyn BodyFormat =
        crate::store::format_named(format.as_deref().unwrap_or("json"), formats)?;
    let body = Body::from_raw(payload, format);
    body.deserialize::<serde::de::IgnoredAny>().ok()?;
    Some(body)
}

/// Takes `drs.publish`, and retroactive `drs.subscribe`/`drs.unsubscribe`
/// of named connections, through NATS.
struct BridgeLayer {
    broker: NatsBroker,
}

impl Layer for BridgeLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let action = msg.action();
        if action != PUBLISH && action != SUBSCRIBE && action != UNSUBSCRIBE {
            return next.run(msg);
        }
        let b = self.broker.clone();
        Box::pin(async move {
            match msg.action() {
                PUBLISH => b.publish_cmd(&msg).await,
                _ => {
                    let named = msg.conn().name();
                    let args: Option<SubscribeBody> = msg.body().deserialize().ok();
                    match (named, args, b.inner.js.is_some()) {
                        (Some(name), Some(args), true)
                            if args.retroactive || msg.action() == UNSUBSCRIBE =>
                        {
                            b.named_cmd(&msg, &name, &args, next).await
                        }
                        _ => next.run(msg).await,
                    }
                }
            }
        })
    }
}

impl NatsBroker {
    async fn publish_cmd(&self, msg: &Msg) -> Outcome {
        let bad = |e: String| Outcome::error(format!("invalid drs.publish: {e}"));
        let topic: String = match msg.body().field("topic") {
            Ok(Some(t)) => match t.deserialize() {
                Ok(t) => t,
                Err(e) => return bad(format!("`topic`: {e}")),
            },
            Ok(None) => return bad("missing field `topic`".into()),
            Err(e) => return bad(e.to_string()),
        };
        if let Err(e) = check_topic(&topic) {
            return Outcome::error(e.to_string());
        }
        if !self.inner.broker.allows(msg.conn(), &topic, true) {
            return Outcome::error(format!("publish not allowed: {topic}"));
        }
        let body = msg.body().field("body").ok().flatten().unwrap_or_default();
        let (payload, format) = match body.raw() {
            Some((bytes, format)) => (bytes.clone(), format.name()),
            None => (Bytes::new(), "json"),
        };
        match self
            .send(&topic, payload, format, msg.key().is_some())
            .await
        {
            Ok(()) => Outcome::value(1u64),
            Err(e) => Outcome::exception(format!("publish through NATS failed: {e}")),
        }
    }

    async fn named_cmd(&self, msg: &Msg, name: &str, args: &SubscribeBody, next: Next) -> Outcome {
        if let Err(e) = check_pattern(&args.topic) {
            return Outcome::error(e.to_string());
        }
        if msg.action() == UNSUBSCRIBE {
            self.unsubscribe_named(msg.conn(), name, &args.topic).await;
            return next.run(msg.clone()).await;
        }
        if !self.inner.broker.allows(msg.conn(), &args.topic, false) {
            return Outcome::error(format!("subscribe not allowed: {}", args.topic));
        }
        match self.subscribe_named(msg.conn(), name, &args.topic).await {
            Ok(()) => Outcome::value(()),
            Err(e) => Outcome::exception(format!("subscribe through JetStream failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body from NATS is read in the format its header names: JSON when
    /// none does, a registered protocol's when the broker has the
    /// registry, nothing when no one knows the format or the bytes do not
    /// decode.
    #[test]
    fn bodies_from_nats_find_their_format_in_the_registry() {
        let headers = |format: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(format) = format {
                h.insert(FORMAT_HEADER, format);
            }
            Some(h)
        };
        let registry = crate::store::tests::toy_registry();
        let read = |format, payload: &'static [u8], formats| {
            body_of(&headers(format), Bytes::from_static(payload), formats)
        };
        let json = read(None, b"[1,2]", None).expect("JSON by default");
        assert_eq!(json.deserialize::<Vec<u8>>().unwrap(), [1, 2]);
        assert!(read(Some("toy"), b"[1,2]", None).is_none());
        let toy = read(Some("toy"), b"[1,2]", Some(registry)).expect("registered");
        assert_eq!(toy.raw().unwrap().1.name(), "toy");
        assert!(read(Some("toy"), b"[1,", Some(registry)).is_none());
        assert!(read(Some("cbor"), b"\x01", Some(registry)).is_none());
        assert!(read(Some("json"), b"", None).unwrap().is_absent());
    }
}
