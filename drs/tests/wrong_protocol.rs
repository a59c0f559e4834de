//! Speaking the wrong protocol or transport fails at once and says what
//! the port speaks, on both sides: a server answers (in its own protocol)
//! and closes; a client fails its call with `Error::WrongProtocol`, or
//! `Error::ClosedByPeer` with the words of a server that said why it
//! closed.

use std::time::Duration;

use drs::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("within the limit")
}

fn server() -> Server {
    let server = Server::new();
    server.on("add", |(a, b): (i64, i64)| async move {
        HandlerResult::Ok(a + b)
    });
    server
}

/// The error of one call to `url` (connecting succeeds: the transport is
/// right, the protocol is not).
async fn call_error(url: &str) -> Error {
    let conn = drs::connect(url).await.expect("connects");
    conn.call::<i64>("add", (1, 2))
        .await
        .expect_err("the call fails")
}

/// Everything the server writes to a raw socket that sent `bytes`, until
/// it closes.
async fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_messagepack_clients_on_each_others_ports() {
    within(async {
        let server = server();
        let json = drs::listen(&server, "tcp://127.0.0.1:0").await.unwrap();
        let msgpack = drs::listen(&server, "tcp://127.0.0.1:0?protocol=msgpack")
            .await
            .unwrap();
        let json_port = json.trim_start_matches("tcp://").to_string();
        let msgpack_port = msgpack
            .trim_start_matches("tcp://")
            .trim_end_matches("?protocol=msgpack")
            .to_string();

        let e = call_error(&format!("tcp://{msgpack_port}")).await;
        assert!(matches!(e, Error::WrongProtocol(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "this port speaks MessagePack, not drs JSON (add ?protocol=msgpack to the URL)"
        );
        let e = call_error(&format!("tcp://{json_port}?protocol=msgpack")).await;
        assert_eq!(
            e.to_string(),
            "this port speaks JSON, not drs MessagePack (drop ?protocol=msgpack from the URL)"
        );

        // What the servers said, in their own protocols, before closing.
        let said = raw(&json_port, b"\0\0\0\x07\x81\xa6action").await;
        assert_eq!(
            String::from_utf8(said).unwrap(),
            "{\"action\":\"drs.error\",\"body\":{\"message\":\"this port speaks drs JSON, \
             not MessagePack (MessagePack clients go to a port with ?protocol=msgpack)\"}}\n"
        );
        let said = raw(&msgpack_port, b"{\"action\":\"add\"}\n").await;
        let len = u32::from_be_bytes(said[..4].try_into().unwrap()) as usize;
        assert_eq!(said.len(), 4 + len, "one frame, then the end");
        let reply: serde_json::Value = rmp_serde::from_slice(&said[4..]).unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"action": "drs.error", "body": {"message":
                "this port speaks drs MessagePack, not JSON (JSON clients go to a port without ?protocol=msgpack)"}})
        );
        // An HTTP request is answered once, not once per header line.
        let said = raw(&json_port, b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").await;
        assert_eq!(
            String::from_utf8(said).unwrap(),
            "{\"action\":\"drs.error\",\"body\":{\"message\":\"this port speaks drs JSON, \
             not HTTP (HTTP and WebSocket clients go to a ws:// port)\"}}\n"
        );
        // The right protocol still works on both.
        let conn = drs::connect(&msgpack).await.unwrap();
        assert_eq!(conn.call::<i64>("add", (1, 2)).await.unwrap(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transports_and_http_servers_that_are_not_drs() {
    within(async {
        // An HTTP server (a metrics endpoint, a web app).
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = http.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let e = call_error(&format!("tcp://{http_addr}")).await;
        assert_eq!(
            e.to_string(),
            "this port speaks HTTP, not drs JSON (a ws:// URL, if it serves WebSocket)"
        );

        // Raw TCP to a WebSocket port: the port says so and closes.
        let server = server();
        let ws = drs::listen(&server, "ws://127.0.0.1:0").await.unwrap();
        let ws_addr = ws.trim_start_matches("ws://").to_string();
        let e = call_error(&format!("tcp://{ws_addr}")).await;
        assert!(matches!(e, Error::ClosedByPeer(_)) && e.is_closed(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the peer closed the connection: this port speaks WebSocket (ws://HOST:PORT/PATH), \
             not raw drs frames"
        );

        // WebSocket to a raw TCP port: the handshake says it.
        let tcp = drs::listen(&server, "tcp://127.0.0.1:0").await.unwrap();
        let e = drs::connect(&tcp.replace("tcp://", "ws://"))
            .await
            .expect_err("no WebSocket there");
        assert!(
            e.to_string().contains(
                "this port does not speak WebSocket: its answer is not HTTP (a raw drs port? try tcp://)"
            ),
            "{e}"
        );
    })
    .await
}

/// A server that says why before closing (here: its connection limit)
/// fails the waiting call with its words, not a bare "connection closed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_says_why_it_closes_is_quoted() {
    within(async {
        let server = Server::with_config(ServerConfig::default().max_connections(1));
        server.on("add", |(a, b): (i64, i64)| async move {
            HandlerResult::Ok(a + b)
        });
        let url = drs::listen(&server, "tcp://127.0.0.1:0").await.unwrap();
        let first = drs::connect(&url).await.unwrap();
        assert_eq!(first.call::<i64>("add", (1, 2)).await.unwrap(), 3);
        let e = call_error(&url).await;
        assert!(e.is_closed(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the peer closed the connection: the server is at its connection limit (1); \
             try again later"
        );
    })
    .await
}
