//! The pub/sub contract of drs (docs/PROTOCOL.md §2), beside the kernel:
//! the wire bodies of `drs.subscribe`, `drs.publish`, `drs.expose` and
//! `drs.missed`; the [`topic`] syntax and its matching trie;
//! [`Subscriptions`], which hands each delivery to the handler of the
//! pattern it matched; and [`PubSub`], the client side on any
//! [`Conn`].
//!
//! A broker (`drs-broker`) serves these commands; a [`Conn`] (through
//! [`PubSub`]) and the reconnecting session speak them. The kernel knows
//! nothing of them: a subscription is a [`Layer`] installed on the
//! connection, a publication is a plain fire or call.

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

use drs_core::{box_handler, BoxedHandler, Conn, Error, Handler, Layer, Msg, Next, ReplyFuture};

pub mod topic;

pub use topic::{
    check_pattern, check_topic, matches, BadTopic, TopicTrie, MAX_TOPIC_DEPTH, MAX_TOPIC_LEN,
};

impl From<BadTopic> for Error {
    fn from(bad: BadTopic) -> Self {
        Error::Invalid(Box::new(bad))
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `drs.subscribe` `{"topic": pattern, "retroactive": bool}`.
pub const SUBSCRIBE: &str = "drs.subscribe";
/// `drs.unsubscribe` `{"topic": pattern}`.
pub const UNSUBSCRIBE: &str = "drs.unsubscribe";
/// `drs.publish` `{"topic": topic, "body": value}`; as a call, answered
/// with how many subscribers it reached or was stored for.
pub const PUBLISH: &str = "drs.publish";
/// `drs.expose` `{"action": name}`: route that action's calls here.
pub const EXPOSE: &str = "drs.expose";
/// `drs.unexpose` `{"action": name}`.
pub const UNEXPOSE: &str = "drs.unexpose";
/// A broker's call to a named retroactive subscriber whose backlog
/// overflowed, before the messages that follow the gap:
/// `{"missed": n}` (how many were dropped, oldest first).
pub const MISSED: &str = "drs.missed";

/// The body of `drs.subscribe` and `drs.unsubscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscribeBody {
    /// The pattern.
    pub topic: String,
    /// Whether a named subscriber gets what was published while it was
    /// away (ignored by `drs.unsubscribe`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retroactive: bool,
    /// For a retroactive subscription: how far back, in seconds, what was
    /// missed is still wanted when the name comes back (absent: all the
    /// broker keeps). Live messages are not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<f64>,
}

impl SubscribeBody {
    /// A subscription to `topic`.
    pub fn new(topic: impl Into<String>, retroactive: bool) -> Self {
        Self {
            topic: topic.into(),
            retroactive,
            window: None,
        }
    }

    /// Limits what a retroactive subscription gets back to what was
    /// published within `window` before the name returns.
    pub fn window(mut self, window: std::time::Duration) -> Self {
        self.window = Some(window.as_secs_f64());
        self
    }
}

/// The body of `drs.publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishBody<B> {
    /// The concrete topic.
    pub topic: String,
    /// What is published.
    #[serde(default)]
    pub body: B,
}

/// The body of `drs.expose` and `drs.unexpose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExposeBody {
    /// The action.
    pub action: String,
}

/// The body of [`MISSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// Messages dropped from this subscriber's backlog.
    pub missed: u64,
}

#[derive(Clone)]
struct Entry {
    retroactive: bool,
    handler: BoxedHandler,
}

#[derive(Default)]
struct Table {
    by_pattern: BTreeMap<String, Entry>,
    trie: TopicTrie<String>,
}

/// Handlers by topic pattern, as a [`Layer`]: a command whose action
/// matches a subscribed pattern goes to that pattern's handler (the most
/// specific one when several match: the one with the most literal
/// segments); anything else goes on to the routes.
///
/// A [`Conn`] keeps one for [`PubSub::subscribe`]; a session keeps one for
/// all its connections, and subscribes again on each.
#[derive(Clone, Default)]
pub struct Subscriptions {
    table: Arc<RwLock<Table>>,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field(
                "patterns",
                &read(&self.table).by_pattern.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn literal_segments(pattern: &str) -> usize {
    pattern
        .split('.')
        .filter(|s| *s != "*" && *s != ">")
        .count()
}

impl Subscriptions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `handler` for deliveries matching `pattern` (replacing any
    /// handler it had); fails on an invalid pattern.
    pub fn insert<H: Handler<A>, A>(
        &self,
        pattern: &str,
        retroactive: bool,
        handler: H,
    ) -> Result<(), Error> {
        check_pattern(pattern).map_err(Error::from)?;
        let mut table = write(&self.table);
        table.trie.insert(pattern, pattern.to_string());
        table.by_pattern.insert(
            pattern.to_string(),
            Entry {
                retroactive,
                handler: box_handler(handler),
            },
        );
        Ok(())
    }

    /// Removes `pattern`; true if it was there.
    pub fn remove(&self, pattern: &str) -> bool {
        let mut table = write(&self.table);
        let owned = pattern.to_string();
        table.trie.remove(pattern, &owned);
        table.by_pattern.remove(pattern).is_some()
    }

    /// The subscribed patterns, each with whether it is retroactive.
    pub fn patterns(&self) -> Vec<(String, bool)> {
        read(&self.table)
            .by_pattern
            .iter()
            .map(|(p, e)| (p.clone(), e.retroactive))
            .collect()
    }

    /// Whether `pattern` is subscribed.
    pub fn contains(&self, pattern: &str) -> bool {
        read(&self.table).by_pattern.contains_key(pattern)
    }

    fn handler_for(&self, topic: &str) -> Option<BoxedHandler> {
        let table = read(&self.table);
        if table.by_pattern.is_empty() {
            return None;
        }
        let mut best: Option<(usize, &BoxedHandler)> = None;
        table.trie.for_each_match(topic, |p| {
            let literal = literal_segments(p);
            if best.map_or(true, |(b, _)| literal > b) {
                if let Some(entry) = table.by_pattern.get(p) {
                    best = Some((literal, &entry.handler));
                }
            }
        });
        best.map(|(_, h)| h.clone())
    }
}

impl Layer for Subscriptions {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        match self.handler_for(msg.action()) {
            Some(handler) => handler(msg),
            None => next.run(msg),
        }
    }
}

/// The handle to a connection's own [`Subscriptions`], kept in its
/// extensions.
#[derive(Clone)]
struct ConnSubscriptions(Subscriptions);

/// The client side of pub/sub and broker RPC, on any [`Conn`] whose peer
/// is a broker (`use drs_pubsub::PubSub`, or the facade's prelude).
pub trait PubSub {
    /// Subscribes to `pattern` on the broker at the other end and sends
    /// what it delivers to `handler` (which receives the published body;
    /// [`Msg::action`] is the concrete topic). Resolves once the broker
    /// has confirmed. Subscribing again replaces the handler.
    ///
    /// ```no_run
    /// # use drs_pubsub::PubSub;
    /// # async fn f(conn: drs_core::Conn) -> Result<(), drs_core::Error> {
    /// conn.subscribe("sensors.*", |msg: drs_core::Msg, t: f64| async move {
    ///     println!("{} = {t}", msg.action());
    ///     Ok::<_, drs_core::HandlerError>(())
    /// }).await?;
    /// # Ok(()) }
    /// ```
    fn subscribe<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Like [`subscribe`](PubSub::subscribe), retroactively: for a
    /// connection that identified with a name, the broker keeps what is
    /// published while it is away and delivers it, in order, when the name
    /// comes back; each delivery is a call, acknowledged by the handler's
    /// reply.
    fn subscribe_retroactive<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Ends the subscription to `pattern` (on the broker, then here).
    fn unsubscribe(
        &self,
        pattern: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Publishes `body` on `topic` (a fire: nothing confirms it). Fails at
    /// once, with [`Error::Invalid`], on an invalid topic.
    fn publish(
        &self,
        topic: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Publishes `body` on `topic` as a call: resolves with how many
    /// subscribers it reached or was stored for, once a durable broker has
    /// written it.
    fn publish_confirmed(
        &self,
        topic: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'static;

    /// Serves `action` for the whole broker: registers `handler` here and
    /// asks the broker to route every connection's calls of `action` to
    /// this one (or another exposer).
    fn expose<H: Handler<A>, A>(
        &self,
        action: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;

    /// Stops serving `action` for the broker (the local handler stays).
    fn unexpose(&self, action: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static;
}

/// This connection's subscriptions, installed as its outermost layer on
/// first use.
fn subscriptions(conn: &Conn) -> Subscriptions {
    if let Some(ConnSubscriptions(subs)) = conn.get::<ConnSubscriptions>() {
        return subs;
    }
    conn.with_extensions(|ext| {
        if let Some(ConnSubscriptions(subs)) = ext.get::<ConnSubscriptions>() {
            return subs.clone();
        }
        let subs = Subscriptions::new();
        ext.insert(ConnSubscriptions(subs.clone()));
        conn.layer(subs.clone());
        subs
    })
}

fn subscribe_as<H: Handler<A>, A>(
    conn: &Conn,
    pattern: &str,
    retroactive: bool,
    handler: H,
) -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let subs = subscriptions(conn);
    let had = subs.contains(pattern);
    let registered = subs
        .insert(pattern, retroactive, handler)
        .map(|()| conn.call::<drs_core::Body>(SUBSCRIBE, SubscribeBody::new(pattern, retroactive)));
    let pattern = pattern.to_string();
    async move {
        if let Err(e) = registered?.await {
            // Refused: a new subscription leaves nothing behind.
            if !had {
                subs.remove(&pattern);
            }
            return Err(e);
        }
        Ok(())
    }
}

impl PubSub for Conn {
    fn subscribe<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        subscribe_as(self, pattern, false, handler)
    }

    fn subscribe_retroactive<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        subscribe_as(self, pattern, true, handler)
    }

    fn unsubscribe(
        &self,
        pattern: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let call = self.call::<drs_core::Body>(UNSUBSCRIBE, SubscribeBody::new(pattern, false));
        let subs = subscriptions(self);
        let pattern = pattern.to_string();
        async move {
            call.await?;
            subs.remove(&pattern);
            Ok(())
        }
    }

    fn publish(
        &self,
        topic: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let fire = check_topic(topic).map_err(Error::from).map(|()| {
            self.fire(
                PUBLISH,
                PublishBody {
                    topic: topic.to_string(),
                    body,
                },
            )
        });
        async move { fire?.await }
    }

    fn publish_confirmed(
        &self,
        topic: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
        let call = check_topic(topic).map_err(Error::from).map(|()| {
            self.call::<u64>(
                PUBLISH,
                PublishBody {
                    topic: topic.to_string(),
                    body,
                },
            )
        });
        async move { call?.await }
    }

    fn expose<H: Handler<A>, A>(
        &self,
        action: &str,
        handler: H,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.on(action, handler);
        let call = self.call::<drs_core::Body>(
            EXPOSE,
            ExposeBody {
                action: action.to_string(),
            },
        );
        async move {
            call.await?;
            Ok(())
        }
    }

    fn unexpose(&self, action: &str) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let call = self.call::<drs_core::Body>(
            UNEXPOSE,
            ExposeBody {
                action: action.to_string(),
            },
        );
        async move {
            call.await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(subs: &Subscriptions, topic: &str) -> Option<String> {
        let handler = subs.handler_for(topic)?;
        let table = read(&subs.table);
        table
            .by_pattern
            .iter()
            .find(|(_, e)| Arc::ptr_eq(&e.handler, &handler))
            .map(|(p, _)| p.clone())
    }

    async fn noop(_: Msg) -> Result<(), drs_core::HandlerError> {
        Ok(())
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let subs = Subscriptions::new();
        for p in [">", "a.>", "a.*.c", "a.b", "*.b"] {
            subs.insert(p, false, noop).unwrap();
        }
        assert_eq!(chosen(&subs, "a.b").as_deref(), Some("a.b"));
        assert_eq!(chosen(&subs, "a.x.c").as_deref(), Some("a.*.c"));
        assert_eq!(chosen(&subs, "a.c").as_deref(), Some("a.>"));
        assert_eq!(chosen(&subs, "z.b").as_deref(), Some("*.b"));
        assert_eq!(chosen(&subs, "z").as_deref(), Some(">"));
        assert!(subs.remove(">"));
        assert!(!subs.remove(">"), "removed twice");
        assert_eq!(chosen(&subs, "z"), None);
        assert_eq!(
            subs.patterns(),
            vec![
                ("*.b".to_string(), false),
                ("a.*.c".to_string(), false),
                ("a.>".to_string(), false),
                ("a.b".to_string(), false),
            ]
        );
    }

    #[test]
    fn a_bad_pattern_is_refused_and_leaves_nothing() {
        let subs = Subscriptions::new();
        let err = subs.insert("a..b", true, noop).unwrap_err();
        assert!(err.is_invalid() && err.is_unsent(), "{err:?}");
        assert_eq!(
            err.to_string(),
            r#"invalid topic "a..b": a segment is empty"#
        );
        assert!(subs.patterns().is_empty());
        match err {
            Error::Invalid(source) => assert!(source.downcast_ref::<BadTopic>().is_some()),
            other => panic!("{other:?}"),
        }
    }
}
