//! The retroactive backlog and stored messages: keeping, bounding,
//! evicting and releasing them, and writing the durable store.

use super::*;

impl State {
    /// Records whether matching is heavy now (after the trie changed).
    pub(super) fn note_size(&self, inner: &Inner) {
        inner
            .heavy
            .store(self.trie.len() > HEAVY, Ordering::Relaxed);
    }

    /// The connection holding `name` is gone (or took another name): what
    /// was on its way is forgotten, and so is the name if nothing is kept
    /// for it.
    pub(super) fn leave(&mut self, inner: &Inner, name: &Arc<str>) {
        let Some(component) = self.components.get_mut(name) else {
            return;
        };
        component.conn = None;
        let missed = component.missed;
        component.drop_inflight();
        component.wake.notify_one();
        if !component.has_state() {
            self.components.remove(name);
            inner.store.write(Op::DeleteName(name.to_string()));
        } else if component.missed != missed {
            self.save_component(inner, name);
        }
    }

    /// Stores a publication for the retroactive subscribers `names`.
    pub(super) fn store_message(
        &mut self,
        inner: &Inner,
        topic: &str,
        body: Body,
        names: Vec<Arc<str>>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = body.raw().map_or(0, |(b, _)| b.len());
        let time = now_ns();
        let topic: Arc<str> = self
            .topics
            .get_key_value(topic)
            .map_or_else(|| topic.into(), |(k, _)| k.clone());
        let msg = Arc::new(Stored {
            seq,
            topic: topic.clone(),
            body,
            time,
            size,
        });
        if inner.store.is_durable() {
            let (format, bytes) = match msg.body.raw() {
                Some((b, f)) => (f.name().to_string(), b.to_vec()),
                None => (String::new(), Vec::new()),
            };
            let record = MessageRecord {
                topic: topic.to_string(),
                time,
                format,
                body: bytes,
            };
            inner
                .store
                .write(Op::PutMessage(seq, store::encode(&record)));
        }
        self.log.insert(
            seq,
            LogEntry {
                msg: msg.clone(),
                holders: names.len() as u32,
            },
        );
        self.stored_bytes += size;
        self.pairs += names.len();
        let log = self.topics.entry(topic).or_default();
        log.seqs.push_back(seq);
        log.bytes += size;
        let backlog = inner.config.backlog;
        for name in &names {
            inner.store.write(Op::Hold(name.to_string(), seq));
            let Some(c) = self.components.get_mut(name) else {
                continue;
            };
            c.pending.insert(seq, msg.clone());
            c.pending_bytes += size;
            // Its oldest go; one on its way is missed only if it is not
            // acknowledged after all (see `answered`).
            let mut over: Vec<(u64, bool)> = Vec::new();
            let mut count = c.pending.len();
            let mut bytes = c.pending_bytes;
            for (s, m) in &c.pending {
                if count <= backlog.max_messages && bytes <= backlog.max_bytes {
                    break;
                }
                over.push((*s, c.inflight.contains(s)));
                count -= 1;
                bytes -= m.size;
            }
            c.wake.notify_one();
            if !over.is_empty() {
                for (s, sending) in over {
                    if self.release(inner, name, s) && !sending {
                        if let Some(c) = self.components.get_mut(name) {
                            c.missed += 1;
                        }
                    }
                }
                self.save_component(inner, name);
            }
        }
        // The topic's own bound: its oldest go, from everyone holding them.
        let tb = inner.config.topic_backlog;
        while let Some(log) = self.topics.get(&*msg.topic) {
            if log.seqs.len() <= tb.max_messages && log.bytes <= tb.max_bytes {
                break;
            }
            let Some(&oldest) = log.seqs.front() else {
                break;
            };
            self.evict(inner, oldest);
        }
        // And the bound of everything together, fan-out included, within
        // the server's memory budget.
        self.bound_total(inner);
    }

    /// What the stored messages take: bodies, each message's records, and
    /// each (name, message) pair.
    pub(super) fn kept_bytes(&self) -> usize {
        self.stored_bytes + self.log.len() * MESSAGE_OVERHEAD + self.pairs * PAIR_OVERHEAD
    }

    /// Evicts the oldest messages (their names told they missed them)
    /// until everything kept is within the total backlog and held on the
    /// server's memory budget.
    pub(super) fn bound_total(&mut self, inner: &Inner) {
        let all = inner.config.total_backlog;
        loop {
            let kept = self.kept_bytes();
            let within = self.log.len() <= all.max_messages
                && kept <= all.max_bytes
                && self.hold_kept(inner, kept);
            if within {
                return;
            }
            let Some(&oldest) = self.log.keys().next() else {
                return;
            };
            self.evict(inner, oldest);
        }
    }

    /// Holds `kept` bytes on the budget; false if it has no room.
    pub(super) fn hold_kept(&mut self, inner: &Inner, kept: usize) -> bool {
        let hold = self.kept.get_or_insert_with(|| {
            inner
                .budget
                .try_hold(0)
                .unwrap_or_else(|_| MemoryHold::none())
        });
        let held = hold.bytes();
        if kept <= held {
            hold.shrink(held - kept);
            true
        } else {
            hold.try_grow(kept - held).is_ok()
        }
    }

    /// Drops `seq` from everyone still to receive it (each told it missed
    /// one, unless it is on its way) and from the log.
    pub(super) fn evict(&mut self, inner: &Inner, seq: u64) {
        let holders: Vec<(Arc<str>, bool)> = self
            .components
            .iter()
            .filter(|(_, c)| c.pending.contains_key(&seq))
            .map(|(n, c)| (n.clone(), c.inflight.contains(&seq)))
            .collect();
        for (name, sending) in holders {
            if self.release(inner, &name, seq) && !sending {
                if let Some(c) = self.components.get_mut(&name) {
                    c.missed += 1;
                    c.wake.notify_one();
                }
            }
            self.save_component(inner, &name);
        }
        self.drop_message(seq, &inner.store);
    }

    /// Evicts what is older than the topic backlog's age.
    pub(super) fn sweep(&mut self, inner: &Inner) {
        let max_age = inner.config.topic_backlog.max_age.as_nanos() as u64;
        let now = now_ns();
        let old: Vec<u64> = self
            .log
            .values()
            .take_while(|e| now.saturating_sub(e.msg.time) > max_age)
            .map(|e| e.msg.seq)
            .collect();
        for seq in old {
            self.evict(inner, seq);
        }
    }

    /// `name` no longer needs `seq`; the message goes when nobody does.
    /// True if it had it.
    pub(super) fn release(&mut self, inner: &Inner, name: &Arc<str>, seq: u64) -> bool {
        let Some(c) = self.components.get_mut(name) else {
            return false;
        };
        let Some(m) = c.pending.remove(&seq) else {
            return false;
        };
        c.pending_bytes -= m.size;
        self.pairs = self.pairs.saturating_sub(1);
        inner.store.write(Op::Release(name.to_string(), seq));
        let gone = match self.log.get_mut(&seq) {
            Some(entry) => {
                entry.holders = entry.holders.saturating_sub(1);
                entry.holders == 0
            }
            None => false,
        };
        if gone {
            self.drop_message(seq, &inner.store);
        }
        let kept = self.kept_bytes();
        self.hold_kept(inner, kept);
        true
    }

    pub(super) fn drop_message(&mut self, seq: u64, store: &Store) {
        let Some(entry) = self.log.remove(&seq) else {
            return;
        };
        self.stored_bytes -= entry.msg.size;
        if let Some(log) = self.topics.get_mut(&*entry.msg.topic) {
            if let Some(i) = log.seqs.iter().position(|s| *s == seq) {
                log.seqs.remove(i);
            }
            log.bytes -= entry.msg.size;
            if log.seqs.is_empty() {
                self.topics.remove(&*entry.msg.topic);
            }
        }
        store.write(Op::DeleteMessage(seq));
    }

    /// Writes a name's own record (losses, owner): a few bytes, whatever
    /// its subscriptions.
    pub(super) fn save_component(&self, inner: &Inner, name: &Arc<str>) {
        if let Some(c) = self.components.get(name) {
            let record = NameRecord {
                missed: c.missed,
                owner: c.owner.as_deref().map(str::to_string),
            };
            inner
                .store
                .write(Op::PutName(name.to_string(), store::encode(&record)));
        }
    }

    pub(super) fn remove_exposer(&mut self, inner: &Inner, action: &str, id: u64) {
        if let Some(list) = self.exposers.get_mut(action) {
            list.retain(|x| *x != id);
            if list.is_empty() {
                self.exposers.remove(action);
                inner.exposed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}
