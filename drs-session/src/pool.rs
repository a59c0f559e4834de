//! [`Pool`]: several sessions to one peer, used as one.

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use drs_core::{Client, ConnConfig, Dialer, Error, Handler, Layer, Protocol, Routes};
use serde::Serialize;

use crate::{
    policy::ReconnectPolicy,
    session::{Session, SessionBuilder, SessionCall, SessionEvent, WhenDisconnected},
};

/// The members a pool has unless told otherwise (as Rot's pools).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// N [`Session`]s to one peer (default [`DEFAULT_POOL_SIZE`]), used as
/// one: a call goes to the connected member with the fewest calls in
/// flight, [`cast`](Pool::cast) fires through one the same way, and a
/// member that loses its connection dials again without failing calls on
/// the others (only its own calls in flight fail, with
/// [`Error::Closed`]). With no member connected, a call waits on one of
/// them as a session does.
///
/// Cloning gives another handle to the same pool.
///
/// ```no_run
/// # async fn f(json: drs_protocol_json::Json) -> Result<(), drs_core::Error> {
/// use drs_session::Pool;
/// let pool = Pool::builder(drs_transport_tcp::TcpDialer::new("127.0.0.1:4000"), json)
///     .size(8)
///     .connect()
///     .await?;
/// let n: u64 = pool.call("count", ()).await?;
/// pool.cast("log", "hello").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    members: Arc<[Session]>,
    next: Arc<AtomicUsize>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("members", &self.members.len())
            .field("connected", &self.connected())
            .finish()
    }
}

/// Builds a [`Pool`]: see [`Pool::builder`]. Every setting applies to
/// every member.
pub struct PoolBuilder<D> {
    member: SessionBuilder<D>,
    size: usize,
    callbacks: Vec<IndexedCallback>,
}

type IndexedCallback = Arc<dyn Fn(usize, &SessionEvent) + Send + Sync>;

impl<D> fmt::Debug for PoolBuilder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("size", &self.size)
            .field("member", &self.member)
            .finish()
    }
}

impl<D: Dialer + Clone> PoolBuilder<D> {
    /// Sets the number of members (at least 1).
    pub fn size(mut self, members: usize) -> Self {
        self.size = members.max(1);
        self
    }

    /// Uses `client`'s handlers, layers and settings on every member.
    pub fn client(mut self, client: Client) -> Self {
        self.member = self.member.client(client);
        self
    }

    /// Sets the connection settings.
    pub fn config(mut self, config: ConnConfig) -> Self {
        self.member = self.member.config(config);
        self
    }

    /// Serves `routes` on every member ([`Client::routes`]).
    pub fn routes(mut self, routes: Routes) -> Self {
        self.member = self.member.routes(routes);
        self
    }

    /// Registers a handler on every member.
    pub fn on<H: Handler<A>, A>(mut self, action: impl Into<String>, handler: H) -> Self {
        self.member = self.member.on(action, handler);
        self
    }

    /// Adds a layer around every inbound command of every member.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.member = self.member.layer(layer);
        self
    }

    /// Sets the members' reconnect policy.
    pub fn policy(mut self, policy: ReconnectPolicy) -> Self {
        self.member = self.member.policy(policy);
        self
    }

    /// Sets what calls do while their member has no connection.
    pub fn when_disconnected(mut self, when: WhenDisconnected) -> Self {
        self.member = self.member.when_disconnected(when);
        self
    }

    /// Declares actions safe to send again (see
    /// [`SessionBuilder::idempotent`]).
    pub fn idempotent<I, S>(mut self, actions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.member = self.member.idempotent(actions);
        self
    }

    /// Calls `callback` with every member's events, with the member's
    /// index.
    pub fn on_event(
        mut self,
        callback: impl Fn(usize, &SessionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.push(Arc::new(callback));
        self
    }

    /// The builder of member `i`.
    fn member(&self, i: usize) -> SessionBuilder<D> {
        self.callbacks
            .iter()
            .fold(self.member.clone(), |member, callback| {
                let callback = callback.clone();
                member.on_event(move |event| callback(i, event))
            })
    }

    /// Connects every member (at once); fails with the first error, the
    /// members already connected being closed.
    pub async fn connect(self) -> Result<Pool, Error> {
        let dials = (0..self.size).map(|i| self.member(i).connect());
        let members = futures::future::try_join_all(dials).await?;
        Ok(Pool::of(members))
    }

    /// Returns the pool at once; its members dial in the background.
    pub fn start(self) -> Pool {
        Pool::of((0..self.size).map(|i| self.member(i).start()).collect())
    }
}

impl Pool {
    /// A pool of sessions to the peer `dialer` reaches.
    pub fn builder<D: Dialer + Clone, P: Protocol>(dialer: D, protocol: P) -> PoolBuilder<D> {
        PoolBuilder {
            member: Session::builder(dialer, protocol),
            size: DEFAULT_POOL_SIZE,
            callbacks: Vec::new(),
        }
    }

    fn of(members: Vec<Session>) -> Self {
        Self {
            members: members.into(),
            next: Arc::default(),
        }
    }

    /// The members.
    pub fn members(&self) -> &[Session] {
        &self.members
    }

    /// How many members are connected now.
    pub fn connected(&self) -> usize {
        self.members.iter().filter(|s| s.is_connected()).count()
    }

    /// The member a command goes to: the connected one with the fewest
    /// calls in flight (ties taken in turn), or, with none connected, the
    /// next in turn.
    pub fn pick(&self) -> &Session {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, &Session)> = None;
        for i in 0..n {
            let member = &self.members[(start + i) % n];
            if let Some(conn) = member.current() {
                let load = conn.pending_calls();
                match best {
                    Some((least, _)) if least <= load => {}
                    _ => best = Some((load, member)),
                }
            }
        }
        best.map_or(&self.members[start], |(_, member)| member)
    }

    /// Calls `action` through the least busy member (see [`Session::call`]).
    pub fn call<'a, R, B: 'a>(&self, action: &str, body: B) -> SessionCall<'a, R, B> {
        self.pick().call(action, body)
    }

    /// Fires `action` through the least busy member: Rot's `cast`.
    pub async fn cast<B: Serialize>(&self, action: &str, body: B) -> Result<(), Error> {
        self.pick().fire(action, body).await
    }

    /// Closes every member.
    pub fn close(&self) {
        for member in self.members.iter() {
            member.close();
        }
    }
}
