//! [`Session`]: a client connection that dials again when it is lost.

use std::{
    collections::HashSet,
    fmt,
    future::{Future, IntoFuture},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use drs_core::{
    Body, Client, CloseReason, Conn, ConnConfig, Dialer, Error, FromBody, Handler, Layer, Protocol,
    Routes, SHUTTING_DOWN,
};
use drs_names::{Identified, IdentifyBody, IDENTIFY};
use drs_pubsub::{PubSub, SubscribeBody, Subscriptions, EXPOSE, SUBSCRIBE};
use futures::Stream;
use serde::Serialize;
use tokio::{
    sync::{broadcast, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::policy::{Jitter, ReconnectPolicy};

/// What a call (or fire) does while its session has no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenDisconnected {
    /// Wait for the next connection, within the call's own timeout
    /// (the default, like NATS clients buffering during a reconnect).
    #[default]
    Wait,
    /// Fail at once with [`Error::NotConnected`]: nothing was sent.
    Fail,
}

/// What happened to a session's connection, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A connection is up (and, for a named session, identified).
    Connected {
        /// Its id ([`Conn::id`]).
        conn: u64,
        /// What the server said to `drs.identify`: it still held state for
        /// the name. Always `false` for an unnamed session.
        resumed: bool,
    },
    /// The connection was lost.
    Disconnected {
        /// Its id.
        conn: u64,
        /// Why it ended.
        reason: Option<CloseReason>,
    },
    /// A dial failed; the next one starts after `delay`.
    Reconnecting {
        /// Failed dials since the connection was lost (or since the start).
        attempt: u32,
        /// The wait before the next dial.
        delay: Duration,
        /// Why the last dial failed.
        error: String,
    },
    /// The reconnect policy's attempts or deadline ran out: the session
    /// has stopped. Calls fail with [`Error::NotConnected`].
    GaveUp {
        /// Dials made since the connection was lost.
        attempts: u32,
        /// Why the last one failed.
        error: String,
    },
    /// [`Session::close`] was called (or every handle dropped).
    Closed,
}

/// Where a session is.
#[derive(Clone)]
enum State {
    Connecting,
    Connected(Conn),
    GaveUp,
    Closed,
}

type Callback = Arc<dyn Fn(&SessionEvent) + Send + Sync>;

struct Inner {
    state: watch::Sender<State>,
    events: broadcast::Sender<SessionEvent>,
    callbacks: Vec<Callback>,
    name: Option<Arc<str>>,
    when: WhenDisconnected,
    idempotent: HashSet<String>,
    max_resends: u32,
    call_timeout: Duration,
    /// Topic handlers, subscribed again on every connection.
    subs: Subscriptions,
    /// Actions exposed to the broker on every connection.
    exposed: Vec<String>,
}

impl Inner {
    fn emit(&self, event: SessionEvent) {
        for cb in &self.callbacks {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&event))).is_err() {
                tracing::error!("a session event callback panicked");
            }
        }
        let _ = self.events.send(event);
    }
}

/// Stops the session when the last handle goes.
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A client connection that survives the loss of its socket: it dials
/// again by its [`ReconnectPolicy`], keeps the handlers and layers it was
/// built with, names itself again (`drs.identify`) on every connection,
/// and reports what happens as [`SessionEvent`]s.
///
/// Calls made while it is between connections wait for the next one
/// within their own timeout, or fail at once ([`WhenDisconnected`]). A
/// call that a server shutting down refuses (`drs.error`
/// [`SHUTTING_DOWN`]: it did not run) waits for the next connection the
/// same way.
/// **A call in flight when its connection is lost fails with
/// [`Error::Closed`] and is never sent again** — it may or may not have
/// run on the server — unless its action was declared
/// [`idempotent`](SessionBuilder::idempotent).
///
/// Cloning gives another handle to the same session; it stops (and closes
/// its connection) when [`close`](Session::close) is called or the last
/// handle is dropped.
///
/// ```no_run
/// # async fn f(json: drs_protocol_json::Json) -> Result<(), drs_core::Error> {
/// use drs_session::{ReconnectPolicy, Session};
/// let session = Session::builder(drs_transport_tcp::TcpDialer::new("127.0.0.1:4000"), json)
///     .name("billing-1")
///     .policy(ReconnectPolicy::default().max_attempts(Some(30)))
///     .connect()
///     .await?;
/// let sum: f64 = session.call("add", serde_json::json!({"a": 1, "b": 2})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    owner: Arc<Owner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.state.borrow() {
            State::Connecting => "connecting".to_string(),
            State::Connected(c) => format!("connected ({})", c.id()),
            State::GaveUp => "gave up".to_string(),
            State::Closed => "closed".to_string(),
        };
        f.debug_struct("Session")
            .field("name", &self.inner.name)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Session`]: see [`Session::builder`].
pub struct SessionBuilder<D> {
    dialer: D,
    protocol: Arc<dyn Protocol>,
    client: Client,
    name: Option<String>,
    policy: ReconnectPolicy,
    when: WhenDisconnected,
    idempotent: HashSet<String>,
    max_resends: u32,
    callbacks: Vec<Callback>,
    exposed: Vec<String>,
}

impl<D: Clone> Clone for SessionBuilder<D> {
    fn clone(&self) -> Self {
        Self {
            dialer: self.dialer.clone(),
            protocol: self.protocol.clone(),
            client: self.client.clone(),
            name: self.name.clone(),
            policy: self.policy.clone(),
            when: self.when,
            idempotent: self.idempotent.clone(),
            max_resends: self.max_resends,
            callbacks: self.callbacks.clone(),
            exposed: self.exposed.clone(),
        }
    }
}

impl<D> fmt::Debug for SessionBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("when_disconnected", &self.when)
            .finish_non_exhaustive()
    }
}

impl<D: Dialer> SessionBuilder<D> {
    /// Uses `client`'s handlers, layers and settings (replacing those set
    /// so far).
    pub fn client(mut self, client: Client) -> Self {
        self.client = client;
        self
    }

    /// Sets the connection settings (the call timeout among them).
    pub fn config(mut self, config: ConnConfig) -> Self {
        self.client = self.client.config(config);
        self
    }

    /// Serves `routes` on every connection of the session: what the
    /// server fires or calls ([`Client::routes`]).
    pub fn routes(mut self, routes: Routes) -> Self {
        self.client = self.client.routes(routes);
        self
    }

    /// Registers a handler for what the server fires or calls; it serves
    /// every connection of the session.
    pub fn on<H: Handler<A>, A>(mut self, action: impl Into<String>, handler: H) -> Self {
        self.client = self.client.on(action, handler);
        self
    }

    /// Serves `action` for a broker (`drs.expose`, docs/PROTOCOL.md §2): registers
    /// `handler` and exposes the action on every connection, so that the
    /// broker routes other connections' calls of it here.
    pub fn expose<H: Handler<A>, A>(mut self, action: impl Into<String>, handler: H) -> Self {
        let action = action.into();
        self.client = self.client.on(action.clone(), handler);
        self.exposed.push(action);
        self
    }

    /// Adds a layer around every inbound command, on every connection.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.client = self.client.layer(layer);
        self
    }

    /// Adds a layer around one action's handler, on every connection.
    pub fn layer_for(mut self, action: impl Into<String>, layer: impl Layer) -> Self {
        self.client = self.client.layer_for(action, layer);
        self
    }

    /// Names the session: `drs.identify` is sent on every connection
    /// before it is used. A server that has a live connection of that
    /// name answers "name taken": [`connect`](SessionBuilder::connect)
    /// fails with it; a reconnect counts it as a failed dial (the server
    /// may not have seen the old connection go yet).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the reconnect policy (default: [`ReconnectPolicy::default`]).
    pub fn policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets what calls do between connections (default: wait).
    pub fn when_disconnected(mut self, when: WhenDisconnected) -> Self {
        self.when = when;
        self
    }

    /// Declares actions safe to run twice: a call of one of them whose
    /// connection is lost before the reply is sent again on the next
    /// connection (within its timeout, at most
    /// [`max_resends`](SessionBuilder::max_resends) times). Calls of other
    /// actions are never sent twice.
    pub fn idempotent<I, S>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.idempotent.extend(actions.into_iter().map(Into::into));
        self
    }

    /// Sets how many times an idempotent call is sent again (default 3).
    pub fn max_resends(mut self, resends: u32) -> Self {
        self.max_resends = resends;
        self
    }

    /// Calls `callback` with every event, in order, from the session's
    /// task (keep it short; a panic in it is caught and logged).
    pub fn on_event(mut self, callback: impl Fn(&SessionEvent) + Send + Sync + 'static) -> Self {
        self.callbacks.push(Arc::new(callback));
        self
    }

    /// Dials once and returns the session when that connection is up (and
    /// identified); fails with that dial's error (the session is not
    /// started). Later losses are handled by the policy.
    pub async fn connect(self) -> Result<Session, Error> {
        let (tx, rx) = oneshot::channel();
        let session = self.spawn(Some(tx));
        match rx.await {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Returns the session at once; it dials in the background, by the
    /// policy from the first attempt. Must be called within a Tokio
    /// runtime.
    pub fn start(self) -> Session {
        self.spawn(None)
    }

    fn spawn(self, first: Option<oneshot::Sender<Result<(), Error>>>) -> Session {
        let (state, _) = watch::channel(State::Connecting);
        let (events, _) = broadcast::channel(256);
        let subs = Subscriptions::new();
        let client = self.client.layer(subs.clone());
        let inner = Arc::new(Inner {
            state,
            events,
            callbacks: self.callbacks,
            name: self.name.map(Into::into),
            when: self.when,
            idempotent: self.idempotent,
            max_resends: self.max_resends,
            call_timeout: client.settings().call_timeout,
            subs,
            exposed: self.exposed,
        });
        let stop = CancellationToken::new();
        let task = Supervisor {
            inner: inner.clone(),
            client,
            dialer: self.dialer,
            protocol: self.protocol,
            policy: self.policy,
            stop: stop.clone(),
        };
        tokio::spawn(task.run(first));
        Session {
            inner,
            owner: Arc::new(Owner(stop)),
        }
    }
}

/// The task that owns a session's connections.
struct Supervisor<D> {
    inner: Arc<Inner>,
    client: Client,
    dialer: D,
    protocol: Arc<dyn Protocol>,
    policy: ReconnectPolicy,
    stop: CancellationToken,
}

impl<D: Dialer> Supervisor<D> {
    async fn run(self, mut first: Option<oneshot::Sender<Result<(), Error>>>) {
        let inner = &self.inner;
        let mut jitter = Jitter::new(Arc::as_ptr(inner) as u64);
        'session: loop {
            let began = Instant::now();
            let mut attempt = 0u32;
            let conn = loop {
                attempt += 1;
                let dialed = tokio::select! {
                    r = self.dial() => r,
                    () = self.stop.cancelled() => break 'session,
                };
                let error = match dialed {
                    Ok((conn, resumed)) => {
                        inner.state.send_replace(State::Connected(conn.clone()));
                        tracing::debug!(conn = conn.id(), attempt, "session connected");
                        inner.emit(SessionEvent::Connected {
                            conn: conn.id(),
                            resumed,
                        });
                        break conn;
                    }
                    Err(e) => e,
                };
                if let Some(tx) = first.take() {
                    // `connect`: the first dial's failure is the caller's.
                    let _ = tx.send(Err(error));
                    inner.state.send_replace(State::GaveUp);
                    return;
                }
                let error = error.to_string();
                let delay = self.policy.delay(attempt, jitter.unit());
                let out_of_attempts = self.policy.max_attempts.is_some_and(|max| attempt >= max);
                let out_of_time = self
                    .policy
                    .deadline
                    .is_some_and(|limit| began.elapsed() + delay > limit);
                if out_of_attempts || out_of_time {
                    tracing::warn!(attempts = attempt, %error, "session gave up reconnecting");
                    inner.state.send_replace(State::GaveUp);
                    inner.emit(SessionEvent::GaveUp {
                        attempts: attempt,
                        error,
                    });
                    return;
                }
                tracing::debug!(attempt, ?delay, %error, "session dial failed; retrying");
                inner.emit(SessionEvent::Reconnecting {
                    attempt,
                    delay,
                    error,
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.cancelled() => break 'session,
                }
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(Ok(()));
            }
            tokio::select! {
                () = conn.closed() => {}
                () = self.stop.cancelled() => {
                    conn.close();
                    break 'session;
                }
            }
            inner.state.send_replace(State::Connecting);
            let reason = conn.close_reason();
            tracing::debug!(conn = conn.id(), ?reason, "session lost its connection");
            inner.emit(SessionEvent::Disconnected {
                conn: conn.id(),
                reason,
            });
        }
        inner.state.send_replace(State::Closed);
        inner.emit(SessionEvent::Closed);
    }

    /// Dials and, for a named session, identifies; then subscribes and
    /// exposes again what the session has.
    async fn dial(&self) -> Result<(Conn, bool), Error> {
        let conn = self
            .client
            .dial(&self.dialer, self.protocol.clone())
            .await?;
        match self.set_up(&conn).await {
            Ok(resumed) => Ok((conn, resumed)),
            Err(e) => {
                conn.close();
                Err(e)
            }
        }
    }

    async fn set_up(&self, conn: &Conn) -> Result<bool, Error> {
        let timeout = self.client.settings().handshake_timeout;
        let resumed = match &self.inner.name {
            Some(name) => {
                conn.call::<Identified>(IDENTIFY, IdentifyBody::new(&**name))
                    .timeout(timeout)
                    .await?
                    .resumed
            }
            None => false,
        };
        for (pattern, retroactive) in self.inner.subs.patterns() {
            conn.call::<Body>(SUBSCRIBE, SubscribeBody::new(pattern, retroactive))
                .timeout(timeout)
                .await?;
        }
        for action in &self.inner.exposed {
            conn.call::<Body>(EXPOSE, json_action(action))
                .timeout(timeout)
                .await?;
        }
        Ok(resumed)
    }
}

fn json_action(action: &str) -> impl Serialize + '_ {
    #[derive(Serialize)]
    struct Action<'a> {
        action: &'a str,
    }
    Action { action }
}

impl Session {
    /// A session to the peer `dialer` reaches, speaking `protocol`; set it
    /// up on the builder, then [`connect`](SessionBuilder::connect) or
    /// [`start`](SessionBuilder::start).
    pub fn builder<D: Dialer, P: Protocol>(dialer: D, protocol: P) -> SessionBuilder<D> {
        SessionBuilder {
            dialer,
            protocol: Arc::new(protocol),
            client: Client::new(),
            name: None,
            policy: ReconnectPolicy::default(),
            when: WhenDisconnected::Wait,
            idempotent: HashSet::new(),
            max_resends: 3,
            callbacks: Vec::new(),
            exposed: Vec::new(),
        }
    }

    /// The session's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The connection in use now, if the session is connected.
    pub fn current(&self) -> Option<Conn> {
        match &*self.inner.state.borrow() {
            State::Connected(conn) if !conn.is_closed() => Some(conn.clone()),
            _ => None,
        }
    }

    /// Whether the session has a live connection now.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// The connection to use, waiting for one (within the call timeout)
    /// as the [`WhenDisconnected`] setting says: for streams, or anything
    /// else [`Conn`] offers. The connection may be lost later like any.
    pub async fn conn(&self) -> Result<Conn, Error> {
        let timeout = self.inner.call_timeout;
        self.conn_by(Instant::now() + timeout, timeout, None).await
    }

    /// The live connection, other than `avoid` (one whose server refused
    /// the call because it is shutting down), by `deadline`.
    async fn conn_by(
        &self,
        deadline: Instant,
        timeout: Duration,
        avoid: Option<u64>,
    ) -> Result<Conn, Error> {
        let mut rx = self.inner.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Connected(conn) if !conn.is_closed() && Some(conn.id()) != avoid => {
                    return Ok(conn.clone())
                }
                State::Closed => return Err(Error::Closed),
                State::GaveUp => return Err(Error::NotConnected),
                _ if self.inner.when == WhenDisconnected::Fail => return Err(Error::NotConnected),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::Timeout(timeout)),
            }
        }
    }

    /// Calls `action` with `body` on the current connection (see
    /// [`Conn::call`]); await the returned [`SessionCall`]. Its timeout
    /// (the connection settings' call timeout unless set) covers the wait
    /// for a connection too.
    ///
    /// The returned future lives as long as `body` does: with an owned
    /// body it can be spawned.
    pub fn call<'a, R, B: 'a>(&self, action: &str, body: B) -> SessionCall<'a, R, B> {
        SessionCall {
            session: self.clone(),
            action: action.to_string(),
            body,
            timeout: self.inner.call_timeout,
            _reply: PhantomData,
            _body: PhantomData,
        }
    }

    /// Subscribes to `pattern` on the broker and hands what it delivers to
    /// `handler`, on this connection and every later one (the session
    /// subscribes again after each reconnect). Waits for a connection as
    /// calls do; resolves once the broker has confirmed.
    pub async fn subscribe<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> Result<(), Error> {
        self.subscribe_as(pattern, false, handler).await
    }

    /// Like [`subscribe`](Session::subscribe), retroactively: for a named
    /// session the broker keeps what is published while it is away and
    /// delivers it, in order, when it is back; each delivery is a call,
    /// acknowledged when `handler` returns.
    pub async fn subscribe_retroactive<H: Handler<A>, A>(
        &self,
        pattern: &str,
        handler: H,
    ) -> Result<(), Error> {
        self.subscribe_as(pattern, true, handler).await
    }

    async fn subscribe_as<H: Handler<A>, A>(
        &self,
        pattern: &str,
        retroactive: bool,
        handler: H,
    ) -> Result<(), Error> {
        let had = self.inner.subs.contains(pattern);
        self.inner.subs.insert(pattern, retroactive, handler)?;
        let confirmed = self
            .call::<Body, _>(SUBSCRIBE, SubscribeBody::new(pattern, retroactive))
            .await;
        if let Err(e) = confirmed {
            // Refused (or not sent): a new subscription leaves nothing
            // behind to be sent again on the next connection.
            if !had {
                self.inner.subs.remove(pattern);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Ends the subscription to `pattern`, here and on the broker.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), Error> {
        self.inner.subs.remove(pattern);
        match self.current() {
            Some(conn) => conn.unsubscribe(pattern).await,
            None => Ok(()),
        }
    }

    /// Publishes `body` on `topic` (a fire), waiting for a connection as
    /// [`fire`](Session::fire) does.
    pub async fn publish<B: Serialize>(&self, topic: &str, body: B) -> Result<(), Error> {
        drs_pubsub::topic::check_topic(topic)?;
        self.conn().await?.publish(topic, body).await
    }

    /// Publishes `body` on `topic` as a call: how many subscribers it
    /// reached or was stored for, once a durable broker has written it.
    pub async fn publish_confirmed<B: Serialize>(
        &self,
        topic: &str,
        body: B,
    ) -> Result<u64, Error> {
        drs_pubsub::topic::check_topic(topic)?;
        self.conn().await?.publish_confirmed(topic, body).await
    }

    /// Fires `action` with `body` on the current connection, waiting for
    /// one (within the call timeout) if the session waits between
    /// connections. A fire is never sent twice.
    pub async fn fire<B: Serialize>(&self, action: &str, body: B) -> Result<(), Error> {
        let conn = self.conn().await?;
        conn.fire(action, body).await
    }

    /// Every event from now on, in order. A receiver that falls more than
    /// 256 events behind loses the oldest (it sees the rest).
    pub fn events(&self) -> impl Stream<Item = SessionEvent> + Send + Unpin + 'static {
        let rx = self.inner.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// Stops the session: no more dials, the connection is closed (calls
    /// in flight fail with [`Error::Closed`]), later calls fail with it.
    pub fn close(&self) {
        self.owner.0.cancel();
    }

    /// Waits until the session has stopped (closed, or given up).
    pub async fn stopped(&self) {
        let mut rx = self.inner.state.subscribe();
        let _ = rx
            .wait_for(|s| matches!(s, State::Closed | State::GaveUp))
            .await;
    }
}

/// A call through a [`Session`], on its way: await it for the reply.
#[must_use = "a call does nothing unless awaited"]
pub struct SessionCall<'a, R, B> {
    session: Session,
    action: String,
    body: B,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
    _body: PhantomData<&'a ()>,
}

impl<R, B> fmt::Debug for SessionCall<'_, R, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCall")
            .field("action", &self.action)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<R, B> SessionCall<'_, R, B> {
    /// Sets this call's timeout (the wait for a connection included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<'a, R, B> IntoFuture for SessionCall<'a, R, B>
where
    R: FromBody + Send + 'static,
    B: Serialize + Send + Sync + 'a,
{
    type Output = Result<R, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R, Error>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let session = &self.session;
            let deadline = Instant::now() + self.timeout;
            let resend = session.inner.idempotent.contains(&self.action);
            let mut resent = 0;
            let mut refused_by = None;
            loop {
                let conn = session.conn_by(deadline, self.timeout, refused_by).await?;
                let left = deadline.saturating_duration_since(Instant::now());
                match conn.call::<R>(&self.action, &self.body).timeout(left).await {
                    Err(e) if e.is_closed() && resend && resent < session.inner.max_resends => {
                        resent += 1;
                        tracing::debug!(action = %self.action, resent, "connection lost; sending an idempotent call again");
                    }
                    // Refused, not run: the server is draining. The next
                    // connection (to its successor) gets it.
                    Err(Error::Remote(e))
                        if e.message == SHUTTING_DOWN
                            && session.inner.when == WhenDisconnected::Wait =>
                    {
                        tracing::debug!(action = %self.action, "the server is shutting down; the call waits for the next connection");
                        refused_by = Some(conn.id());
                    }
                    Err(Error::Timeout(_)) => return Err(Error::Timeout(self.timeout)),
                    other => return other,
                }
            }
        })
    }
}
