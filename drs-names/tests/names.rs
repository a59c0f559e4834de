//! Peer naming on a real server over the in-memory transport: installed
//! or not, taken, released after every disconnect hook, bounded, reached.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use drs_core::{memory, Client, Conn, Error, HandlerResult, Server};
use drs_names::{ConnName, Names, ServerNames, IDENTIFY, MAX_NAMES_PER_CONN, NAME_TAKEN};
use drs_protocol_json::Json;
use serde_json::{json, Value};

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("within the limit")
}

async fn client(server: &Server) -> Conn {
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    Client::new()
        .on("who", |conn: Conn| async move {
            HandlerResult::Ok(conn.name().map(|n| n.to_string()))
        })
        .connect(dialer, Json)
        .await
        .unwrap()
}

async fn identify(conn: &Conn, name: &str) -> Result<Value, Error> {
    conn.call(IDENTIFY, json!({ "name": name })).await
}

/// Yields until `cond` holds (the test's timeout bounds it).
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_plain_server_does_not_name_peers() {
    within(async {
        let server = Server::new();
        let conn = client(&server).await;
        let e = identify(&conn, "alpha").await.unwrap_err();
        assert_eq!(e.remote().unwrap().message, "No handlers for drs.identify");
        assert!(Names::of(&server).is_none());
    })
    .await
}

#[tokio::test]
async fn a_name_is_one_connections_and_is_free_once_it_ends() {
    within(async {
        let server = Server::new();
        Names::install(&server);
        // Added after the names: it still sees the ended connection's name.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        server.on_disconnect(move |conn| {
            log.lock().unwrap().push((conn.id(), conn.name()));
        });
        let a = client(&server).await;
        let b = client(&server).await;
        assert_eq!(
            identify(&a, "alpha").await.unwrap(),
            json!({"resumed": false})
        );
        let e = identify(&b, "alpha").await.unwrap_err();
        assert_eq!(e.remote().unwrap().message, NAME_TAKEN);
        let alpha = server.named("alpha").expect("named");
        let who: Option<String> = server
            .call_named("alpha", "who", ())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(who, None, "the client's own side has no name");
        assert_eq!(alpha.name().as_deref(), Some("alpha"));
        assert!(server
            .peers()
            .iter()
            .any(|p| p.name.as_deref() == Some("alpha")));
        a.close();
        until(|| server.named("alpha").is_none()).await;
        until(|| !seen.lock().unwrap().is_empty()).await;
        assert_eq!(*seen.lock().unwrap(), [(alpha.id(), Some("alpha".into()))]);
        assert_eq!(
            identify(&b, "alpha").await.unwrap(),
            json!({"resumed": false})
        );
        let e = server
            .call_named::<Value>("nobody", "who", ())
            .err()
            .unwrap();
        assert!(matches!(e, Error::NoPeer(ref n) if n == "nobody"), "{e:?}");
        let e = server.fire_named("nobody", "who", ()).await.unwrap_err();
        assert!(matches!(e, Error::NoPeer(_)), "{e:?}");
    })
    .await
}

#[tokio::test]
async fn names_are_bounded_and_checked_and_hooks_may_refuse() {
    within(async {
        let server = Server::new();
        server.on_identify(|_, name| {
            if &**name == "forbidden" {
                Err("not this one".into())
            } else {
                Ok(name.starts_with("back"))
            }
        });
        assert!(server.handles(IDENTIFY), "on_identify installs the names");
        let conn = client(&server).await;
        assert_eq!(
            identify(&conn, "back-1").await.unwrap(),
            json!({"resumed": true})
        );
        let e = identify(&conn, "forbidden").await.unwrap_err();
        assert_eq!(e.remote().unwrap().message, "not this one");
        assert!(
            server.named("back-1").is_some(),
            "a refused name keeps the old one"
        );
        let e = identify(&conn, "").await.unwrap_err();
        assert!(
            e.remote().unwrap().message.starts_with("invalid name"),
            "{e}"
        );
        for i in 1..MAX_NAMES_PER_CONN {
            identify(&conn, &format!("n{i}")).await.unwrap();
        }
        let e = identify(&conn, "one-more").await.unwrap_err();
        assert_eq!(
            e.remote().unwrap().message,
            format!("too many names for one connection (at most {MAX_NAMES_PER_CONN})")
        );
    })
    .await
}
