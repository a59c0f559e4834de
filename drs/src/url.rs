//! URLs for [`connect`] and [`listen`], through the [`registry`]: each
//! transport crate provides its schemes ([`Scheme`](drs_core::Scheme)),
//! each protocol crate its protocol, and the features of this crate
//! register them.

use std::{
    io,
    sync::{Arc, OnceLock},
};

pub use drs_core::Url;
use drs_core::{Client, Conn, Error, Protocol, Registry, Server};

fn invalid(msg: impl Into<String>) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg.into()))
}

/// The error for a scheme or protocol whose feature is off.
fn needs(what: &str, feature: &str) -> Error {
    invalid(format!(
        "{what} needs the `{feature}` feature of drs (features = [\"{feature}\"])"
    ))
}

/// The schemes and protocols [`connect`] and [`listen`] know: those of
/// this crate's features, and any a program adds
/// (`drs::registry().scheme(MyScheme)`, one line).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Registry::new();
        #[cfg(feature = "tcp")]
        registry.scheme(drs_transport_tcp::TcpScheme);
        #[cfg(feature = "ws")]
        registry.scheme(drs_transport_ws::WsScheme);
        #[cfg(feature = "tls")]
        registry.scheme(drs_tls::TlsScheme);
        #[cfg(feature = "ipc")]
        registry.scheme(drs_transport_ipc::IpcScheme);
        #[cfg(feature = "nats")]
        registry.scheme(drs_transport_nats::NatsScheme);
        #[cfg(feature = "redis")]
        registry.scheme(drs_transport_redis::RedisScheme);
        #[cfg(feature = "json")]
        registry.protocol(drs_protocol_json::Json);
        #[cfg(feature = "msgpack")]
        registry.protocol(drs_protocol_msgpack::MsgPack);
        registry
    })
}

/// The protocol `?protocol=` names (default `json`), from the [`registry`].
pub fn protocol_of(url: &Url) -> Result<Arc<dyn Protocol>, Error> {
    let name = url.param("protocol").unwrap_or("json");
    registry().find_protocol(name).ok_or_else(|| match name {
        "json" | "msgpack" => needs(&format!("protocol {name}"), name),
        other => invalid(format!(
            "unknown protocol `{other}` ({})",
            registry().protocols().join(" or ")
        )),
    })
}

fn scheme_error(scheme: &str) -> Error {
    match scheme {
        "wss" => invalid("wss:// needs the `ws` and `tls` features of drs"),
        "tcp" | "ws" | "tls" | "ipc" | "nats" | "redis" => needs(&format!("{scheme}://"), scheme),
        other => invalid(format!(
            "unknown scheme `{other}` ({})",
            registry().schemes().join(", ")
        )),
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
    let protocol = protocol_of(&url)?;
    let scheme = registry()
        .find_scheme(&url.scheme)
        .ok_or_else(|| scheme_error(&url.scheme))?;
    scheme.dial(client, &url, protocol).await
}

/// Makes `server` listen at `url` and returns the URL it listens at (a
/// port 0 replaced by the one picked): `tcp://`, `ws://`, `ipc://`,
/// `nats://HOST:PORT/SERVICE` (joins the service), `redis://HOST:PORT/DB/SERVICE`,
/// and `tls://` and `wss://` with their certificates in the query
/// (`?cert=FILE&key=FILE`, and `&client_ca=FILE` for mutual TLS; the URL
/// answered carries none of them).
pub async fn listen(server: &Server, url: &str) -> Result<String, Error> {
    let parsed = Url::parse(url)?;
    let protocol = protocol_of(&parsed)?;
    let scheme = registry()
        .find_scheme(&parsed.scheme)
        .ok_or_else(|| scheme_error(&parsed.scheme))?;
    let bound = scheme.listen(server, &parsed, protocol).await?;
    Ok(match parsed.param("protocol") {
        Some(p) => format!("{bound}?protocol={p}"),
        None => bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_missing_protocols_and_schemes_say_what_is_known() {
        let err = |u: &str| {
            protocol_of(&Url::parse(u).unwrap())
                .unwrap_err()
                .to_string()
        };
        #[cfg(all(feature = "json", feature = "msgpack"))]
        assert!(err("tcp://h:1?protocol=xml").contains("unknown protocol `xml` (json or msgpack)"));
        #[cfg(not(feature = "msgpack"))]
        assert!(err("tcp://h:1?protocol=msgpack").contains("`msgpack` feature"));
        let _ = err;
        let unknown = scheme_error("gopher").to_string();
        assert!(unknown.contains("unknown scheme `gopher` ("), "{unknown}");
        for known in registry().schemes() {
            assert!(unknown.contains(known), "{unknown} lists {known}");
        }
    }
}
