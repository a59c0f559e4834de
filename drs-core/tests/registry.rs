//! `registry` through the public API.

use std::sync::Arc;

use drs_core::*;

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
    let msg = |u: &str| Url::parse(u).unwrap_err().to_string();
    assert!(msg("localhost").contains("not a drs URL"));
    assert!(msg("host:port").contains("not a drs URL"));
    assert!(msg("/tmp/x:1").contains("not a drs URL"));
    assert!(msg("tcp://").contains("names no address"));
    let url = Url::parse("nats://127.0.0.1:4222").unwrap();
    assert!(url
        .host_and_path()
        .unwrap_err()
        .to_string()
        .contains("nats://HOST:PORT/SERVICE"));
}

struct Nowhere;

impl Scheme for Nowhere {
    fn names(&self) -> &'static [&'static str] {
        &["nowhere", "nowhere2"]
    }

    fn dial<'a>(&'a self, _: Client, url: &'a Url, _: Arc<dyn Protocol>) -> SchemeFuture<'a, Conn> {
        Box::pin(async move {
            Err(Error::Io(std::io::Error::other(format!(
                "no dialing {}",
                url.target
            ))))
        })
    }

    fn listen<'a>(
        &'a self,
        _: &'a Server,
        url: &'a Url,
        _: Arc<dyn Protocol>,
    ) -> SchemeFuture<'a, String> {
        Box::pin(async move { Ok(format!("nowhere://{}", url.target)) })
    }
}

#[test]
fn a_scheme_is_found_under_each_of_its_names() {
    let registry = Registry::new();
    assert!(registry.find_scheme("nowhere").is_none());
    registry.scheme(Nowhere);
    assert_eq!(registry.schemes(), ["nowhere", "nowhere2"]);
    assert!(registry.find_scheme("nowhere2").is_some());
    assert!(registry.find_scheme("tcp").is_none());
    assert!(registry.protocols().is_empty());
    assert!(format!("{registry:?}").contains("nowhere2"));
}
