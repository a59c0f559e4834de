//! Authentication and the server's jails for drs, beside the kernel: a
//! gate layer outside every other, a connect hook, and the built-in
//! `drs.auth`; the identity it establishes is the connection's
//! ([`ConnAuth::identity`], [`MsgAuth::identity`]), kept in the
//! connection's extensions. The identity and jail types live here too.
//!
//! ```
//! use drs_auth::{Identity, Jail, ServerAuth};
//! use drs_core::Server;
//!
//! let server = Server::new();
//! server.authenticate(|creds: drs_auth::Credentials| async move {
//!     match creds.token.as_deref() {
//!         Some("s3cret") => Ok(Identity::new("ada").role("admin")),
//!         _ => Err("bad token".to_string()),
//!     }
//! });
//! server.jail(Jail::parse("echo, billing.*").unwrap());
//! server.jail_role("admin", Jail::open());
//! ```
//!
//! - Credentials come from a `drs.auth` command (any transport), or, on
//!   WebSocket, from `?token=` or an `Authorization` header, or from a TLS
//!   client certificate, checked before the connection is admitted.
//! - Until a connection is authenticated only `drs.auth` and `drs.ping`
//!   are served; anything else gets `drs.error` "unauthenticated".
//! - Jails: one for the server, one per role (a union when a peer has
//!   several), and the identity's own; a command must pass each that
//!   applies. What is outside gets "action not allowed: …".
//! - Failed authentications are counted per address
//!   ([`DEFAULT_MAX_FAILURES`] within [`DEFAULT_FAILURE_WINDOW`]).
//! - [`ListenerTokens`]: a bearer token per listener.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use drs_core::{
    Body, CloseReason, Conn, ConnInfo, HandlerError, Layer, Msg, Next, Outcome, ReplyFuture, Server,
};

mod identity;

/// Authenticates the connection (docs/PROTOCOL.md §2): body `{"token": …}` (or
/// whatever the server's authenticator reads), answered with the
/// identity's `{"name": …, "roles": […]}` or `drs.error`.
pub const AUTH: &str = "drs.auth";
/// What a `drs.error` says to a command sent before authentication (on a
/// server that authenticates: `drs-auth`).
pub const UNAUTHENTICATED: &str = "unauthenticated";

pub use identity::{
    is_always_allowed, not_allowed, ClientAuth, ConfigAuth, ConnAuth, Identity, Jail, MsgAuth,
    NOT_ALLOWED,
};
use serde::Serialize;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
type Authenticator = Arc<dyn Fn(Credentials) -> AuthFuture + Send + Sync>;

fn authenticator<F, Fut>(f: F) -> Authenticator
where
    F: Fn(Credentials) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identity, String>> + Send + 'static,
{
    Arc::new(move |creds| Box::pin(f(creds)))
}

/// The server's jails: one for everyone, one per role, and the
/// identity's own. A command must pass the server jail, the identity's
/// jail, and, when the identity has roles with jails, one of those.
#[derive(Debug, Default)]
struct Jails {
    server: Option<Jail>,
    roles: HashMap<String, Jail>,
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
/// set), then the jails. Installed once, outside every other layer, and
/// kept in the server's extensions.
struct Gate {
    auth: Mutex<Option<Authenticator>>,
    /// Whether `auth` is set: read per command without the lock.
    auth_on: AtomicBool,
    /// Whether `drs.auth` and the connect hook are installed.
    auth_hooked: AtomicBool,
    limiter: FailureLimiter,
    jails: RwLock<Jails>,
}

impl Gate {
    fn new() -> Self {
        Self {
            auth: Mutex::new(None),
            auth_on: AtomicBool::new(false),
            auth_hooked: AtomicBool::new(false),
            limiter: FailureLimiter::new(DEFAULT_MAX_FAILURES, DEFAULT_FAILURE_WINDOW),
            jails: RwLock::default(),
        }
    }

    fn authenticator(&self) -> Option<Authenticator> {
        lock(&self.auth).clone()
    }

    /// `server`'s gate, installed outside every layer on first use.
    fn of(server: &Server) -> Arc<Gate> {
        let (gate, new) = server.with_extensions(|ext| match ext.get::<Arc<Gate>>() {
            Some(gate) => (gate.clone(), false),
            None => {
                let gate = Arc::new(Gate::new());
                ext.insert(gate.clone());
                (gate, true)
            }
        });
        if new {
            server.layer_outermost(GateLayer(gate.clone()));
        }
        gate
    }
}

/// The server's [`Gate`] as a layer.
struct GateLayer(Arc<Gate>);

impl Layer for GateLayer {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let action = msg.action();
        if is_always_allowed(action) {
            return next.run(msg);
        }
        let gate = &self.0;
        let identity = msg.identity();
        if identity.is_none() && gate.auth_on.load(Ordering::Acquire) {
            return Box::pin(async { Outcome::error(UNAUTHENTICATED) });
        }
        let allowed = gate
            .jails
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .allows(action, identity.as_deref());
        if allowed {
            next.run(msg)
        } else {
            not_allowed(action)
        }
    }
}

/// Counts failed authentications per peer address: past `max` within
/// `window`, that address's attempts are refused until the window ends.
struct FailureLimiter {
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
    fn new(max: u32, window: Duration) -> Self {
        Self {
            state: Mutex::new(Limits {
                max: max.max(1),
                window,
                seen: HashMap::new(),
            }),
        }
    }

    fn set(&self, max: u32, window: Duration) {
        let mut state = lock(&self.state);
        state.max = max.max(1);
        state.window = window;
    }

    /// Whether `addr` may try now.
    fn may_try(&self, addr: Option<IpAddr>) -> bool {
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

    fn failed(&self, addr: Option<IpAddr>) {
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
fn peer_ip(info: &ConnInfo) -> Option<IpAddr> {
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
pub fn transport_credentials(info: &ConnInfo) -> Option<Credentials> {
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
/// use drs_auth::ListenerTokens;
/// use drs_core::Server;
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
    /// ([`ServerAuth::authenticate`]) checks the
    /// others, naming a holder of the right token `token holder`.
    pub fn install(server: &Server) -> Self {
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

/// Authentication and jails on a [`Server`] (`use drs_auth::ServerAuth`,
/// or the facade's prelude).
pub trait ServerAuth {
    /// Requires every connection to authenticate, with `check` deciding:
    /// given the [`Credentials`] a peer presented, it returns the peer's
    /// [`Identity`] or the reason it is refused.
    ///
    /// - Credentials come from a `drs.auth` command (any transport; body
    ///   `{"token": …}` or whatever `check` reads from
    ///   [`Credentials::body`]), or, on WebSocket, from `?token=` or an
    ///   `Authorization` header, checked before the connection is admitted
    ///   (a refusal rejects the connection with the reason).
    /// - Until a connection is authenticated only `drs.auth` and
    ///   `drs.ping` are served; anything else gets `drs.error`
    ///   "unauthenticated" and reaches no handler. One that has not
    ///   authenticated within the admission deadline
    ///   ([`ConnConfig::admission_timeout`](drs_core::ConnConfig::admission_timeout))
    ///   is told so and closed ([`CloseReason::Unauthenticated`]).
    /// - A successful `drs.auth` answers `{"name": …, "roles": […]}`; the
    ///   identity is then on every [`MsgAuth::identity`] of the connection, and
    ///   a second `drs.auth` is refused.
    /// - Failures are logged with the peer's address, and counted per
    ///   address: past [`DEFAULT_MAX_FAILURES`] within
    ///   [`DEFAULT_FAILURE_WINDOW`] that address's attempts are refused
    ///   until the window ends ([`auth_failure_limit`](ServerAuth::auth_failure_limit)).
    fn authenticate<F, Fut>(&self, check: F) -> &Self
    where
        F: Fn(Credentials) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, String>> + Send + 'static;

    /// Sets how many failed authentications an address may make within
    /// `window` before its attempts are refused (defaults:
    /// [`DEFAULT_MAX_FAILURES`] in [`DEFAULT_FAILURE_WINDOW`]).
    fn auth_failure_limit(&self, max: u32, window: Duration) -> &Self;

    /// Confines every connection to `jail`: a command outside it gets
    /// `drs.error` "action not allowed: …" and reaches no handler (unknown
    /// and built-in actions included: `drs.identify`, `drs.subscribe`,
    /// `drs.stats`, …). Only `drs.ping` and `drs.auth` are always allowed.
    /// Replaces the previous server jail.
    fn jail(&self, jail: Jail) -> &Self;

    /// Confines authenticated peers with role `role` to `jail`. A peer
    /// with several roles that have jails may call what any of them
    /// allows; always inside the server jail and its identity's own.
    fn jail_role(&self, role: impl Into<String>, jail: Jail) -> &Self;
}

impl ServerAuth for Server {
    fn authenticate<F, Fut>(&self, check: F) -> &Self
    where
        F: Fn(Credentials) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, String>> + Send + 'static,
    {
        let gate = Gate::of(self);
        *lock(&gate.auth) = Some(authenticator(check));
        gate.auth_on.store(true, Ordering::Release);
        if !gate.auth_hooked.swap(true, Ordering::AcqRel) {
            let for_command = gate.clone();
            self.on(AUTH, move |msg: Msg| {
                let gate = for_command.clone();
                async move { auth_command(&gate, &msg).await }
            });
            self.on_connect(move |conn: Conn| {
                let gate = gate.clone();
                async move { auth_on_connect(&gate, conn).await }
            });
        }
        self
    }

    fn auth_failure_limit(&self, max: u32, window: Duration) -> &Self {
        Gate::of(self).limiter.set(max, window);
        self
    }

    fn jail(&self, jail: Jail) -> &Self {
        Gate::of(self)
            .jails
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .server = Some(jail);
        self
    }

    fn jail_role(&self, role: impl Into<String>, jail: Jail) -> &Self {
        Gate::of(self)
            .jails
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .roles
            .insert(role.into(), jail);
        self
    }
}

#[derive(serde::Deserialize, Default)]
struct AuthBody {
    #[serde(default)]
    token: Option<String>,
}

/// What a successful `drs.auth` answers.
#[derive(Serialize)]
struct Authenticated<'a> {
    name: &'a str,
    roles: &'a [String],
}

/// The `drs.auth` handler.
async fn auth_command(gate: &Gate, msg: &Msg) -> Result<serde_json::Value, HandlerError> {
    let Some(check) = gate.authenticator() else {
        return Err(HandlerError::new("this server does not authenticate"));
    };
    let conn = msg.conn();
    if conn.identity().is_some() {
        return Err(HandlerError::new("already authenticated"));
    }
    let info = conn.info().clone();
    let ip = peer_ip(&info);
    if !gate.limiter.may_try(ip) {
        tracing::warn!(
            peer = info.peer_addr.as_deref(),
            "authentication refused: too many failures"
        );
        return Err(HandlerError::new(TOO_MANY_FAILURES));
    }
    let token = msg
        .body()
        .deserialize::<AuthBody>()
        .unwrap_or_default()
        .token;
    let creds = Credentials {
        source: CredentialSource::Command,
        token,
        body: Some(msg.body().clone()),
        info,
    };
    match check(creds).await {
        Ok(identity) => {
            let answer = serde_json::to_value(Authenticated {
                name: &identity.name,
                roles: &identity.roles,
            })
            .unwrap_or_default();
            tracing::debug!(peer = conn.peer_addr(), name = %identity.name, "authenticated");
            if !conn.authenticate_as(identity) {
                return Err(HandlerError::new("already authenticated"));
            }
            Ok(answer)
        }
        Err(reason) => {
            gate.limiter.failed(ip);
            tracing::warn!(peer = conn.peer_addr(), %reason, "authentication failed");
            Err(HandlerError::new(format!(
                "authentication failed: {reason}"
            )))
        }
    }
}

/// What a peer over its limit of failed authentications is told.
const TOO_MANY_FAILURES: &str = "too many failed authentication attempts; try again later";

/// At admission: credentials the transport carried (WebSocket `?token=`,
/// `Authorization`, a TLS certificate) are checked now; without any, the
/// connection has the admission deadline to send `drs.auth`.
async fn auth_on_connect(gate: &Gate, conn: Conn) -> Result<(), String> {
    let Some(check) = gate.authenticator() else {
        return Ok(());
    };
    if let Some(creds) = transport_credentials(conn.info()) {
        let ip = peer_ip(conn.info());
        if !gate.limiter.may_try(ip) {
            tracing::warn!(
                peer = conn.peer_addr(),
                "authentication refused: too many failures"
            );
            return Err(TOO_MANY_FAILURES.to_string());
        }
        return match check(creds).await {
            Ok(identity) => {
                conn.authenticate_as(identity);
                Ok(())
            }
            Err(reason) => {
                gate.limiter.failed(ip);
                tracing::warn!(peer = conn.peer_addr(), %reason, "authentication failed");
                Err(format!("authentication failed: {reason}"))
            }
        };
    }
    let deadline = conn.config().admission_timeout;
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(deadline) => {
                if conn.identity().is_none() {
                    tracing::info!(peer = conn.peer_addr(), "not authenticated within the deadline");
                    conn.close_with_notice(
                        "authentication deadline exceeded",
                        CloseReason::Unauthenticated,
                    );
                }
            }
            () = conn.closed() => {}
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
