//! Memory held on behalf of peers, counted in bytes: a [`MemoryBudget`] for
//! a whole server, a [`ReadMeter`] for each connection.

use std::{
    collections::HashMap,
    fmt, io,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
};

use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// The default server-wide memory budget: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 * 1024 * 1024;

/// A server-wide limit on the bytes held for peers. Cloning gives another
/// handle to the same budget.
///
/// What counts: bytes of frames a peer has started and not finished (held
/// by the transport's read buffer), commands read but waiting to be
/// served (behind an admission hook, or for an in-flight slot), and what
/// anything else keeps on a peer's behalf through a [`MemoryHold`]: the
/// items of a reply being collected, its subscriptions, a name's backlog.
/// Outbound bytes are bounded per connection by `ConnConfig::max_outbound`
/// instead.
///
/// Policy past the server-wide limit: the connections holding the most are
/// disconnected (their close reason is
/// [`CloseReason::BudgetExceeded`](crate::CloseReason)) until the total is
/// back under it. Reads never wait on the budget, so a new, well-behaved
/// client (whose frames arrive whole and hold nothing between reads) is
/// served while an offender is evicted.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    limit: usize,
    used: AtomicUsize,
    next_id: AtomicU64,
    meters: Mutex<HashMap<u64, Weak<MeterInner>>>,
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.inner.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                limit,
                used: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                meters: Mutex::default(),
            }),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes held now, by every connection together.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Holds `bytes` that belong to no connection (a name's state kept
    /// while it is away): refused, and nothing held, when the budget has
    /// no room for them. Released when the hold is dropped.
    pub fn try_hold(&self, bytes: usize) -> Result<MemoryHold, BudgetExceeded> {
        let mut hold = MemoryHold {
            owner: HoldOwner::Budget(self.inner.clone()),
            bytes: 0,
        };
        hold.try_grow(bytes)?;
        Ok(hold)
    }

    /// A meter for one new connection, charged against this budget.
    pub fn meter(&self) -> ReadMeter {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let meter = Arc::new(MeterInner {
            partial: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
            evicted: CancellationToken::new(),
            budget: Some((self.inner.clone(), id)),
        });
        lock(&self.inner.meters).insert(id, Arc::downgrade(&meter));
        ReadMeter { inner: meter }
    }
}

impl BudgetInner {
    fn charge(&self, delta: usize) {
        let used = self.used.fetch_add(delta, Ordering::Relaxed) + delta;
        if used > self.limit {
            self.evict(used - self.limit);
        }
    }

    fn release(&self, delta: usize) {
        self.used.fetch_sub(delta, Ordering::Relaxed);
    }

    /// Evicts the largest holders until `excess` bytes are accounted for.
    fn evict(&self, excess: usize) {
        let mut holders: Vec<Arc<MeterInner>> = lock(&self.meters)
            .values()
            .filter_map(Weak::upgrade)
            .filter(|m| !m.evicted.is_cancelled() && m.held() > 0)
            .collect();
        // Those already evicted free their bytes as soon as their
        // connection ends; count them as freed.
        holders.sort_by_key(|m| std::cmp::Reverse(m.held()));
        let mut freed = 0;
        for meter in holders {
            if freed >= excess {
                break;
            }
            freed += meter.held();
            tracing::warn!(
                held = meter.held(),
                limit = self.limit,
                "server memory budget exceeded; disconnecting the largest holder"
            );
            meter.evicted.cancel();
        }
    }
}

/// What one connection holds against a [`MemoryBudget`]: shared by its
/// transport (which reports the bytes of an unfinished frame) and its
/// driver (commands waiting to be served). Without a budget
/// ([`ReadMeter::default`]) it only counts, for the frame deadline.
#[derive(Clone, Default)]
pub struct ReadMeter {
    inner: Arc<MeterInner>,
}

#[derive(Default)]
struct MeterInner {
    partial: AtomicUsize,
    waiting: AtomicUsize,
    /// Held through [`MemoryHold`]s.
    kept: AtomicUsize,
    evicted: CancellationToken,
    budget: Option<(Arc<BudgetInner>, u64)>,
}

impl MeterInner {
    fn held(&self) -> usize {
        self.partial.load(Ordering::Relaxed)
            + self.waiting.load(Ordering::Relaxed)
            + self.kept.load(Ordering::Relaxed)
    }

    fn adjust(&self, old: usize, new: usize) {
        if let Some((budget, _)) = &self.budget {
            if new > old {
                budget.charge(new - old);
            } else {
                budget.release(old - new);
            }
        }
    }
}

impl Drop for MeterInner {
    fn drop(&mut self) {
        if let Some((budget, id)) = &self.budget {
            budget.release(self.held());
            lock(&budget.meters).remove(id);
        }
    }
}

impl fmt::Debug for ReadMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadMeter")
            .field("partial", &self.partial())
            .field("waiting", &self.inner.waiting.load(Ordering::Relaxed))
            .field("evicted", &self.is_evicted())
            .finish()
    }
}

impl ReadMeter {
    /// For transports: the bytes now held for a frame that has started and
    /// not finished (0 when none has).
    pub fn set_partial(&self, bytes: usize) {
        let old = self.inner.partial.swap(bytes, Ordering::Relaxed);
        if old != bytes {
            self.inner.adjust(old, bytes);
        }
    }

    /// For transports that count as they read: `bytes` more are held.
    pub fn add_partial(&self, bytes: usize) {
        self.inner.partial.fetch_add(bytes, Ordering::Relaxed);
        self.inner.adjust(0, bytes);
    }

    /// Bytes held for an unfinished frame.
    pub fn partial(&self) -> usize {
        self.inner.partial.load(Ordering::Relaxed)
    }

    /// Whether the budget disconnected this connection. A transport may
    /// stop reading at once ([`BudgetExceeded::io`]).
    pub fn is_evicted(&self) -> bool {
        self.inner.evicted.is_cancelled()
    }

    /// Holds `bytes` more on this connection's behalf (its subscriptions,
    /// a reply being collected): charged to the server's budget, which
    /// disconnects the connections holding the most when it is exceeded.
    /// Released when the hold is dropped, or as it shrinks.
    pub fn hold(&self, bytes: usize) -> MemoryHold {
        let mut hold = MemoryHold {
            owner: HoldOwner::Meter(self.inner.clone()),
            bytes: 0,
        };
        hold.grow(bytes);
        hold
    }

    pub(crate) fn add_waiting(&self, bytes: usize) {
        self.inner.waiting.fetch_add(bytes, Ordering::Relaxed);
        self.inner.adjust(0, bytes);
    }

    pub(crate) fn sub_waiting(&self, bytes: usize) {
        self.inner.waiting.fetch_sub(bytes, Ordering::Relaxed);
        self.inner.adjust(bytes, 0);
    }

    /// Bytes of commands waiting to be served.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn evicted(&self) -> CancellationToken {
        self.inner.evicted.clone()
    }
}

/// Bytes held on a peer's behalf ([`ReadMeter::hold`],
/// [`MemoryBudget::try_hold`]), counted against the server's budget until
/// dropped.
pub struct MemoryHold {
    owner: HoldOwner,
    bytes: usize,
}

enum HoldOwner {
    Meter(Arc<MeterInner>),
    Budget(Arc<BudgetInner>),
}

impl MemoryHold {
    /// A hold of nothing, on no budget (for what is not counted).
    pub fn none() -> Self {
        Self {
            owner: HoldOwner::Meter(Arc::default()),
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` more (a connection's hold: the budget may disconnect
    /// the largest holders; a budget hold: always taken, see
    /// [`try_grow`](MemoryHold::try_grow)).
    pub fn grow(&mut self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.bytes += bytes;
        match &self.owner {
            HoldOwner::Meter(m) => {
                m.kept.fetch_add(bytes, Ordering::Relaxed);
                m.adjust(0, bytes);
            }
            HoldOwner::Budget(b) => b.charge(bytes),
        }
    }

    /// Holds `bytes` more if the budget has room for them; otherwise
    /// nothing changes.
    pub fn try_grow(&mut self, bytes: usize) -> Result<(), BudgetExceeded> {
        let budget = match &self.owner {
            HoldOwner::Meter(m) => m.budget.as_ref().map(|(b, _)| b.clone()),
            HoldOwner::Budget(b) => Some(b.clone()),
        };
        if let Some(budget) = budget {
            let room = budget
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    (used + bytes <= budget.limit).then_some(used + bytes)
                });
            if room.is_err() {
                return Err(BudgetExceeded);
            }
        }
        self.bytes += bytes;
        if let HoldOwner::Meter(m) = &self.owner {
            m.kept.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Releases `bytes` of it.
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        match &self.owner {
            HoldOwner::Meter(m) => {
                m.kept.fetch_sub(bytes, Ordering::Relaxed);
                m.adjust(bytes, 0);
            }
            HoldOwner::Budget(b) => b.release(bytes),
        }
    }
}

impl Drop for MemoryHold {
    fn drop(&mut self) {
        self.shrink(self.bytes);
    }
}

impl fmt::Debug for MemoryHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHold")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The server's memory budget disconnected this connection: transports
/// report it as an [`io::Error`] wrapping this type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server's memory budget is exceeded")]
pub struct BudgetExceeded;

impl BudgetExceeded {
    /// Wraps this error in an `io::Error` of kind `OutOfMemory`.
    pub fn io() -> io::Error {
        io::Error::new(io::ErrorKind::OutOfMemory, BudgetExceeded)
    }

    /// Whether an `io::Error` is this one.
    pub fn find(err: &io::Error) -> bool {
        err.get_ref()
            .is_some_and(|e| e.downcast_ref::<BudgetExceeded>().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_holders_are_evicted_past_the_limit() {
        let budget = MemoryBudget::new(100);
        let (a, b, c) = (budget.meter(), budget.meter(), budget.meter());
        a.set_partial(30);
        b.set_partial(50);
        c.add_waiting(10);
        assert_eq!(budget.used(), 90);
        assert!(!a.is_evicted() && !b.is_evicted() && !c.is_evicted());
        a.set_partial(45); // 105 > 100: b, the largest, goes
        assert!(b.is_evicted());
        assert!(!a.is_evicted() && !c.is_evicted());
        drop(b);
        assert_eq!(budget.used(), 55);
        c.sub_waiting(10);
        a.set_partial(0);
        assert_eq!(budget.used(), 0);
        // A meter without a budget only counts.
        let free = ReadMeter::default();
        free.set_partial(1 << 40);
        assert!(!free.is_evicted());
    }

    #[test]
    fn holds_count_and_evict_like_frames() {
        let budget = MemoryBudget::new(100);
        let (a, b) = (budget.meter(), budget.meter());
        let mut kept = a.hold(40);
        b.set_partial(30);
        assert_eq!(budget.used(), 70);
        kept.grow(40); // 110 > 100: a, holding 80, goes
        assert!(a.is_evicted() && !b.is_evicted());
        kept.shrink(50);
        assert_eq!((kept.bytes(), budget.used()), (30, 60));
        drop(kept);
        assert_eq!(budget.used(), 30);
        // A hold of no connection is refused past the limit, whole.
        let mut away = budget.try_hold(60).expect("room");
        assert_eq!(budget.used(), 90);
        assert!(budget.try_hold(11).is_err());
        assert!(away.try_grow(11).is_err());
        assert_eq!((away.bytes(), budget.used()), (60, 90));
        away.try_grow(10).expect("room");
        drop(away);
        assert_eq!(budget.used(), 30);
        assert_eq!(MemoryHold::none().bytes(), 0);
    }
}
