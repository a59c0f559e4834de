//! Hooks around handlers, each a [`Layer`] (or, for [`Chain`], a
//! handler): [`before`] runs a handler first and answers its error,
//! [`after`] sees every outcome, [`Chain`] runs handlers in order.

use std::{fmt, future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use drs_core::{box_handler, layer_fn, BoxedHandler, Handler, Layer, Msg, Next, Outcome};
use futures::FutureExt;

/// A [`Layer`] that runs `hook` (any [`Handler`]) before the rest of the
/// stack: an error (or a panic) stops the command and is its reply; a
/// success runs the rest, and the hook's value is dropped. Use it for
/// authorization and for refusing commands early.
///
/// ```
/// use drs_core::{HandlerError, HandlerResult, Msg, Server};
///
/// let server = Server::new();
/// server.layer(drs_layers::before(|msg: Msg| async move {
///     if msg.action().starts_with("admin.") {
///         return Err(HandlerError::new("forbidden"));
///     }
///     HandlerResult::Ok(())
/// }));
/// ```
pub fn before<H: Handler<A>, A>(hook: H) -> impl Layer + Clone {
    let hook = box_handler(hook);
    layer_fn(move |msg: Msg, next: Next| {
        let verdict = hook(msg.clone());
        async move {
            let verdict = guarded(verdict).await;
            if !verdict.is_ok() {
                return verdict;
            }
            next.run(msg).await
        }
    })
}

/// A [`Layer`] that calls `hook` with every command it wraps and the
/// outcome the rest of the stack gave it, before the reply is sent
/// (logging, metrics). A panic in the stack is seen as the
/// `drs.exception` it is answered with; a panic in `hook` is logged and
/// changes nothing.
///
/// Like every layer it sees what the layers inside it produce. To see
/// every outcome, rejections by every other layer and by the server's
/// gate included, add it with `Server::layer_outermost`; hooks added so
/// run in the order added.
///
/// ```
/// use drs_core::{Msg, Outcome, Server};
///
/// let server = Server::new();
/// server.layer_outermost(drs_layers::after(|msg: &Msg, outcome: &Outcome| {
///     tracing::info!(action = msg.action(), reply = outcome.reply_action());
/// }));
/// ```
pub fn after(hook: impl Fn(&Msg, &Outcome) + Send + Sync + 'static) -> impl Layer + Clone {
    let hook = Arc::new(hook);
    layer_fn(move |msg: Msg, next: Next| {
        let hook = hook.clone();
        async move {
            let outcome = guarded(next.run(msg.clone())).await;
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&msg, &outcome))).is_err() {
                tracing::error!(action = msg.action(), "an after hook panicked");
            }
            outcome
        }
    })
}

/// Handlers run in order over one command: the first error stops the chain,
/// the last handler's value is the reply, the handlers share the command's
/// [`Msg`] extensions. A chain is itself a [`Handler`].
///
/// ```
/// use drs_core::{HandlerError, Msg, Server};
/// use drs_layers::Chain;
///
/// let chain = Chain::new()
///     .then(|msg: Msg| async move {
///         let user = msg.conn().get::<String>().ok_or(HandlerError::new("not logged in"))?;
///         msg.insert(user);
///         Ok::<_, HandlerError>(())
///     })
///     .then(|msg: Msg| async move { Ok::<_, HandlerError>(format!("hello {}", msg.get::<String>().unwrap())) });
/// Server::new().on("hello", chain);
/// ```
#[derive(Clone, Default)]
pub struct Chain {
    handlers: Arc<Vec<BoxedHandler>>,
}

impl Chain {
    /// An empty chain (its reply is null).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a handler.
    pub fn then<H: Handler<A>, A>(mut self, handler: H) -> Self {
        Arc::make_mut(&mut self.handlers).push(box_handler(handler));
        self
    }

    /// Number of handlers.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("len", &self.handlers.len())
            .finish()
    }
}

/// Marker for the [`Handler`] implementation of [`Chain`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ChainMarker;

impl Handler<ChainMarker> for Chain {
    fn call(&self, msg: Msg) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        if let [only] = &self.handlers[..] {
            return only(msg);
        }
        let handlers = self.handlers.clone();
        Box::pin(async move {
            let mut last = Outcome::Value(Box::new(()));
            for h in handlers.iter() {
                last = guarded(h(msg.clone())).await;
                if !last.is_ok() {
                    break;
                }
            }
            last
        })
    }
}

/// Runs one handler's future, turning a panic into its `drs.exception`
/// outcome, so that what comes after still sees an outcome.
async fn guarded(fut: impl Future<Output = Outcome>) -> Outcome {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(Outcome::from_panic)
}
