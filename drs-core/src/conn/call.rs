//! [`Call`] and [`SentCall`]: a call on its way, and one already sent.

use super::*;

/// A call on its way: await it for the reply. See [`Conn::call`].
#[must_use = "a call does nothing unless awaited"]
pub struct Call<R> {
    pub(super) conn: Conn,
    pub(super) prepared: Result<(u64, Bytes), Error>,
    pub(super) timeout: Duration,
    pub(super) _reply: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("conn", &self.conn.id())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<R> Call<R> {
    /// Sets this call's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

type ReplyRx = tokio::sync::oneshot::Receiver<Result<Reply, Error>>;

impl<R: FromBody + Send + 'static> Call<R> {
    /// Sends the call (waiting for room in the outbound queue) and returns
    /// once it is queued, with a [`SentCall`] to await for the reply.
    /// Calls sent one after another this way leave in that order, and
    /// their replies can be awaited together: a pipeline. The call's
    /// timeout covers both waits.
    pub async fn send(self) -> Result<SentCall<R>, Error> {
        let timeout = self.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (guard, rx) = tokio::time::timeout_at(deadline, self.start())
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        Ok(SentCall {
            guard,
            rx,
            deadline,
            timeout,
            _reply: PhantomData,
        })
    }

    /// Registers the call and queues its frame.
    async fn start(self) -> Result<(PendingGuard, ReplyRx), Error> {
        let (key, frame) = self.prepared?;
        let conn = self.conn;
        let rx = conn.shared.pending.register(key)?;
        let mut guard = PendingGuard {
            conn,
            key,
            armed: true,
            sent: false,
        };
        guard.conn.shared.send(&guard.conn.tx, frame).await?;
        guard.sent = true;
        Ok((guard, rx))
    }
}

/// Waits for the reply of a sent call. Dropped before it, the guard
/// cancels the call.
async fn reply<R: FromBody>(mut guard: PendingGuard, rx: ReplyRx) -> Result<R, Error> {
    let reply = rx.await.map_err(|_| Error::Closed)?;
    // Answered (perhaps by a reply that did not decode): nothing to cancel.
    guard.armed = false;
    reply?.into_result()
}

impl<R: FromBody + Send + 'static> IntoFuture for Call<R> {
    type Output = Result<R, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        // One timer for the whole exchange, one allocation.
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async move {
                let (guard, rx) = self.start().await?;
                reply(guard, rx).await
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err(Error::Timeout(timeout)))
        })
    }
}

/// A call that has been sent: await it for the reply, within what is left
/// of the call's timeout. Dropping it before the reply cancels the call on
/// the peer (`drs.cancel`). See [`Call::send`].
#[must_use = "dropping a sent call cancels it"]
pub struct SentCall<R> {
    pub(super) guard: PendingGuard,
    pub(super) rx: ReplyRx,
    pub(super) deadline: tokio::time::Instant,
    pub(super) timeout: Duration,
    pub(super) _reply: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for SentCall<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentCall")
            .field("conn", &self.guard.conn.id())
            .field("key", &self.guard.key)
            .finish_non_exhaustive()
    }
}

impl<R: FromBody + Send + 'static> IntoFuture for SentCall<R> {
    type Output = Result<R, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout_at(self.deadline, reply(self.guard, self.rx))
                .await
                .unwrap_or(Err(Error::Timeout(timeout)))
        })
    }
}

/// `delay` in whole milliseconds (rounded up), at most `u32::MAX`.
pub(super) fn delay_ms(delay: Duration) -> u32 {
    let ms = delay.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}
