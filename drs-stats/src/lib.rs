//! What a server is doing, beside the drs kernel: per action, calls by
//! outcome, calls in flight and a latency histogram; per server,
//! connections by transport and protocol, bytes and frames each way,
//! disconnects by reason, and the sections other crates add (the broker's
//! topics and store). [`Stats::install`] puts it on a [`Server`] (as its
//! [`Observer`]) and serves the built-in `drs.stats` action; the
//! dashboard and `/metrics` (`drs-metrics`) read it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let server = drs_core::Server::new();
//! let stats = drs_stats::Stats::install(&server);
//! assert_eq!(stats.accepted(), 0);
//! # }
//! ```
//!
//! The cost per command is a few uncontended-or-shared atomic additions;
//! the kernel keeps each action's counters per connection, so there is no
//! lookup. `drs-bench` measures it (README; `DRS_BENCH_STATS=0` runs the
//! servers without).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value};

use drs_core::{ActionObserver, Conn, HandlerError, Io, Observer, Outcome, Server, WeakServer};

/// The built-in action answering [`Stats::snapshot`].
pub const STATS: &str = "drs.stats";

/// Actions with a handler counted on their own; commands for others (or
/// past this many) are counted together under [`OTHER`].
pub const MAX_ACTIONS: usize = 1024;

/// The name under which commands for actions without a handler are
/// counted (a peer cannot grow the table by inventing actions).
pub const OTHER: &str = "(other)";

/// Latency buckets: 4 per power of two of microseconds, from 1 µs to
/// 2^36 µs (19 hours); the last is open-ended.
const OCTAVES: usize = 35;
const BUCKETS: usize = 4 + OCTAVES * 4;

/// The bucket of a latency of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // ≥ 2
    let sub = ((us >> (octave - 2)) & 3) as usize;
    (4 + (octave - 2) * 4 + sub).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i`, in microseconds.
fn upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let octave = (i - 4) / 4 + 2;
    let sub = ((i - 4) % 4) as u64;
    (5 + sub) << (octave - 2)
}

/// A latency histogram of atomic counters.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one latency.
    pub fn record(&self, us: u64) {
        self.buckets[bucket(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        // A load first: a new maximum is rare, and fetch_max is a
        // compare-and-swap loop.
        if us > self.max_us.load(Relaxed) {
            self.max_us.fetch_max(us, Relaxed);
        }
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The sum of the recorded latencies, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// The largest recorded latency, in microseconds.
    pub fn max_us(&self) -> u64 {
        self.max_us.load(Relaxed)
    }

    /// The latency at quantile `q` (0 to 1), in microseconds: the upper
    /// bound of its bucket (within 25% above the true value), capped at
    /// the maximum seen; 0 with nothing recorded.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper(i).min(self.max_us()).max(1);
            }
        }
        self.max_us()
    }

    /// Cumulative counts at upper bounds that are powers of two of
    /// microseconds (`le` in microseconds, count of latencies below it),
    /// every `step` octaves; the last bound holds everything.
    pub fn cumulative(&self, step: usize) -> Vec<(u64, u64)> {
        let step = step.max(1);
        let mut out = Vec::new();
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            let bound = upper(i);
            // Octave boundaries: powers of two, where sub-bucket 3 ends.
            let at_octave = i >= 3 && (i < 4 || (i - 4) % 4 == 3);
            if at_octave && (bound.trailing_zeros() as usize) % step == 0 {
                out.push((bound, seen));
            }
        }
        if let Some(last) = out.last_mut() {
            last.1 = seen;
        }
        out
    }
}

/// The counters of one action.
#[derive(Debug, Default)]
pub struct ActionStats {
    /// Commands served (calls and fires), counted when they end.
    pub ok: AtomicU64,
    /// Answered with `drs.error`.
    pub errors: AtomicU64,
    /// Answered with `drs.exception` (a panic, a handler deadline).
    pub exceptions: AtomicU64,
    /// Cancelled (`drs.cancel`, or the connection ended) before the
    /// handler finished.
    pub cancelled: AtomicU64,
    /// Running now.
    pub in_flight: AtomicI64,
    /// How long they took, from dispatch to outcome.
    pub latency: Histogram,
}

impl ActionStats {
    /// Every command that ended, whatever its outcome.
    pub fn calls(&self) -> u64 {
        self.ok.load(Relaxed)
            + self.errors.load(Relaxed)
            + self.exceptions.load(Relaxed)
            + self.cancelled.load(Relaxed)
    }

    fn json(&self) -> Value {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        let lat = &self.latency;
        let count = lat.count();
        json!({
            "calls": self.calls(),
            "ok": self.ok.load(Relaxed),
            "errors": self.errors.load(Relaxed),
            "exceptions": self.exceptions.load(Relaxed),
            "cancelled": self.cancelled.load(Relaxed),
            "in_flight": self.in_flight.load(Relaxed).max(0),
            "p50_ms": ms(lat.quantile_us(0.5)),
            "p90_ms": ms(lat.quantile_us(0.9)),
            "p99_ms": ms(lat.quantile_us(0.99)),
            "max_ms": ms(lat.max_us()),
            "mean_ms": lat.sum_us().checked_div(count).map_or(0.0, ms),
        })
    }
}

type Source = Arc<dyn Fn() -> Value + Send + Sync>;

struct Inner {
    started: Instant,
    actions: RwLock<HashMap<Arc<str>, Arc<ActionStats>>>,
    other: Arc<ActionStats>,
    accepted: AtomicU64,
    disconnects: Mutex<BTreeMap<String, u64>>,
    retired: Mutex<Io>,
}

/// The sections added to a server's snapshot ([`section`]), kept in the
/// server's extensions so that the order of installation does not matter.
#[derive(Clone, Default)]
struct Sections(Arc<RwLock<Vec<(String, Source)>>>);

/// A server's statistics (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct Stats {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                actions: RwLock::default(),
                other: Arc::default(),
                accepted: AtomicU64::new(0),
                disconnects: Mutex::default(),
                retired: Mutex::default(),
            }),
        }
    }

    /// The statistics of `server`, installed on first use: from then on
    /// every connection it accepts is counted, and `drs.stats` answers
    /// [`snapshot`](Stats::snapshot). Install before listening: the
    /// connections accepted earlier are not counted. Returns the
    /// installed statistics when called again.
    ///
    /// If the server already had another [`Observer`], these statistics
    /// are returned but count nothing.
    pub fn install(server: &Server) -> Stats {
        let (stats, new) = server.with_extensions(|ext| match ext.get::<Stats>() {
            Some(stats) => (stats.clone(), false),
            None => {
                let stats = Stats::new();
                ext.insert(stats.clone());
                (stats, true)
            }
        });
        if new {
            if !server.observe(stats.clone()) {
                tracing::warn!("the server already has an observer: drs.stats counts nothing");
            }
            let weak: WeakServer = server.downgrade();
            server.on(STATS, move || {
                let snapshot = weak
                    .upgrade()
                    .and_then(|server| Some(Stats::get(&server)?.snapshot(&server)));
                async move { snapshot.ok_or_else(|| HandlerError::new("the server is gone")) }
            });
        }
        stats
    }

    /// The statistics [`install`](Stats::install)ed on `server`, if any.
    pub fn get(server: &Server) -> Option<Stats> {
        server.get::<Stats>()
    }

    /// The counters of `action` (created for an action with a handler,
    /// up to [`MAX_ACTIONS`]; others share [`OTHER`]'s).
    fn action(&self, action: &str, routed: bool) -> Arc<ActionStats> {
        if !routed {
            return self.inner.other.clone();
        }
        if let Some(s) = read(&self.inner.actions).get(action) {
            return s.clone();
        }
        let mut actions = self
            .inner
            .actions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if actions.len() >= MAX_ACTIONS && !actions.contains_key(action) {
            return self.inner.other.clone();
        }
        actions.entry(action.into()).or_default().clone()
    }

    /// The counters of `action`, if it was seen.
    pub fn of(&self, action: &str) -> Option<Arc<ActionStats>> {
        if action == OTHER {
            return Some(self.inner.other.clone());
        }
        read(&self.inner.actions).get(action).cloned()
    }

    /// Every action seen, with its counters (and [`OTHER`]'s when any
    /// command went there), sorted by name.
    pub fn actions(&self) -> Vec<(String, Arc<ActionStats>)> {
        let mut all: Vec<(String, Arc<ActionStats>)> = read(&self.inner.actions)
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if self.inner.other.calls() > 0 || self.inner.other.in_flight.load(Relaxed) > 0 {
            all.push((OTHER.to_string(), self.inner.other.clone()));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Seconds since the statistics began.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Connections admitted since the start.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Relaxed)
    }

    /// Disconnects since the start, by close reason.
    pub fn disconnects(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.disconnects).clone()
    }

    /// Bytes and frames of the ended connections and of `live`.
    pub fn io<'c>(&self, live: impl IntoIterator<Item = &'c Conn>) -> Io {
        let mut totals = *lock(&self.inner.retired);
        for conn in live {
            totals += conn.io();
        }
        totals
    }

    /// Everything, as `drs.stats` answers it: `uptime_s`, `actions` (per
    /// action: `calls`, `ok`, `errors`, `exceptions`, `cancelled`,
    /// `in_flight`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms`, `mean_ms`),
    /// `connections` (`live`, `by_transport`, `by_protocol`, `accepted`,
    /// `disconnects` by reason), `io` (bytes and frames each way), and the
    /// [`section`]s added to `server`.
    pub fn snapshot(&self, server: &Server) -> Value {
        let live = server.connections();
        let mut out = self.snapshot_of(&live);
        let sections = server.get::<Sections>().unwrap_or_default();
        let sections = read(&sections.0).clone();
        for (name, f) in sections {
            out[name] = f();
        }
        out
    }

    /// [`snapshot`](Stats::snapshot) over the connections `live`, without
    /// sections.
    pub fn snapshot_of(&self, live: &[Conn]) -> Value {
        let mut actions = Map::new();
        for (name, s) in self.actions() {
            actions.insert(name, s.json());
        }
        let mut by_transport: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_protocol: BTreeMap<&str, u64> = BTreeMap::new();
        for conn in live {
            *by_transport.entry(conn.info().transport).or_default() += 1;
            *by_protocol.entry(conn.protocol().name()).or_default() += 1;
        }
        let io = self.io(live);
        let out = json!({
            "uptime_s": (self.uptime().as_secs_f64() * 1000.0).round() / 1000.0,
            "actions": actions,
            "connections": {
                "live": live.len(),
                "by_transport": by_transport,
                "by_protocol": by_protocol,
                "accepted": self.accepted(),
                "disconnects": self.disconnects(),
            },
            "io": {
                "bytes_in": io.bytes_in,
                "bytes_out": io.bytes_out,
                "frames_in": io.frames_in,
                "frames_out": io.frames_out,
            },
        });
        out
    }
}

/// Adds a section to `server`'s [`Stats::snapshot`] under `name`, computed
/// when asked (the broker adds its topics and store); whether or when the
/// statistics are installed does not matter. Adding a name again replaces
/// it.
pub fn section(
    server: &Server,
    name: impl Into<String>,
    f: impl Fn() -> Value + Send + Sync + 'static,
) {
    let name = name.into();
    let sections = server.with_extensions(|ext| {
        if ext.get::<Sections>().is_none() {
            ext.insert(Sections::default());
        }
        ext.get::<Sections>().cloned().unwrap_or_default()
    });
    let mut sections = sections.0.write().unwrap_or_else(|e| e.into_inner());
    sections.retain(|(n, _)| *n != name);
    sections.push((name, Arc::new(f)));
}

/// What a server says of itself in its statistics (section `server`):
/// its name and the URLs it listens on, as the dashboard's header shows
/// them. Listeners are added as they are bound.
#[derive(Clone, Debug)]
pub struct ServerInfo(Arc<std::sync::Mutex<(String, Vec<String>)>>);

impl ServerInfo {
    /// Names `server` in its statistics; see [`listening`](Self::listening).
    pub fn install(server: &Server, name: impl Into<String>) -> ServerInfo {
        let info = ServerInfo(Arc::new(std::sync::Mutex::new((name.into(), Vec::new()))));
        let shown = info.clone();
        section(server, "server", move || {
            let (name, listeners) = &*shown.0.lock().unwrap_or_else(|e| e.into_inner());
            json!({ "name": name, "listeners": listeners })
        });
        info
    }

    /// Adds a listener's URL.
    pub fn listening(&self, url: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .push(url.into());
    }
}

impl Observer for Stats {
    fn action(&self, action: &str, routed: bool) -> Arc<dyn ActionObserver> {
        Stats::action(self, action, routed)
    }

    fn connected(&self, _: &Conn) {
        self.inner.accepted.fetch_add(1, Relaxed);
    }

    /// Its bytes and frames join the totals, its close reason the
    /// disconnect counts.
    fn disconnected(&self, conn: &Conn, admitted: bool) {
        *lock(&self.inner.retired) += conn.io();
        if admitted {
            let reason = conn
                .close_reason()
                .map_or_else(|| "closed".to_string(), |r| r.name().to_string());
            *lock(&self.inner.disconnects).entry(reason).or_default() += 1;
        }
    }
}

impl ActionObserver for ActionStats {
    fn started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    fn ended(&self, elapsed: Duration, outcome: Option<&Outcome>, in_flight: bool) {
        self.latency.record(elapsed.as_micros() as u64);
        let counter = match outcome {
            None => &self.cancelled,
            Some(Outcome::Error(m)) if m == drs_core::CANCELLED => &self.cancelled,
            Some(Outcome::Error(_)) => &self.errors,
            Some(Outcome::Exception(_)) => &self.exceptions,
            Some(_) => &self.ok,
        };
        counter.fetch_add(1, Relaxed);
        if in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        for us in (0..5000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX / 2]) {
            let i = bucket(us);
            assert!(us < upper(i) || i == BUCKETS - 1, "{us} in bucket {i}");
            if i > 0 {
                assert!(us >= upper(i - 1), "{us} below bucket {i}");
            }
        }
        for i in 1..BUCKETS {
            assert!(upper(i) > upper(i - 1));
        }
    }

    #[test]
    fn quantiles_and_cumulative_counts() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), 0);
        for us in 1..=100 {
            h.record(us * 10);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.max_us(), 1000);
        assert_eq!(h.sum_us(), 50_500);
        let p50 = h.quantile_us(0.5);
        assert!((500..=640).contains(&p50), "{p50}");
        assert_eq!(h.quantile_us(1.0), 1000);
        let cum = h.cumulative(2);
        assert!(cum.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cum.last().unwrap().1, 100);
        // 10..=60 µs are below 64 µs.
        assert_eq!(cum.iter().find(|(le, _)| *le == 64).unwrap().1, 6);
    }
}
