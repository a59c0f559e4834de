//! Credentials a WebSocket request carries (`?token=`, `Authorization`)
//! authenticate the connection before it is admitted; bad ones reject it
//! with the reason.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use drs_auth::{CredentialSource, Credentials, Identity, MsgAuth, ServerAuth};
use drs_core::{HandlerResult, Msg, Server};
use drs_protocol_json::Json;
use drs_transport_ws::WsListener;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn guarded() -> (Server, String, Arc<AtomicUsize>) {
    let server = Server::new();
    server.authenticate(|creds: Credentials| async move {
        let via = match creds.source {
            CredentialSource::Query => "query",
            CredentialSource::Header => "header",
            CredentialSource::Command => "command",
            _ => "other",
        };
        match creds.token.as_deref() {
            Some("good") => Ok(Identity::new("ada").attribute("via", via)),
            _ => Err("bad token".to_string()),
        }
    });
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    server.on("whoami", move |msg: Msg| {
        r.fetch_add(1, Ordering::SeqCst);
        let who = msg.identity().expect("authenticated");
        async move { HandlerResult::Ok(json!({"name": who.name, "via": who.attributes.get("via")})) }
    });
    let listener = WsListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.listen(listener, Json).expect("listen");
    (server, addr, ran)
}

async fn open(request: impl IntoClientRequest + Unpin) -> Ws {
    tokio_tungstenite::connect_async(request)
        .await
        .expect("handshake")
        .0
}

async fn ask(ws: &mut Ws, line: &str) -> Value {
    ws.send(Message::text(line)).await.expect("send");
    next(ws).await.expect("a reply")
}

async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("within 20 s")
}

#[tokio::test]
async fn a_token_in_the_query_or_header_authenticates_before_any_command() {
    within(async {
        let (server, addr, ran) = guarded().await;
        let mut by_query = open(format!("ws://{addr}/socket?token=good")).await;
        let me = ask(&mut by_query, r#"{"key":"1","action":"whoami"}"#).await;
        assert_eq!(me["body"], json!({"name": "ada", "via": "query"}));

        let mut request = format!("ws://{addr}/socket").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", "Bearer good".parse().unwrap());
        let mut by_header = open(request).await;
        let me = ask(&mut by_header, r#"{"key":"1","action":"whoami"}"#).await;
        assert_eq!(me["body"], json!({"name": "ada", "via": "header"}));
        assert_eq!(ran.load(Ordering::SeqCst), 2);

        // Without either, drs.auth on the connection works as anywhere.
        let mut plain = open(format!("ws://{addr}/socket")).await;
        let refused = ask(&mut plain, r#"{"key":"1","action":"whoami"}"#).await;
        assert_eq!(refused["body"]["message"], "unauthenticated");
        let ok = ask(
            &mut plain,
            r#"{"key":"2","action":"drs.auth","body":{"token":"good"}}"#,
        )
        .await;
        assert_eq!(ok["action"], "drs.response");
        let me = ask(&mut plain, r#"{"key":"3","action":"whoami"}"#).await;
        assert_eq!(me["body"]["via"], "command");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_token_in_the_request_rejects_the_connection_with_the_reason() {
    within(async {
        let (server, addr, ran) = guarded().await;
        for request in [
            format!("ws://{addr}/socket?token=bad")
                .into_client_request()
                .unwrap(),
            {
                let mut r = format!("ws://{addr}/socket").into_client_request().unwrap();
                r.headers_mut()
                    .insert("authorization", "Bearer bad".parse().unwrap());
                r
            },
        ] {
            let mut ws = open(request).await;
            let notice = next(&mut ws).await.expect("a notice");
            assert_eq!(notice["action"], "drs.error");
            assert_eq!(notice.get("key"), None);
            assert_eq!(
                notice["body"]["message"],
                "connection rejected: authentication failed: bad token"
            );
            ws.send(Message::text(r#"{"key":"1","action":"whoami"}"#))
                .await
                .ok();
            assert_eq!(next(&mut ws).await, None, "the connection is closed");
        }
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(server.connection_count(), 0);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}
