//! Who may talk, and what they may ask: [`Identity`] (what an
//! authenticator says of a peer), [`Credentials`] (what the peer
//! presented), [`Jail`] (an allowlist of actions) and the layers that
//! enforce them. See [`Server::authenticate`](crate::Server::authenticate)
//! and [`Server::jail`](crate::Server::jail).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    command::{Body, AUTH, PING},
    handler::{Msg, Outcome, ReplyFuture},
    layer::{Layer, Next},
    sync::lock,
    transport::ConnInfo,
};

/// What a `drs.error` says to a command sent before authentication.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// What a `drs.error` says to a command outside the connection's jail:
/// this, then the action.
pub const NOT_ALLOWED: &str = "action not allowed: ";

/// Who the peer of a connection is, as an authenticator established it:
/// a name, roles, and any other attributes; readable by every handler
/// ([`Msg::identity`]) for the life of the connection, and no longer.
///
/// ```
/// use drs_core::{Identity, Jail};
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

/// Where [`Credentials`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// A `drs.auth` command (any transport).
    Command,
    /// The WebSocket request's `?token=` query parameter.
    Query,
    /// The WebSocket request's `Authorization` header.
    Header,
    /// The TLS client certificate.
    Certificate,
}

/// What a peer presented to be authenticated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Credentials {
    /// Where it came from.
    pub source: CredentialSource,
    /// The token: `drs.auth`'s `{"token": …}`, `?token=`, or the
    /// `Authorization` header's value without a `Bearer ` prefix.
    pub token: Option<String>,
    /// The whole `drs.auth` body, for authenticators that want more than a
    /// token (a user and a password, a signed challenge).
    pub body: Option<Body>,
    /// The connection: transport, addresses, request target, TLS peer.
    pub info: ConnInfo,
}

type AuthFuture = Pin<Box<dyn Future<Output = Result<Identity, String>> + Send>>;

/// The function that checks credentials.
pub(crate) type Authenticator = Arc<dyn Fn(Credentials) -> AuthFuture + Send + Sync>;

pub(crate) fn authenticator<F, Fut>(f: F) -> Authenticator
where
    F: Fn(Credentials) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, String>> + Send + 'static,
{
    Arc::new(move |creds| Box::pin(f(creds)))
}

/// An allowlist of actions: exact names, and prefixes written `billing.*`
/// (every action that starts with `billing.`); `*` alone allows all.
///
/// ```
/// let jail = drs_core::Jail::new(["echo", "billing.*"]).unwrap();
/// assert!(jail.allows("echo"));
/// assert!(jail.allows("billing.invoice.send"));
/// assert!(!jail.allows("billing"));
/// assert!(!jail.allows("admin.drop"));
/// assert!(drs_core::Jail::parse("echo, billing.*").unwrap() == jail);
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
/// connection. Every other built-in action (`drs.identify`,
/// `drs.subscribe`, `drs.stats`, …) passes the gate like any action.
fn always_allowed(action: &str) -> bool {
    matches!(action, PING | AUTH)
}

fn not_allowed(action: &str) -> ReplyFuture {
    let message = format!("{NOT_ALLOWED}{action}");
    Box::pin(async move { Outcome::error(message) })
}

/// The layer of one jail (a connection's, a client's).
#[derive(Debug, Clone)]
pub(crate) struct JailLayer(pub(crate) Arc<Jail>);

impl Layer for JailLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        if always_allowed(msg.action()) || self.0.allows(msg.action()) {
            next.run(msg)
        } else {
            not_allowed(msg.action())
        }
    }
}

/// The server's jails: one for everyone, one per role, and the
/// identity's own. A command must pass the server jail, the identity's
/// jail, and, when the identity has roles with jails, one of those.
#[derive(Debug, Default)]
pub(crate) struct Jails {
    pub(crate) server: Option<Jail>,
    pub(crate) roles: HashMap<String, Jail>,
}

impl Jails {
    fn allows(&self, action: &str, identity: Option<&Identity>) -> bool {
        if self.server.as_ref().is_some_and(|j| !j.allows(action)) {
            return false;
        }
        let Some(identity) = identity else {
            return true;
        };
        if identity.jail.as_ref().is_some_and(|j| !j.allows(action)) {
            return false;
        }
        let mut role_jails = identity
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .peekable();
        role_jails.peek().is_none() || role_jails.any(|j| j.allows(action))
    }
}

/// The server's gate: authentication first (when an authenticator is
/// set), then the jails. Installed once, outside every other layer.
pub(crate) struct Gate {
    pub(crate) auth: Mutex<Option<Authenticator>>,
    /// Whether `auth` is set: read per command without the lock.
    pub(crate) auth_on: std::sync::atomic::AtomicBool,
    pub(crate) limiter: FailureLimiter,
    pub(crate) jails: std::sync::RwLock<Jails>,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Self {
            auth: Mutex::new(None),
            auth_on: std::sync::atomic::AtomicBool::new(false),
            limiter: FailureLimiter::new(DEFAULT_MAX_FAILURES, DEFAULT_FAILURE_WINDOW),
            jails: std::sync::RwLock::default(),
        }
    }

    pub(crate) fn authenticator(&self) -> Option<Authenticator> {
        lock(&self.auth).clone()
    }
}

/// The server's [`Gate`] as a layer.
pub(crate) struct GateLayer(pub(crate) Arc<Gate>);

impl Layer for GateLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let action = msg.action();
        if always_allowed(action) {
            return next.run(msg);
        }
        let gate = &self.0;
        let identity = msg.identity();
        if identity.is_none() && gate.auth_on.load(std::sync::atomic::Ordering::Acquire) {
            return Box::pin(async { Outcome::error(UNAUTHENTICATED) });
        }
        let allowed = crate::sync::read(&gate.jails).allows(action, identity.as_deref());
        if allowed {
            next.run(msg)
        } else {
            not_allowed(action)
        }
    }
}

/// Counts failed authentications per peer address: past `max` within
/// `window`, that address's attempts are refused until the window ends.
pub(crate) struct FailureLimiter {
    state: Mutex<Limits>,
}

struct Limits {
    max: u32,
    window: Duration,
    seen: HashMap<IpAddr, (u32, Instant)>,
}

/// Failed authentications an address may make within
/// [`DEFAULT_FAILURE_WINDOW`] before its attempts are refused.
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// See [`DEFAULT_MAX_FAILURES`].
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses the limiter remembers at most (oldest forgotten first).
const MAX_TRACKED: usize = 10_000;

impl FailureLimiter {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            state: Mutex::new(Limits {
                max: max.max(1),
                window,
                seen: HashMap::new(),
            }),
        }
    }

    pub(crate) fn set(&self, max: u32, window: Duration) {
        let mut state = lock(&self.state);
        state.max = max.max(1);
        state.window = window;
    }

    /// Whether `addr` may try now.
    pub(crate) fn may_try(&self, addr: Option<IpAddr>) -> bool {
        let Some(addr) = addr else { return true };
        let mut state = lock(&self.state);
        let (max, window) = (state.max, state.window);
        match state.seen.get(&addr) {
            Some(&(n, since)) if since.elapsed() < window => n < max,
            Some(_) => {
                state.seen.remove(&addr);
                true
            }
            None => true,
        }
    }

    pub(crate) fn failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let mut state = lock(&self.state);
        let window = state.window;
        let seen = &mut state.seen;
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&addr) {
            seen.retain(|_, (_, since)| since.elapsed() < window);
            if seen.len() >= MAX_TRACKED {
                if let Some(oldest) = seen.iter().min_by_key(|(_, (_, s))| *s).map(|(a, _)| *a) {
                    seen.remove(&oldest);
                }
            }
        }
        let entry = seen.entry(addr).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// The IP address of a peer address such as `127.0.0.1:5000` or
/// `[::1]:5000`.
pub(crate) fn peer_ip(info: &ConnInfo) -> Option<IpAddr> {
    let addr = info.peer_addr.as_deref()?;
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<IpAddr>())
        .ok()
}

/// The credentials the transport carried: a WebSocket request's
/// `?token=`, then its `Authorization` header (its `Bearer ` prefix
/// removed), then a TLS client certificate (no token; the certificate is
/// in [`ConnInfo::peer_certificate`]).
pub(crate) fn transport_credentials(info: &ConnInfo) -> Option<Credentials> {
    let (source, token) = if let Some(token) = info.query_param("token") {
        (CredentialSource::Query, Some(token.into_owned()))
    } else if let Some(header) = &info.authorization {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or(header);
        (CredentialSource::Header, Some(token.to_string()))
    } else if info.peer_certificate.is_some() {
        (CredentialSource::Certificate, None)
    } else {
        return None;
    };
    Some(Credentials {
        source,
        token,
        body: None,
        info: info.clone(),
    })
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
    }

    #[test]
    fn role_jails_are_a_union_inside_the_server_jail() {
        let jails = Jails {
            server: Some(Jail::new(["x.*", "y.*"]).unwrap()),
            roles: [
                ("reader".to_string(), Jail::new(["x.get"]).unwrap()),
                ("writer".to_string(), Jail::new(["x.put", "z.put"]).unwrap()),
            ]
            .into(),
        };
        let both = Identity::new("a").role("reader").role("writer");
        assert!(jails.allows("x.get", Some(&both)));
        assert!(jails.allows("x.put", Some(&both)));
        assert!(
            !jails.allows("z.put", Some(&both)),
            "outside the server jail"
        );
        let reader = Identity::new("r").role("reader");
        assert!(!jails.allows("x.put", Some(&reader)));
        let plain = Identity::new("p");
        assert!(jails.allows("y.any", Some(&plain)), "no role jail applies");
        let own = Identity::new("o").jail(Jail::new(["y.one"]).unwrap());
        assert!(jails.allows("y.one", Some(&own)) && !jails.allows("y.two", Some(&own)));
        assert!(jails.allows("x.q", None) && !jails.allows("q", None));
    }

    #[test]
    fn the_limiter_counts_failures_per_address_within_the_window() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        assert!(l.may_try(a));
        l.failed(a);
        assert!(l.may_try(a));
        l.failed(a);
        assert!(!l.may_try(a));
        assert!(l.may_try(b));
        assert!(l.may_try(None));
        let short = FailureLimiter::new(1, Duration::ZERO);
        short.failed(a);
        assert!(short.may_try(a), "the window has passed");
    }

    #[test]
    fn transport_credentials_from_query_or_header() {
        let q = ConnInfo::new("ws").with_target("/socket?x=1&token=a%20b");
        let c = transport_credentials(&q).unwrap();
        assert_eq!(
            (c.source, c.token.as_deref()),
            (CredentialSource::Query, Some("a b"))
        );
        let mut h = ConnInfo::new("ws");
        h.authorization = Some("Bearer t0k".into());
        let c = transport_credentials(&h).unwrap();
        assert_eq!(
            (c.source, c.token.as_deref()),
            (CredentialSource::Header, Some("t0k"))
        );
        assert!(transport_credentials(&ConnInfo::new("tcp")).is_none());
        assert_eq!(
            peer_ip(&ConnInfo::new("tcp").with_peer_addr("[::1]:80")),
            Some("::1".parse().unwrap())
        );
    }
}

/// A bearer token per listener: connections to a listener that requires a
/// token must present it (`drs.auth {"token": …}`, or `?token=` / an
/// `Authorization` header on WebSocket); connections to an open listener
/// are admitted as `anonymous`. The listener is told apart by the local
/// address its connections report ([`ConnInfo::local_addr`]), so record
/// each listener's token under the address it bound.
///
/// A connection whose listener is not recorded yet is refused (fail
/// closed). Tokens are compared in constant time.
///
/// ```
/// use drs_core::{ListenerTokens, Server};
/// let server = Server::new();
/// let tokens = ListenerTokens::install(&server);
/// // after binding: the address each listener reported
/// tokens.set("127.0.0.1:12000", Some("s3cret".to_string()));
/// tokens.set("127.0.0.1:12001", None); // open
/// ```
#[derive(Debug, Clone, Default)]
pub struct ListenerTokens {
    tokens: Arc<std::sync::RwLock<HashMap<String, Option<String>>>>,
}

impl ListenerTokens {
    /// Makes `server` check connections against the tokens to be
    /// [`set`](ListenerTokens::set): an admission hook authenticates the
    /// connections of open listeners as `anonymous`, and an authenticator
    /// ([`Server::authenticate`](crate::Server::authenticate)) checks the
    /// others, naming a holder of the right token `token holder`.
    pub fn install(server: &crate::Server) -> Self {
        let tokens = Self::default();
        let open = tokens.clone();
        server.on_connect(move |conn| {
            let required = open.required(conn.info().local_addr.as_deref());
            async move {
                if let Some(None) = required {
                    conn.authenticate_as(Identity::new("anonymous"));
                }
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let check = tokens.clone();
        server.authenticate(move |creds: Credentials| {
            let expected = check.required(creds.info.local_addr.as_deref());
            async move {
                match (expected, creds.token) {
                    (Some(Some(expected)), Some(given)) if same(&expected, &given) => {
                        Ok(Identity::new("token holder"))
                    }
                    (Some(Some(_)), Some(_)) => Err("bad token".to_string()),
                    (Some(Some(_)), None) => Err("no token".to_string()),
                    (Some(None), _) => Ok(Identity::new("anonymous")),
                    (None, _) => Err("the listener is not ready".to_string()),
                }
            }
        });
        tokens
    }

    /// Records the token the listener bound at `local_addr` requires
    /// (`None`: it is open).
    pub fn set(&self, local_addr: impl Into<String>, token: Option<String>) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.insert(local_addr.into(), token);
    }

    /// The token the listener at `local` requires: `Some(None)` for an
    /// open one, `None` for one not recorded.
    fn required(&self, local: Option<&str>) -> Option<Option<String>> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        local.and_then(|addr| tokens.get(addr).cloned())
    }
}

/// Whether two tokens are equal, in a time that depends on their lengths
/// only.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
