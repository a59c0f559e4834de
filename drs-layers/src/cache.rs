//! [`Cache`]: successful results kept for a while, one execution for
//! concurrent identical calls.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use bytes::Bytes;
use drs_core::{Body, Layer, Msg, Next, Outcome, ReplyFuture};
use futures::{
    future::{BoxFuture, Shared, WeakShared},
    FutureExt,
};
use tokio::time::Instant;

/// Keeps each successful result for a TTL, keyed by the action and the
/// body's bytes (and the body's encoding), and answers identical calls
/// from it: Cerbas's per-function cache.
///
/// - Only successful results are kept; errors and exceptions are not.
/// - **Single flight:** calls identical to one being computed wait for it
///   and get its outcome (its error too), rather than running the handler
///   again. If every caller waiting for it cancels, the execution is
///   dropped and the next call starts afresh.
/// - **Bounded:** at most `max_entries` results (default 1024) and
///   `max_bytes` bytes of keys and results (default 16 MiB); past either
///   the oldest go first. A result larger than `max_bytes` is not kept.
/// - Fires and calls that asked for a streamed reply pass through
///   uncached.
///
/// One `Cache` added with `Server::layer_for` is server-wide; clones share
/// it. The clock is Tokio's, so tests can pause it.
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    action: String,
    format: &'static str,
    body: Bytes,
}

impl Key {
    fn of(msg: &Msg) -> Self {
        let (body, format) = match msg.body().raw() {
            Some((bytes, format)) => (bytes.clone(), format.name()),
            None => (Bytes::new(), ""),
        };
        Key {
            action: msg.action().to_owned(),
            format,
            body,
        }
    }

    fn size(&self) -> usize {
        self.action.len() + self.body.len()
    }
}

/// What a computation gave: what every caller waiting for it is answered.
#[derive(Debug, Clone)]
enum Cached {
    Value(Body),
    Error(String),
    Exception(String),
}

impl Cached {
    fn into_outcome(self) -> Outcome {
        match self {
            Cached::Value(body) => Outcome::value(body),
            Cached::Error(m) => Outcome::error(m),
            Cached::Exception(m) => Outcome::exception(m),
        }
    }
}

type Flight = Shared<BoxFuture<'static, Cached>>;

enum Entry {
    Ready {
        body: Body,
        expires: Instant,
        size: usize,
        generation: u64,
    },
    Running(WeakShared<BoxFuture<'static, Cached>>),
}

#[derive(Default)]
struct State {
    map: HashMap<Key, Entry>,
    /// Kept results in the order they were stored (so by expiry too):
    /// key, generation, expiry. Records of replaced entries are skipped.
    order: VecDeque<(Key, u64, Instant)>,
    ready: usize,
    bytes: usize,
    generation: u64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("entries", &self.ready)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Removes the kept result under `key`, if any.
    fn remove_ready(&mut self, key: &Key) {
        if let Some(Entry::Ready { size, .. }) = self.map.get(key) {
            self.bytes -= size;
            self.ready -= 1;
            self.map.remove(key);
        }
    }

    /// Drops the oldest records while `over` holds or they have expired.
    fn trim(&mut self, now: Instant, max_entries: usize, max_bytes: usize) {
        while let Some((key, generation, expires)) = self.order.front() {
            let over = self.ready > max_entries || self.bytes > max_bytes;
            if !over && *expires > now {
                break;
            }
            let current = matches!(
                self.map.get(key),
                Some(Entry::Ready { generation: g, .. }) if g == generation
            );
            let key = key.clone();
            self.order.pop_front();
            if current {
                self.remove_ready(&key);
            }
        }
    }
}

impl Cache {
    /// A cache keeping results for `ttl`, with the default bounds.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                max_entries: 1024,
                max_bytes: 16 * 1024 * 1024,
                state: Mutex::default(),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    /// Sets the most results kept (default 1024). Call before sharing.
    pub fn max_entries(self, n: usize) -> Self {
        self.reconfigure(|i| i.max_entries = n)
    }

    /// Sets the most bytes of keys and results kept (default 16 MiB).
    /// Call before sharing.
    pub fn max_bytes(self, n: usize) -> Self {
        self.reconfigure(|i| i.max_bytes = n)
    }

    fn reconfigure(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            ttl: shared.ttl,
            max_entries: shared.max_entries,
            max_bytes: shared.max_bytes,
            state: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Results kept now.
    pub fn len(&self) -> usize {
        self.inner.lock().ready
    }

    /// Whether no result is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs under way (one per distinct call being computed).
    pub fn running(&self) -> usize {
        self.inner
            .lock()
            .map
            .values()
            .filter(|e| matches!(e, Entry::Running(w) if w.upgrade().is_some()))
            .count()
    }

    /// Bytes of keys and results kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Calls answered from a kept result.
    pub fn hits(&self) -> u64 {
        self.inner.hits.load(Ordering::Relaxed)
    }

    /// Calls that ran the handler (or waited for a run already under way).
    pub fn misses(&self) -> u64 {
        self.inner.misses.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what a run gave: keeps a value, forgets the run otherwise.
    fn store(&self, key: &Key, cached: &Cached) {
        let now = Instant::now();
        let mut st = self.lock();
        st.remove_ready(key);
        let Cached::Value(body) = cached else {
            st.map.remove(key);
            return;
        };
        let size = key.size() + body.raw().map_or(0, |(b, _)| b.len());
        if size > self.max_bytes || self.max_entries == 0 {
            st.map.remove(key);
            return;
        }
        st.generation += 1;
        let generation = st.generation;
        let expires = now + self.ttl;
        st.map.insert(
            key.clone(),
            Entry::Ready {
                body: body.clone(),
                expires,
                size,
                generation,
            },
        );
        st.order.push_back((key.clone(), generation, expires));
        st.ready += 1;
        st.bytes += size;
        st.trim(now, self.max_entries, self.max_bytes);
    }
}

/// A caller waiting for a run: when it goes (answered or cancelled) and no
/// one else waits, a run that did not finish is forgotten.
struct Waiter {
    flight: Option<Flight>,
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.flight.take());
        let mut st = self.inner.lock();
        if let Some(Entry::Running(weak)) = st.map.get(&self.key) {
            if weak.upgrade().is_none() {
                st.map.remove(&self.key);
            }
        }
    }
}

impl Layer for Cache {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        if msg.key().is_none() || msg.wants_stream() {
            return next.run(msg);
        }
        let inner = self.inner.clone();
        let key = Key::of(&msg);
        let now = Instant::now();
        let flight = {
            let mut st = inner.lock();
            let running = match st.map.get(&key) {
                Some(Entry::Ready { body, expires, .. }) if *expires > now => {
                    inner.hits.fetch_add(1, Ordering::Relaxed);
                    return Box::pin(std::future::ready(Outcome::value(body.clone())));
                }
                Some(Entry::Running(weak)) => weak.upgrade(),
                _ => None,
            };
            inner.misses.fetch_add(1, Ordering::Relaxed);
            running.unwrap_or_else(|| {
                st.remove_ready(&key);
                let flight = run(inner.clone(), key.clone(), msg, next).boxed().shared();
                if let Some(weak) = flight.downgrade() {
                    st.map.insert(key.clone(), Entry::Running(weak));
                }
                flight
            })
        };
        let mut waiter = Waiter {
            flight: Some(flight),
            inner,
            key,
        };
        Box::pin(async move {
            let flight = waiter.flight.as_mut().expect("set until dropped");
            flight.await.into_outcome()
        })
    }
}

/// Runs the handler once for everyone waiting, and records the result.
async fn run(inner: Arc<Inner>, key: Key, msg: Msg, next: Next) -> Cached {
    let cached = match next.run(msg.clone()).await {
        Outcome::Body(body) => Cached::Value(body),
        Outcome::Value(value) => match msg.encode_body(&*value) {
            Ok(body) => Cached::Value(body),
            Err(e) => Cached::Exception(format!("failed to encode the reply: {e}")),
        },
        Outcome::Error(m) => Cached::Error(m),
        Outcome::Exception(m) => Cached::Exception(m),
        other => Cached::Exception(format!("unexpected outcome {other:?}")),
    };
    inner.store(&key, &cached);
    cached
}
