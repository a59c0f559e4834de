//! WebSocket specifics, checked with a plain tungstenite client.

use std::{future::IntoFuture, sync::Arc, time::Duration};

use drs_core::{Client, Conn, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_transport_ws::{WsConfig, WsDialer, WsListener};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

fn echo_server() -> Server {
    let server = Server::new();
    server.on("echo", |body: drs_core::Body| async move {
        HandlerResult::Ok(body)
    });
    server
}

async fn serve(server: &Server, config: WsConfig, protocol: impl drs_core::Protocol) -> String {
    let listener = WsListener::bind_with("127.0.0.1:0", config).await.unwrap();
    server.listen(listener, protocol).unwrap()
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(url: &str) -> Raw {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn next_text(ws: &mut Raw) -> Value {
    loop {
        match ws.next().await.expect("open").expect("message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_protocol_takes_text_and_tolerates_a_trailing_newline() {
    within(async {
        let server = echo_server();
        let addr = serve(&server, WsConfig::default(), Json).await;
        let mut ws = raw(&format!("ws://{addr}/socket")).await;
        ws.send(Message::text(
            "{\"key\":\"1\",\"action\":\"echo\",\"body\":1}\n",
        ))
        .await
        .unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            json!({"key":"1","action":"drs.response","body":1})
        );
        ws.send(Message::text(
            "{\"key\":\"2\",\"action\":\"echo\",\"body\":2}\r\n",
        ))
        .await
        .unwrap();
        assert_eq!(next_text(&mut ws).await["key"], "2");
        // A binary message on a text protocol: told why, skipped, still connected.
        ws.send(Message::binary(
            b"{\"key\":\"3\",\"action\":\"echo\"}".to_vec(),
        ))
        .await
        .unwrap();
        let notice = next_text(&mut ws).await;
        assert_eq!(notice["action"], "drs.error");
        assert!(
            notice["body"]["message"]
                .as_str()
                .unwrap()
                .contains("expected a text message"),
            "{notice}"
        );
        // Pretty-printed JSON (newlines inside) is one command.
        ws.send(Message::text(
            "{\n  \"key\": \"4\",\n  \"action\": \"echo\",\n  \"body\": {\"a\": [1,\n 2]}\n}",
        ))
        .await
        .unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            json!({"key":"4","action":"drs.response","body":{"a":[1,2]}})
        );
    })
    .await
}

#[tokio::test]
async fn binary_protocol_takes_binary_and_refuses_text() {
    within(async {
        let server = echo_server();
        let addr = serve(&server, WsConfig::default(), MsgPack).await;
        let mut ws = raw(&format!("ws://{addr}/")).await;
        ws.send(Message::text("{\"action\":\"echo\"}"))
            .await
            .unwrap();
        let notice = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => break drs_core::Protocol::decode(&MsgPack, b).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(notice.action, "drs.error");
        let body: Value = notice.body.deserialize().unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("expected a binary message"),
            "{body}"
        );
        // The connection goes on with proper binary messages.
        let conn = drs_transport_ws::connect(&format!("ws://{addr}/"), MsgPack)
            .await
            .unwrap();
        let v: Vec<u8> = conn.call("echo", vec![1u8, 2]).await.unwrap();
        assert_eq!(v, vec![1, 2]);
    })
    .await
}

#[tokio::test]
async fn connect_hooks_see_the_path_and_query() {
    within(async {
        let server = echo_server();
        server.on_connect(|conn: Conn| async move {
            if conn.info().path() != Some("/socket") {
                return Err("wrong path".to_string());
            }
            match conn.info().query_param("token").as_deref() {
                Some("s3cret") => Ok(()),
                _ => Err("bad token".to_string()),
            }
        });
        let addr = serve(&server, WsConfig::default(), Json).await;
        let good = drs_transport_ws::connect(&format!("ws://{addr}/socket?token=s3cret"), Json)
            .await
            .unwrap();
        let v: u32 = good.call("echo", 1).await.unwrap();
        assert_eq!(v, 1);

        let mut ws = raw(&format!("ws://{addr}/socket?token=guess")).await;
        let notice = next_text(&mut ws).await;
        assert_eq!(
            notice,
            json!({"action":"drs.error","body":{"message":"connection rejected: bad token"}})
        );
        let bad = drs_transport_ws::connect(&format!("ws://{addr}/elsewhere?token=s3cret"), Json)
            .await
            .unwrap();
        assert!(bad.call::<u32>("echo", 1).await.unwrap_err().is_closed());
        assert_eq!(server.connection_count(), 1);
    })
    .await
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    within(async {
        let server = echo_server();
        let gone = Arc::new(tokio::sync::Notify::new());
        let g = gone.clone();
        server.on_disconnect(move |_| g.notify_one());
        let (tx, mut admitted) = tokio::sync::mpsc::unbounded_channel();
        server.on_connect(move |conn: Conn| {
            let tx = tx.clone();
            async move { tx.send(conn).map_err(|_| "test is over") }
        });
        let config = WsConfig::default().keepalive(Some(Duration::from_millis(200)));
        let addr = serve(&server, config, Json).await;

        // A well-behaved client outlives many ping intervals.
        let _alive = Client::new()
            .config(drs_core::ConnConfig::default().call_timeout(Duration::from_secs(60)))
            .on("slow", || async {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                HandlerResult::Ok("still here")
            })
            .connect(WsDialer::new(format!("ws://{addr}/")), Json)
            .await
            .unwrap();
        let alive_server_side = admitted.recv().await.unwrap();
        let answer: String = alive_server_side
            .call("slow", ())
            .timeout(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(answer, "still here");

        // A client that never reads never answers a ping; the server's call
        // to it fails when the keepalive gives up, not after its 60 s timeout.
        let silent = raw(&format!("ws://{addr}/")).await;
        let conn = admitted.recv().await.unwrap();
        let call = tokio::spawn(
            conn.call::<Value>("whoami", ())
                .timeout(Duration::from_secs(60))
                .into_future(),
        );
        let err = call.await.unwrap().unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        gone.notified().await;
        assert_eq!(server.connection_count(), 1);
        drop(silent);
    })
    .await
}

#[tokio::test]
async fn close_frames_go_both_ways() {
    within(async {
        let server = echo_server();
        let gone = Arc::new(tokio::sync::Notify::new());
        let g = gone.clone();
        server.on_disconnect(move |_| g.notify_one());
        let addr = serve(&server, WsConfig::default(), Json).await;

        let mut ws = raw(&format!("ws://{addr}/")).await;
        ws.send(Message::text(r#"{"key":"p","action":"drs.ping"}"#))
            .await
            .unwrap();
        next_text(&mut ws).await;
        server.connections()[0].close();
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("expected a close frame, got {e}"),
            }
        }
        gone.notified().await;

        let mut ws = raw(&format!("ws://{addr}/")).await;
        ws.send(Message::text(r#"{"key":"p","action":"drs.ping"}"#))
            .await
            .unwrap();
        next_text(&mut ws).await;
        ws.close(None).await.unwrap();
        gone.notified().await;
        assert_eq!(server.connection_count(), 0);
    })
    .await
}

async fn http_get(addr: &str, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_http_gets_a_page_or_426() {
    within(async {
        let server = echo_server();
        let listener = WsListener::bind("127.0.0.1:0").await.unwrap().page(
            "/",
            "text/html; charset=utf-8",
            "<h1>hi</h1>",
        );
        let addr = server.listen(listener, Json).unwrap();
        let page = http_get(&addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            page.starts_with("HTTP/1.1 200 OK\r\n") && page.ends_with("<h1>hi</h1>"),
            "{page}"
        );
        let other = http_get(&addr, "GET /socket HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            other.starts_with("HTTP/1.1 426 Upgrade Required"),
            "{other}"
        );
        // A raw drs client on the WebSocket port is told at once, in a
        // JSON line, and the connection closed (it had waited out the
        // handshake timeout, then its own).
        let raw = http_get(&addr, "{\"key\":\"1\",\"action\":\"echo\",\"body\":1}\n").await;
        assert_eq!(
            raw,
            "{\"action\":\"drs.error\",\"body\":{\"message\":\"this port speaks WebSocket (ws://HOST:PORT/PATH), not raw drs frames\"}}\n"
        );
        let raw = drs_core::Client::new()
            .connect(drs_transport_tcp::TcpDialer::new(&addr), Json)
            .await
            .unwrap();
        // Failed as closed, not by its timeout.
        let err = raw
            .call::<u32>("echo", 5)
            .timeout(std::time::Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(err.is_closed(), "{err}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let refused = http_get(&addr, &huge).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
        // The page path still upgrades for WebSocket clients.
        let conn = drs_transport_ws::connect(&format!("ws://{addr}/"), Json)
            .await
            .unwrap();
        let v: u32 = conn.call("echo", 5).await.unwrap();
        assert_eq!(v, 5);
    })
    .await
}

#[tokio::test]
async fn dialing_a_wrong_url_is_a_clear_error() {
    within(async {
        let err = drs_transport_ws::connect("not a url", Json)
            .await
            .unwrap_err();
        assert!(matches!(err, drs_core::Error::Io(_)), "{err:?}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = drs_transport_ws::connect(&format!("ws://{addr}/"), Json)
            .await
            .unwrap_err();
        assert!(matches!(err, drs_core::Error::Io(_)), "{err:?}");
    })
    .await
}

/// A peer that reads nothing, with our write buffer full so that no ping
/// can even be sent, is still found dead by the keepalive (the write-stall
/// deadline is off here, to test the pings alone).
#[tokio::test]
async fn keepalive_finds_a_dead_peer_while_the_write_buffer_is_full() {
    within(async {
        let server = Server::with_config(drs_core::ConnConfig::default().write_stall_timeout(None));
        let (tx, mut gone) = tokio::sync::mpsc::unbounded_channel();
        server.on_disconnect(move |conn| {
            let _ = tx.send(conn.close_reason().map(|r| r.name()));
        });
        let (admit_tx, mut admitted) = tokio::sync::mpsc::unbounded_channel();
        server.on_connect(move |conn: Conn| {
            let tx = admit_tx.clone();
            async move { tx.send(conn).map_err(|_| "test is over") }
        });
        let config = WsConfig::default()
            .keepalive(Some(Duration::from_millis(200)))
            .write_buffer(64 * 1024);
        let addr = serve(&server, config, Json).await;
        let dead = raw(&format!("ws://{addr}/")).await; // never read
        let conn = admitted.recv().await.unwrap();
        let flood = tokio::spawn(async move {
            let chunk = "d".repeat(256 * 1024);
            while conn.fire("data", &chunk).await.is_ok() {}
        });
        assert_eq!(gone.recv().await.unwrap(), Some("keepalive_failed"));
        flood.await.unwrap();
        drop(dead);
    })
    .await
}
