//! URLs for [`connect`] and [`listen`].

use std::{io, sync::Arc};

use drs_core::{Client, Conn, Error, Protocol, Server};

/// A drs URL: `SCHEME://TARGET?QUERY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `tcp`, `ws`, `wss`, `tls`, `ipc`, `nats`, `redis`.
    pub scheme: String,
    /// What follows `://`, up to `?`.
    pub target: String,
    /// The query's pairs, in order (`protocol` among them).
    pub query: Vec<(String, String)>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.into()))
}

/// The error for a scheme or protocol whose feature is off.
#[allow(dead_code)]
fn needs(what: &str, feature: &str) -> Error {
    invalid(format!(
        "{what} needs the `{feature}` feature of drs (features = [\"{feature}\"])"
    ))
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
    #[allow(dead_code)]
    fn rest_of_query(&self) -> String {
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

    /// The protocol `?protocol=` names (default `json`).
    pub fn protocol(&self) -> Result<Arc<dyn Protocol>, Error> {
        match self.param("protocol").unwrap_or("json") {
            #[cfg(feature = "json")]
            "json" => Ok(Arc::new(drs_protocol_json::Json)),
            #[cfg(not(feature = "json"))]
            "json" => Err(needs("protocol json", "json")),
            #[cfg(feature = "msgpack")]
            "msgpack" => Ok(Arc::new(drs_protocol_msgpack::MsgPack)),
            #[cfg(not(feature = "msgpack"))]
            "msgpack" => Err(needs("protocol msgpack", "msgpack")),
            other => Err(invalid(format!(
                "unknown protocol `{other}` (json or msgpack)"
            ))),
        }
    }

    /// `HOST:PORT/REST` split at the first `/` (REST may be empty).
    #[allow(dead_code)]
    fn host_and_path(&self) -> Result<(&str, &str), Error> {
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

    /// The client TLS settings: `?ca=FILE`, else the Mozilla roots.
    #[cfg(feature = "tls")]
    fn client_tls(&self) -> Result<drs_tls::ClientTls, Error> {
        let builder = drs_tls::ClientTls::builder();
        let builder = match self.param("ca") {
            Some(file) => builder.trust_pem_file(file)?,
            None => builder.trust_webpki_roots(),
        };
        Ok(builder.build()?)
    }
}

/// Connects to the drs server at `url` with a default [`Client`] (see the
/// [crate docs](crate) for the URLs).
pub async fn connect(url: &str) -> Result<Conn, Error> {
    connect_with(Client::new(), url).await
}

/// Connects `client` (its handlers, layers and settings) to `url`.
pub async fn connect_with(client: Client, url: &str) -> Result<Conn, Error> {
    let url = Url::parse(url)?;
    let protocol = url.protocol()?;
    // Unused when every transport feature is off.
    let _ = (&client, &protocol);
    match url.scheme.as_str() {
        #[cfg(feature = "tcp")]
        "tcp" => {
            client
                .connect(drs_transport_tcp::TcpDialer::new(&url.target), protocol)
                .await
        }
        #[cfg(feature = "ws")]
        "ws" => {
            let ws = format!("ws://{}{}", url.target, url.rest_of_query());
            client
                .connect(drs_transport_ws::WsDialer::new(ws), protocol)
                .await
        }
        #[cfg(all(feature = "ws", feature = "tls"))]
        "wss" => {
            let wss = format!("wss://{}{}", url.target, url.rest_of_query());
            let dialer = drs_transport_ws::WsDialer::new(wss).tls(url.client_tls()?);
            client.connect(dialer, protocol).await
        }
        #[cfg(feature = "tls")]
        "tls" => {
            let dialer = drs_tls::TlsDialer::new(&url.target, url.client_tls()?);
            client.connect(dialer, protocol).await
        }
        #[cfg(feature = "ipc")]
        "ipc" => {
            client
                .connect(drs_transport_ipc::IpcDialer::new(&url.target), protocol)
                .await
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let (nats, service) = nats_service(&url).await?;
            client
                .connect(drs_transport_nats::NatsDialer::new(nats, service), protocol)
                .await
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let (redis, service) = redis_parts(&url)?;
            client
                .connect(
                    drs_transport_redis::RedisDialer::new(redis, &service),
                    protocol,
                )
                .await
        }
        other => Err(scheme_error(other)),
    }
}

/// `nats://HOST:PORT/SERVICE` → a NATS connection to `HOST:PORT`, and
/// `SERVICE`.
#[cfg(feature = "nats")]
async fn nats_service(url: &Url) -> Result<(drs_transport_nats::async_nats::Client, &str), Error> {
    let (host, service) = url.host_and_path()?;
    let nats = drs_transport_nats::async_nats::connect(format!("nats://{host}"))
        .await
        .map_err(|e| {
            Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nats://{host}: {e}"),
            ))
        })?;
    Ok((nats, service))
}

/// `redis://HOST:PORT/DB/SERVICE` → (`redis://HOST:PORT/DB`, `SERVICE`).
#[cfg(feature = "redis")]
fn redis_parts(url: &Url) -> Result<(String, String), Error> {
    let (host, path) = url.host_and_path()?;
    match path.split_once('/') {
        Some((db, service)) if !service.is_empty() && db.parse::<u32>().is_ok() => {
            Ok((format!("redis://{host}/{db}"), service.to_string()))
        }
        _ => Err(invalid(format!(
            "`redis://{}` needs a database and a service: redis://HOST:PORT/DB/SERVICE",
            url.target
        ))),
    }
}

fn scheme_error(scheme: &str) -> Error {
    match scheme {
        "tcp" => needs("tcp://", "tcp"),
        "ws" => needs("ws://", "ws"),
        "wss" => invalid("wss:// needs the `ws` and `tls` features of drs"),
        "tls" => needs("tls://", "tls"),
        "ipc" => needs("ipc://", "ipc"),
        "nats" => needs("nats://", "nats"),
        "redis" => needs("redis://", "redis"),
        other => invalid(format!(
            "unknown scheme `{other}` (tcp, ws, wss, tls, ipc, nats, redis)"
        )),
    }
}

/// Makes `server` listen at `url` and returns the URL it listens at (a
/// port 0 replaced by the one picked): `tcp://`, `ws://`, `ipc://`,
/// `nats://HOST:PORT/SERVICE` (joins the service), `redis://HOST:PORT/DB/SERVICE`.
/// TLS listeners need certificates: bind [`tls::TlsListener`](crate::tls)
/// or a `WsListener` with `.tls(…)` yourself.
pub async fn listen(server: &Server, url: &str) -> Result<String, Error> {
    let parsed = Url::parse(url)?;
    let protocol = parsed.protocol()?;
    let _ = (&server, &protocol);
    let suffix = match parsed.param("protocol") {
        Some(p) => format!("?protocol={p}"),
        None => String::new(),
    };
    let _ = &suffix;
    match parsed.scheme.as_str() {
        #[cfg(feature = "tcp")]
        "tcp" => {
            let listener = drs_transport_tcp::TcpListener::bind(&parsed.target).await?;
            let addr = server.listen_arc(listener, protocol)?;
            Ok(format!("tcp://{addr}{suffix}"))
        }
        #[cfg(feature = "ws")]
        "ws" => {
            let host = parsed.target.split('/').next().unwrap_or_default();
            let listener = drs_transport_ws::WsListener::bind(host).await?;
            let addr = server.listen_arc(listener, protocol)?;
            Ok(format!("ws://{addr}{suffix}"))
        }
        #[cfg(feature = "ipc")]
        "ipc" => {
            let listener = drs_transport_ipc::IpcListener::bind(parsed.target.clone())?;
            let addr = server.listen_arc(listener, protocol)?;
            Ok(format!("ipc://{addr}{suffix}"))
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let (nats, service) = nats_service(&parsed).await?;
            let host = parsed.host_and_path()?.0;
            let listener = drs_transport_nats::NatsListener::bind(&nats, service).await?;
            server.listen_arc(listener, protocol)?;
            Ok(format!("nats://{host}/{service}{suffix}"))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let (redis, service) = redis_parts(&parsed)?;
            let listener =
                drs_transport_redis::RedisListener::bind_with(&redis, &service, protocol.clone(), Default::default())
                    .await?;
            server.listen_arc(listener, protocol)?;
            Ok(format!("{redis}/{service}{suffix}"))
        }
        "tls" | "wss" => Err(invalid(format!(
            "{}:// listeners need certificates: bind drs::tls::TlsListener (or a WsListener with .tls(…)) with a ServerTls",
            parsed.scheme
        ))),
        other => Err(scheme_error(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_scheme_target_and_query() {
        let url = Url::parse("ws://127.0.0.1:9/socket?protocol=msgpack&token=a").unwrap();
        assert_eq!(url.scheme, "ws");
        assert_eq!(url.target, "127.0.0.1:9/socket");
        assert_eq!(url.param("protocol"), Some("msgpack"));
        assert_eq!(url.param("token"), Some("a"));
        assert_eq!(url.rest_of_query(), "?token=a");
        // A bare HOST:PORT is TCP.
        for (bare, target) in [
            ("127.0.0.1:12000", "127.0.0.1:12000"),
            ("localhost:9?protocol=msgpack", "localhost:9"),
            ("[::1]:80", "[::1]:80"),
        ] {
            let url = Url::parse(bare).unwrap();
            assert_eq!((url.scheme.as_str(), url.target.as_str()), ("tcp", target));
        }
        let url = Url::parse("ipc:///tmp/x.sock").unwrap();
        assert_eq!(
            (url.scheme.as_str(), url.target.as_str()),
            ("ipc", "/tmp/x.sock")
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let msg = |u: &str| {
            Url::parse(u)
                .and_then(|u| u.protocol().map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert!(msg("localhost").contains("not a drs URL"));
        assert!(msg("host:port").contains("not a drs URL"));
        assert!(msg("/tmp/x:1").contains("not a drs URL"));
        assert!(msg("tcp://").contains("names no address"));
        assert!(msg("tcp://h:1?protocol=xml").contains("unknown protocol `xml`"));
    }
}
