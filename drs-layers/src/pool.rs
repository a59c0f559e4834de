//! [`Pool`]: a bound on the handlers of an action running at once.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use drs_core::{Layer, Msg, Next, Outcome, ReplyFuture};
use tokio::sync::Semaphore;

/// At most `running` handlers run at once and at most `queued` callers wait
/// for a slot, in arrival order; a caller past that gets `drs.error`
/// "queue full" at once and its handler never runs.
///
/// A waiting caller that cancels (`drs.cancel`, or its connection ends)
/// leaves the queue at once. The bound is on the handlers this layer wraps,
/// across every connection that reaches it: one `Pool` added with
/// `Server::layer_for` is the action's pool server-wide; clones share it.
///
/// A pool counts handlers, not connections: a waiting call also holds one
/// of its connection's in-flight slots (`ConnConfig::max_in_flight`).
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Semaphore,
    running: usize,
    waiting: AtomicUsize,
    queue_limit: usize,
}

/// The message of the `drs.error` for a caller past the queue limit.
pub const QUEUE_FULL: &str = "queue full";

impl Pool {
    /// A pool of `running` slots (at least 1) and a queue of `queued`.
    pub fn new(running: usize, queued: usize) -> Self {
        let running = running.max(1);
        Self {
            inner: Arc::new(Inner {
                slots: Semaphore::new(running),
                running,
                waiting: AtomicUsize::new(0),
                queue_limit: queued,
            }),
        }
    }

    /// Handlers running now.
    pub fn running(&self) -> usize {
        self.inner.running - self.inner.slots.available_permits()
    }

    /// Callers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Acquire)
    }
}

/// Leaves the queue when dropped: served, or cancelled while waiting.
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Layer for Pool {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let _slot = match inner.slots.try_acquire() {
                Ok(slot) => slot,
                Err(_) => {
                    let queued = inner.waiting.fetch_add(1, Ordering::AcqRel);
                    let in_queue = InQueue(&inner.waiting);
                    if queued >= inner.queue_limit {
                        return Outcome::error(QUEUE_FULL);
                    }
                    let slot = inner.slots.acquire().await;
                    drop(in_queue);
                    match slot {
                        Ok(slot) => slot,
                        Err(_) => return Outcome::exception("the pool is closed"),
                    }
                }
            };
            next.run(msg).await
        })
    }
}
