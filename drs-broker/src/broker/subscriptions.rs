//! Publishing and subscribing: `drs.publish`, `drs.subscribe`,
//! `drs.unsubscribe`, matching a topic to its subscribers.

use super::*;

impl Broker {
    /// Publishes `body` on `topic` from the server itself, as a confirmed
    /// `drs.publish` does: returns how many subscribers it reached or was
    /// stored for, once a durable store has written it (a store that
    /// cannot write fails it with [`Error::Io`]; the live deliveries have
    /// gone out).
    pub async fn publish(&self, topic: &str, body: impl Serialize) -> Result<u64, Error> {
        check_topic(topic)?;
        let body = encode_body(&body)?;
        let n = self.publish_body(topic, body);
        self.inner
            .store
            .flush()
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok(n)
    }

    /// The publish path: live deliveries now, retroactive ones queued and
    /// stored. The publisher is no special case: it gets its own
    /// publication only if it subscribed, like everyone.
    pub(super) fn publish_body(&self, topic: &str, body: Body) -> u64 {
        let inner = &self.inner;
        let heavy = inner.heavy.load(Ordering::Relaxed);
        let Some((mut live, stored_for)) =
            off_runtime(heavy, || self.match_publication(topic, &body))
        else {
            return 0;
        };
        // Once per connection: one subscribed before naming itself may
        // also hold its name's subscriptions.
        if live.len() > 1 {
            live.sort_unstable_by_key(Conn::id);
            live.dedup_by_key(|c| c.id());
        }
        let reached = fanout(live.iter(), topic, OutBody::Raw(&body)) as u64;
        reached + stored_for
    }

    /// Who gets a publication now (live), and for how many names it is
    /// stored; `None` when nobody subscribes.
    pub(super) fn match_publication(&self, topic: &str, body: &Body) -> Option<(Vec<Conn>, u64)> {
        let inner = &self.inner;
        let mut live: Vec<Conn> = Vec::new();
        let mut stored_for = 0u64;
        {
            let mut state = lock(&inner.state);
            let mut owners: HashMap<Owner, bool> = HashMap::new();
            state.trie.for_each_match(topic, |sub| {
                let retro = owners.entry(sub.owner.clone()).or_insert(false);
                *retro |= sub.retroactive;
            });
            if owners.is_empty() {
                return None;
            }
            let mut retro_names: Vec<Arc<str>> = Vec::new();
            for (owner, retroactive) in owners {
                match owner {
                    Owner::Conn(id) => {
                        if let Some((conn, cs)) = state.conns.get(&id) {
                            if !cs.held {
                                live.push(conn.clone());
                            }
                        }
                    }
                    Owner::Name(name) => {
                        let Some(component) = state.components.get(&name) else {
                            continue;
                        };
                        if retroactive {
                            retro_names.push(name);
                        } else if let Some(conn) = &component.conn {
                            let held = state.conns.get(&conn.id()).is_none_or(|(_, cs)| cs.held);
                            if !held {
                                live.push(conn.clone());
                            }
                        }
                    }
                }
            }
            if !retro_names.is_empty() {
                stored_for = retro_names.len() as u64;
                state.store_message(inner, topic, body.clone(), retro_names);
            }
        }
        Some((live, stored_for))
    }

    pub(super) async fn publish_cmd(&self, msg: &Msg) -> Result<u64, HandlerError> {
        let bad = |e: String| HandlerError::new(format!("invalid drs.publish: {e}"));
        let topic: String = msg
            .body()
            .field("topic")
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("missing field `topic`".into()))?
            .deserialize()
            .map_err(|e| bad(format!("`topic`: {e}")))?;
        check_topic(&topic).map_err(|e| HandlerError::new(e.to_string()))?;
        self.check_publish(msg.conn(), &topic)?;
        let body = msg
            .body()
            .field("body")
            .map_err(|e| bad(e.to_string()))?
            .unwrap_or_default();
        let n = self.publish_body(&topic, body);
        if msg.key().is_some() {
            self.inner
                .store
                .flush()
                .await
                .map_err(|e| HandlerError::exception(e.to_string()))?;
        }
        Ok(n)
    }

    pub(super) fn check_publish(&self, conn: &Conn, topic: &str) -> Result<(), HandlerError> {
        if !self.inner.config.allows(conn, topic, true) {
            return Err(HandlerError::new(format!("publish not allowed: {topic}")));
        }
        Ok(())
    }

    pub(super) fn subscribe_cmd(
        &self,
        conn: &Conn,
        args: &SubscribeBody,
    ) -> Result<(), HandlerError> {
        check_pattern(&args.topic).map_err(|e| HandlerError::new(e.to_string()))?;
        if !self.inner.config.allows(conn, &args.topic, false) {
            return Err(HandlerError::new(format!(
                "subscribe not allowed: {}",
                args.topic
            )));
        }
        let window = match args.window {
            Some(w) if w.is_finite() && w >= 0.0 => Some(Duration::from_secs_f64(w.min(1e9))),
            Some(w) => {
                return Err(HandlerError::new(format!(
                    "invalid window {w}: a number of seconds, 0 or more"
                )))
            }
            None => None,
        };
        self.subscribe(conn, &args.topic, args.retroactive, window)
    }

    /// Subscribes `conn` (its name, if it has one) to `pattern`. For a
    /// retroactive subscription of a name, `window` limits how far back
    /// what it missed is still delivered when it comes back (`None`: all
    /// that is kept); live messages are not affected.
    pub fn subscribe(
        &self,
        conn: &Conn,
        pattern: &str,
        retroactive: bool,
        window: Option<Duration>,
    ) -> Result<(), HandlerError> {
        let inner = &self.inner;
        let max = inner.config.max_subscriptions;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match conn.name() {
            Some(name) => {
                if !state.components.contains_key(&name)
                    && state.components.len() >= inner.config.max_names
                {
                    return Err(HandlerError::new("too many named subscribers"));
                }
                let component = state
                    .components
                    .entry(name.clone())
                    .or_insert_with(|| Component::new(inner, &name));
                let before = component.patterns.get(pattern).copied();
                if before.is_none() && component.patterns.len() >= max {
                    return Err(HandlerError::new(format!(
                        "too many subscriptions (at most {max})"
                    )));
                }
                let info = PatternInfo {
                    retroactive,
                    window,
                };
                if before == Some(info) {
                    return Ok(());
                }
                if before.is_none() && component.hold.try_grow(subscription_cost(pattern)).is_err()
                {
                    return Err(HandlerError::new(BUDGET_EXCEEDED));
                }
                component.patterns.insert(pattern.to_string(), info);
                let component_patterns = component.patterns.len();
                let owner = Owner::Name(name.clone());
                if let Some(b) = before {
                    state.trie.remove(
                        pattern,
                        &Sub {
                            owner: owner.clone(),
                            retroactive: b.retroactive,
                        },
                    );
                }
                state.trie.insert(pattern, Sub { owner, retroactive });
                // One row for the subscription, and the name's own small
                // record (written once, with the first).
                if before.is_none() && component_patterns == 1 {
                    state.save_component(inner, &name);
                }
                let window = window.map(|w| w.as_nanos() as u64);
                inner.store.write(Op::PutPattern(
                    name.to_string(),
                    pattern.to_string(),
                    store::encode(&PatternRecord(retroactive, window)),
                ));
            }
            None => {
                let Some((_, cs)) = state.conns.get_mut(&conn.id()) else {
                    return Err(HandlerError::new("the connection is closing"));
                };
                if !cs.patterns.contains(pattern) && cs.patterns.len() >= max {
                    return Err(HandlerError::new(format!(
                        "too many subscriptions (at most {max})"
                    )));
                }
                if cs.patterns.insert(pattern.to_string()) {
                    cs.hold
                        .get_or_insert_with(|| conn.hold_memory(0))
                        .grow(subscription_cost(pattern));
                    state.trie.insert(
                        pattern,
                        Sub {
                            owner: Owner::Conn(conn.id()),
                            retroactive: false,
                        },
                    );
                }
            }
        }
        state.note_size(inner);
        Ok(())
    }

    pub(super) fn unsubscribe_cmd(&self, conn: &Conn, pattern: &str) -> Result<(), HandlerError> {
        check_pattern(pattern).map_err(|e| HandlerError::new(e.to_string()))?;
        self.unsubscribe(conn, pattern);
        Ok(())
    }

    /// Ends `conn`'s (or its name's) subscription to `pattern`; what its
    /// name had waiting that no other retroactive pattern covers is
    /// dropped.
    pub fn unsubscribe(&self, conn: &Conn, pattern: &str) {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let state = &mut *state;
        match conn.name() {
            Some(name) => {
                let Some(component) = state.components.get_mut(&name) else {
                    return;
                };
                let Some(info) = component.patterns.remove(pattern) else {
                    return;
                };
                component.hold.shrink(subscription_cost(pattern));
                let stale: Vec<u64> = component
                    .pending
                    .values()
                    .filter(|m| !component.wants_retroactive(&m.topic))
                    .map(|m| m.seq)
                    .collect();
                state.trie.remove(
                    pattern,
                    &Sub {
                        owner: Owner::Name(name.clone()),
                        retroactive: info.retroactive,
                    },
                );
                inner
                    .store
                    .write(Op::DeletePattern(name.to_string(), pattern.to_string()));
                for seq in stale {
                    state.release(inner, &name, seq);
                }
            }
            None => {
                if let Some((_, cs)) = state.conns.get_mut(&conn.id()) {
                    if cs.patterns.remove(pattern) {
                        if let Some(hold) = &mut cs.hold {
                            hold.shrink(subscription_cost(pattern));
                        }
                        state.trie.remove(
                            pattern,
                            &Sub {
                                owner: Owner::Conn(conn.id()),
                                retroactive: false,
                            },
                        );
                    }
                }
            }
        }
        state.note_size(inner);
    }

    /// Whether the jails let `conn` publish to `topic` (`publish`), or
    /// subscribe to the pattern `topic` (for bridges that take over a
    /// command, e.g. to carry it through NATS).
    pub fn allows(&self, conn: &Conn, topic: &str, publish: bool) -> bool {
        self.inner.config.allows(conn, topic, publish)
    }
}

pub(super) fn encode_body(value: &impl Serialize) -> Result<Body, Error> {
    use drs_core::Protocol;
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| Error::Encode(drs_core::EncodeError::new(e.to_string())))?;
    Ok(Body::from_raw(
        bytes.into(),
        drs_protocol_msgpack::MsgPack.body_format(),
    ))
}
