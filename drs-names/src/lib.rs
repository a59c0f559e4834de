//! Peer naming beside the core: a peer names itself with `drs.identify`
//! (docs/PROTOCOL.md §2), and the server reaches it by that name.
//!
//! [`Names::install`] serves `drs.identify` on a server and keeps the
//! names table; [`ServerNames`] gives a server `named`, `call_named`,
//! `fire_named`, `peers` and `on_identify` (the broker's hook for
//! resuming a named subscriber; it installs the names if need be);
//! [`ConnName`] gives a connection its peer's name.
//!
//! ```
//! use drs_core::Server;
//! use drs_names::{Names, ServerNames};
//!
//! let server = Server::new();
//! Names::install(&server);
//! assert!(server.handles("drs.identify"));
//! assert!(server.named("billing").is_none());
//! ```
//!
//! A name belongs to one live connection at a time: another connection
//! claiming it is answered `name taken`; it is free again once its holder
//! has ended (its entry is dropped after every `on_disconnect` hook, with
//! `Server::on_disconnect_last`). One connection takes at most
//! [`MAX_NAMES_PER_CONN`] names over its life.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, RwLock},
};

use drs_core::{Call, Conn, Error, HandlerError, Server, WeakServer};
use serde::{Deserialize, Serialize};

/// Names the connection's peer (docs/PROTOCOL.md §2): body `{"name": …}`, answered
/// with `{"resumed": bool}`, or `drs.error` [`NAME_TAKEN`].
pub const IDENTIFY: &str = "drs.identify";
/// The message of the `drs.error` answering a `drs.identify` whose name
/// another live connection holds.
pub const NAME_TAKEN: &str = "name taken";

/// The body of `drs.identify`: `{"name": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdentifyBody {
    /// The name the peer takes (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
}

impl IdentifyBody {
    /// The body naming the peer `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// The answer to `drs.identify`: `{"resumed": bool}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Identified {
    /// Whether the server still held state for the name: the names
    /// table keeps none across connections; an `on_identify` hook (a
    /// pub/sub broker's) says whether it did.
    #[serde(default)]
    pub resumed: bool,
}

impl Identified {
    /// The answer saying whether state was `resumed`.
    pub fn new(resumed: bool) -> Self {
        Self { resumed }
    }
}
/// The longest name `drs.identify` accepts, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// How many different names one connection may take with `drs.identify`
/// over its life; past it `drs.identify` of a new name is refused.
pub const MAX_NAMES_PER_CONN: usize = 16;

type IdentifyHook = Arc<dyn Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync>;

/// A server's names table and its `drs.identify` hooks (a server
/// extension: every handle is the same table).
#[derive(Clone)]
pub struct Names(Arc<Inner>);

struct Inner {
    server: WeakServer,
    /// Names given with `drs.identify` → the connection holding each.
    names: Mutex<HashMap<Arc<str>, u64>>,
    hooks: RwLock<Vec<IdentifyHook>>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("names", &lock(&self.0.names).len())
            .finish_non_exhaustive()
    }
}

/// The name a peer identified with, in its connection's extensions.
#[derive(Clone)]
struct PeerName(Arc<str>);

/// The names a connection has taken, to bound them.
#[derive(Clone, Default)]
struct NamesTaken(Arc<Mutex<Vec<Arc<str>>>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Names {
    /// Serves `drs.identify` on `server` and keeps its names; the
    /// server's table if it has one already.
    pub fn install(server: &Server) -> Names {
        let (names, fresh) = server.with_extensions(|ext| match ext.get::<Names>() {
            Some(names) => (names.clone(), false),
            None => {
                let names = Names(Arc::new(Inner {
                    server: server.downgrade(),
                    names: Mutex::default(),
                    hooks: RwLock::default(),
                }));
                ext.insert(names.clone());
                (names, true)
            }
        });
        if fresh {
            let table = names.clone();
            server.on(IDENTIFY, move |conn: Conn, args: IdentifyBody| {
                let claimed = table.identify(&conn, &args.name);
                async move { claimed.map(Identified::new) }
            });
            let table = names.clone();
            // After the disconnect hooks, which may still read the name.
            server.on_disconnect_last(move |conn| table.release(conn));
        }
        names
    }

    /// The names of `server`, if installed.
    pub fn of(server: &Server) -> Option<Names> {
        server.get::<Names>()
    }

    /// `drs.identify`: checks the name, takes it from no live connection,
    /// asks the hooks (any may refuse it), then gives it to `conn`,
    /// releasing the one it had.
    fn identify(&self, conn: &Conn, name: &str) -> Result<bool, HandlerError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(HandlerError::new(format!(
                "invalid name: it must be 1 to {MAX_NAME_LEN} bytes without control characters"
            )));
        }
        if conn.name().as_deref() == Some(name) {
            return self.run_hooks(conn, &conn.name().unwrap_or_else(|| name.into()));
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
        let server = self.0.server.upgrade();
        {
            let mut names = lock(&self.0.names);
            if let Some(&holder) = names.get(&name) {
                let live = server
                    .as_ref()
                    .is_some_and(|s| s.connection(holder).is_some());
                if holder != conn.id() && live {
                    return Err(HandlerError::new(NAME_TAKEN));
                }
            }
            // Reserved for `conn` while the hooks decide.
            names.insert(name.clone(), conn.id());
        }
        match self.run_hooks(conn, &name) {
            Ok(resumed) => {
                let mut names = lock(&self.0.names);
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
                let mut names = lock(&self.0.names);
                if names.get(&name) == Some(&conn.id()) {
                    names.remove(&name);
                }
                Err(refused)
            }
        }
    }

    /// Every hook runs (each may start serving the name); the first
    /// refusal is the answer.
    fn run_hooks(&self, conn: &Conn, name: &Arc<str>) -> Result<bool, HandlerError> {
        let hooks = self
            .0
            .hooks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut resumed = false;
        for hook in hooks {
            resumed |= hook(conn, name).map_err(HandlerError::new)?;
        }
        Ok(resumed)
    }

    /// Frees the name of a connection that has ended.
    fn release(&self, conn: &Conn) {
        if let Some(name) = conn.name() {
            let mut names = lock(&self.0.names);
            if names.get(&name) == Some(&conn.id()) {
                names.remove(&name);
            }
        }
    }

    /// The id of the live connection holding `name`.
    fn holder(&self, name: &str) -> Option<u64> {
        lock(&self.0.names).get(name).copied()
    }
}

/// A live connection as [`ServerNames::peers`] lists it.
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

/// Reaching a server's peers by name. [`on_identify`](Self::on_identify)
/// installs the names ([`Names::install`]) if the server has none yet;
/// the others only read them (no names: no peer is named).
pub trait ServerNames {
    /// Adds a hook that runs when a peer names itself with
    /// `drs.identify` and no live connection holds the name, before the
    /// answer is sent. It returns whether it holds state for that name
    /// from an earlier connection (subscriptions, undelivered messages):
    /// the answer's `resumed` is true if any hook says so. A hook refuses
    /// the name with `Err(reason)` (another identity owns it, a bound is
    /// reached): the peer gets `drs.error` with the reason and keeps the
    /// name it had. Hooks must not block; one that has work to do for the
    /// name spawns it.
    fn on_identify(
        &self,
        hook: impl Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync + 'static,
    ) -> &Self;

    /// The live connection whose peer identified as `name`.
    fn named(&self, name: &str) -> Option<Conn>;

    /// The live connections with what is known of each peer: its name,
    /// its address and transport.
    fn peers(&self) -> Vec<Peer>;

    /// Calls `action` on the peer named `name` (see [`Conn::call`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    fn call_named<R>(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> Result<Call<R>, Error>;

    /// Fires `action` to the peer named `name` (see [`Conn::fire`]); fails
    /// with [`Error::NoPeer`] when no live connection has that name.
    fn fire_named(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static;
}

impl ServerNames for Server {
    fn on_identify(
        &self,
        hook: impl Fn(&Conn, &Arc<str>) -> Result<bool, String> + Send + Sync + 'static,
    ) -> &Self {
        let names = Names::install(self);
        names
            .0
            .hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(hook));
        self
    }

    fn named(&self, name: &str) -> Option<Conn> {
        let id = Names::of(self)?.holder(name)?;
        self.connection(id)
    }

    fn peers(&self) -> Vec<Peer> {
        self.connections()
            .iter()
            .map(|conn| Peer {
                id: conn.id(),
                name: conn.name(),
                peer_addr: conn.peer_addr().map(str::to_string),
                transport: conn.info().transport,
            })
            .collect()
    }

    fn call_named<R>(
        &self,
        name: &str,
        action: &str,
        body: impl Serialize,
    ) -> Result<Call<R>, Error> {
        let conn = self
            .named(name)
            .ok_or_else(|| Error::NoPeer(name.to_string()))?;
        Ok(conn.call(action, body))
    }

    fn fire_named(
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

/// A connection's peer's name.
pub trait ConnName {
    /// The name the peer gave with `drs.identify`, if any.
    fn name(&self) -> Option<Arc<str>>;
}

impl ConnName for Conn {
    fn name(&self) -> Option<Arc<str>> {
        self.get::<PeerName>().map(|PeerName(name)| name)
    }
}
