//! Who the peer is and what it may ask: [`Identity`] (set once per
//! connection, by whatever authenticated it: [`ServerAuth::authenticate`],
//! a connect hook, a TLS certificate check) and [`Jail`], an allowlist of
//! actions, enforced per server and role ([`ServerAuth`]), per connection
//! ([`ConnAuth::jail`]), per client ([`ClientAuth::jail`]), and on what
//! this side sends ([`ConfigAuth::outbound_jail`]).
//!
//! The identity lives in the connection's extensions: the kernel knows
//! nothing of it.
//!
//! [`ServerAuth`]: crate::ServerAuth
//! [`ServerAuth::authenticate`]: crate::ServerAuth::authenticate

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::AUTH;
use drs_core::{
    Client, Conn, ConnConfig, Layer, Msg, Next, OutboundCheck, Outcome, ReplyFuture, PING,
};

/// What a `drs.error` says to a command outside the connection's jail:
/// this, then the action.
pub const NOT_ALLOWED: &str = "action not allowed: ";

/// Who the peer of a connection is, as an authenticator established it:
/// a name, roles, and any other attributes; readable by every handler
/// ([`Msg::identity`](MsgAuth::identity)) for the life of the
/// connection, and no longer.
///
/// ```
/// use drs_auth::{Identity, Jail};
/// let who = Identity::new("ada")
///     .role("billing")
///     .attribute("tenant", "acme")
///     .jail(Jail::new(["billing.*", "echo"]).unwrap());
/// assert!(who.has_role("billing"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The peer's name (a user, a service).
    pub name: String,
    /// Its roles or scopes.
    pub roles: Vec<String>,
    /// Anything else the authenticator knows (a tenant, a user id, …).
    pub attributes: BTreeMap<String, String>,
    /// The actions this peer may call, when it is confined beyond its
    /// roles' jails.
    pub jail: Option<Jail>,
}

impl Identity {
    /// An identity named `name`, with no roles.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds a role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.roles.push(role.into());
        self
    }

    /// Adds an attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Confines this peer to `jail`.
    pub fn jail(mut self, jail: Jail) -> Self {
        self.jail = Some(jail);
        self
    }

    /// Whether it has role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// An allowlist of actions: exact names, and prefixes written `billing.*`
/// (every action that starts with `billing.`); `*` alone allows all.
///
/// ```
/// let jail = drs_auth::Jail::new(["echo", "billing.*"]).unwrap();
/// assert!(jail.allows("echo"));
/// assert!(jail.allows("billing.invoice.send"));
/// assert!(!jail.allows("billing"));
/// assert!(!jail.allows("admin.drop"));
/// assert!(drs_auth::Jail::parse("echo, billing.*").unwrap() == jail);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Jail {
    exact: Vec<String>,
    prefixes: Vec<String>,
    all: bool,
}

impl Jail {
    /// A jail of `patterns`; fails on an empty pattern or a `*` anywhere
    /// but alone or after a final `.`.
    pub fn new<I, S>(patterns: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut jail = Jail::default();
        for pattern in patterns {
            let p = pattern.as_ref().trim();
            if p.is_empty() {
                return Err("an empty action pattern".into());
            }
            if p == "*" {
                jail.all = true;
            } else if let Some(prefix) = p.strip_suffix(".*") {
                if prefix.is_empty() || prefix.contains('*') {
                    return Err(format!("bad action pattern `{p}`"));
                }
                jail.prefixes.push(format!("{prefix}."));
            } else if p.contains('*') {
                return Err(format!(
                    "bad action pattern `{p}`: `*` goes alone or after a final `.`"
                ));
            } else {
                jail.exact.push(p.to_string());
            }
        }
        jail.exact.sort();
        jail.exact.dedup();
        Ok(jail)
    }

    /// A jail from comma-separated patterns (`"echo, billing.*"`).
    pub fn parse(patterns: &str) -> Result<Self, String> {
        Self::new(patterns.split(','))
    }

    /// A jail allowing every action.
    pub fn open() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// Whether `action` is allowed.
    pub fn allows(&self, action: &str) -> bool {
        self.all
            || self
                .exact
                .binary_search_by(|e| e.as_str().cmp(action))
                .is_ok()
            || self.prefixes.iter().any(|p| action.starts_with(p.as_str()))
    }
}

impl fmt::Display for Jail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.exact.clone();
        parts.extend(self.prefixes.iter().map(|p| format!("{p}*")));
        if self.all {
            parts.push("*".into());
        }
        f.write_str(&parts.join(","))
    }
}

/// Actions a jail never refuses, and the only ones served before
/// authentication: what a peer needs to authenticate and check the
/// connection (`drs.ping`, `drs.auth`). Every other built-in action
/// (`drs.identify`, `drs.subscribe`, `drs.stats`, …) passes a gate like
/// any action.
pub fn is_always_allowed(action: &str) -> bool {
    matches!(action, PING | AUTH)
}

/// The answer to a command a jail refuses: `drs.error` "action not
/// allowed: ACTION".
pub fn not_allowed(action: &str) -> ReplyFuture {
    let message = format!("{NOT_ALLOWED}{action}");
    Box::pin(async move { Outcome::error(message) })
}

/// The layer of one jail (a connection's, a client's).
#[derive(Debug, Clone)]
struct JailLayer(Arc<Jail>);

impl Layer for JailLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        if is_always_allowed(msg.action()) || self.0.allows(msg.action()) {
            next.run(msg)
        } else {
            not_allowed(msg.action())
        }
    }
}

/// The identity a connection carries, in its extensions.
#[derive(Clone)]
struct Authenticated(Arc<Identity>);

/// The identity in a connection's extensions, if any.
fn identity_in(ext: &drs_core::Extensions) -> Option<Arc<Identity>> {
    ext.get::<Authenticated>().map(|a| a.0.clone())
}

/// Identity and jails on a [`Conn`] (`use drs_auth::ConnAuth`, or the
/// facade's prelude).
pub trait ConnAuth {
    /// Who the peer is, once something authenticated it
    /// ([`authenticate_as`](ConnAuth::authenticate_as)).
    fn identity(&self) -> Option<Arc<Identity>>;

    /// Records who the peer is, as a connect hook that authenticated it
    /// by other means would (a client certificate, a network it trusts);
    /// `false` (and nothing changes) when it already has an identity.
    fn authenticate_as(&self, identity: Identity) -> bool;

    /// Confines what the peer may call on this connection to `jail`
    /// (inside any server, role or identity jail): anything else gets
    /// `drs.error` "action not allowed: …" and reaches no handler.
    /// `drs.ping` and `drs.auth` are always allowed.
    fn jail(&self, jail: Jail) -> &Self;
}

impl ConnAuth for Conn {
    fn identity(&self) -> Option<Arc<Identity>> {
        self.with_extensions(|ext| identity_in(ext))
    }

    fn authenticate_as(&self, identity: Identity) -> bool {
        self.with_extensions(|ext| {
            if ext.get::<Authenticated>().is_some() {
                return false;
            }
            ext.insert(Authenticated(Arc::new(identity)));
            true
        })
    }

    fn jail(&self, jail: Jail) -> &Self {
        self.layer(JailLayer(Arc::new(jail)))
    }
}

/// The identity of the peer a command came from (`use
/// drs_auth::MsgAuth`, or the facade's prelude).
pub trait MsgAuth {
    /// Who the peer is, once authenticated ([`ConnAuth::identity`]).
    fn identity(&self) -> Option<Arc<Identity>>;
}

impl MsgAuth for Msg {
    fn identity(&self) -> Option<Arc<Identity>> {
        // Every command of a gated server asks: read the connection's
        // extensions without making its handle.
        self.with_conn_extensions(|ext| identity_in(ext))
    }
}

/// A jail on what a server may ask of a [`Client`] (`use
/// drs_auth::ClientAuth`, or the facade's prelude).
pub trait ClientAuth {
    /// Confines what the server may call or fire on this client to
    /// `jail`: anything else gets `drs.error` "action not allowed: …" and
    /// reaches no handler.
    fn jail(self, jail: Jail) -> Self;
}

impl ClientAuth for Client {
    fn jail(self, jail: Jail) -> Self {
        self.layer(JailLayer(Arc::new(jail)))
    }
}

/// A jail on what this side sends (`use drs_auth::ConfigAuth`, or the
/// facade's prelude).
pub trait ConfigAuth {
    /// Sets the actions this side may call or fire on the peer (a
    /// server's limit on what it asks of its clients, a client's of a
    /// server); others fail with [`drs_core::Error::NotAllowed`] and are
    /// not sent. `None` lifts it.
    fn outbound_jail(self, jail: Option<Jail>) -> Self;
}

impl ConfigAuth for ConnConfig {
    fn outbound_jail(self, jail: Option<Jail>) -> Self {
        self.outbound_check(jail.map(|jail| OutboundCheck::new(move |action| jail.allows(action))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_patterns() {
        let j = Jail::new(["a", "b.*", "b.c"]).unwrap();
        assert!(j.allows("a") && j.allows("b.c") && j.allows("b.x.y"));
        assert!(!j.allows("b") && !j.allows("ab") && !j.allows("a.b"));
        assert!(Jail::open().allows("anything"));
        assert!(!Jail::default().allows("a"));
        for bad in ["", " ", "*.a", "a*", "a.*.b", ".*", "a.b*"] {
            assert!(Jail::new([bad]).is_err(), "{bad:?}");
        }
        assert_eq!(Jail::parse("b.*,a").unwrap().to_string(), "a,b.*");
        assert!(is_always_allowed("drs.ping") && !is_always_allowed("drs.identify"));
    }
}
