//! A drs service on a real nats-server (started by each test on a free
//! port of 127.0.0.1): drs connections, plain NATS requests, flow control,
//! liveness, refusals.

use drs_transport_nats::LinkSettings;
use std::{future::IntoFuture, time::Duration};

use async_nats::HeaderMap;
use bytes::Bytes;
use drs_core::{Body, Client, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_testkit::NatsServer;
use drs_transport_nats::{NatsConfig, NatsDialer, NatsListener, CONTROL_HEADER};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

fn demo_server() -> Server {
    let server = Server::new();
    server.on("add", |(a, b): (i64, i64)| async move {
        HandlerResult::Ok(a + b)
    });
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drs_client_calls_a_service_and_the_service_calls_back() {
    let Some(nats_server) = NatsServer::start_or_skip("a_drs_client_calls_a_service") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let server = demo_server();
        server.on("whoami", |conn: drs_core::Conn| async move {
            let name: String = conn.call("name", ()).await?;
            HandlerResult::Ok(format!("you are {name}"))
        });
        let addr = server
            .listen(NatsListener::bind(&nats, "calc").await.unwrap(), Json)
            .unwrap();
        assert_eq!(addr, "drs.calc");
        let client = Client::new().on("name", || async { HandlerResult::Ok("ada") });
        let conn = client
            .connect(NatsDialer::new(nats.clone(), "calc"), Json)
            .await
            .unwrap();
        let sum: i64 = conn.call("add", (1, 2)).await.unwrap();
        assert_eq!(sum, 3);
        let who: String = conn.call("whoami", ()).await.unwrap();
        assert_eq!(who, "you are ada");
        // Many calls in flight at once, more bytes than one window.
        let big = "x".repeat(100_000);
        let calls = (0..40).map(|_| conn.call::<String>("echo", big.as_str()).into_future());
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.unwrap().len(), big.len());
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_nats_request_with_one_frame_gets_the_reply_frame() {
    let Some(nats_server) = NatsServer::start_or_skip("a_plain_nats_request") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let server = demo_server();
        server
            .listen(NatsListener::bind(&nats, "json").await.unwrap(), Json)
            .unwrap();
        server
            .listen(NatsListener::bind(&nats, "mp").await.unwrap(), MsgPack)
            .unwrap();
        let frame = json!({"action": "add", "body": [40, 2], "key": "k1"});
        let reply = nats
            .request("drs.json", frame.to_string().into())
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["action"], "drs.response");
        assert_eq!(reply["key"], "k1");
        assert_eq!(reply["body"], 42);
        let frame = rmp_serde_frame(&json!({"action": "add", "body": [1, 1], "key": "k2"}));
        let reply = nats.request("drs.mp", frame).await.unwrap();
        let reply: Value = rmp_serde::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["key"], "k2");
        assert_eq!(reply["body"], 2);
        // A frame that does not decode gets the protocol's error.
        let reply = nats
            .request("drs.json", Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["action"], "drs.error", "{reply}");
        // Unknown actions are errors, with the key.
        let frame = json!({"action": "nope", "key": "k3"});
        let reply = nats
            .request("drs.json", frame.to_string().into())
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["action"], "drs.error");
        assert_eq!(reply["key"], "k3");
        // Each plain request was a connection that ended with its reply.
        while server.connection_count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

fn rmp_serde_frame(v: &Value) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_service_nobody_serves_is_refused_at_once() {
    let Some(nats_server) = NatsServer::start_or_skip("dialing_a_service_nobody_serves") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let err = Client::new()
            .connect(NatsDialer::new(nats, "nobody"), Json)
            .await
            .unwrap_err();
        let Error::Io(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains("drs.nobody"), "{err}");
    })
    .await
    .unwrap();
}

/// A raw NATS peer that connects and never acknowledges: the server stops
/// sending at one window, and a peer that overruns its own window is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_holds_a_peer_that_does_not_read() {
    let Some(nats_server) = NatsServer::start_or_skip("the_window_holds") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let server = demo_server();
        let window = 64 * 1024;
        let config = NatsConfig::default().window(window);
        server
            .listen(
                NatsListener::bind_with(&nats, "win", config).await.unwrap(),
                Json,
            )
            .unwrap();
        let inbox = nats.new_inbox();
        let mut sub = nats.subscribe(inbox.clone()).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert("Drs-Connect", inbox.as_str());
        let answer = nats
            .send_request("drs.win", async_nats::Request::new().headers(h))
            .await
            .unwrap();
        let peer = answer.headers.unwrap().get("Drs-Conn").unwrap().to_string();
        // 200 echo calls of 1 KiB each: 200 KiB of replies, three windows.
        let body = "y".repeat(1000);
        for i in 0..200 {
            let frame = json!({"action": "echo", "body": body, "key": i.to_string()});
            nats.publish(peer.clone(), frame.to_string().into())
                .await
                .unwrap();
        }
        nats.flush().await.unwrap();
        // What arrives stops short of two windows until acknowledged.
        use futures::StreamExt;
        let mut got = 0usize;
        let mut bytes = 0usize;
        while bytes < window {
            let msg = sub.next().await.unwrap();
            if msg.payload.is_empty() {
                continue;
            }
            got += 1;
            bytes += msg.payload.len();
        }
        assert!(got < 200, "held at the window: {got}");
        let more = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let msg = sub.next().await.unwrap();
                if !msg.payload.is_empty() {
                    return msg;
                }
            }
        })
        .await;
        // At most one frame past the window (a frame starts while credit
        // is left).
        if more.is_ok() {
            let next = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
            assert!(next.is_err(), "nothing past the window without an ack");
        }
        // An acknowledgement lets the rest come.
        let mut h = HeaderMap::new();
        h.insert(CONTROL_HEADER, format!("ack {}", 10 * window).as_str());
        nats.publish_with_headers(peer.clone(), h, Bytes::new())
            .await
            .unwrap();
        let mut total = got + usize::from(more.is_ok());
        while total < 200 {
            let msg = sub.next().await.unwrap();
            if !msg.payload.is_empty() {
                total += 1;
            }
        }
    })
    .await
    .unwrap();
}

/// A client that closes tells the worker at once (not by a heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_is_gone_from_the_worker_at_once() {
    let Some(nats_server) = NatsServer::start_or_skip("a_closed_client_is_gone") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let server = demo_server();
        let slow = drs_transport_nats::NatsConfig::default().heartbeat(Duration::from_secs(3600));
        server
            .listen(
                NatsListener::bind_with(&nats, "bye", slow.clone())
                    .await
                    .unwrap(),
                Json,
            )
            .unwrap();
        let conn = Client::new()
            .connect(NatsDialer::new(nats.clone(), "bye").config(slow), Json)
            .await
            .unwrap();
        let _: i64 = conn.call("add", (1, 1)).await.unwrap();
        assert_eq!(server.connection_count(), 1);
        conn.close();
        conn.closed().await;
        while server.connection_count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

/// A connect naming a subject with wildcards (or none) is refused with a
/// reason, and a ping for a connection the worker does not have is
/// answered "gone".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connects_are_refused_and_unknown_connections_are_gone() {
    let Some(nats_server) = NatsServer::start_or_skip("bad_connects_are_refused") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let server = demo_server();
        server
            .listen(NatsListener::bind(&nats, "strict").await.unwrap(), Json)
            .unwrap();
        for bad in ["_INBOX.*", "a b", ""] {
            let mut h = HeaderMap::new();
            h.insert("Drs-Connect", bad);
            let answer = nats
                .send_request("drs.strict", async_nats::Request::new().headers(h))
                .await
                .unwrap();
            let headers = answer.headers.unwrap();
            assert_eq!(
                headers.get(CONTROL_HEADER).map(|v| v.as_str()),
                Some("refused invalid inbox subject"),
                "{bad:?}"
            );
            assert!(headers.get("Drs-Conn").is_none());
        }
        // A real connect, to learn the worker's subject; then a ping for
        // another id under it.
        let inbox = nats.new_inbox();
        let mut h = HeaderMap::new();
        h.insert("Drs-Connect", inbox.as_str());
        let answer = nats
            .send_request("drs.strict", async_nats::Request::new().headers(h))
            .await
            .unwrap();
        let conn = answer.headers.unwrap().get("Drs-Conn").unwrap().to_string();
        let (prefix, _) = conn.rsplit_once('.').unwrap();
        let mut h = HeaderMap::new();
        h.insert(CONTROL_HEADER, "ping");
        let answer = nats
            .send_request(
                format!("{prefix}.999999"),
                async_nats::Request::new().headers(h),
            )
            .await
            .unwrap();
        assert_eq!(
            answer
                .headers
                .unwrap()
                .get(CONTROL_HEADER)
                .map(|v| v.as_str()),
            Some("gone")
        );
    })
    .await
    .unwrap();
}
