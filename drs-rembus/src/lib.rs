//! A Rembus-compatible endpoint for drs (see `shared/interop/rembus.md`):
//! unmodified Rembus components — the `rembus` Python package — connect over
//! WebSocket, speak their CBOR messages, and share one broker with drs
//! clients of every transport and protocol.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let server = drs_core::Server::new();
//! let broker = drs_broker::Broker::attach(&server, drs_broker::BrokerConfig::default())?;
//! drs_rembus::attach(&server, &broker);
//! let addr = drs_rembus::listen(&server, "127.0.0.1:8338").await?;
//! println!("listening rembus {addr}");
//! # Ok(()) }
//! ```
//!
//! What a Rembus component gets:
//!
//! - **Identity** `[0, id, cid, meta]`: the component's name, unique among
//!   live connections (`[4, id, 10, "already connected"]` otherwise); its
//!   subscriptions and backlog are kept across connections.
//! - **Expose / unexpose**: other connections' calls of that name, drs's
//!   or Rembus's, are routed to it and its answer relayed; exposers come
//!   before the server's own handlers. No exposer: status 42 with the name.
//! - **Subscribe** with `msg_from`: `Now` (0) is live only; anything else
//!   is retroactive for a named component: what is published while it is
//!   away is kept (bounded by the broker's backlogs) and sent when it is
//!   back and reactive, in publish order — all of it for `LastReceived`
//!   (+inf), what is younger than `n` ns for a finite `n`.
//!   Deliveries to Rembus components are QoS 0 publishes, done once sent.
//! - **Reactive**: nothing is delivered until the component sends
//!   `reactive true`; `setup` (after an automatic reconnect) registers
//!   its exposers and subscribers again and turns it reactive.
//! - **Publish** QoS 0, 1 and 2: QoS 1/2 are acknowledged (`[5, id]`) once
//!   the broker has taken the message (and a durable broker has written
//!   it). A QoS 2 repeat of an id is acknowledged again but not published
//!   again until the peer's `[6, id]` (the last 1,024 ids per connection
//!   are remembered).
//! - **RPC**: `[2, id, name, null, args]` goes to an exposer or the
//!   server's handler of that name; `[4, id, status, data]` comes back
//!   (0, 40 for an exception or error with its text, 42 not found, 45 no
//!   such target, 46 the exposer went away). Status 70 and 11 are never sent.
//!
//! - **Authentication**: a server that requires a token requires it here
//!   too (`?token=` or an `Authorization` header on the WebSocket
//!   request); a component without it is answered status 20
//!   (identification error) to its Identity, RPCs and admin commands, and
//!   what it publishes reaches nobody.
//! - **Bounds**: a frame is walked before it is decoded; one whose values
//!   would take more than [`MAX_DECODED`] bytes, or that declares more
//!   elements than its bytes carry, is refused with the reason.
//!
//! Between Rembus and drs an argument list of one is that value, any other
//! is an array body; an array body is the argument list. Topics use `/` in
//! Rembus and `.` in drs (`**` is `>`).

use std::sync::Arc;

use drs_broker::Broker;
use drs_core::{Body, Conn, Error, HandlerError, Msg, Server};
use drs_names::ServerNames;
use drs_transport_ws::WsListener;
use serde::Deserialize;

mod protocol;
mod scan;

pub use scan::MAX_DECODED;

pub use protocol::{
    status, topic_in, topic_out, Rembus, ACK, ADMIN, ALREADY_CONNECTED, DIRECT, REACTIVE, SETUP,
    TARGET_NOT_FOUND, UNKNOWN_ADMIN,
};

#[derive(Deserialize)]
struct Reactive {
    #[serde(default)]
    status: bool,
}

#[derive(Deserialize, Default)]
struct Setup {
    #[serde(default)]
    exposers: Vec<serde_json::Value>,
    #[serde(default)]
    subscribers: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Direct {
    target: String,
    action: String,
}

/// A name from a `setup` list: a string, or the first string of a list
/// or the `topic` of a map.
fn entry_name(v: &serde_json::Value) -> Option<(String, bool)> {
    match v {
        serde_json::Value::String(s) => Some((s.clone(), false)),
        serde_json::Value::Array(items) => {
            let name = items.first()?.as_str()?.to_string();
            let retro = items
                .get(1)
                .and_then(|f| f.as_f64())
                .is_some_and(|f| f != 0.0);
            Some((name, retro))
        }
        serde_json::Value::Object(map) => {
            let name = map.get("topic")?.as_str()?.to_string();
            let retro = map
                .get("msg_from")
                .and_then(|f| f.as_f64())
                .is_some_and(|f| f != 0.0);
            Some((name, retro))
        }
        _ => None,
    }
}

/// Makes `server` (with `broker` attached) serve Rembus components on the
/// connections that speak [`Rembus`]: registers the Rembus commands and,
/// for those connections, holds deliveries until they are reactive. Call
/// it once, after [`Broker::attach`], before [`listen`].
pub fn attach(server: &Server, broker: &Broker) {
    let b = broker.clone();
    server.on_connect(move |conn: Conn| {
        if conn.protocol().name() == drs_core::Protocol::name(&Rembus) {
            b.hold(&conn, true);
            b.deliver_unacknowledged(&conn);
        }
        async { Ok::<(), std::convert::Infallible>(()) }
    });
    let b = broker.clone();
    server.on(REACTIVE, move |msg: Msg, args: Reactive| {
        b.hold(msg.conn(), !args.status);
        async { Ok::<(), HandlerError>(()) }
    });
    let b = broker.clone();
    server.on(SETUP, move |msg: Msg, args: Setup| {
        let conn = msg.conn();
        let mut result = Ok(());
        for action in args.exposers.iter().filter_map(entry_name) {
            result = result.and(b.expose(conn, &action.0));
        }
        for (topic, retroactive) in args.subscribers.iter().filter_map(entry_name) {
            let topic = topic_in(&topic);
            result = result.and(b.subscribe(conn, &topic, retroactive, None));
        }
        b.hold(conn, false);
        async move { result }
    });
    server.on(ADMIN, || async {
        Err::<(), _>(HandlerError::new(UNKNOWN_ADMIN))
    });
    server.layer_for(drs_pubsub::PUBLISH, ExactlyOnce);
    server.on(ACK, |msg: Msg, ack: protocol::Ack| {
        if ack.kind == 6 {
            if let Some(seen) = msg.conn().get::<Seen>() {
                seen.forget(&ack.id);
            }
        }
        async { Ok::<(), HandlerError>(()) }
    });
    let s = server.clone();
    server.on(DIRECT, move |msg: Msg, args: Direct| {
        let body = msg.body().field("body").ok().flatten().unwrap_or_default();
        let call = s.call_named::<Body>(&args.target, &args.action, &body);
        async move {
            match call {
                Err(Error::NoPeer(name)) => {
                    Err(HandlerError::new(format!("{TARGET_NOT_FOUND}: {name}")))
                }
                Err(e) => Err(HandlerError::new(e.to_string())),
                Ok(call) => match call.await {
                    Ok(body) => Ok(body),
                    Err(Error::Remote(r)) => Err(HandlerError::new(r.message)),
                    Err(Error::Exception(r)) => Err(HandlerError::exception(r.message)),
                    Err(e) if e.is_closed() => Err(HandlerError::new("closed")),
                    Err(e) => Err(HandlerError::new(e.to_string())),
                },
            }
        }
    });
}

/// QoS 2 ids a connection has published and not yet released with
/// `[6, id]`, oldest first, at most [`MAX_QOS2`].
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

/// QoS 2 ids remembered per connection.
const MAX_QOS2: usize = 1024;

impl Seen {
    /// Records `id`; false if it was there (a repeat).
    fn first(&self, id: &str) -> bool {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ids.iter().any(|s| s == id) {
            return false;
        }
        if ids.len() == MAX_QOS2 {
            ids.pop_front();
        }
        ids.push_back(id.to_string());
        true
    }

    fn forget(&self, id: &str) {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ids.retain(|s| s != id);
    }
}

/// Publishes a QoS 2 message once however often the peer repeats it.
struct ExactlyOnce;

impl drs_core::Layer for ExactlyOnce {
    fn call(&self, msg: Msg, next: drs_core::Next) -> drs_core::ReplyFuture {
        let Some(id) = msg.key().and_then(|k| k.strip_prefix('w')) else {
            return next.run(msg);
        };
        let conn = msg.conn();
        let seen = match conn.get::<Seen>() {
            Some(seen) => seen,
            None => conn.with_extensions(|ext| {
                if let Some(seen) = ext.get::<Seen>() {
                    return seen.clone();
                }
                let seen = Seen::default();
                ext.insert(seen.clone());
                seen
            }),
        };
        if seen.first(id) {
            next.run(msg)
        } else {
            Box::pin(async { drs_core::Outcome::value(0u64) })
        }
    }
}

/// Serves Rembus components on a WebSocket listener bound to `addr`
/// (binary frames; any request path); [`attach`] must have been called.
/// Returns the bound address.
pub async fn listen(server: &Server, addr: &str) -> std::io::Result<String> {
    let listener = WsListener::bind(addr).await?;
    server.listen_arc(listener, Arc::new(Rembus))
}
