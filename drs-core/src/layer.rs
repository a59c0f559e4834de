//! [`Layer`]: middleware around handlers.

use std::{fmt, future::Future, sync::Arc};

use crate::handler::{BoxedHandler, Msg, Outcome, ReplyFuture};

/// Middleware around a handler: it receives each command and the rest of
/// the stack ([`Next`]), and may run it, skip it (short-circuit with an
/// outcome of its own), change the command's extensions before, read or
/// replace the outcome after, time it, retry it.
///
/// Layers apply to a whole server ([`Server::layer`](crate::Server::layer)),
/// to one action ([`Server::layer_for`](crate::Server::layer_for)), or to
/// everything one connection serves ([`Conn::layer`](crate::Conn::layer)).
/// Around one command they nest as
/// `connection layers ∘ server layers ∘ action layers ∘ handler`; within
/// each group the layer added first is the outermost (it sees the command
/// first and the outcome last). Commands for which there is no handler
/// pass through the connection's and server's layers too (their outcome is
/// `No handlers for <action>`).
///
/// A layer whose future is ready on first poll when the handler's is (it
/// awaits nothing else) keeps a command on the connection's fast path: no
/// task is spawned for it. A panic in a layer is answered with
/// `drs.exception`, like one in a handler.
///
/// The quickest way to write one is [`layer_fn`]:
///
/// ```
/// use drs_core::{layer_fn, Msg, Next, Outcome, Server};
///
/// let server = Server::new();
/// server.layer(layer_fn(|msg: Msg, next: Next| async move {
///     if msg.action().starts_with("admin.") {
///         return Outcome::error("not allowed");
///     }
///     let started = std::time::Instant::now();
///     let outcome = next.run(msg.clone()).await;
///     tracing::debug!(action = msg.action(), took = ?started.elapsed());
///     outcome
/// }));
/// ```
pub trait Layer: Send + Sync + 'static {
    /// Serves one command, usually by calling `next.run(msg)`.
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture;
}

/// The rest of the stack below a [`Layer`]: the inner layers and the
/// handler.
#[derive(Clone)]
pub struct Next {
    inner: BoxedHandler,
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}

impl Next {
    /// Runs the rest of the stack for `msg`. It may be run more than once
    /// (a retry) with clones of the same `Msg`.
    pub fn run(self, msg: Msg) -> ReplyFuture {
        (self.inner)(msg)
    }
}

/// A [`Layer`] from an async function of the command and the rest of the
/// stack; see [`Layer`] for an example.
pub fn layer_fn<F, Fut>(f: F) -> FnLayer<F>
where
    F: Fn(Msg, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    FnLayer { f }
}

/// The [`Layer`] made by [`layer_fn`].
#[derive(Clone)]
pub struct FnLayer<F> {
    f: F,
}

impl<F> fmt::Debug for FnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnLayer").finish_non_exhaustive()
    }
}

impl<F, Fut> Layer for FnLayer<F>
where
    F: Fn(Msg, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        Box::pin((self.f)(msg, next))
    }
}

/// `inner` inside `layer`.
pub(crate) fn wrap(layer: Arc<dyn Layer>, inner: BoxedHandler) -> BoxedHandler {
    Arc::new(move |msg| {
        layer.call(
            msg,
            Next {
                inner: inner.clone(),
            },
        )
    })
}

/// `inner` inside every layer of `layers`, the first outermost.
pub(crate) fn wrap_all(layers: &[Arc<dyn Layer>], inner: BoxedHandler) -> BoxedHandler {
    layers
        .iter()
        .rev()
        .fold(inner, |inner, layer| wrap(layer.clone(), inner))
}
