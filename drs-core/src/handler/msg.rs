//! [`Msg`]: one inbound command as a handler sees it.

use std::time::Duration;

use super::*;

/// One inbound command as a handler sees it: the command, the connection it
/// came on, and extensions shared by every handler of its chain.
///
/// Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Msg {
    inner: Arc<MsgInner>,
}

struct MsgInner {
    shared: Arc<crate::conn::Shared>,
    /// Made on first use: most handlers never need one.
    conn: std::sync::OnceLock<Conn>,
    cmd: Command,
    ext: Mutex<Extensions>,
    /// Made when someone watches for cancellation, or cancels.
    cancel: std::sync::OnceLock<CancellationToken>,
    /// Made when the handler streams its reply.
    producer: std::sync::OnceLock<Arc<Producer>>,
    /// The handler's deadline in nanoseconds, if a layer set one
    /// ([`NO_DEADLINE`] otherwise).
    deadline: std::sync::atomic::AtomicU64,
}

const NO_DEADLINE: u64 = u64::MAX;

impl Msg {
    pub(crate) fn new(shared: Arc<crate::conn::Shared>, cmd: Command) -> Self {
        Self {
            inner: Arc::new(MsgInner {
                shared,
                conn: std::sync::OnceLock::new(),
                cmd,
                ext: Mutex::new(Extensions::new()),
                cancel: std::sync::OnceLock::new(),
                producer: std::sync::OnceLock::new(),
                deadline: std::sync::atomic::AtomicU64::new(NO_DEADLINE),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &crate::conn::Shared {
        &self.inner.shared
    }

    /// A token cancelled when this command's handler is stopped: the caller
    /// sent `drs.cancel` (or dropped its call), the handler's deadline
    /// passed, or the connection ended. The handler's future is dropped
    /// then as well; the token is for work it started elsewhere (a task, a
    /// thread).
    pub fn cancel_token(&self) -> CancellationToken {
        self.inner
            .cancel
            .get_or_init(CancellationToken::new)
            .clone()
    }

    /// Sets how long this command's handler may run, in place of the
    /// connection's [`handler_timeout`](crate::ConnConfig::handler_timeout)
    /// (longer or shorter); the last one set counts. The connection reads
    /// it when the handler does not finish on its first poll, so a layer
    /// sets it before running the rest (`drs_layers::Timeout` does).
    /// Past it the handler is stopped and its caller gets `drs.exception`
    /// [`DEADLINE_EXCEEDED`](crate::DEADLINE_EXCEEDED).
    pub fn set_deadline(&self, limit: Duration) {
        let nanos = u64::try_from(limit.as_nanos()).unwrap_or(NO_DEADLINE - 1);
        self.inner.deadline.store(
            nanos.min(NO_DEADLINE - 1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The deadline set with [`set_deadline`](Msg::set_deadline), if any.
    pub fn deadline(&self) -> Option<Duration> {
        match self
            .inner
            .deadline
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            NO_DEADLINE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Waits until this command's handler is stopped (see
    /// [`cancel_token`](Msg::cancel_token)).
    pub async fn cancelled(&self) {
        self.cancel_token().cancelled().await;
    }

    /// Whether this command's handler has been stopped.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.get().is_some_and(|t| t.is_cancelled())
    }

    /// Cancels the token of a handler being stopped.
    pub(crate) fn cancel(&self) {
        self.cancel_token().cancel();
    }

    /// Whether the caller asked for a streamed reply (`"stream": N`).
    pub fn wants_stream(&self) -> bool {
        self.inner.cmd.key.is_some() && self.inner.cmd.stream.is_some()
    }

    /// The streamed reply's state, made on first use.
    pub(crate) fn producer(&self) -> &Arc<Producer> {
        self.inner.producer.get_or_init(|| {
            Arc::new(Producer::new(
                self.inner.cmd.key.is_some(),
                self.inner.cmd.stream,
            ))
        })
    }

    /// The caller granted `n` more items (`drs.more`).
    pub(crate) fn grant(&self, n: u64) {
        self.producer().grant(n);
    }

    /// Encodes `value` as a body in this connection's protocol (to keep a
    /// reply, as a cache does, or to reply with it later as a [`Body`]).
    pub fn encode_body(&self, value: &dyn erased_serde::Serialize) -> Result<Body, Error> {
        let shared = &self.inner.shared;
        let frame = encode_frame(
            &*shared.protocol,
            shared.config.max_frame_len,
            &Outgoing::new("body").body(OutBody::Value(value)),
        )?;
        Ok(shared.protocol.decode(frame)?.body)
    }

    /// The reply that ends this command, given its handler's outcome (the
    /// collected items, when the caller did not ask for a stream).
    pub(crate) fn finish(&self, outcome: Outcome) -> Outcome {
        match self.inner.producer.get() {
            None => outcome,
            Some(p) => p.finish(outcome, self.inner.shared.config.max_frame_len),
        }
    }

    /// The action.
    pub fn action(&self) -> &str {
        &self.inner.cmd.action
    }

    /// The key, present when the sender waits for a reply.
    pub fn key(&self) -> Option<&str> {
        self.inner.cmd.key.as_deref()
    }

    /// The body, in its wire encoding.
    pub fn body(&self) -> &Body {
        &self.inner.cmd.body
    }

    /// The version, if the sender gave one.
    pub fn version(&self) -> Option<i64> {
        self.inner.cmd.version
    }

    /// The whole command.
    pub fn command(&self) -> &Command {
        &self.inner.cmd
    }

    /// The connection the command arrived on; handlers may fire to or call the
    /// peer through it.
    pub fn conn(&self) -> &Conn {
        self.inner
            .conn
            .get_or_init(|| Conn::from_shared(&self.inner.shared))
    }

    /// Deserializes the body into `T`; the error names the action and says
    /// what it wanted in JSON's words (`add needs a body: an object`,
    /// `add's body misses field `b``), never a Rust type name.
    pub fn body_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        self.body().deserialize().map_err(|e| {
            HandlerError::new(crate::explain::body_error(
                self.action(),
                self.body().is_absent(),
                &e.to_string(),
            ))
        })
    }

    /// Stores a value for the handlers that follow in the chain (and hooks).
    pub fn insert<T: Send + Sync + 'static>(&self, value: T) -> Option<T> {
        lock(&self.inner.ext).insert(value)
    }

    /// A copy of the value of type `T` stored by an earlier handler or hook.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.ext).get::<T>().cloned()
    }

    /// Runs `f` with the command's extensions.
    pub fn with_extensions<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        f(&mut lock(&self.inner.ext))
    }

    /// Runs `f` with the extensions of the connection the command arrived
    /// on, as [`Conn::with_extensions`] does, without making the
    /// connection's handle: what a layer reading per-connection state on
    /// every command (an identity, a name) should use.
    pub fn with_conn_extensions<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        f(&mut lock(&self.inner.shared.ext))
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("conn", &self.inner.shared.id)
            .field("command", &self.inner.cmd)
            .finish_non_exhaustive()
    }
}
