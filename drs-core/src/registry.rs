//! Registries instead of closed lists: a transport crate provides its URL
//! [`Scheme`]s, a protocol crate its [`Protocol`], and whoever turns a URL
//! into a connection or a listener (the facade's `drs::connect` and
//! `drs::listen`, the CLI) looks them up in a [`Registry`]. Adding a
//! transport is its own crate plus one line where it is registered.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, RwLock},
};

use crate::{Client, Conn, ConnInfo, Dialer, Error, FrameSpec, Protocol, Server, Transport};

fn invalid(msg: impl Into<String>) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.into()))
}

/// A drs URL: `SCHEME://TARGET?QUERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The scheme, lowercase: `tcp`, `ws`, `wss`, `tls`, `ipc`, `nats`,
    /// `redis`, or any a [`Registry`] knows.
    pub scheme: String,
    /// What follows `://`, up to `?`.
    pub target: String,
    /// The query's pairs, in order (`protocol` among them).
    pub query: Vec<(String, String)>,
}

/// Whether `text` (up to any `?`) is `HOST:PORT`: a host without `/`,
/// and a port of digits.
fn is_host_port(text: &str) -> bool {
    let address = text.split('?').next().unwrap_or(text);
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains('/')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

impl Url {
    /// Parses `url`; a bare `HOST:PORT` means `tcp://HOST:PORT`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let (scheme, rest) = match url.split_once("://") {
            Some(parts) => parts,
            None if is_host_port(url) => ("tcp", url),
            None => {
                return Err(invalid(format!(
                    "`{url}` is not a drs URL: SCHEME://… with a scheme among tcp, ws, wss, tls, ipc, nats, redis, or HOST:PORT for tcp"
                )))
            }
        };
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        if target.is_empty() {
            return Err(invalid(format!("`{url}` names no address")));
        }
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            target: target.to_string(),
            query,
        })
    }

    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query without `protocol` and `ca` (what the URL says to drs,
    /// not to the server), as `?…` or empty.
    pub fn rest_of_query(&self) -> String {
        let rest: Vec<String> = self
            .query
            .iter()
            .filter(|(k, _)| k != "protocol" && k != "ca")
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        if rest.is_empty() {
            String::new()
        } else {
            format!("?{}", rest.join("&"))
        }
    }

    /// `HOST:PORT/REST` split at the first `/` (REST may be empty).
    pub fn host_and_path(&self) -> Result<(&str, &str), Error> {
        match self.target.split_once('/') {
            Some((host, rest)) if !host.is_empty() => Ok((host, rest)),
            _ => Err(invalid(format!(
                "`{}://{}` needs a path: {}",
                self.scheme,
                self.target,
                match self.scheme.as_str() {
                    "nats" => "nats://HOST:PORT/SERVICE",
                    _ => "redis://HOST:PORT/DB/SERVICE",
                }
            ))),
        }
    }
}

/// What a future of a [`Scheme`] gives.
pub type SchemeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The URL schemes of a transport: how `SCHEME://…` dials and listens.
/// A transport crate implements it and is registered in a [`Registry`].
pub trait Scheme: Send + Sync + 'static {
    /// The schemes it serves (`["ws", "wss"]`).
    fn names(&self) -> &'static [&'static str];

    /// Connects `client` to `url` (whose scheme is one of
    /// [`names`](Scheme::names)) with `protocol`.
    fn dial<'a>(
        &'a self,
        client: Client,
        url: &'a Url,
        protocol: Arc<dyn Protocol>,
    ) -> SchemeFuture<'a, Conn>;

    /// Makes `server` listen at `url` with `protocol`; returns the URL it
    /// listens at, without the query (a port 0 replaced by the one picked).
    fn listen<'a>(
        &'a self,
        server: &'a Server,
        url: &'a Url,
        protocol: Arc<dyn Protocol>,
    ) -> SchemeFuture<'a, String>;

    /// Opens framed I/O to `url`, with no connection on top and nothing
    /// sent of its own (no keepalive): for a peer that writes frames
    /// itself, as a conformance suite's raw peer or a proxy does. Most
    /// are [`open_dialed`]. The default says the scheme cannot.
    fn open<'a>(
        &'a self,
        url: &'a Url,
        spec: FrameSpec,
    ) -> SchemeFuture<'a, (Box<dyn Transport>, ConnInfo)> {
        let _ = spec;
        Box::pin(async move {
            Err(invalid(format!(
                "{}:// does not open raw framed I/O",
                url.scheme
            )))
        })
    }
}

/// What most [`Scheme::open`]s are: dial `dialer` and box its framed I/O.
pub fn open_dialed<'a, D: Dialer>(
    dialer: D,
    spec: FrameSpec,
) -> SchemeFuture<'a, (Box<dyn Transport>, ConnInfo)> {
    Box::pin(async move {
        let (io, info) = dialer.dial(spec).await?;
        Ok((Box::new(io) as Box<dyn Transport>, info))
    })
}

/// What most [`Scheme::listen`]s are: await `bind`, serve what it accepts
/// on `server`, and answer `SCHEME://ADDR` with the address it bound.
pub fn listen_bound<'a, L, F>(
    server: &'a Server,
    scheme: &'static str,
    bind: F,
    protocol: Arc<dyn Protocol>,
) -> SchemeFuture<'a, String>
where
    L: crate::Listener,
    F: Future<Output = io::Result<L>> + Send + 'a,
{
    Box::pin(async move {
        let addr = server.listen_arc(bind.await?, protocol)?;
        Ok(format!("{scheme}://{addr}"))
    })
}

/// The schemes and protocols a program knows, by name.
#[derive(Default)]
pub struct Registry {
    schemes: RwLock<BTreeMap<&'static str, Arc<dyn Scheme>>>,
    protocols: RwLock<BTreeMap<&'static str, Arc<dyn Protocol>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .field("protocols", &self.protocols())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `scheme` under each of its names (replacing what had
    /// them).
    pub fn scheme(&self, scheme: impl Scheme) -> &Self {
        let scheme: Arc<dyn Scheme> = Arc::new(scheme);
        let mut schemes = self.schemes.write().unwrap_or_else(|e| e.into_inner());
        for name in scheme.names() {
            schemes.insert(name, scheme.clone());
        }
        self
    }

    /// Registers `protocol` under its [`name`](Protocol::name).
    pub fn protocol(&self, protocol: impl Protocol) -> &Self {
        let mut protocols = self.protocols.write().unwrap_or_else(|e| e.into_inner());
        protocols.insert(protocol.name(), Arc::new(protocol));
        self
    }

    /// The scheme registered as `name`.
    pub fn find_scheme(&self, name: &str) -> Option<Arc<dyn Scheme>> {
        let schemes = self.schemes.read().unwrap_or_else(|e| e.into_inner());
        schemes.get(name).cloned()
    }

    /// The protocol registered as `name`.
    pub fn find_protocol(&self, name: &str) -> Option<Arc<dyn Protocol>> {
        let protocols = self.protocols.read().unwrap_or_else(|e| e.into_inner());
        protocols.get(name).cloned()
    }

    /// The registered schemes' names, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        let schemes = self.schemes.read().unwrap_or_else(|e| e.into_inner());
        schemes.keys().copied().collect()
    }

    /// The registered protocols' names, sorted.
    pub fn protocols(&self) -> Vec<&'static str> {
        let protocols = self.protocols.read().unwrap_or_else(|e| e.into_inner());
        protocols.keys().copied().collect()
    }
}
