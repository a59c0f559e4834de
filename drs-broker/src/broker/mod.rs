//! The broker: subscriptions, named subscribers, retroactive backlogs and
//! routed RPC, served on a drs [`Server`].

mod backlog;
mod config;
mod delivery;
mod expose;
mod state;
mod subscriptions;

pub use config::{Backlog, BrokerConfig};
use delivery::Durable;
use expose::RouteLayer;
use state::*;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use drs_auth::{ConnAuth, Jail};
use drs_core::{
    fanout, Body, Conn, Error, HandlerError, Layer, MemoryHold, Msg, Next, OutBody, Outcome,
    ReplyFuture, Server,
};
use drs_names::{ConnName, ServerNames};
use drs_pubsub::{
    check_pattern, check_topic, matches, ExposeBody, Missed, SubscribeBody, TopicTrie, EXPOSE,
    MISSED, PUBLISH, SUBSCRIBE, UNEXPOSE, UNSUBSCRIBE,
};
use futures::{stream::FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;

use crate::store::{self, MessageRecord, NameRecord, Op, PatternRecord, Store, StoreError};

/// What a subscription past the server's memory budget is answered.
pub const BUDGET_EXCEEDED: &str = "the server's memory budget is exceeded";

/// The reply to a call whose action nobody serves.
pub fn no_handlers(action: &str) -> String {
    format!("No handlers for {action}")
}

/// A pub/sub broker and RPC router on a drs [`Server`] (docs/PROTOCOL.md §2):
/// `drs.subscribe`, `drs.unsubscribe`, `drs.publish`, `drs.expose`,
/// `drs.unexpose`, and for names given with `drs.identify`, subscriptions
/// and retroactive backlogs kept across connections.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let server = drs_core::Server::new();
/// let broker = drs_broker::Broker::attach(&server, drs_broker::BrokerConfig::default()).unwrap();
/// assert_eq!(broker.publish("news.today", "nothing yet").await.unwrap(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// What a broker holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Subscriptions, of connections and names.
    pub subscriptions: usize,
    /// Names with state.
    pub names: usize,
    /// Publications kept for retroactive subscribers.
    pub stored_messages: usize,
    /// Bytes of their bodies.
    pub stored_bytes: usize,
    /// Actions with exposers.
    pub exposed_actions: usize,
    /// Connections and names with at least one subscription.
    pub subscribers: usize,
    /// Topics with publications kept.
    pub stored_topics: usize,
}

impl Broker {
    /// Where this broker looks body formats up by name
    /// ([`BrokerConfig::formats`]), beside JSON's and MessagePack's.
    #[cfg(feature = "nats")]
    pub(crate) fn formats(&self) -> Option<&'static drs_core::Registry> {
        self.inner.config.formats
    }

    /// Serves pub/sub and broker RPC on `server`, with `config`; opens and
    /// reads the durable store first if one is configured.
    pub fn attach(server: &Server, config: BrokerConfig) -> Result<Broker, StoreError> {
        let (store, loaded) = match &config.store {
            Some(dir) => {
                let (store, loaded) = Store::open(dir)?;
                (store, Some(loaded))
            }
            None => (Store::memory(), None),
        };
        let broker = Broker {
            inner: Arc::new(Inner {
                config,
                budget: server.memory_budget().clone(),
                state: Mutex::new(State::default()),
                store,
                exposed: AtomicUsize::new(0),
                heavy: std::sync::atomic::AtomicBool::new(false),
                tasks: tokio_util::task::TaskTracker::new(),
                server: std::sync::OnceLock::new(),
            }),
        };
        if let Some(loaded) = loaded {
            broker.restore(loaded)?;
        }
        broker.install(server);
        broker.start_sweeper();
        {
            // What `drs.stats` and the metrics endpoint show of the broker,
            // when the server keeps statistics.
            let weak = Arc::downgrade(&broker.inner);
            drs_stats::section(server, "broker", move || match weak.upgrade() {
                Some(inner) => {
                    let s = Broker { inner }.stats();
                    serde_json::json!({
                        "subscriptions": s.subscriptions,
                        "subscribers": s.subscribers,
                        "names": s.names,
                        "stored_topics": s.stored_topics,
                        "stored_messages": s.stored_messages,
                        "stored_bytes": s.stored_bytes,
                        "exposed_actions": s.exposed_actions,
                    })
                }
                None => serde_json::Value::Null,
            });
        }
        Ok(broker)
    }

    /// Waits until everything the broker has written so far is on disk
    /// (at once without a durable store).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.store.flush().await
    }

    /// Ends the broker's work once its server has shut down: waits for the
    /// deliveries to named subscribers to end (they end with their
    /// connections), so that the acknowledgements they took in are
    /// written, then [`flush`](Broker::flush)es.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.flush().await
    }

    /// The durable store's file, if there is one.
    pub fn store_path(&self) -> Option<PathBuf> {
        self.inner.store.path().map(PathBuf::from)
    }

    /// What the broker holds now.
    pub fn stats(&self) -> BrokerStats {
        let state = lock(&self.inner.state);
        BrokerStats {
            subscriptions: state.trie.len(),
            names: state.components.len(),
            stored_messages: state.log.len(),
            stored_bytes: state.stored_bytes,
            exposed_actions: state.exposers.len(),
            subscribers: state
                .conns
                .values()
                .filter(|(_, cs)| !cs.patterns.is_empty())
                .count()
                + state
                    .components
                    .values()
                    .filter(|c| !c.patterns.is_empty())
                    .count(),
            stored_topics: state.topics.len(),
        }
    }

    fn restore(&self, loaded: store::Loaded) -> Result<(), StoreError> {
        let mut state = lock(&self.inner.state);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.store_path().unwrap_or_default(),
            reason,
        };
        for (seq, record) in loaded.messages {
            let formats = self.inner.config.formats;
            let body = store::body_from(&record.format, record.body, formats).ok_or_else(|| {
                corrupt(format!("message {seq}: unknown format {:?}", record.format))
            })?;
            let size = body.raw().map_or(0, |(b, _)| b.len());
            let topic: Arc<str> = record.topic.into();
            let msg = Arc::new(Stored {
                seq,
                topic: topic.clone(),
                body,
                time: record.time,
                size,
            });
            let log = state.topics.entry(topic).or_default();
            log.seqs.push_back(seq);
            log.bytes += size;
            state.stored_bytes += size;
            state.log.insert(seq, LogEntry { msg, holders: 0 });
            state.next_seq = state.next_seq.max(seq + 1);
        }
        let mut pairs = 0;
        for (name, record) in loaded.components {
            let name: Arc<str> = name.into();
            let mut component = Component::new(&self.inner, &name);
            component.missed = record.missed;
            component.owner = record.owner.map(Arc::from);
            for (pattern, retroactive, window_ns) in record.patterns {
                if let Err(e) = check_pattern(&pattern) {
                    // Written before a bound that it now passes.
                    tracing::warn!(%name, error = %e, "broker store: a subscription dropped");
                    self.inner
                        .store
                        .write(Op::DeletePattern(name.to_string(), pattern));
                    continue;
                }
                component.hold.grow(subscription_cost(&pattern));
                let window = window_ns.map(Duration::from_nanos);
                component.patterns.insert(
                    pattern.clone(),
                    PatternInfo {
                        retroactive,
                        window,
                    },
                );
                state.trie.insert(
                    &pattern,
                    Sub {
                        owner: Owner::Name(name.clone()),
                        retroactive,
                    },
                );
            }
            for seq in loaded.pending.get(&*name).into_iter().flatten() {
                if let Some(entry) = state.log.get_mut(seq) {
                    entry.holders += 1;
                    pairs += 1;
                    component.pending_bytes += entry.msg.size;
                    component.pending.insert(*seq, entry.msg.clone());
                }
            }
            state.components.insert(name, component);
        }
        // Messages nobody holds any more (a crash between writes).
        let orphans: Vec<u64> = state
            .log
            .iter()
            .filter(|(_, e)| e.holders == 0)
            .map(|(s, _)| *s)
            .collect();
        for seq in orphans {
            state.drop_message(seq, &self.inner.store);
        }
        state.pairs = pairs;
        state.bound_total(&self.inner);
        tracing::info!(
            path = ?self.store_path(),
            messages = state.log.len(),
            names = state.components.len(),
            "broker store loaded"
        );
        state.note_size(&self.inner);
        Ok(())
    }

    /// Drops messages past the topic backlog's age, now and then, for as
    /// long as the broker lives (outside a runtime: only at delivery).
    fn start_sweeper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let every = (self.inner.config.topic_backlog.max_age / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                lock(&inner.state).sweep(&inner);
            }
        });
    }

    fn install(&self, server: &Server) {
        let _ = self.inner.server.set(server.downgrade());
        let b = self.clone();
        server.on(SUBSCRIBE, move |msg: Msg, args: SubscribeBody| {
            let r = b.subscribe_cmd(msg.conn(), &args);
            async move { r }
        });
        let b = self.clone();
        server.on(UNSUBSCRIBE, move |msg: Msg, args: SubscribeBody| {
            let r = b.unsubscribe_cmd(msg.conn(), &args.topic);
            async move { r }
        });
        let b = self.clone();
        server.on(PUBLISH, move |msg: Msg| {
            let b = b.clone();
            async move { b.publish_cmd(&msg).await }
        });
        let b = self.clone();
        server.on(EXPOSE, move |msg: Msg, args: ExposeBody| {
            let r = b.expose(msg.conn(), &args.action);
            async move { r }
        });
        let b = self.clone();
        server.on(UNEXPOSE, move |msg: Msg, args: ExposeBody| {
            b.unexpose(msg.conn(), &args.action);
            async move { Ok::<(), HandlerError>(()) }
        });
        let b = self.clone();
        server.on_identify(move |conn, name| b.identified(conn, name));
        let b = self.clone();
        server.on_connect(move |conn: Conn| {
            lock(&b.inner.state)
                .conns
                .insert(conn.id(), (conn, ConnState::default()));
            async { Ok::<(), String>(()) }
        });
        let b = self.clone();
        server.on_disconnect(move |conn| b.disconnected(conn));
        server.layer(RouteLayer {
            broker: self.clone(),
        });
        // What a name's subscription or claim changed is on disk before
        // the peer hears it is done, as a confirmed publication is.
        for action in [SUBSCRIBE, UNSUBSCRIBE, drs_names::IDENTIFY] {
            server.layer_for(
                action,
                Durable {
                    broker: self.clone(),
                },
            );
        }
    }
}
