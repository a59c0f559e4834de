//! [`Routes`]: a routing table as a value.

use std::sync::Arc;

use crate::{
    command::is_control_action,
    handler::{erase, Handler},
    layer::Layer,
    router::Table,
};

/// Handlers by action and the layers around them, as a value: built once,
/// then handed to whatever serves them, a [`Server`](crate::Server::routes),
/// a [`Client`](crate::Client::routes) or one [`Conn`](crate::Conn::routes)
/// (and, through a `Client`, a session or a pool). It is what each of
/// their `on`, `layer` and `layer_for` adds to, one entry at a time.
///
/// ```
/// use drs_core::{HandlerResult, Routes, Server};
///
/// fn arithmetic() -> Routes {
///     Routes::new()
///         .on("add", |(a, b): (i64, i64)| async move { HandlerResult::Ok(a + b) })
///         .on("neg", |a: i64| async move { HandlerResult::Ok(-a) })
/// }
///
/// let server = Server::new();
/// server.routes(arithmetic().merge(Routes::new().on("hello", || async { "hi" })));
/// assert!(server.handles("add") && server.handles("hello"));
/// ```
///
/// Routes added to something that already has routes are merged into
/// them: a handler replaces the one of the same action, layers are added
/// inside those already there.
#[derive(Clone, Default)]
pub struct Routes {
    pub(crate) table: Table,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("actions", &self.actions())
            .field("layers", &self.table.layers.len())
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// No routes, no layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `action` to `handler`, replacing any previous handler of it.
    ///
    /// # Panics
    /// If `action` is reserved for the call machinery (`drs.response`,
    /// `drs.error`, `drs.exception`, `drs.next`, `drs.more`, `drs.cancel`).
    pub fn on<H: Handler<A>, A>(mut self, action: impl Into<String>, handler: H) -> Self {
        let action = action.into();
        assert!(
            !is_control_action(&action),
            "`{action}` is reserved by drs for replies, streams and cancels and cannot have a handler"
        );
        self.table.routes.insert(action, erase(handler));
        self
    }

    /// Adds a [`Layer`] around every command served through these routes
    /// (commands with no handler included), inside the layers added
    /// before.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.table.layers.push(Arc::new(layer));
        self
    }

    /// Adds a [`Layer`] around the handler of `action` (kept when the
    /// handler is routed again), inside the layers added before for it and
    /// inside the layers around every command. One layer value shares its
    /// state between everything it serves.
    pub fn layer_for(mut self, action: impl Into<String>, layer: impl Layer) -> Self {
        let layer: Arc<dyn Layer> = Arc::new(layer);
        self.table
            .action_layers
            .entry(action.into())
            .or_default()
            .push(layer);
        self
    }

    /// These routes and `other`'s: `other`'s handlers replace those of the
    /// same action, its layers go inside these.
    pub fn merge(mut self, other: Routes) -> Self {
        self.table.merge(other.table);
        self
    }

    /// The routed actions, sorted.
    pub fn actions(&self) -> Vec<&str> {
        let mut actions: Vec<&str> = self.table.routes.keys().map(String::as_str).collect();
        actions.sort_unstable();
        actions
    }

    /// Whether `action` has a handler here.
    pub fn handles(&self, action: &str) -> bool {
        self.table.routes.contains_key(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerResult;

    #[test]
    fn merging_replaces_handlers_and_appends_layers() {
        let a = Routes::new()
            .on("x", || async { HandlerResult::Ok(1) })
            .on("y", || async { HandlerResult::Ok(2) })
            .layer(crate::layer_fn(|m, n: crate::Next| n.run(m)));
        let b = Routes::new()
            .on("y", || async { HandlerResult::Ok(3) })
            .on("z", || async { HandlerResult::Ok(4) })
            .layer_for("z", crate::layer_fn(|m, n: crate::Next| n.run(m)));
        let merged = a.merge(b);
        assert_eq!(merged.actions(), ["x", "y", "z"]);
        assert_eq!(merged.table.layers.len(), 1);
        assert_eq!(merged.table.action_layers["z"].len(), 1);
        assert!(merged.handles("y") && !merged.handles("w"));
    }

    #[test]
    #[should_panic(expected = "`drs.response` is reserved")]
    fn a_reserved_action_cannot_be_routed() {
        let _ = Routes::new().on("drs.response", || async { HandlerResult::Ok(()) });
    }
}
