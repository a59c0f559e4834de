//! The action → handler map, with before/after hooks.

use std::{
    collections::HashMap,
    convert::Infallible,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    command::{is_reply_action, PING},
    handler::{erase, guarded, BoxedHandler, Handler, HandlerFuture, Msg, Outcome},
    sync::{read, write},
};

pub(crate) type AfterHook = Arc<dyn Fn(&Msg, &Outcome) + Send + Sync>;

/// Hashes action names: short strings, no adversary to fear (the table is
/// written by the program, not the peer), so FxHash-style mixing suffices.
#[derive(Default, Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

type Routes = HashMap<String, BoxedHandler, std::hash::BuildHasherDefault<NameHasher>>;

#[derive(Clone, Default)]
pub(crate) struct Table {
    routes: Routes,
    /// Per-action handler deadlines.
    timeouts: HashMap<String, Duration>,
    before: Vec<BoxedHandler>,
    after: Vec<AfterHook>,
}

/// Routes of a client, of a server, or of one server connection (whose own
/// routes come first and whose hooks are the server's).
pub(crate) struct Router {
    table: RwLock<Arc<Table>>,
    /// Bumped on every change, so that connections can cache the table.
    version: AtomicU64,
    has_routes: AtomicBool,
    parent: Option<Arc<Router>>,
}

/// The tables a connection serves from, taken from its router at one
/// version; valid until [`Router::is_current`] says otherwise.
pub(crate) struct Snapshot {
    /// A server connection's own routes, if it has any.
    local: Option<Arc<Table>>,
    /// The client's or the server's routes, with the hooks.
    shared: Arc<Table>,
    versions: (u64, u64),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Router {
    /// A router with the built-in `drs.ping`.
    pub(crate) fn root() -> Arc<Self> {
        let router = Router {
            table: RwLock::default(),
            version: AtomicU64::new(0),
            has_routes: AtomicBool::new(false),
            parent: None,
        };
        router.on(PING, || async { Ok::<_, Infallible>(now_ms()) });
        Arc::new(router)
    }

    /// A router for one connection of a server: empty, falling back to `parent`.
    pub(crate) fn child(parent: Arc<Router>) -> Arc<Self> {
        Arc::new(Router {
            table: RwLock::default(),
            version: AtomicU64::new(0),
            has_routes: AtomicBool::new(false),
            parent: Some(parent),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Table)) {
        let mut guard = write(&self.table);
        let mut table = Table::clone(&guard);
        f(&mut table);
        self.has_routes
            .store(!table.routes.is_empty(), Ordering::Release);
        *guard = Arc::new(table);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn on<H: Handler<A>, A>(&self, action: impl Into<String>, handler: H) {
        let action = action.into();
        assert!(
            !is_reply_action(&action),
            "`{action}` is a reply action reserved by drs and cannot have a handler"
        );
        let handler = erase(handler);
        self.update(|t| {
            t.routes.insert(action, handler);
        });
    }

    pub(crate) fn timeout(&self, action: impl Into<String>, limit: Option<Duration>) {
        let action = action.into();
        self.update(|t| match limit {
            Some(limit) => {
                t.timeouts.insert(action, limit);
            }
            None => {
                t.timeouts.remove(&action);
            }
        });
    }

    /// Drops every route and hook (a connection's, when it has ended: its
    /// handlers may hold handles to it).
    pub(crate) fn clear(&self) {
        self.update(|t| *t = Table::default());
    }

    pub(crate) fn off(&self, action: &str) -> bool {
        let mut found = false;
        self.update(|t| found = t.routes.remove(action).is_some());
        found
    }

    pub(crate) fn before<H: Handler<A>, A>(&self, hook: H) {
        let hook = erase(hook);
        self.update(|t| t.before.push(hook));
    }

    pub(crate) fn after(&self, hook: AfterHook) {
        self.update(|t| t.after.push(hook));
    }

    fn versions(&self) -> (u64, u64) {
        let own = self.version.load(Ordering::Acquire);
        let parent = self
            .parent
            .as_ref()
            .map_or(0, |p| p.version.load(Ordering::Acquire));
        (own, parent)
    }

    /// The current tables.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let versions = self.versions();
        let own = read(&self.table).clone();
        match &self.parent {
            None => Snapshot {
                local: None,
                shared: own,
                versions,
            },
            Some(parent) => Snapshot {
                local: self.has_routes.load(Ordering::Acquire).then_some(own),
                shared: read(&parent.table).clone(),
                versions,
            },
        }
    }

    /// Whether `snapshot` still reflects the tables.
    pub(crate) fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.versions() == snapshot.versions
    }
}

impl Snapshot {
    /// The handler deadline of `action`, if it has its own.
    pub(crate) fn timeout(&self, action: &str) -> Option<Duration> {
        let own = self.local.as_ref().and_then(|t| t.timeouts.get(action));
        own.or_else(|| self.shared.timeouts.get(action)).copied()
    }

    /// The future that serves one command: hooks around its handler (or
    /// chain), or `No handlers for <action>`.
    pub(crate) fn serve(&self, msg: Msg) -> HandlerFuture {
        let action = msg.action();
        let route = self
            .local
            .as_ref()
            .and_then(|t| t.routes.get(action))
            .or_else(|| self.shared.routes.get(action));
        let hooks = &self.shared;
        match route {
            Some(route) if hooks.before.is_empty() && hooks.after.is_empty() => route(msg),
            route => Box::pin(serve_with_hooks(msg, route.cloned(), hooks.clone())),
        }
    }
}

fn no_handler(msg: &Msg) -> Outcome {
    Outcome::Error(format!("No handlers for {}", msg.action()))
}

async fn serve_with_hooks(msg: Msg, route: Option<BoxedHandler>, hooks: Arc<Table>) -> Outcome {
    {
        let mut outcome = None;
        for hook in &hooks.before {
            let o = guarded(hook(msg.clone())).await;
            if !o.is_ok() {
                outcome = Some(o);
                break;
            }
        }
        let outcome = match (outcome, route) {
            (Some(rejected), _) => rejected,
            (None, Some(route)) => guarded(route(msg.clone())).await,
            (None, None) => no_handler(&msg),
        };
        for hook in &hooks.after {
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&msg, &outcome))).is_err() {
                tracing::error!(action = msg.action(), "an after hook panicked");
            }
        }
        outcome
    }
}
