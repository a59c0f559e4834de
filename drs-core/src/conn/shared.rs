//! What a connection's handles and its driver share.

use super::*;

/// The outbound queue's byte count, shared by handles and the driver.
///
/// Frames queued by handles are counted as they enter the channel (an
/// atomic add) and leave the count when the driver takes them; frames the
/// driver makes itself (replies) are counted in a plain field of the
/// driver, published here once per wake-up: an inline reply costs no
/// atomic operation.
pub(crate) struct Outbound {
    /// Bytes in the channel from handles to the driver.
    pub(super) queued: AtomicUsize,
    /// Bytes in the driver's own queue, as last published.
    pub(super) driver: AtomicUsize,
    pub(super) limit: usize,
    pub(super) room: Notify,
}

impl Outbound {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            driver: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the queue is at or over its bound (one frame may pass it).
    pub(crate) fn is_full(&self) -> bool {
        self.bytes() >= self.limit
    }

    pub(crate) fn bytes(&self) -> usize {
        self.queued() + self.driver.load(Ordering::Relaxed)
    }

    /// Bytes in the channel from handles.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// `n` bytes joined the channel.
    pub(crate) fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes left the channel (taken by the driver, or never sent).
    pub(crate) fn sub(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        let driver = self.driver.load(Ordering::Relaxed);
        self.wake_if_room(before + driver, before.saturating_sub(n) + driver);
    }

    /// The driver's own queue now holds `n` bytes.
    pub(crate) fn publish(&self, n: usize) {
        let before = self.driver.swap(n, Ordering::Relaxed);
        let queued = self.queued();
        self.wake_if_room(before + queued, n + queued);
    }

    pub(super) fn wake_if_room(&self, before: usize, after: usize) {
        if before >= self.limit && after < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Waits until the queue is under its bound.
    async fn room(&self) {
        while self.is_full() {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

pub(super) static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Shared {
    pub(crate) id: u64,
    /// Makes handles on demand (for a command's `Msg`) without keeping the
    /// connection open: it closes when the last strong handle goes.
    pub(super) weak_tx: mpsc::WeakSender<Bytes>,
    pub(super) info: ConnInfo,
    pub(crate) protocol: Arc<dyn Protocol>,
    pub(crate) router: Arc<Router>,
    pub(crate) config: ConnConfig,
    pub(crate) pending: Pending,
    pub(super) next_key: AtomicU64,
    /// Cancelled to ask the driver to close.
    pub(crate) close: CancellationToken,
    /// Cancelled by the driver once the connection is closed.
    pub(crate) closed: CancellationToken,
    pub(crate) ext: Mutex<Extensions>,
    pub(crate) outbound: Outbound,
    /// Set by the driver when the connection ends; a close requested with
    /// a reason (a slow consumer) puts it here first.
    pub(crate) close_reason: Mutex<Option<CloseReason>>,
    /// Who the peer is, once authenticated.
    /// Bytes and frames moved, counted by the driver.
    pub(crate) io: crate::observe::IoCounters,
    /// What the connection holds against the server's memory budget.
    pub(crate) meter: crate::budget::ReadMeter,
}

impl Shared {
    /// Queues a frame, waiting for room in bytes and frames; fails with
    /// [`Error::Closed`] if the connection closes meanwhile.
    pub(crate) async fn send(&self, tx: &mpsc::Sender<Bytes>, frame: Bytes) -> Result<(), Error> {
        // The driver says the connection is closed before it drops its end
        // of the channel: a frame sent in between would vanish unreported.
        if self.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        if self.outbound.is_full() {
            tokio::select! {
                () = self.outbound.room() => {}
                () = self.closed.cancelled() => return Err(Error::Closed),
            }
        }
        let len = frame.len();
        self.outbound.add(len);
        tx.send(frame).await.map_err(|_| {
            self.outbound.sub(len);
            Error::Closed
        })
    }

    /// Asks the driver to close for `reason` (unless it is already ending).
    pub(crate) fn close_for(&self, reason: CloseReason) {
        lock(&self.close_reason).get_or_insert(reason);
        self.close.cancel();
    }
}
