//! Peer naming: `drs.identify`, the names table and what reads it.

use super::*;

impl Server {
    /// Adds a hook that runs when a peer names itself with
    /// `drs.identify` and no live connection holds the name, before the
    /// answer is sent. It returns whether it holds state for that name
    /// from an earlier connection (subscriptions, undelivered messages):
    /// the answer's `resumed` is true if any hook says so. A hook refuses
    /// the name with `Err(reason)` (another identity owns it, a bound is
    /// reached): the peer gets `drs.error` with the reason and keeps the
    /// name it had. Hooks must not block; one that has work to do for the
    /// name spawns it.
    pub fn on_identify(
        &self,
        hook: impl Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync + 'static,
    ) -> &Self {
        write(&self.inner.on_identify).push(Arc::new(hook));
        self
    }

    /// The live connections with what is known of each peer: its name
    /// (from `drs.identify`), its address and transport.
    pub fn peers(&self) -> Vec<Peer> {
        read(&self.inner.conns)
            .values()
            .map(|conn| Peer {
                id: conn.id(),
                name: conn.name(),
                peer_addr: conn.peer_addr().map(str::to_string),
                transport: conn.info().transport,
            })
            .collect()
    }

    /// The live connection whose peer identified as `name`.
    pub fn named(&self, name: &str) -> Option<Conn> {
        let id = *lock(&self.inner.names).get(name)?;
        self.connection(id)
    }

    /// Calls `action` on the peer named `name` (see [`Conn::call`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    pub fn call_named<R>(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> Result<crate::Call<R>, Error> {
        let conn = self
            .named(name)
            .ok_or_else(|| Error::NoPeer(name.to_string()))?;
        Ok(conn.call(action, body))
    }

    /// Fires `action` to the peer named `name` (see [`Conn::fire`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    pub fn fire_named(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let fire = self
            .named(name)
            .ok_or_else(|| Error::NoPeer(name.to_string()))
            .map(|conn| conn.fire(action, body));
        async move { fire?.await }
    }
}

/// A live connection as [`Server::peers`] lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Peer {
    /// The connection's id ([`Conn::id`]).
    pub id: u64,
    /// The name the peer gave with `drs.identify`.
    pub name: Option<Arc<str>>,
    /// The peer's address, when the transport knows it.
    pub peer_addr: Option<String>,
    /// The transport's name (`"tcp"`, `"ws"`, `"ipc"`, …).
    pub transport: &'static str,
}

/// How many different names one connection may take with `drs.identify`
/// over its life; past it `drs.identify` of a new name is refused.
pub const MAX_NAMES_PER_CONN: usize = 16;

/// The names a connection has taken, to bound them.
#[derive(Clone, Default)]
struct NamesTaken(Arc<std::sync::Mutex<Vec<Arc<str>>>>);

impl Inner {
    /// `drs.identify`: checks the name, takes it from no live connection,
    /// asks the hooks (any may refuse it), then gives it to `conn`,
    /// releasing the one it had.
    pub(super) fn identify(&self, conn: &Conn, name: &str) -> Result<bool, HandlerError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(HandlerError::new(format!(
                "invalid name: it must be 1 to {MAX_NAME_LEN} bytes without control characters"
            )));
        }
        if conn.name().as_deref() == Some(name) {
            return self.run_identify_hooks(conn, &conn.name().unwrap_or_else(|| name.into()));
        }
        let taken = match conn.get::<NamesTaken>() {
            Some(taken) => taken,
            None => {
                let taken = NamesTaken::default();
                conn.insert(taken.clone());
                taken
            }
        };
        {
            let taken = lock(&taken.0);
            if taken.len() >= MAX_NAMES_PER_CONN && !taken.iter().any(|n| &**n == name) {
                return Err(HandlerError::new(format!(
                    "too many names for one connection (at most {MAX_NAMES_PER_CONN})"
                )));
            }
        }
        let name: Arc<str> = name.into();
        {
            let mut names = lock(&self.names);
            if let Some(&holder) = names.get(&name) {
                if holder != conn.id() && read(&self.conns).contains_key(&holder) {
                    return Err(HandlerError::new(NAME_TAKEN));
                }
            }
            // Reserved for `conn` while the hooks decide.
            names.insert(name.clone(), conn.id());
        }
        match self.run_identify_hooks(conn, &name) {
            Ok(resumed) => {
                let mut names = lock(&self.names);
                if let Some(old) = conn.name() {
                    if names.get(&old) == Some(&conn.id()) {
                        names.remove(&old);
                    }
                }
                conn.insert(PeerName(name.clone()));
                drop(names);
                let mut taken = lock(&taken.0);
                if !taken.contains(&name) {
                    taken.push(name);
                }
                Ok(resumed)
            }
            Err(refused) => {
                let mut names = lock(&self.names);
                if names.get(&name) == Some(&conn.id()) {
                    names.remove(&name);
                }
                Err(refused)
            }
        }
    }

    /// Every hook runs (each may start serving the name); the first
    /// refusal is the answer.
    fn run_identify_hooks(&self, conn: &Conn, name: &Arc<str>) -> Result<bool, HandlerError> {
        let hooks = read(&self.on_identify).clone();
        let mut resumed = false;
        for hook in hooks {
            resumed |= hook(conn, name).map_err(HandlerError::new)?;
        }
        Ok(resumed)
    }

    /// Frees the name of a connection that has ended.
    pub(super) fn release_name(&self, conn: &Conn) {
        if let Some(name) = conn.name() {
            let mut names = lock(&self.names);
            if names.get(&name) == Some(&conn.id()) {
                names.remove(&name);
            }
        }
    }
}
