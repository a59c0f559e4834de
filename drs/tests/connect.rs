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
    let err = drs::listen(&server, "tls://127.0.0.1:0").await.unwrap_err();
    assert!(err.to_string().contains("need certificates"), "{err}");
    // Nothing listens there: a connection error, not a hang.
    let err = drs::connect("tcp://127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, drs::Error::Io(_)), "{err:?}");
}
