//! What the broker holds, under one lock: components (named
//! subscribers), connections, subscriptions, stored messages; and what
//! each costs against the memory budget.

use super::*;

/// What a stored message costs besides its body: its record, its log
/// and topic entries.
pub(super) const MESSAGE_OVERHEAD: usize = 160;

/// What one (name, message) pair costs: the name's pending entry.
pub(super) const PAIR_OVERHEAD: usize = 64;

/// What a name costs besides its subscriptions.
pub(super) const NAME_OVERHEAD: usize = 256;

/// What one trie level of a subscription costs at most (a node and its
/// map entry).
pub(super) const LEVEL_OVERHEAD: usize = std::mem::size_of::<TopicTrie<Sub>>() + 96;

/// The memory a subscription to `pattern` takes at most: its text (kept
/// twice: by its owner and in the trie) and a trie node per segment.
pub(super) fn subscription_cost(pattern: &str) -> usize {
    2 * pattern.len() + (pattern.matches('.').count() + 1) * LEVEL_OVERHEAD
}

/// Subscriptions past which matching a publication (and waiting for the
/// broker's lock to do it) leaves the runtime's threads
/// (`block_in_place`), so that a peer's many patterns never stall
/// unrelated work.
pub(super) const HEAVY: usize = 4096;

/// Runs `f` off the runtime's worker threads when `heavy` and the runtime
/// can (a multi-threaded one); here otherwise.
pub(super) fn off_runtime<R>(heavy: bool, f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Who a subscription belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Owner {
    /// An unnamed connection: gone with it.
    Conn(u64),
    /// A name: kept across its connections.
    Name(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Sub {
    pub(super) owner: Owner,
    pub(super) retroactive: bool,
}

/// A stored (retroactive) publication.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) topic: Arc<str>,
    pub(super) body: Body,
    /// Receive time, ns since the epoch.
    pub(super) time: u64,
    pub(super) size: usize,
}

pub(super) struct LogEntry {
    pub(super) msg: Arc<Stored>,
    /// Names still to receive it.
    pub(super) holders: u32,
}

#[derive(Default)]
pub(super) struct TopicLog {
    pub(super) seqs: std::collections::VecDeque<u64>,
    pub(super) bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PatternInfo {
    pub(super) retroactive: bool,
    /// How far back what was missed is still wanted when the name comes
    /// back; `None`: all that is kept.
    pub(super) window: Option<Duration>,
}

pub(super) struct Component {
    /// The live connection holding the name.
    pub(super) conn: Option<Conn>,
    /// The identity that claimed the name; only it may take it again.
    pub(super) owner: Option<Arc<str>>,
    pub(super) patterns: BTreeMap<String, PatternInfo>,
    pub(super) pending: BTreeMap<u64, Arc<Stored>>,
    pub(super) pending_bytes: usize,
    pub(super) inflight: BTreeSet<u64>,
    /// Dropped and not yet reported.
    pub(super) missed: u64,
    /// A `drs.missed` report is on its way.
    pub(super) reporting: bool,
    pub(super) wake: Arc<Notify>,
    /// Rembus: hold deliveries until the peer says it is ready.
    pub(super) held: bool,
    /// Deliveries are fires, done once sent (Rembus QoS 0).
    pub(super) unacknowledged: bool,
    /// What the name and its subscriptions take, on the server's budget.
    pub(super) hold: MemoryHold,
}

impl Component {
    pub(super) fn new(inner: &Inner, name: &str) -> Self {
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
    pub(super) fn drop_inflight(&mut self) {
        let lost = self
            .inflight
            .iter()
            .filter(|s| !self.pending.contains_key(s))
            .count();
        self.missed += lost as u64;
        self.inflight.clear();
    }

    pub(super) fn has_state(&self) -> bool {
        !self.patterns.is_empty() || !self.pending.is_empty() || self.missed > 0
    }

    /// Whether a message it missed is within the window of one of its
    /// retroactive patterns that match it.
    pub(super) fn wants_missed(&self, m: &Stored, now: u64) -> bool {
        let age = now.saturating_sub(m.time);
        self.patterns.iter().any(|(p, i)| {
            i.retroactive
                && matches(p, &m.topic)
                && i.window.is_none_or(|w| age <= w.as_nanos() as u64)
        })
    }

    pub(super) fn wants_retroactive(&self, topic: &str) -> bool {
        self.patterns
            .iter()
            .any(|(p, i)| i.retroactive && matches(p, topic))
    }
}

#[derive(Default)]
pub(super) struct ConnState {
    /// Subscriptions of an unnamed connection.
    pub(super) patterns: HashSet<String>,
    pub(super) exposed: HashSet<String>,
    /// Calls relayed to this connection as an exposer, not yet answered.
    pub(super) relaying: Arc<AtomicUsize>,
    /// Live deliveries held back until the peer is ready (Rembus).
    pub(super) held: bool,
    /// Retroactive deliveries are fires, done once sent.
    pub(super) unacknowledged: bool,
    /// What its subscriptions take, on its connection's memory budget.
    pub(super) hold: Option<MemoryHold>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) trie: TopicTrie<Sub>,
    pub(super) conns: HashMap<u64, (Conn, ConnState)>,
    pub(super) components: HashMap<Arc<str>, Component>,
    pub(super) exposers: HashMap<String, Vec<u64>>,
    pub(super) rr: usize,
    pub(super) log: BTreeMap<u64, LogEntry>,
    pub(super) topics: HashMap<Arc<str>, TopicLog>,
    pub(super) next_seq: u64,
    /// Bytes of bodies in `log`.
    pub(super) stored_bytes: usize,
    /// (name, message) pairs: messages some name has still to receive.
    pub(super) pairs: usize,
    /// What the stored messages take, on the server's memory budget.
    pub(super) kept: Option<MemoryHold>,
}

pub(super) struct Inner {
    pub(super) config: BrokerConfig,
    /// The server's memory budget: names, subscriptions and backlogs are
    /// held on it.
    pub(super) budget: drs_core::MemoryBudget,
    pub(super) state: Mutex<State>,
    pub(super) store: Store,
    /// Actions with at least one exposer (the layer's fast path).
    pub(super) exposed: AtomicUsize,
    /// More than [`HEAVY`] subscriptions: a publication's matching, and
    /// its wait for the lock, run off the runtime's threads.
    pub(super) heavy: std::sync::atomic::AtomicBool,
    /// The delivery tasks of named subscribers.
    pub(super) tasks: tokio_util::task::TaskTracker,
    /// Whether the server handles an action itself (exposing it is then
    /// an override).
    pub(super) server: std::sync::OnceLock<drs_core::WeakServer>,
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
