//! The action → handler map, with its layers.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    command::PING,
    handler::{BoxedHandler, HandlerFuture, Msg, Outcome},
    layer::{wrap_all, Layer},
    routes::Routes,
    sync::{read, write},
};

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

type RouteMap = HashMap<String, BoxedHandler, std::hash::BuildHasherDefault<NameHasher>>;

#[derive(Clone, Default)]
pub(crate) struct Table {
    /// Handlers as registered.
    pub(crate) routes: RouteMap,
    /// Layers of one action, the outermost first.
    pub(crate) action_layers: HashMap<String, Vec<Arc<dyn Layer>>>,
    /// Layers around every command, the outermost first.
    pub(crate) layers: Vec<Arc<dyn Layer>>,
    /// Each route inside its action's layers and the table's layers.
    composed: RouteMap,
    /// `No handlers for …` inside the table's layers.
    fallback: Option<BoxedHandler>,
}

impl Table {
    /// Adds `other`'s routes (replacing those of the same action) and its
    /// layers (inside these).
    pub(crate) fn merge(&mut self, other: Table) {
        self.routes.extend(other.routes);
        for (action, layers) in other.action_layers {
            self.action_layers.entry(action).or_default().extend(layers);
        }
        self.layers.extend(other.layers);
    }

    /// Rebuilds what is derived from the routes and layers.
    fn compose(&mut self) {
        let no_layers = Vec::new();
        self.composed = self
            .routes
            .iter()
            .map(|(action, route)| {
                let own = self.action_layers.get(action).unwrap_or(&no_layers);
                let inner = wrap_all(own, route.clone());
                (action.clone(), wrap_all(&self.layers, inner))
            })
            .collect();
        self.fallback =
            (!self.layers.is_empty()).then(|| wrap_all(&self.layers, Arc::new(no_handler)));
    }

    fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.layers.is_empty()
    }
}

/// Routes of a client, of a server, or of one server connection (whose own
/// routes and layers come first and whose fallback is the server).
pub(crate) struct Router {
    table: RwLock<Arc<Table>>,
    /// Bumped on every change, so that connections can cache the table.
    version: AtomicU64,
    /// Whether the table has routes or layers (a server connection's
    /// table, consulted only then).
    has_routes: AtomicBool,
    parent: Option<Arc<Router>>,
}

/// The tables a connection serves from, taken from its router at one
/// version; valid until [`Router::is_current`] says otherwise.
pub(crate) struct Snapshot {
    /// A server connection's own routes and layers, if it has any.
    local: Option<Arc<Table>>,
    /// The client's or the server's routes, with their layers.
    shared: Arc<Table>,
    versions: (u64, u64),
    /// With `local`: each routed action's handler inside every layer,
    /// made on first use (only actions with a route, so it is bounded).
    cache: HashMap<String, BoxedHandler, std::hash::BuildHasherDefault<NameHasher>>,
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
        router.add(Routes::new().on(PING, || async { Ok::<_, Infallible>(now_ms()) }));
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
        table.compose();
        self.has_routes.store(!table.is_empty(), Ordering::Release);
        *guard = Arc::new(table);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Adds `routes` to the table: its handlers replace those of the same
    /// action, its layers go inside those already there.
    pub(crate) fn add(&self, routes: Routes) {
        self.update(|t| t.merge(routes.table));
    }

    pub(crate) fn clear(&self) {
        self.update(|t| *t = Table::default());
    }

    pub(crate) fn off(&self, action: &str) -> bool {
        let mut found = false;
        self.update(|t| found = t.routes.remove(action).is_some());
        found
    }

    /// Adds a layer outside every other (the server's gate).
    pub(crate) fn layer_outermost(&self, layer: Arc<dyn Layer>) {
        self.update(|t| t.layers.insert(0, layer));
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
        let (local, shared) = match &self.parent {
            None => (None, own),
            Some(parent) => (
                self.has_routes.load(Ordering::Acquire).then_some(own),
                read(&parent.table).clone(),
            ),
        };
        Snapshot {
            local,
            shared,
            versions,
            cache: Default::default(),
        }
    }

    /// Whether `snapshot` still reflects the tables.
    pub(crate) fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.versions() == snapshot.versions
    }
}

impl Snapshot {
    /// Whether `action` has a handler here (not the fallback).
    pub(crate) fn has_route(&self, action: &str) -> bool {
        self.cache.contains_key(action)
            || self
                .local
                .as_ref()
                .is_some_and(|l| l.composed.contains_key(action))
            || self.shared.composed.contains_key(action)
    }

    /// The future that serves one command: its handler inside its layers,
    /// or `No handlers for <action>` inside the layers of everything.
    pub(crate) fn serve(&mut self, msg: Msg) -> HandlerFuture {
        let shared = &self.shared;
        let Some(local) = &self.local else {
            return match shared.composed.get(msg.action()) {
                Some(route) => route(msg),
                None => match &shared.fallback {
                    Some(fallback) => fallback(msg),
                    None => no_handler(msg),
                },
            };
        };
        if let Some(route) = self.cache.get(msg.action()) {
            return route(msg);
        }
        // The connection's own route inside its action layers only: the
        // connection's layers go around everything, once, below.
        let (inner, routed) = match local.routes.get(msg.action()) {
            Some(own) => {
                let own = match local.action_layers.get(msg.action()) {
                    Some(layers) => wrap_all(layers, own.clone()),
                    None => own.clone(),
                };
                (wrap_all(&shared.layers, own), true)
            }
            None => match shared.composed.get(msg.action()) {
                Some(route) => (route.clone(), true),
                None => (
                    shared
                        .fallback
                        .clone()
                        .unwrap_or_else(|| Arc::new(no_handler)),
                    false,
                ),
            },
        };
        let route = wrap_all(&local.layers, inner);
        if routed {
            self.cache.insert(msg.action().to_owned(), route.clone());
        }
        route(msg)
    }
}

fn no_handler_outcome(msg: &Msg) -> Outcome {
    Outcome::Error(format!("No handlers for {}", msg.action()))
}

fn no_handler(msg: Msg) -> HandlerFuture {
    Box::pin(std::future::ready(no_handler_outcome(&msg)))
}
