//! The broker: subscriptions, named subscribers, retroactive backlogs and
//! routed RPC, served on a drs [`Server`].

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

use drs_core::{
    fanout, Body, Conn, Error, HandlerError, Jail, Layer, MemoryHold, Msg, Next, OutBody, Outcome,
    ReplyFuture, Server,
};
use drs_pubsub::{
    check_pattern, check_topic, matches, ExposeBody, Missed, SubscribeBody, TopicTrie, EXPOSE,
    MISSED, PUBLISH, SUBSCRIBE, UNEXPOSE, UNSUBSCRIBE,
};
use futures::{stream::FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;

use crate::store::{self, MessageRecord, NameRecord, Op, PatternRecord, Store, StoreError};

/// Limits of a backlog: whichever is reached first drops the oldest
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages kept.
    pub max_messages: usize,
    /// Bytes of bodies kept.
    pub max_bytes: usize,
    /// Age past which a message is dropped.
    pub max_age: Duration,
}

impl Backlog {
    /// A backlog of at most `max_messages`, `max_bytes` and `max_age`.
    pub fn new(max_messages: usize, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            max_age,
        }
    }
}

/// Settings of a [`Broker`]. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// What one name may have waiting: 10,000 messages, 64 MiB, 24 h.
    pub backlog: Backlog,
    /// What one topic may have stored: 100,000 messages, 256 MiB, 24 h
    /// (its age also applies to messages no name has come back for).
    pub topic_backlog: Backlog,
    /// What the broker may hold for all names and topics together:
    /// 1,000,000 messages, 1 GiB (its age is not used). Bytes count each
    /// message's body plus 160 bytes, and 64 bytes for every name that has
    /// it still to receive, so fan-out to many names is bounded too. Past
    /// it, or past the server's memory budget, on which all of it is held,
    /// the oldest go and the names that had them get `drs.missed`.
    pub total_backlog: Backlog,
    /// Deliveries to one named retroactive subscriber awaiting their
    /// acknowledgement at once. Default 64.
    pub window: usize,
    /// How long a delivery waits for its acknowledgement before it is
    /// sent again. Default 30 s.
    pub ack_timeout: Duration,
    /// Subscriptions one connection (or name) may hold. Default 1,024.
    /// Each is held on the server's memory budget at its size (its text
    /// and a trie level per segment): a connection's on its own share (past
    /// the budget the largest holders are disconnected), a name's on the
    /// server's (past it `drs.subscribe` is refused with
    /// [`BUDGET_EXCEEDED`]).
    pub max_subscriptions: usize,
    /// Names the broker keeps state for. Default 10,000.
    pub max_names: usize,
    /// Names one authenticated identity may hold state for. Default 1,000.
    pub max_names_per_identity: usize,
    /// Where the durable store lives; `None` (the default): in memory.
    pub store: Option<PathBuf>,
    /// Topics anyone may publish to; `None`: all.
    pub publish_jail: Option<Jail>,
    /// Patterns anyone may subscribe to; `None`: all.
    pub subscribe_jail: Option<Jail>,
    /// Per role: the topics its holders may publish to, and the patterns
    /// they may subscribe to (`None`: no limit of the role's own).
    pub role_jails: HashMap<String, (Option<Jail>, Option<Jail>)>,
    /// Actions anyone may expose; `None`: any the server does not handle.
    pub expose_jail: Option<Jail>,
    /// Per role: the actions its holders may expose. A peer with roles
    /// that have such a jail may expose only what one of them allows.
    pub role_expose: HashMap<String, Jail>,
    /// Actions the server itself handles that an exposer may take over
    /// (its calls then go to the exposer first). Default: none.
    pub expose_overrides: Option<Jail>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            backlog: Backlog::new(10_000, 64 << 20, DAY),
            topic_backlog: Backlog::new(100_000, 256 << 20, DAY),
            total_backlog: Backlog::new(1_000_000, 1 << 30, DAY),
            window: 64,
            ack_timeout: Duration::from_secs(30),
            max_subscriptions: 1024,
            max_names: 10_000,
            max_names_per_identity: 1_000,
            store: None,
            publish_jail: None,
            subscribe_jail: None,
            role_jails: HashMap::new(),
            expose_jail: None,
            role_expose: HashMap::new(),
            expose_overrides: None,
        }
    }
}

impl BrokerConfig {
    /// Sets the per-name backlog.
    pub fn backlog(mut self, backlog: Backlog) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets the per-topic backlog of the store.
    pub fn topic_backlog(mut self, backlog: Backlog) -> Self {
        self.topic_backlog = backlog;
        self
    }

    /// Sets the bound of everything stored together.
    pub fn total_backlog(mut self, backlog: Backlog) -> Self {
        self.total_backlog = backlog;
        self
    }

    /// Sets the delivery window (at least 1).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets the acknowledgement timeout.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the subscriptions one connection or name may hold.
    pub fn max_subscriptions(mut self, max: usize) -> Self {
        self.max_subscriptions = max.max(1);
        self
    }

    /// Sets how many names the broker keeps state for.
    pub fn max_names(mut self, max: usize) -> Self {
        self.max_names = max.max(1);
        self
    }

    /// Sets how many names one authenticated identity may hold state for.
    pub fn max_names_per_identity(mut self, max: usize) -> Self {
        self.max_names_per_identity = max.max(1);
        self
    }

    /// Limits the actions anyone may expose (see [`Jail`]).
    pub fn expose_jail(mut self, jail: Jail) -> Self {
        self.expose_jail = Some(jail);
        self
    }

    /// Limits the actions authenticated peers with `role` may expose: a
    /// peer with several such roles may expose what any of them allows,
    /// always within [`expose_jail`](BrokerConfig::expose_jail).
    pub fn role_expose(mut self, role: impl Into<String>, jail: Jail) -> Self {
        self.role_expose.insert(role.into(), jail);
        self
    }

    /// Lets exposers take over these actions although the server handles
    /// them itself (by default an action with a handler of the server's
    /// cannot be exposed).
    pub fn expose_overrides(mut self, jail: Jail) -> Self {
        self.expose_overrides = Some(jail);
        self
    }

    /// Whether `conn` may expose `action`, the jails alone considered.
    fn may_expose(&self, conn: &Conn, action: &str) -> bool {
        if self.expose_jail.as_ref().is_some_and(|j| !j.allows(action)) {
            return false;
        }
        let Some(identity) = conn.identity() else {
            return true;
        };
        let mut jails = identity
            .roles
            .iter()
            .filter_map(|r| self.role_expose.get(r))
            .peekable();
        jails.peek().is_none() || jails.any(|j| j.allows(action))
    }

    /// Keeps retroactive publications and names' state in `dir`.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Some(dir.into());
        self
    }

    /// Limits the topics connections may publish to (see [`Jail`]: exact
    /// names and `prefix.*`).
    pub fn publish_jail(mut self, jail: Jail) -> Self {
        self.publish_jail = Some(jail);
        self
    }

    /// Limits what connections may subscribe to: a pattern is allowed when
    /// the jail allows it as a name, so `sensors.*` in the jail allows
    /// `sensors.t1`, `sensors.*` and `sensors.>`, and only an open jail
    /// allows `>` or `*.x`.
    pub fn subscribe_jail(mut self, jail: Jail) -> Self {
        self.subscribe_jail = Some(jail);
        self
    }

    /// Limits what authenticated peers with `role` may publish to and
    /// subscribe to (roles come from authentication: `drs-auth`). A peer with several
    /// such roles may do what any of them allows; always within the
    /// server-wide [`publish_jail`](BrokerConfig::publish_jail) and
    /// [`subscribe_jail`](BrokerConfig::subscribe_jail).
    pub fn role_jails(
        mut self,
        role: impl Into<String>,
        publish: Option<Jail>,
        subscribe: Option<Jail>,
    ) -> Self {
        self.role_jails.insert(role.into(), (publish, subscribe));
        self
    }

    /// Whether `conn` may publish to `topic` (`publish`) or subscribe to
    /// the pattern `topic`.
    fn allows(&self, conn: &Conn, topic: &str, publish: bool) -> bool {
        let pick = |pair: &(Option<Jail>, Option<Jail>)| -> Option<Jail> {
            if publish {
                pair.0.clone()
            } else {
                pair.1.clone()
            }
        };
        let server = if publish {
            &self.publish_jail
        } else {
            &self.subscribe_jail
        };
        if server.as_ref().is_some_and(|j| !j.allows(topic)) {
            return false;
        }
        let Some(identity) = conn.identity() else {
            return true;
        };
        let mut limited = false;
        for role in &identity.roles {
            if let Some(jail) = self.role_jails.get(role).and_then(pick) {
                if jail.allows(topic) {
                    return true;
                }
                limited = true;
            }
        }
        !limited
    }
}

/// What a stored message costs besides its body: its record, its log
/// and topic entries.
const MESSAGE_OVERHEAD: usize = 160;
/// What one (name, message) pair costs: the name's pending entry.
const PAIR_OVERHEAD: usize = 64;
/// What a name costs besides its subscriptions.
const NAME_OVERHEAD: usize = 256;
/// What one trie level of a subscription costs at most (a node and its
/// map entry).
const LEVEL_OVERHEAD: usize = std::mem::size_of::<TopicTrie<Sub>>() + 96;

/// The memory a subscription to `pattern` takes at most: its text (kept
/// twice: by its owner and in the trie) and a trie node per segment.
fn subscription_cost(pattern: &str) -> usize {
    2 * pattern.len() + (pattern.matches('.').count() + 1) * LEVEL_OVERHEAD
}

/// Subscriptions past which matching a publication (and waiting for the
/// broker's lock to do it) leaves the runtime's threads
/// (`block_in_place`), so that a peer's many patterns never stall
/// unrelated work.
const HEAVY: usize = 4096;

/// Runs `f` off the runtime's worker threads when `heavy` and the runtime
/// can (a multi-threaded one); here otherwise.
fn off_runtime<R>(heavy: bool, f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// What a subscription past the server's memory budget is answered.
pub const BUDGET_EXCEEDED: &str = "the server's memory budget is exceeded";

/// The reply to a call whose action nobody serves.
pub fn no_handlers(action: &str) -> String {
    format!("No handlers for {action}")
}

/// Who a subscription belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    /// An unnamed connection: gone with it.
    Conn(u64),
    /// A name: kept across its connections.
    Name(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Sub {
    owner: Owner,
    retroactive: bool,
}

/// A stored (retroactive) publication.
#[derive(Debug)]
struct Stored {
    seq: u64,
    topic: Arc<str>,
    body: Body,
    /// Receive time, ns since the epoch.
    time: u64,
    size: usize,
}

struct LogEntry {
    msg: Arc<Stored>,
    /// Names still to receive it.
    holders: u32,
}

#[derive(Default)]
struct TopicLog {
    seqs: std::collections::VecDeque<u64>,
    bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PatternInfo {
    retroactive: bool,
    /// How far back what was missed is still wanted when the name comes
    /// back; `None`: all that is kept.
    window: Option<Duration>,
}

struct Component {
    /// The live connection holding the name.
    conn: Option<Conn>,
    /// The identity that claimed the name; only it may take it again.
    owner: Option<Arc<str>>,
    patterns: BTreeMap<String, PatternInfo>,
    pending: BTreeMap<u64, Arc<Stored>>,
    pending_bytes: usize,
    inflight: BTreeSet<u64>,
    /// Dropped and not yet reported.
    missed: u64,
    /// A `drs.missed` report is on its way.
    reporting: bool,
    wake: Arc<Notify>,
    /// Rembus: hold deliveries until the peer says it is ready.
    held: bool,
    /// Deliveries are fires, done once sent (Rembus QoS 0).
    unacknowledged: bool,
    /// What the name and its subscriptions take, on the server's budget.
    hold: MemoryHold,
}

impl Component {
    fn new(inner: &Inner, name: &str) -> Self {
        let mut hold = inner
            .budget
            .try_hold(0)
            .unwrap_or_else(|_| MemoryHold::none());
        hold.grow(NAME_OVERHEAD + name.len());
        Self {
            hold,
            conn: None,
            owner: None,
            patterns: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            inflight: BTreeSet::new(),
            missed: 0,
            reporting: false,
            wake: Arc::new(Notify::new()),
            held: false,
            unacknowledged: false,
        }
    }

    /// Forgets what is on its way to a connection that is gone. A message
    /// evicted while on its way was not counted as missed then; with no
    /// acknowledgement to come, it is now.
    fn drop_inflight(&mut self) {
        let lost = self
            .inflight
            .iter()
            .filter(|s| !self.pending.contains_key(s))
            .count();
        self.missed += lost as u64;
        self.inflight.clear();
    }

    fn has_state(&self) -> bool {
        !self.patterns.is_empty() || !self.pending.is_empty() || self.missed > 0
    }

    /// Whether a message it missed is within the window of one of its
    /// retroactive patterns that match it.
    fn wants_missed(&self, m: &Stored, now: u64) -> bool {
        let age = now.saturating_sub(m.time);
        self.patterns.iter().any(|(p, i)| {
            i.retroactive
                && matches(p, &m.topic)
                && i.window.is_none_or(|w| age <= w.as_nanos() as u64)
        })
    }

    fn wants_retroactive(&self, topic: &str) -> bool {
        self.patterns
            .iter()
            .any(|(p, i)| i.retroactive && matches(p, topic))
    }
}

#[derive(Default)]
struct ConnState {
    /// Subscriptions of an unnamed connection.
    patterns: HashSet<String>,
    exposed: HashSet<String>,
    /// Calls relayed to this connection as an exposer, not yet answered.
    relaying: Arc<AtomicUsize>,
    /// Live deliveries held back until the peer is ready (Rembus).
    held: bool,
    /// Retroactive deliveries are fires, done once sent.
    unacknowledged: bool,
    /// What its subscriptions take, on its connection's memory budget.
    hold: Option<MemoryHold>,
}

#[derive(Default)]
struct State {
    trie: TopicTrie<Sub>,
    conns: HashMap<u64, (Conn, ConnState)>,
    components: HashMap<Arc<str>, Component>,
    exposers: HashMap<String, Vec<u64>>,
    rr: usize,
    log: BTreeMap<u64, LogEntry>,
    topics: HashMap<Arc<str>, TopicLog>,
    next_seq: u64,
    /// Bytes of bodies in `log`.
    stored_bytes: usize,
    /// (name, message) pairs: messages some name has still to receive.
    pairs: usize,
    /// What the stored messages take, on the server's memory budget.
    kept: Option<MemoryHold>,
}

struct Inner {
    config: BrokerConfig,
    /// The server's memory budget: names, subscriptions and backlogs are
    /// held on it.
    budget: drs_core::MemoryBudget,
    state: Mutex<State>,
    store: Store,
    /// Actions with at least one exposer (the layer's fast path).
    exposed: AtomicUsize,
    /// More than [`HEAVY`] subscriptions: a publication's matching, and
    /// its wait for the lock, run off the runtime's threads.
    heavy: std::sync::atomic::AtomicBool,
    /// The delivery tasks of named subscribers.
    tasks: tokio_util::task::TaskTracker,
    /// Whether the server handles an action itself (exposing it is then
    /// an override).
    server: std::sync::OnceLock<drs_core::WeakServer>,
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

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
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
            let body = store::body_from(&record.format, record.body).ok_or_else(|| {
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
        for action in [SUBSCRIBE, UNSUBSCRIBE, drs_core::IDENTIFY] {
            server.layer_for(
                action,
                Durable {
                    broker: self.clone(),
                },
            );
        }
    }

    /// Publishes `body` on `topic` from the server itself, as a confirmed
    /// `drs.publish` does: returns how many subscribers it reached or was
    /// stored for, once a durable store has written it (a store that
    /// cannot write fails it with [`Error::Io`]; the live deliveries have
    /// gone out).
    pub async fn publish(&self, topic: &str, body: impl Serialize) -> Result<u64, Error> {
        check_topic(topic)?;
        let body = encode_body(&body)?;
        let n = self.publish_body(topic, body);
        self.inner
            .store
            .flush()
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok(n)
    }

    /// The publish path: live deliveries now, retroactive ones queued and
    /// stored. The publisher is no special case: it gets its own
    /// publication only if it subscribed, like everyone.
    fn publish_body(&self, topic: &str, body: Body) -> u64 {
        let inner = &self.inner;
        let heavy = inner.heavy.load(Ordering::Relaxed);
        let Some((mut live, stored_for)) =
            off_runtime(heavy, || self.match_publication(topic, &body))
        else {
            return 0;
        };
        // Once per connection: one subscribed before naming itself may
        // also hold its name's subscriptions.
        if live.len() > 1 {
            live.sort_unstable_by_key(Conn::id);
            live.dedup_by_key(|c| c.id());
        }
        let reached = fanout(live.iter(), topic, OutBody::Raw(&body)) as u64;
        reached + stored_for
    }

    /// Who gets a publication now (live), and for how many names it is
    /// stored; `None` when nobody subscribes.
    fn match_publication(&self, topic: &str, body: &Body) -> Option<(Vec<Conn>, u64)> {
        let inner = &self.inner;
        let mut live: Vec<Conn> = Vec::new();
        let mut stored_for = 0u64;
        {
            let mut state = lock(&inner.state);
            let mut owners: HashMap<Owner, bool> = HashMap::new();
            state.trie.for_each_match(topic, |sub| {
                let retro = owners.entry(sub.owner.clone()).or_insert(false);
                *retro |= sub.retroactive;
            });
            if owners.is_empty() {
                return None;
            }
            let mut retro_names: Vec<Arc<str>> = Vec::new();
            for (owner, retroactive) in owners {
                match owner {
                    Owner::Conn(id) => {
                        if let Some((conn, cs)) = state.conns.get(&id) {
                            if !cs.held {
                                live.push(conn.clone());
                            }
                        }
                    }
                    Owner::Name(name) => {
                        let Some(component) = state.components.get(&name) else {
                            continue;
                        };
                        if retroactive {
                            retro_names.push(name);
                        } else if let Some(conn) = &component.conn {
                            let held = state.conns.get(&conn.id()).is_none_or(|(_, cs)| cs.held);
                            if !held {
                                live.push(conn.clone());
                            }
                        }
                    }
                }
            }
            if !retro_names.is_empty() {
                stored_for = retro_names.len() as u64;
                state.store_message(inner, topic, body.clone(), retro_names);
            }
        }
        Some((live, stored_for))
    }

    async fn publish_cmd(&self, msg: &Msg) -> Result<u64, HandlerError> {
        let bad = |e: String| HandlerError::new(format!("invalid drs.publish: {e}"));
        let topic: String = msg
            .body()
            .field("topic")
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("missing field `topic`".into()))?
            .deserialize()
            .map_err(|e| bad(format!("`topic`: {e}")))?;
        check_topic(&topic).map_err(|e| HandlerError::new(e.to_string()))?;
        self.check_publish(msg.conn(), &topic)?;
        let body = msg
            .body()
            .field("body")
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_default();
        let n = self.publish_body(&topic, body);
        if msg.key().is_some() {
            self.inner
                .store
                .flush()
                .await
                .map_err(|e| HandlerError::exception(e.to_string()))?;
        }
        Ok(n)
    }

    fn check_publish(&self, conn: &Conn, topic: &str) -> Result<(), HandlerError> {
        if !self.inner.config.allows(conn, topic, true) {
            return Err(HandlerError::new(format!("publish not allowed: {topic}")));
        }
        Ok(())
    }

    fn subscribe_cmd(&self, conn: &Conn, args: &SubscribeBody) -> Result<(), HandlerError> {
        check_pattern(&args.topic).map_err(|e| HandlerError::new(e.to_string()))?;
        if !self.inner.config.allows(conn, &args.topic, false) {
            return Err(HandlerError::new(format!(
                "subscribe not allowed: {}",
                args.topic
            )));
        }
        let window = match args.window {
            Some(w) if w.is_finite() && w >= 0.0 => Some(Duration::from_secs_f64(w.min(1e9))),
            Some(w) => {
                return Err(HandlerError::new(format!(
                    "invalid window {w}: a number of seconds, 0 or more"
                )))
            }
            None => None,
        };
        self.subscribe(conn, &args.topic, args.retroactive, window)
    }

    /// Subscribes `conn` (its name, if it has one) to `pattern`. For a
    /// retroactive subscription of a name, `window` limits how far back
    /// what it missed is still delivered when it comes back (`None`: all
    /// that is kept); live messages are not affected.
    pub fn subscribe(
        &self,
        conn: &Conn,
        pattern: &str,
        retroactive: bool,
        window: Option<Duration>,
    ) -> Result<(), HandlerError> {
        let inner = &self.inner;
        let max = inner.config.max_subscriptions;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match conn.name() {
            Some(name) => {
                if !state.components.contains_key(&name)
                    && state.components.len() >= inner.config.max_names
                {
                    return Err(HandlerError::new("too many named subscribers"));
                }
                let component = state
                    .components
                    .entry(name.clone())
                    .or_insert_with(|| Component::new(inner, &name));
                let before = component.patterns.get(pattern).copied();
                if before.is_none() && component.patterns.len() >= max {
                    return Err(HandlerError::new(format!(
                        "too many subscriptions (at most {max})"
                    )));
                }
                let info = PatternInfo {
                    retroactive,
                    window,
                };
                if before == Some(info) {
                    return Ok(());
                }
                if before.is_none() && component.hold.try_grow(subscription_cost(pattern)).is_err()
                {
                    return Err(HandlerError::new(BUDGET_EXCEEDED));
                }
                component.patterns.insert(pattern.to_string(), info);
                let component_patterns = component.patterns.len();
                let owner = Owner::Name(name.clone());
                if let Some(b) = before {
                    state.trie.remove(
                        pattern,
                        &Sub {
                            owner: owner.clone(),
                            retroactive: b.retroactive,
                        },
                    );
                }
                state.trie.insert(pattern, Sub { owner, retroactive });
                // One row for the subscription, and the name's own small
                // record (written once, with the first).
                if before.is_none() && component_patterns == 1 {
                    state.save_component(inner, &name);
                }
                let window = window.map(|w| w.as_nanos() as u64);
                inner.store.write(Op::PutPattern(
                    name.to_string(),
                    pattern.to_string(),
                    store::encode(&PatternRecord(retroactive, window)),
                ));
            }
            None => {
                let Some((_, cs)) = state.conns.get_mut(&conn.id()) else {
                    return Err(HandlerError::new("the connection is closing"));
                };
                if !cs.patterns.contains(pattern) && cs.patterns.len() >= max {
                    return Err(HandlerError::new(format!(
                        "too many subscriptions (at most {max})"
                    )));
                }
                if cs.patterns.insert(pattern.to_string()) {
                    cs.hold
                        .get_or_insert_with(|| conn.hold_memory(0))
                        .grow(subscription_cost(pattern));
                    state.trie.insert(
                        pattern,
                        Sub {
                            owner: Owner::Conn(conn.id()),
                            retroactive: false,
                        },
                    );
                }
            }
        }
        state.note_size(inner);
        Ok(())
    }

    fn unsubscribe_cmd(&self, conn: &Conn, pattern: &str) -> Result<(), HandlerError> {
        check_pattern(pattern).map_err(|e| HandlerError::new(e.to_string()))?;
        self.unsubscribe(conn, pattern);
        Ok(())
    }

    /// Ends `conn`'s (or its name's) subscription to `pattern`; what its
    /// name had waiting that no other retroactive pattern covers is
    /// dropped.
    pub fn unsubscribe(&self, conn: &Conn, pattern: &str) {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match conn.name() {
            Some(name) => {
                let Some(component) = state.components.get_mut(&name) else {
                    return;
                };
                let Some(info) = component.patterns.remove(pattern) else {
                    return;
                };
                component.hold.shrink(subscription_cost(pattern));
                let stale: Vec<u64> = component
                    .pending
                    .values()
                    .filter(|m| !component.wants_retroactive(&m.topic))
                    .map(|m| m.seq)
                    .collect();
                state.trie.remove(
                    pattern,
                    &Sub {
                        owner: Owner::Name(name.clone()),
                        retroactive: info.retroactive,
                    },
                );
                inner
                    .store
                    .write(Op::DeletePattern(name.to_string(), pattern.to_string()));
                for seq in stale {
                    state.release(inner, &name, seq);
                }
            }
            None => {
                if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
                    if cs.patterns.remove(pattern) {
                        if let Some(hold) = &mut cs.hold {
                            hold.shrink(subscription_cost(pattern));
                        }
                        state.trie.remove(
                            pattern,
                            &Sub {
                                owner: Owner::Conn(conn.id()),
                                retroactive: false,
                            },
                        );
                    }
                }
            }
        }
        state.note_size(inner);
    }

    /// Routes calls of `action` from other connections to `conn`: allowed
    /// by the expose jails ([`BrokerConfig::expose_jail`],
    /// [`BrokerConfig::role_expose`]), and never over an action the server
    /// handles itself unless [`BrokerConfig::expose_overrides`] allows it.
    pub fn expose(&self, conn: &Conn, action: &str) -> Result<(), HandlerError> {
        if action.is_empty() || action.starts_with("drs.") {
            return Err(HandlerError::new(format!("cannot expose {action:?}")));
        }
        let config = &self.inner.config;
        let overridable = config
            .expose_overrides
            .as_ref()
            .is_some_and(|j| j.allows(action));
        if !config.may_expose(conn, action) || (!overridable && self.server_handles(action)) {
            tracing::warn!(
                action,
                peer = conn.peer_addr(),
                "drs.expose refused: not allowed"
            );
            return Err(HandlerError::new(format!("expose not allowed: {action}")));
        }
        let mut state = lock(&self.inner.state);
        let max = self.inner.config.max_subscriptions;
        let Some((_, cs)) = state.conns.get_mut(&conn.id()) else {
            return Err(HandlerError::new("the connection is closing"));
        };
        if cs.exposed.len() >= max && !cs.exposed.contains(action) {
            return Err(HandlerError::new(format!(
                "too many exposed actions (at most {max})"
            )));
        }
        if cs.exposed.insert(action.to_string()) {
            let list = state.exposers.entry(action.to_string()).or_default();
            if list.is_empty() {
                self.inner.exposed.fetch_add(1, Ordering::AcqRel);
            }
            list.push(conn.id());
        }
        Ok(())
    }

    /// Whether the broker's server handles `action` itself.
    fn server_handles(&self, action: &str) -> bool {
        let server = self
            .inner
            .server
            .get()
            .and_then(drs_core::WeakServer::upgrade);
        server.is_some_and(|s| s.handles(action))
    }

    /// Stops routing `action` to `conn`.
    pub fn unexpose(&self, conn: &Conn, action: &str) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            if cs.exposed.remove(action) {
                state.remove_exposer(&self.inner, action, conn.id());
            }
        }
    }

    /// Holds (or releases) live and retroactive deliveries to `conn` until
    /// it says it is ready (Rembus's `reactive`).
    pub fn hold(&self, conn: &Conn, held: bool) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            cs.held = held;
        }
        if let Some(name) = conn.name() {
            if let Some(component) = state.components.get_mut(&name) {
                component.held = held;
                component.wake.notify_one();
            }
        }
    }

    /// Makes the retroactive deliveries to `conn` fires, each done once
    /// sent, instead of calls acknowledged by their reply: for peers that
    /// acknowledge nothing (Rembus components). Set it before the peer
    /// identifies.
    pub fn deliver_unacknowledged(&self, conn: &Conn) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            cs.unacknowledged = true;
        }
    }

    /// The names and patterns `conn` has subscribed to, and the actions it
    /// exposes.
    pub fn registrations(&self, conn: &Conn) -> (Vec<String>, Vec<String>) {
        let state = lock(&self.inner.state);
        let exposed = state
            .conns
            .get(&conn.id())
            .map(|(_, cs)| cs.exposed.iter().cloned().collect())
            .unwrap_or_default();
        let subscribed = match conn.name() {
            Some(name) => state
                .components
                .get(&name)
                .map(|c| c.patterns.keys().cloned().collect())
                .unwrap_or_default(),
            None => state
                .conns
                .get(&conn.id())
                .map(|(_, cs)| cs.patterns.iter().cloned().collect())
                .unwrap_or_default(),
        };
        (exposed, subscribed)
    }

    /// `conn` took `name`: it gets the name's subscriptions and backlog,
    /// unless another identity owns the name or its identity holds as
    /// many names as it may.
    fn identified(&self, conn: &Conn, name: &Arc<str>) -> Result<bool, String> {
        let inner = &self.inner;
        let who: Option<Arc<str>> = conn.identity().map(|i| Arc::from(i.name.as_str()));
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match state.components.get(name) {
            Some(c) => {
                if c.owner.is_some() && c.owner != who {
                    tracing::warn!(
                        %name,
                        identity = who.as_deref(),
                        peer = conn.peer_addr(),
                        "drs.identify refused: the name belongs to another identity"
                    );
                    return Err(drs_core::NAME_TAKEN.to_string());
                }
            }
            None => {
                if let Some(who) = &who {
                    let max = inner.config.max_names_per_identity;
                    let held = state
                        .components
                        .values()
                        .filter(|c| c.owner.as_ref() == Some(who))
                        .count();
                    if held >= max {
                        return Err(format!("too many names for one identity (at most {max})"));
                    }
                }
            }
        }
        // A connection naming itself again leaves its former name, which
        // is forgotten if nothing is kept for it.
        let left: Vec<Arc<str>> = state
            .components
            .iter()
            .filter(|(other, c)| {
                *other != name && c.conn.as_ref().is_some_and(|c| c.id() == conn.id())
            })
            .map(|(other, _)| other.clone())
            .collect();
        for other in left {
            state.leave(inner, &other);
        }
        let (held, unacknowledged) = state
            .conns
            .get(&conn.id())
            .map_or((false, false), |(_, cs)| (cs.held, cs.unacknowledged));
        let Some(component) = state.components.get_mut(name) else {
            if state.components.len() >= inner.config.max_names {
                return Ok(false);
            }
            let mut component = Component::new(inner, name);
            component.conn = Some(conn.clone());
            component.owner = who;
            component.held = held;
            component.unacknowledged = unacknowledged;
            state.components.insert(name.clone(), component);
            self.start_delivery(conn.clone(), name.clone());
            return Ok(false);
        };
        let resumed = component.has_state();
        // What it missed and no longer wants (older than its windows).
        let now = now_ns();
        let unwanted: Vec<u64> = component
            .pending
            .values()
            .filter(|m| !component.wants_missed(m, now))
            .map(|m| m.seq)
            .collect();
        component.conn = Some(conn.clone());
        component.held = held;
        component.unacknowledged = unacknowledged;
        component.drop_inflight();
        component.reporting = false;
        if component.owner.is_none() && who.is_some() {
            // Claimed before authentication was required: bound now.
            component.owner = who;
            if component.has_state() {
                state.save_component(inner, name);
            }
        }
        for seq in unwanted {
            state.release(inner, name, seq);
        }
        self.start_delivery(conn.clone(), name.clone());
        Ok(resumed)
    }

    fn disconnected(&self, conn: &Conn) {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        if let Some((_, cs)) = state.conns.remove(&conn.id()) {
            for pattern in cs.patterns {
                state.trie.remove(
                    &pattern,
                    &Sub {
                        owner: Owner::Conn(conn.id()),
                        retroactive: false,
                    },
                );
            }
            for action in cs.exposed {
                state.remove_exposer(inner, &action, conn.id());
            }
        }
        if let Some(name) = conn.name() {
            if state
                .components
                .get(&name)
                .is_some_and(|c| c.conn.as_ref().is_some_and(|c| c.id() == conn.id()))
            {
                state.leave(inner, &name);
            }
        }
        state.note_size(inner);
    }

    fn start_delivery(&self, conn: Conn, name: Arc<str>) {
        let broker = self.clone();
        self.inner
            .tasks
            .spawn(async move { broker.deliver(conn, name).await });
    }

    /// Sends `name`'s backlog, then what comes, to `conn`, in order, at
    /// most a window of deliveries awaiting their acknowledgement.
    async fn deliver(self, conn: Conn, name: Arc<str>) {
        enum Next {
            Message(Arc<Stored>, bool),
            Report(u64),
            Wait(Arc<Notify>),
            Stop,
        }
        type Acked = (Option<u64>, u64, Result<Body, Error>);
        let inner = &self.inner;
        let mut waiting: FuturesUnordered<futures::future::BoxFuture<'static, Acked>> =
            FuturesUnordered::new();
        loop {
            let next = {
                let mut state = lock(&inner.state);
                let window = inner.config.window;
                let max_age = inner.config.backlog.max_age;
                match state.components.get_mut(&name) {
                    Some(c) if c.conn.as_ref().is_some_and(|c| c.id() == conn.id()) => {
                        if c.held {
                            Next::Wait(c.wake.clone())
                        } else if c.missed > 0 && !c.reporting {
                            c.reporting = true;
                            Next::Report(c.missed)
                        } else if waiting.len() >= window {
                            Next::Wait(c.wake.clone())
                        } else {
                            let now = now_ns();
                            let expired: Vec<(u64, bool)> = c
                                .pending
                                .values()
                                .take_while(|m| {
                                    now.saturating_sub(m.time) > max_age.as_nanos() as u64
                                })
                                .map(|m| (m.seq, c.inflight.contains(&m.seq)))
                                .collect();
                            let found = c
                                .pending
                                .iter()
                                .find(|(seq, _)| {
                                    !c.inflight.contains(seq)
                                        && !expired.iter().any(|(s, _)| s == *seq)
                                })
                                .map(|(_, m)| m.clone());
                            if let Some(m) = &found {
                                c.inflight.insert(m.seq);
                            }
                            let wake = c.wake.clone();
                            if !expired.is_empty() {
                                // One on its way is missed only if not
                                // acknowledged after all (see `answered`).
                                for (seq, sending) in expired {
                                    if state.release(inner, &name, seq) && !sending {
                                        if let Some(c) = state.components.get_mut(&name) {
                                            c.missed += 1;
                                        }
                                    }
                                }
                                state.save_component(inner, &name);
                            }
                            let fire = state
                                .components
                                .get(&name)
                                .is_some_and(|c| c.unacknowledged);
                            match found {
                                Some(m) => Next::Message(m, fire),
                                None => Next::Wait(wake),
                            }
                        }
                    }
                    _ => Next::Stop,
                }
            };
            match next {
                Next::Stop => return,
                Next::Message(m, true) => {
                    // Done once sent: the peer acknowledges nothing.
                    let sent = conn.fire(&m.topic, &m.body).await;
                    match sent {
                        Ok(()) => {
                            self.answered(conn.id(), &name, Some(m.seq), 0, Ok(Body::absent()))
                        }
                        Err(_) => {
                            self.unmark(conn.id(), &name, m.seq);
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Message(m, false) => {
                    let call = conn
                        .call::<Body>(&m.topic, &m.body)
                        .timeout(inner.config.ack_timeout)
                        .send()
                        .await;
                    match call {
                        Ok(sent) => {
                            let seq = m.seq;
                            waiting.push(Box::pin(async move { (Some(seq), 0, sent.await) }));
                        }
                        Err(_) => {
                            self.unmark(conn.id(), &name, m.seq);
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Report(n) => {
                    match conn
                        .call::<Body>(MISSED, Missed { missed: n })
                        .timeout(inner.config.ack_timeout)
                        .send()
                        .await
                    {
                        Ok(sent) => waiting.push(Box::pin(async move { (None, n, sent.await) })),
                        Err(_) => {
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Wait(wake) => {
                    tokio::select! {
                        () = wake.notified() => {}
                        Some((seq, reported, result)) = waiting.next(), if !waiting.is_empty() => {
                            self.answered(conn.id(), &name, seq, reported, result);
                        }
                        () = conn.closed() => {
                            // Replies read before the end still count.
                            while let Some(Some((seq, reported, result))) =
                                futures::FutureExt::now_or_never(waiting.next())
                            {
                                self.answered(conn.id(), &name, seq, reported, result);
                            }
                            return;
                        }
                    }
                }
            }
            // Take in whatever has been answered meanwhile.
            while let Some(Some((seq, reported, result))) =
                futures::FutureExt::now_or_never(waiting.next())
            {
                self.answered(conn.id(), &name, seq, reported, result);
            }
        }
    }

    /// A delivery (or a report) to connection `from` was answered, or not.
    /// An acknowledgement always counts; the bookkeeping of what is on its
    /// way belongs to the connection holding the name, so an answer from one
    /// it has since gone to another leaves that alone.
    fn answered(
        &self,
        from: u64,
        name: &Arc<str>,
        seq: Option<u64>,
        reported: u64,
        result: Result<Body, Error>,
    ) {
        let inner = &self.inner;
        let acked = match &result {
            Ok(_) | Err(Error::Remote(_) | Error::Exception(_) | Error::Decode(_)) => true,
            Err(_) => false,
        };
        let mut state = lock(&inner.state);
        let current = |c: &Component| c.conn.as_ref().is_some_and(|k| k.id() == from);
        match seq {
            Some(seq) => {
                let mut lost = false;
                if let Some(c) = state.components.get_mut(name).filter(|c| current(c)) {
                    // Evicted while on its way, and not received after all.
                    lost = c.inflight.remove(&seq) && !acked && !c.pending.contains_key(&seq);
                    if lost {
                        c.missed += 1;
                    }
                    c.wake.notify_one();
                }
                if acked {
                    state.release(inner, name, seq);
                } else if lost {
                    state.save_component(inner, name);
                }
            }
            None => {
                if let Some(c) = state.components.get_mut(name).filter(|c| current(c)) {
                    c.reporting = false;
                    if acked {
                        c.missed = c.missed.saturating_sub(reported);
                    }
                    c.wake.notify_one();
                    if acked {
                        state.save_component(inner, name);
                    }
                }
            }
        }
    }

    /// A delivery of `seq` could not be sent to `from`.
    fn unmark(&self, from: u64, name: &Arc<str>, seq: u64) {
        self.answered(from, name, Some(seq), 0, Err(Error::Closed));
    }

    /// The connection to relay a call of `action` from `from` to: the
    /// open exposer with the fewest relayed calls in flight, round robin
    /// among equals.
    fn exposer_for(&self, action: &str, from: u64) -> Option<(Conn, Arc<AtomicUsize>)> {
        let mut state = lock(&self.inner.state);
        let ids = state.exposers.get(action)?;
        let n = ids.len();
        let start = state.rr;
        let mut best: Option<(usize, u64)> = None;
        for i in 0..n {
            let id = ids[(start + i) % n];
            if id == from {
                continue;
            }
            // A connection that has closed and whose end the server has
            // not processed yet serves nothing.
            let Some((_, cs)) = state.conns.get(&id).filter(|(c, _)| !c.is_ending()) else {
                continue;
            };
            let load = cs.relaying.load(Ordering::Relaxed);
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, id));
            }
        }
        state.rr = state.rr.wrapping_add(1);
        let (_, id) = best?;
        state
            .conns
            .get(&id)
            .map(|(conn, cs)| (conn.clone(), cs.relaying.clone()))
    }

    /// Whether the jails let `conn` publish to `topic` (`publish`), or
    /// subscribe to the pattern `topic` (for bridges that take over a
    /// command, e.g. to carry it through NATS).
    pub fn allows(&self, conn: &Conn, topic: &str, publish: bool) -> bool {
        self.inner.config.allows(conn, topic, publish)
    }

    /// Whether some connection exposes `action`.
    pub fn is_exposed(&self, action: &str) -> bool {
        lock(&self.inner.state)
            .exposers
            .get(action)
            .is_some_and(|ids| !ids.is_empty())
    }
}

impl State {
    /// Records whether matching is heavy now (after the trie changed).
    fn note_size(&self, inner: &Inner) {
        inner
            .heavy
            .store(self.trie.len() > HEAVY, Ordering::Relaxed);
    }

    /// The connection holding `name` is gone (or took another name): what
    /// was on its way is forgotten, and so is the name if nothing is kept
    /// for it.
    fn leave(&mut self, inner: &Inner, name: &Arc<str>) {
        let Some(component) = self.components.get_mut(name) else {
            return;
        };
        component.conn = None;
        let missed = component.missed;
        component.drop_inflight();
        component.wake.notify_one();
        if !component.has_state() {
            self.components.remove(name);
            inner.store.write(Op::DeleteName(name.to_string()));
        } else if component.missed != missed {
            self.save_component(inner, name);
        }
    }

    /// Stores a publication for the retroactive subscribers `names`.
    fn store_message(&mut self, inner: &Inner, topic: &str, body: Body, names: Vec<Arc<str>>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = body.raw().map_or(0, |(b, _)| b.len());
        let time = now_ns();
        let topic: Arc<str> = self
            .topics
            .get_key_value(topic)
            .map_or_else(|| topic.into(), |(k, _)| k.clone());
        let msg = Arc::new(Stored {
            seq,
            topic: topic.clone(),
            body,
            time,
            size,
        });
        if inner.store.is_durable() {
            let (format, bytes) = match msg.body.raw() {
                Some((b, f)) => (f.name().to_string(), b.to_vec()),
                None => (String::new(), Vec::new()),
            };
            let record = MessageRecord {
                topic: topic.to_string(),
                time,
                format,
                body: bytes,
            };
            inner
                .store
                .write(Op::PutMessage(seq, store::encode(&record)));
        }
        self.log.insert(
            seq,
            LogEntry {
                msg: msg.clone(),
                holders: names.len() as u32,
            },
        );
        self.stored_bytes += size;
        self.pairs += names.len();
        let log = self.topics.entry(topic).or_default();
        log.seqs.push_back(seq);
        log.bytes += size;
        let backlog = inner.config.backlog;
        for name in &names {
            inner.store.write(Op::Hold(name.to_string(), seq));
            let Some(c) = self.components.get_mut(name) else {
                continue;
            };
            c.pending.insert(seq, msg.clone());
            c.pending_bytes += size;
            // Its oldest go; one on its way is missed only if it is not
            // acknowledged after all (see `answered`).
            let mut over: Vec<(u64, bool)> = Vec::new();
            let mut count = c.pending.len();
            let mut bytes = c.pending_bytes;
            for (s, m) in &c.pending {
                if count <= backlog.max_messages && bytes <= backlog.max_bytes {
                    break;
                }
                over.push((*s, c.inflight.contains(s)));
                count -= 1;
                bytes -= m.size;
            }
            c.wake.notify_one();
            if !over.is_empty() {
                for (s, sending) in over {
                    if self.release(inner, name, s) && !sending {
                        if let Some(c) = self.components.get_mut(name) {
                            c.missed += 1;
                        }
                    }
                }
                self.save_component(inner, name);
            }
        }
        // The topic's own bound: its oldest go, from everyone holding them.
        let tb = inner.config.topic_backlog;
        while let Some(log) = self.topics.get(&*msg.topic) {
            if log.seqs.len() <= tb.max_messages && log.bytes <= tb.max_bytes {
                break;
            }
            let Some(&oldest) = log.seqs.front() else {
                break;
            };
            self.evict(inner, oldest);
        }
        // And the bound of everything together, fan-out included, within
        // the server's memory budget.
        self.bound_total(inner);
    }

    /// What the stored messages take: bodies, each message's records, and
    /// each (name, message) pair.
    fn kept_bytes(&self) -> usize {
        self.stored_bytes + self.log.len() * MESSAGE_OVERHEAD + self.pairs * PAIR_OVERHEAD
    }

    /// Evicts the oldest messages (their names told they missed them)
    /// until everything kept is within the total backlog and held on the
    /// server's memory budget.
    fn bound_total(&mut self, inner: &Inner) {
        let all = inner.config.total_backlog;
        loop {
            let kept = self.kept_bytes();
            let within = self.log.len() <= all.max_messages
                && kept <= all.max_bytes
                && self.hold_kept(inner, kept);
            if within {
                return;
            }
            let Some(&oldest) = self.log.keys().next() else {
                return;
            };
            self.evict(inner, oldest);
        }
    }

    /// Holds `kept` bytes on the budget; false if it has no room.
    fn hold_kept(&mut self, inner: &Inner, kept: usize) -> bool {
        let hold = self.kept.get_or_insert_with(|| {
            inner
                .budget
                .try_hold(0)
                .unwrap_or_else(|_| MemoryHold::none())
        });
        let held = hold.bytes();
        if kept <= held {
            hold.shrink(held - kept);
            true
        } else {
            hold.try_grow(kept - held).is_ok()
        }
    }

    /// Drops `seq` from everyone still to receive it (each told it missed
    /// one, unless it is on its way) and from the log.
    fn evict(&mut self, inner: &Inner, seq: u64) {
        let holders: Vec<(Arc<str>, bool)> = self
            .components
            .iter()
            .filter(|(_, c)| c.pending.contains_key(&seq))
            .map(|(n, c)| (n.clone(), c.inflight.contains(&seq)))
            .collect();
        for (name, sending) in holders {
            if self.release(inner, &name, seq) && !sending {
                if let Some(c) = self.components.get_mut(&name) {
                    c.missed += 1;
                    c.wake.notify_one();
                }
            }
            self.save_component(inner, &name);
        }
        self.drop_message(seq, &inner.store);
    }

    /// Evicts what is older than the topic backlog's age.
    fn sweep(&mut self, inner: &Inner) {
        let max_age = inner.config.topic_backlog.max_age.as_nanos() as u64;
        let now = now_ns();
        let old: Vec<u64> = self
            .log
            .values()
            .take_while(|e| now.saturating_sub(e.msg.time) > max_age)
            .map(|e| e.msg.seq)
            .collect();
        for seq in old {
            self.evict(inner, seq);
        }
    }

    /// `name` no longer needs `seq`; the message goes when nobody does.
    /// True if it had it.
    fn release(&mut self, inner: &Inner, name: &Arc<str>, seq: u64) -> bool {
        let Some(c) = self.components.get_mut(name) else {
            return false;
        };
        let Some(m) = c.pending.remove(&seq) else {
            return false;
        };
        c.pending_bytes -= m.size;
        self.pairs = self.pairs.saturating_sub(1);
        inner.store.write(Op::Release(name.to_string(), seq));
        let gone = match self.log.get_mut(&seq) {
            Some(entry) => {
                entry.holders = entry.holders.saturating_sub(1);
                entry.holders == 0
            }
            None => false,
        };
        if gone {
            self.drop_message(seq, &inner.store);
        }
        let kept = self.kept_bytes();
        self.hold_kept(inner, kept);
        true
    }

    fn drop_message(&mut self, seq: u64, store: &Store) {
        let Some(entry) = self.log.remove(&seq) else {
            return;
        };
        self.stored_bytes -= entry.msg.size;
        if let Some(log) = self.topics.get_mut(&*entry.msg.topic) {
            if let Some(i) = log.seqs.iter().position(|s| *s == seq) {
                log.seqs.remove(i);
            }
            log.bytes -= entry.msg.size;
            if log.seqs.is_empty() {
                self.topics.remove(&*entry.msg.topic);
            }
        }
        store.write(Op::DeleteMessage(seq));
    }

    /// Writes a name's own record (losses, owner): a few bytes, whatever
    /// its subscriptions.
    fn save_component(&self, inner: &Inner, name: &Arc<str>) {
        if let Some(c) = self.components.get(name) {
            let record = NameRecord {
                missed: c.missed,
                owner: c.owner.as_deref().map(str::to_string),
            };
            inner
                .store
                .write(Op::PutName(name.to_string(), store::encode(&record)));
        }
    }

    fn remove_exposer(&mut self, inner: &Inner, action: &str, id: u64) {
        if let Some(list) = self.exposers.get_mut(action) {
            list.retain(|x| *x != id);
            if list.is_empty() {
                self.exposers.remove(action);
                inner.exposed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn encode_body(value: &impl Serialize) -> Result<Body, Error> {
    use drs_core::Protocol;
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| Error::Encode(drs_core::EncodeError::new(e.to_string())))?;
    Ok(Body::from_raw(
        bytes.into(),
        drs_protocol_msgpack::MsgPack.body_format(),
    ))
}

/// Sends calls of exposed actions to an exposer, before any handler of
/// the server's own.
struct RouteLayer {
    broker: Broker,
}

impl Layer for RouteLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        if self.broker.inner.exposed.load(Ordering::Acquire) == 0
            || msg.action().starts_with("drs.")
        {
            return next.run(msg);
        }
        let Some((exposer, load)) = self.broker.exposer_for(msg.action(), msg.conn().id()) else {
            return next.run(msg);
        };
        Box::pin(async move {
            load.fetch_add(1, Ordering::AcqRel);
            let _done = Decrement(load);
            if msg.key().is_none() {
                return match exposer.fire(msg.action(), msg.body()).await {
                    Ok(()) => Outcome::value(()),
                    Err(e) => Outcome::error(e.to_string()),
                };
            }
            let timeout = msg.conn().config().call_timeout;
            match exposer
                .call::<Body>(msg.action(), msg.body())
                .timeout(timeout)
                .await
            {
                Ok(body) => Outcome::Body(body),
                Err(Error::Remote(r)) => Outcome::error(r.message),
                Err(Error::Exception(r)) => Outcome::exception(r.message),
                Err(Error::Closed) => Outcome::error("closed"),
                Err(Error::Timeout(d)) => Outcome::error(format!("timed out after {d:?}")),
                Err(e) => Outcome::error(e.to_string()),
            }
        })
    }
}

/// Answers a named peer's subscription changes once the store has them.
struct Durable {
    broker: Broker,
}

impl Layer for Durable {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let store = &self.broker.inner.store;
        let named = msg.conn().name().is_some() || msg.action() == drs_core::IDENTIFY;
        if !store.is_durable() || !named || msg.key().is_none() {
            return next.run(msg);
        }
        let broker = self.broker.clone();
        Box::pin(async move {
            let outcome = next.run(msg).await;
            match broker.inner.store.flush().await {
                Ok(()) => outcome,
                Err(e) => Outcome::exception(e.to_string()),
            }
        })
    }
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
