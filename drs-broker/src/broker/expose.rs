//! Expose routing: calls of an action a connection exposed are sent to
//! it, ahead of the server's own handlers.

use super::*;

impl Broker {
    /// Routes calls of `action` from other connections to `conn`: allowed
    /// by the expose jails ([`BrokerConfig::expose_jail`],
    /// [`BrokerConfig::role_expose`]), and never over an action the server
    /// handles itself unless [`BrokerConfig::expose_overrides`] allows it.
    pub fn expose(&self, conn: &Conn, action: &str) -> Result<(), HandlerError> {
        if action.is_empty() || action.starts_with("drs.") {
            return Err(HandlerError::new(format!("cannot expose {action:?}")));
        }
        let config = &self.inner.config;
        let overridable = config
            .expose_overrides
            .as_ref()
            .is_some_and(|j| j.allows(action));
        if !config.may_expose(conn, action) || (!overridable && self.server_handles(action)) {
            tracing::warn!(
                action,
                peer = conn.peer_addr(),
                "drs.expose refused: not allowed"
            );
            return Err(HandlerError::new(format!("expose not allowed: {action}")));
        }
        let mut state = lock(&self.inner.state);
        let max = self.inner.config.max_subscriptions;
        let Some((_, cs)) = state.conns.get_mut(&conn.id()) else {
            return Err(HandlerError::new("the connection is closing"));
        };
        if cs.exposed.len() >= max && !cs.exposed.contains(action) {
            return Err(HandlerError::new(format!(
                "too many exposed actions (at most {max})"
            )));
        }
        if cs.exposed.insert(action.to_string()) {
            let list = state.exposers.entry(action.to_string()).or_default();
            if list.is_empty() {
                self.inner.exposed.fetch_add(1, Ordering::AcqRel);
            }
            list.push(conn.id());
        }
        Ok(())
    }

    /// Whether the broker's server handles `action` itself.
    pub(super) fn server_handles(&self, action: &str) -> bool {
        let server = self
            .inner
            .server
            .get()
            .and_then(drs_core::WeakServer::upgrade);
        server.is_some_and(|s| s.handles(action))
    }

    /// Stops routing `action` to `conn`.
    pub fn unexpose(&self, conn: &Conn, action: &str) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            if cs.exposed.remove(action) {
                state.remove_exposer(&self.inner, action, conn.id());
            }
        }
    }

    /// The connection to relay a call of `action` from `from` to: the
    /// open exposer with the fewest relayed calls in flight, round robin
    /// among equals.
    pub(super) fn exposer_for(&self, action: &str, from: u64) -> Option<(Conn, Arc<AtomicUsize>)> {
        let mut state = lock(&self.inner.state);
        let ids = state.exposers.get(action)?;
        let n = ids.len();
        let start = state.rr;
        let mut best: Option<(usize, u64)> = None;
        for i in 0..n {
            let id = ids[(start + i) % n];
            if id == from {
                continue;
            }
            // A connection that has closed and whose end the server has
            // not processed yet serves nothing.
            let Some((_, cs)) = state.conns.get(&id).filter(|(c, _)| !c.is_ending()) else {
                continue;
            };
            let load = cs.relaying.load(Ordering::Relaxed);
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, id));
            }
        }
        state.rr = state.rr.wrapping_add(1);
        let (_, id) = best?;
        state
            .conns
            .get(&id)
            .map(|(conn, cs)| (conn.clone(), cs.relaying.clone()))
    }

    /// Whether some connection exposes `action`.
    pub fn is_exposed(&self, action: &str) -> bool {
        lock(&self.inner.state)
            .exposers
            .get(action)
            .is_some_and(|ids| !ids.is_empty())
    }
}

/// Sends calls of exposed actions to an exposer, before any handler of
/// the server's own.
pub(super) struct RouteLayer {
    pub(super) broker: Broker,
}

impl Layer for RouteLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        if self.broker.inner.exposed.load(Ordering::Acquire) == 0
            || msg.action().starts_with("drs.")
        {
            return next.run(msg);
        }
        let Some((exposer, load)) = self.broker.exposer_for(msg.action(), msg.conn().id()) else {
            return next.run(msg);
        };
        Box::pin(async move {
            load.fetch_add(1, Ordering::AcqRel);
            let _done = Decrement(load);
            if msg.key().is_none() {
                return match exposer.fire(msg.action(), msg.body()).await {
                    Ok(()) => Outcome::value(()),
                    Err(e) => Outcome::error(e.to_string()),
                };
            }
            let timeout = msg.conn().config().call_timeout;
            match exposer
                .call::<Body>(msg.action(), msg.body())
                .timeout(timeout)
                .await
            {
                Ok(body) => Outcome::Body(body),
                Err(Error::Remote(r)) => Outcome::error(r.message),
                Err(Error::Exception(r)) => Outcome::exception(r.message),
                Err(e) if e.is_closed() => Outcome::error("closed"),
                Err(Error::Timeout(d)) => Outcome::error(format!("timed out after {d:?}")),
                Err(e) => Outcome::error(e.to_string()),
            }
        })
    }
}

pub(super) struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
