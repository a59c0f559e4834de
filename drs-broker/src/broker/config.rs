//! [`BrokerConfig`] and [`Backlog`]: the broker's limits, jails and store.

use super::*;

/// Limits of a backlog: whichever is reached first drops the oldest
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages kept.
    pub max_messages: usize,
    /// Bytes of bodies kept.
    pub max_bytes: usize,
    /// Age past which a message is dropped.
    pub max_age: Duration,
}

impl Backlog {
    /// A backlog of at most `max_messages`, `max_bytes` and `max_age`.
    pub fn new(max_messages: usize, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            max_age,
        }
    }
}

/// Settings of a [`Broker`]. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// What one name may have waiting: 10,000 messages, 64 MiB, 24 h.
    pub backlog: Backlog,
    /// What one topic may have stored: 100,000 messages, 256 MiB, 24 h
    /// (its age also applies to messages no name has come back for).
    pub topic_backlog: Backlog,
    /// What the broker may hold for all names and topics together:
    /// 1,000,000 messages, 1 GiB (its age is not used). Bytes count each
    /// message's body plus 160 bytes, and 64 bytes for every name that has
    /// it still to receive, so fan-out to many names is bounded too. Past
    /// it, or past the server's memory budget, on which all of it is held,
    /// the oldest go and the names that had them get `drs.missed`.
    pub total_backlog: Backlog,
    /// Deliveries to one named retroactive subscriber awaiting their
    /// acknowledgement at once. Default 64.
    pub window: usize,
    /// How long a delivery waits for its acknowledgement before it is
    /// sent again. Default 30 s.
    pub ack_timeout: Duration,
    /// Subscriptions one connection (or name) may hold. Default 1,024.
    /// Each is held on the server's memory budget at its size (its text
    /// and a trie level per segment): a connection's on its own share (past
    /// the budget the largest holders are disconnected), a name's on the
    /// server's (past it `drs.subscribe` is refused with
    /// [`BUDGET_EXCEEDED`]).
    pub max_subscriptions: usize,
    /// Names the broker keeps state for. Default 10,000.
    pub max_names: usize,
    /// Names one authenticated identity may hold state for. Default 1,000.
    pub max_names_per_identity: usize,
    /// Where the durable store lives; `None` (the default): in memory.
    pub store: Option<PathBuf>,
    /// Topics anyone may publish to; `None`: all.
    pub publish_jail: Option<Jail>,
    /// Patterns anyone may subscribe to; `None`: all.
    pub subscribe_jail: Option<Jail>,
    /// Per role: the topics its holders may publish to, and the patterns
    /// they may subscribe to (`None`: no limit of the role's own).
    pub role_jails: HashMap<String, (Option<Jail>, Option<Jail>)>,
    /// Actions anyone may expose; `None`: any the server does not handle.
    pub expose_jail: Option<Jail>,
    /// Per role: the actions its holders may expose. A peer with roles
    /// that have such a jail may expose only what one of them allows.
    pub role_expose: HashMap<String, Jail>,
    /// Actions the server itself handles that an exposer may take over
    /// (its calls then go to the exposer first). Default: none.
    pub expose_overrides: Option<Jail>,
    /// Where the body formats of stored messages are looked up by name,
    /// besides JSON and MessagePack (a protocol of one's own registered
    /// there keeps its stored bodies across restarts). Default: none.
    pub formats: Option<&'static drs_core::Registry>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            backlog: Backlog::new(10_000, 64 << 20, DAY),
            topic_backlog: Backlog::new(100_000, 256 << 20, DAY),
            total_backlog: Backlog::new(1_000_000, 1 << 30, DAY),
            window: 64,
            ack_timeout: Duration::from_secs(30),
            max_subscriptions: 1024,
            max_names: 10_000,
            max_names_per_identity: 1_000,
            store: None,
            publish_jail: None,
            subscribe_jail: None,
            role_jails: HashMap::new(),
            expose_jail: None,
            role_expose: HashMap::new(),
            expose_overrides: None,
            formats: None,
        }
    }
}

impl BrokerConfig {
    /// Looks the body formats of stored messages up in `registry` too
    /// (`drs::registry()`), so that a protocol registered there keeps its
    /// stored bodies across restarts; an unknown format makes the store
    /// [`StoreError::Corrupt`](crate::StoreError::Corrupt), never dropped.
    pub fn formats(mut self, registry: &'static drs_core::Registry) -> Self {
        self.formats = Some(registry);
        self
    }

    /// Sets the per-name backlog.
    pub fn backlog(mut self, backlog: Backlog) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets the per-topic backlog of the store.
    pub fn topic_backlog(mut self, backlog: Backlog) -> Self {
        self.topic_backlog = backlog;
        self
    }

    /// Sets the bound of everything stored together.
    pub fn total_backlog(mut self, backlog: Backlog) -> Self {
        self.total_backlog = backlog;
        self
    }

    /// Sets the delivery window (at least 1).
    pub fn window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sets the acknowledgement timeout.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Sets the subscriptions one connection or name may hold.
    pub fn max_subscriptions(mut self, max: usize) -> Self {
        self.max_subscriptions = max.max(1);
        self
    }

    /// Sets how many names the broker keeps state for.
    pub fn max_names(mut self, max: usize) -> Self {
        self.max_names = max.max(1);
        self
    }

    /// Sets how many names one authenticated identity may hold state for.
    pub fn max_names_per_identity(mut self, max: usize) -> Self {
        self.max_names_per_identity = max.max(1);
        self
    }

    /// Limits the actions anyone may expose (see [`Jail`]).
    pub fn expose_jail(mut self, jail: Jail) -> Self {
        self.expose_jail = Some(jail);
        self
    }

    /// Limits the actions authenticated peers with `role` may expose: a
    /// peer with several such roles may expose what any of them allows,
    /// always within [`expose_jail`](BrokerConfig::expose_jail).
    pub fn role_expose(mut self, role: impl Into<String>, jail: Jail) -> Self {
        self.role_expose.insert(role.into(), jail);
        self
    }

    /// Lets exposers take over these actions although the server handles
    /// them itself (by default an action with a handler of the server's
    /// cannot be exposed).
    pub fn expose_overrides(mut self, jail: Jail) -> Self {
        self.expose_overrides = Some(jail);
        self
    }

    /// Whether `conn` may expose `action`, the jails alone considered.
    pub(super) fn may_expose(&self, conn: &Conn, action: &str) -> bool {
        if self.expose_jail.as_ref().is_some_and(|j| !j.allows(action)) {
            return false;
        }
        let Some(identity) = conn.identity() else {
            return true;
        };
        let mut jails = identity
            .roles
            .iter()
            .filter_map(|r| self.role_expose.get(r))
            .peekable();
        jails.peek().is_none() || jails.any(|j| j.allows(action))
    }

    /// Keeps retroactive publications and names' state in `dir`.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store = Some(dir.into());
        self
    }

    /// Limits the topics connections may publish to (see [`Jail`]: exact
    /// names and `prefix.*`).
    pub fn publish_jail(mut self, jail: Jail) -> Self {
        self.publish_jail = Some(jail);
        self
    }

    /// Limits what connections may subscribe to: a pattern is allowed when
    /// the jail allows it as a name, so `sensors.*` in the jail allows
    /// `sensors.t1`, `sensors.*` and `sensors.>`, and only an open jail
    /// allows `>` or `*.x`.
    pub fn subscribe_jail(mut self, jail: Jail) -> Self {
        self.subscribe_jail = Some(jail);
        self
    }

    /// Limits what authenticated peers with `role` may publish to and
    /// subscribe to (roles come from authentication: `drs-auth`). A peer with several
    /// such roles may do what any of them allows; always within the
    /// server-wide [`publish_jail`](BrokerConfig::publish_jail) and
    /// [`subscribe_jail`](BrokerConfig::subscribe_jail).
    pub fn role_jails(
        mut self,
        role: impl Into<String>,
        publish: Option<Jail>,
        subscribe: Option<Jail>,
    ) -> Self {
        self.role_jails.insert(role.into(), (publish, subscribe));
        self
    }

    /// Whether `conn` may publish to `topic` (`publish`) or subscribe to
    /// the pattern `topic`.
    pub(super) fn allows(&self, conn: &Conn, topic: &str, publish: bool) -> bool {
        let pick = |pair: &(Option<Jail>, Option<Jail>)| -> Option<Jail> {
            if publish {
                pair.0.clone()
            } else {
                pair.1.clone()
            }
        };
        let server = if publish {
            &self.publish_jail
        } else {
            &self.subscribe_jail
        };
        if server.as_ref().is_some_and(|j| !j.allows(topic)) {
            return false;
        }
        let Some(identity) = conn.identity() else {
            return true;
        };
        let mut limited = false;
        for role in &identity.roles {
            if let Some(jail) = self.role_jails.get(role).and_then(pick) {
                if jail.allows(topic) {
                    return true;
                }
                limited = true;
            }
        }
        !limited
    }
}
