//! `drs::connect` and `drs::listen` by URL, over each transport and
//! protocol (NATS and Redis on real servers started here, skipped where
//! they are not installed), and the errors of bad URLs.

use std::time::Duration;

use drs::prelude::*;
use drs_testkit::{NatsServer, RedisServer};

const LIMIT: Duration = Duration::from_secs(30);

fn server() -> Server {
    let server = Server::new();
    server.on("add", |(a, b): (i64, i64)| async move {
        HandlerResult::Ok(a + b)
    });
    server
}

async fn round_trip(server: &Server, url: &str) {
    let at = drs::listen(server, url).await.unwrap();
    let conn = drs::connect(&at).await.unwrap();
    let sum: i64 = conn.call("add", (40, 2)).await.unwrap();
    assert_eq!(sum, 42, "{at}");
    assert_eq!(
        conn.info().transport,
        at.split("://").next().unwrap(),
        "{at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_transport_and_protocol_by_url() {
    tokio::time::timeout(LIMIT, async {
        let server = server();
        for protocol in ["", "?protocol=json", "?protocol=msgpack"] {
            round_trip(&server, &format!("tcp://127.0.0.1:0{protocol}")).await;
            round_trip(&server, &format!("ws://127.0.0.1:0/socket{protocol}")).await;
            let path = std::env::temp_dir().join(format!(
                "drs-url-{}-{}.sock",
                std::process::id(),
                protocol.len()
            ));
            round_trip(&server, &format!("ipc://{}{protocol}", path.display())).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_and_redis_services_by_url() {
    let nats = NatsServer::start_or_skip("nats_and_redis_services_by_url (nats)");
    let redis = RedisServer::start_or_skip("nats_and_redis_services_by_url (redis)");
    tokio::time::timeout(LIMIT, async {
        let server = server();
        if let Some(nats) = &nats {
            let url = format!("{}/calc", nats.url());
            round_trip(&server, &url).await;
            round_trip(&server, &format!("{}/calc-mp?protocol=msgpack", nats.url())).await;
        }
        if let Some(redis) = &redis {
            round_trip(&server, &format!("{}/calc", redis.url(0))).await;
        }
    })
    .await
    .unwrap();
}

/// A bare HOST:PORT is TCP, to connect and to listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_host_and_port_is_tcp() {
    tokio::time::timeout(LIMIT, async {
        let server = server();
        let at = drs::listen(&server, "127.0.0.1:0").await.unwrap();
        assert!(at.starts_with("tcp://"), "{at}");
        let bare = at.trim_start_matches("tcp://");
        let conn = drs::connect(bare).await.unwrap();
        let sum: i64 = conn.call("add", (40, 2)).await.unwrap();
        assert_eq!((sum, conn.info().transport), (42, "tcp"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let server = server();
    let cases = [
        ("localhost", "not a drs URL"),
        ("gopher://x:1", "unknown scheme `gopher`"),
        ("tcp://127.0.0.1:1?protocol=xml", "unknown protocol `xml`"),
        (
            "nats://127.0.0.1:1",
            "needs a path: nats://HOST:PORT/SERVICE",
        ),
        ("redis://127.0.0.1:1/calc", "redis://HOST:PORT/DB/SERVICE"),
    ];
    for (url, expected) in cases {
        let err = drs::connect(url).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{url}: {err}");
    }
    for url in [
        "tls://127.0.0.1:0",
        "wss://127.0.0.1:0",
        "tls://127.0.0.1:0?cert=c.pem",
    ] {
        let err = drs::listen(&server, url).await.unwrap_err().to_string();
        assert!(
            err.contains("need certificates: add ?cert=FILE&key=FILE"),
            "{url}: {err}"
        );
    }
    let err = drs::listen(
        &server,
        "tls://127.0.0.1:0?cert=/nonexistent.pem&key=/nonexistent.key",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent.pem"), "{err}");
    // Nothing listens there: a connection error, not a hang.
    let err = drs::connect("tcp://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, drs::Error::Io(_)), "{err:?}");
}

/// `tls://` and `wss://` listen by URL with their certificates in the
/// query (mutual TLS with `client_ca`); the URL answered carries none of
/// them, and a client dials it with `?ca=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_listen_by_url_with_their_certificates() {
    use drs_tls::test_pki::{TestCa, Usage};
    tokio::time::timeout(LIMIT, async {
        let dir = std::env::temp_dir().join(format!("drs-connect-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("drs connect test CA");
        let (cert, key) = ca.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            Usage::Server,
            false,
        );
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_string()
        };
        let (cert, key, ca_file) = (
            file("server.pem", &cert),
            file("server.key", &key),
            file("ca.pem", &ca.pem()),
        );
        let server = server();
        for scheme in ["tls", "wss"] {
            let at = drs::listen(
                &server,
                &format!("{scheme}://127.0.0.1:0?cert={cert}&key={key}&protocol=msgpack"),
            )
            .await
            .unwrap();
            assert!(at.starts_with(&format!("{scheme}://127.0.0.1:")), "{at}");
            assert!(!at.contains("cert") && !at.contains("key"), "{at}");
            assert!(at.ends_with("?protocol=msgpack"), "{at}");
            let conn = drs::connect(&format!("{at}&ca={ca_file}")).await.unwrap();
            let sum: i64 = conn.call("add", (40, 2)).await.unwrap();
            assert_eq!((sum, conn.info().transport), (42, scheme));
            // Without trusting the CA the handshake fails.
            let host_port = at.trim_start_matches(&format!("{scheme}://"));
            let untrusted = file("other.pem", &TestCa::new("another CA").pem());
            let err = drs::connect(&format!("{scheme}://{host_port}&ca={untrusted}")).await;
            assert!(
                err.is_err(),
                "{scheme}: a client trusting another CA connected"
            );
        }
        // Mutual TLS: the listener asks for a client certificate from the CA.
        let at = drs::listen(
            &server,
            &format!("tls://127.0.0.1:0?cert={cert}&key={key}&client_ca={ca_file}"),
        )
        .await
        .unwrap();
        let err = drs::connect(&format!("{at}?ca={ca_file}")).await;
        assert!(err.is_err() || err.unwrap().call::<i64>("add", (1, 2)).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .unwrap();
}
