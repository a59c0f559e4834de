//! Delivery to named subscribers: identify and resume, the window of
//! unacknowledged messages, acknowledgements, holding.

use super::*;

impl Broker {
    /// Holds (or releases) live and retroactive deliveries to `conn` until
    /// it says it is ready (Rembus's `reactive`).
    pub fn hold(&self, conn: &Conn, held: bool) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            cs.held = held;
        }
        if let Some(name) = conn.name() {
            if let Some(component) = state.components.get_mut(&name) {
                component.held = held;
                component.wake.notify_one();
            }
        }
    }

    /// Makes the retroactive deliveries to `conn` fires, each done once
    /// sent, instead of calls acknowledged by their reply: for peers that
    /// acknowledge nothing (Rembus components). Set it before the peer
    /// identifies.
    pub fn deliver_unacknowledged(&self, conn: &Conn) {
        let mut state = lock(&self.inner.state);
        if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
            cs.unacknowledged = true;
        }
    }

    /// The names and patterns `conn` has subscribed to, and the actions it
    /// exposes.
    pub fn registrations(&self, conn: &Conn) -> (Vec<String>, Vec<String>) {
        let state = lock(&self.inner.state);
        let exposed = state
            .conns
            .get(&conn.id())
            .map(|(_, cs)| cs.exposed.iter().cloned().collect())
            .unwrap_or_default();
        let subscribed = match conn.name() {
            Some(name) => state
                .components
                .get(&name)
                .map(|c| c.patterns.keys().cloned().collect())
                .unwrap_or_default(),
            None => state
                .conns
                .get(&conn.id())
                .map(|(_, cs)| cs.patterns.iter().cloned().collect())
                .unwrap_or_default(),
        };
        (exposed, subscribed)
    }

    /// `conn` took `name`: it gets the name's subscriptions and backlog,
    /// unless another identity owns the name or its identity holds as
    /// many names as it may.
    pub(super) fn identified(&self, conn: &Conn, name: &Arc<str>) -> Result<bool, String> {
        let inner = &self.inner;
        let who: Option<Arc<str>> = conn.identity().map(|i| Arc::from(i.name.as_str()));
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match state.components.get(name) {
            Some(c) => {
                if c.owner.is_some() && c.owner != who {
                    tracing::warn!(
                        %name,
                        identity = who.as_deref(),
                        peer = conn.peer_addr(),
                        "drs.identify refused: the name belongs to another identity"
                    );
                    return Err(drs_names::NAME_TAKEN.to_string());
                }
            }
            None => {
                if let Some(who) = &who {
                    let max = inner.config.max_names_per_identity;
                    let held = state
                        .components
                        .values()
                        .filter(|c| c.owner.as_ref() == Some(who))
                        .count();
                    if held >= max {
                        return Err(format!("too many names for one identity (at most {max})"));
                    }
                }
            }
        }
        // A connection naming itself again leaves its former name, which
        // is forgotten if nothing is kept for it.
        let left: Vec<Arc<str>> = state
            .components
            .iter()
            .filter(|(other, c)| {
                *other != name && c.conn.as_ref().is_some_and(|c| c.id() == conn.id())
            })
            .map(|(other, _)| other.clone())
            .collect();
        for other in left {
            state.leave(inner, &other);
        }
        let (held, unacknowledged) = state
            .conns
            .get(&conn.id())
            .map_or((false, false), |(_, cs)| (cs.held, cs.unacknowledged));
        let Some(component) = state.components.get_mut(name) else {
            if state.components.len() >= inner.config.max_names {
                return Ok(false);
            }
            let mut component = Component::new(inner, name);
            component.conn = Some(conn.clone());
            component.owner = who;
            component.held = held;
            component.unacknowledged = unacknowledged;
            state.components.insert(name.clone(), component);
            self.start_delivery(conn.clone(), name.clone());
            return Ok(false);
        };
        let resumed = component.has_state();
        // What it missed and no longer wants (older than its windows).
        let now = now_ns();
        let unwanted: Vec<u64> = component
            .pending
            .values()
            .filter(|m| !component.wants_missed(m, now))
            .map(|m| m.seq)
            .collect();
        component.conn = Some(conn.clone());
        component.held = held;
        component.unacknowledged = unacknowledged;
        component.drop_inflight();
        component.reporting = false;
        if component.owner.is_none() && who.is_some() {
            // Claimed before authentication was required: bound now.
            component.owner = who;
            if component.has_state() {
                state.save_component(inner, name);
            }
        }
        for seq in unwanted {
            state.release(inner, name, seq);
        }
        self.start_delivery(conn.clone(), name.clone());
        Ok(resumed)
    }

    pub(super) fn disconnected(&self, conn: &Conn) {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        if let Some((_, cs)) = state.conns.remove(&conn.id()) {
            for pattern in cs.patterns {
                state.trie.remove(
                    &pattern,
                    &Sub {
                        owner: Owner::Conn(conn.id()),
                        retroactive: false,
                    },
                );
            }
            for action in cs.exposed {
                state.remove_exposer(inner, &action, conn.id());
            }
        }
        if let Some(name) = conn.name() {
            if state
                .components
                .get(&name)
                .is_some_and(|c| c.conn.as_ref().is_some_and(|c| c.id() == conn.id()))
            {
                state.leave(inner, &name);
            }
        }
        state.note_size(inner);
    }

    pub(super) fn start_delivery(&self, conn: Conn, name: Arc<str>) {
        let broker = self.clone();
        self.inner
            .tasks
            .spawn(async move { broker.deliver(conn, name).await });
    }

    /// Sends `name`'s backlog, then what comes, to `conn`, in order, at
    /// most a window of deliveries awaiting their acknowledgement.
    pub(super) async fn deliver(self, conn: Conn, name: Arc<str>) {
        enum Next {
            Message(Arc<Stored>, bool),
            Report(u64),
            Wait(Arc<Notify>),
            Stop,
        }
        type Acked = (Option<u64>, u64, Result<Body, Error>);
        let inner = &self.inner;
        let mut waiting: FuturesUnordered<futures::future::BoxFuture<'static, Acked>> =
            FuturesUnordered::new();
        loop {
            let next = {
                let mut state = lock(&inner.state);
                let window = inner.config.window;
                let max_age = inner.config.backlog.max_age;
                match state.components.get_mut(&name) {
                    Some(c) if c.conn.as_ref().is_some_and(|c| c.id() == conn.id()) => {
                        if c.held {
                            Next::Wait(c.wake.clone())
                        } else if c.missed > 0 && !c.reporting {
                            c.reporting = true;
                            Next::Report(c.missed)
                        } else if waiting.len() >= window {
                            Next::Wait(c.wake.clone())
                        } else {
                            let now = now_ns();
                            let expired: Vec<(u64, bool)> = c
                                .pending
                                .values()
                                .take_while(|m| {
                                    now.saturating_sub(m.time) > max_age.as_nanos() as u64
                                })
                                .map(|m| (m.seq, c.inflight.contains(&m.seq)))
                                .collect();
                            let found = c
                                .pending
                                .iter()
                                .find(|(seq, _)| {
                                    !c.inflight.contains(seq)
                                        && !expired.iter().any(|(s, _)| s == *seq)
                                })
                                .map(|(_, m)| m.clone());
                            if let Some(m) = &found {
                                c.inflight.insert(m.seq);
                            }
                            let wake = c.wake.clone();
                            if !expired.is_empty() {
                                // One on its way is missed only if not
                                // acknowledged after all (see `answered`).
                                for (seq, sending) in expired {
                                    if state.release(inner, &name, seq) && !sending {
                                        if let Some(c) = state.components.get_mut(&name) {
                                            c.missed += 1;
                                        }
                                    }
                                }
                                state.save_component(inner, &name);
                            }
                            let fire = state
                                .components
                                .get(&name)
                                .is_some_and(|c| c.unacknowledged);
                            match found {
                                Some(m) => Next::Message(m, fire),
                                None => Next::Wait(wake),
                            }
                        }
                    }
                    _ => Next::Stop,
                }
            };
            match next {
                Next::Stop => return,
                Next::Message(m, true) => {
                    // Done once sent: the peer acknowledges nothing.
                    let sent = conn.fire(&m.topic, &m.body).await;
                    match sent {
                        Ok(()) => {
                            self.answered(conn.id(), &name, Some(m.seq), 0, Ok(Body::absent()))
                        }
                        Err(_) => {
                            self.unmark(conn.id(), &name, m.seq);
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Message(m, false) => {
                    let call = conn
                        .call::<Body>(&m.topic, &m.body)
                        .timeout(inner.config.ack_timeout)
                        .send()
                        .await;
                    match call {
                        Ok(sent) => {
                            let seq = m.seq;
                            waiting.push(Box::pin(async move { (Some(seq), 0, sent.await) }));
                        }
                        Err(_) => {
                            self.unmark(conn.id(), &name, m.seq);
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Report(n) => {
                    match conn
                        .call::<Body>(MISSED, Missed { missed: n })
                        .timeout(inner.config.ack_timeout)
                        .send()
                        .await
                    {
                        Ok(sent) => waiting.push(Box::pin(async move { (None, n, sent.await) })),
                        Err(_) => {
                            conn.closed().await;
                            return;
                        }
                    }
                }
                Next::Wait(wake) => {
                    tokio::select! {
                        () = wake.notified() => {}
                        Some((seq, reported, result)) = waiting.next(), if !waiting.is_empty() => {
                            self.answered(conn.id(), &name, seq, reported, result);
                        }
                        () = conn.closed() => {
                            // Replies read before the end still count.
                            while let Some(Some((seq, reported, result))) =
                                futures::FutureExt::now_or_never(waiting.next())
                            {
                                self.answered(conn.id(), &name, seq, reported, result);
                            }
                            return;
                        }
                    }
                }
            }
            // Take in whatever has been answered meanwhile.
            while let Some(Some((seq, reported, result))) =
                futures::FutureExt::now_or_never(waiting.next())
            {
                self.answered(conn.id(), &name, seq, reported, result);
            }
        }
    }

    /// A delivery (or a report) to connection `from` was answered, or not.
    /// An acknowledgement always counts; the bookkeeping of what is on its
    /// way belongs to the connection holding the name, so an answer from one
    /// it has since gone to another leaves that alone.
    pub(super) fn answered(
        &self,
        from: u64,
        name: &Arc<str>,
        seq: Option<u64>,
        reported: u64,
        result: Result<Body, Error>,
    ) {
        let inner = &self.inner;
        let acked = match &result {
            Ok(_) | Err(Error::Remote(_) | Error::Exception(_) | Error::Decode(_)) => true,
            Err(_) => false,
        };
        let mut state = lock(&inner.state);
        let current = |c: &Component| c.conn.as_ref().is_some_and(|k| k.id() == from);
        match seq {
            Some(seq) => {
                let mut lost = false;
                if let Some(c) = state.components.get_mut(name).filter(|c| current(c)) {
                    // Evicted while on its way, and not received after all.
                    lost = c.inflight.remove(&seq) && !acked && !c.pending.contains_key(&seq);
                    if lost {
                        c.missed += 1;
                    }
                    c.wake.notify_one();
                }
                if acked {
                    state.release(inner, name, seq);
                } else if lost {
                    state.save_component(inner, name);
                }
            }
            None => {
                if let Some(c) = state.components.get_mut(name).filter(|c| current(c)) {
                    c.reporting = false;
                    if acked {
                        c.missed = c.missed.saturating_sub(reported);
                    }
                    c.wake.notify_one();
                    if acked {
                        state.save_component(inner, name);
                    }
                }
            }
        }
    }

    /// A delivery of `seq` could not be sent to `from`.
    pub(super) fn unmark(&self, from: u64, name: &Arc<str>, seq: u64) {
        self.answered(from, name, Some(seq), 0, Err(Error::Closed));
    }
}

/// Answers a named peer's subscription changes once the store has them.
pub(super) struct Durable {
    pub(super) broker: Broker,
}

impl Layer for Durable {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let store = &self.broker.inner.store;
        let named = msg.conn().name().is_some() || msg.action() == drs_names::IDENTIFY;
        if !store.is_durable() || !named || msg.key().is_none() {
            return next.run(msg);
        }
        let broker = self.broker.clone();
        Box::pin(async move {
            let outcome = next.run(msg).await;
            match broker.inner.store.flush().await {
                Ok(()) => outcome,
                Err(e) => Outcome::exception(e.to_string()),
            }
        })
    }
}
