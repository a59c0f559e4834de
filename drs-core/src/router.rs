//! The action → handler map, with before/after hooks.

use std::{
    collections::HashMap,
    convert::Infallible,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    command::{is_reply_action, PING},
    handler::{erase, BoxedHandler, Handler, HandlerFuture, Msg, Outcome},
    sync::{read, write},
};

pub(crate) type AfterHook = Arc<dyn Fn(&Msg, &Outcome) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct Table {
    routes: HashMap<String, BoxedHandler>,
    before: Vec<BoxedHandler>,
    after: Vec<AfterHook>,
}

/// Routes of a client, of a server, or of one server connection (whose own
/// routes come first and whose hooks are the server's).
pub(crate) struct Router {
    table: RwLock<Arc<Table>>,
    has_routes: AtomicBool,
    parent: Option<Arc<Router>>,
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

    fn lookup(&self, action: &str) -> (Option<BoxedHandler>, Arc<Table>) {
        let table = read(&self.table).clone();
        (table.routes.get(action).cloned(), table)
    }

    /// The future that serves one command: hooks around its handler (chain),
    /// or `No handlers for <action>`.
    pub(crate) fn serve(&self, msg: Msg) -> HandlerFuture {
        let (route, hooks) = match &self.parent {
            None => self.lookup(msg.action()),
            Some(parent) => {
                let local = if self.has_routes.load(Ordering::Acquire) {
                    self.lookup(msg.action()).0
                } else {
                    None
                };
                let (inherited, hooks) = parent.lookup(msg.action());
                (local.or(inherited), hooks)
            }
        };
        match route {
            Some(route) if hooks.before.is_empty() && hooks.after.is_empty() => route(msg),
            route => Box::pin(serve_with_hooks(msg, route, hooks)),
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
            let o = hook(msg.clone()).await;
            if !o.is_ok() {
                outcome = Some(o);
                break;
            }
        }
        let outcome = match (outcome, route) {
            (Some(rejected), _) => rejected,
            (None, Some(route)) => route(msg.clone()).await,
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
