//! Who may take a name and expose an action: names pass the server's gate
//! like any command, are bound to the identity that first claimed them,
//! are bounded per connection and per identity, and are forgotten when
//! nothing is kept for them; exposing is allowed per action pattern and
//! role, never over the server's own handlers unless configured.

use drs_auth::{Identity, Jail, ServerAuth};
use std::{sync::Arc, time::Duration};

use drs_auth::Credentials;
use drs_broker::{Broker, BrokerConfig};
use drs_core::{Client, Conn, HandlerResult, Server};
use drs_names::{ServerNames, IDENTIFY, MAX_NAMES_PER_CONN, NAME_TAKEN};
use drs_protocol_json::Json;
use drs_transport_tcp::TcpDialer;
use serde_json::{json, Value};

mod common;
use common::message;

const LIMIT: Duration = Duration::from_secs(30);

/// A server whose tokens are identity names (`ada`, `eve`, …; `admin`
/// has role `admin`); no token: unauthenticated.
async fn server(config: BrokerConfig) -> (Server, Broker, String) {
    let server = Server::new();
    server.authenticate(|creds: Credentials| async move {
        match creds.token.as_deref() {
            Some("admin") => Ok(Identity::new("admin").role("admin")),
            Some("thumbs") => Ok(Identity::new("thumbs").role("thumbnailer")),
            Some(name) => Ok(Identity::new(name)),
            None => Err("no token".to_string()),
        }
    });
    server.on("add", |args: Value| async move {
        HandlerResult::Ok(args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0))
    });
    let broker = Broker::attach(&server, config).unwrap();
    let addr = common::listen(&server).await;
    (server, broker, addr)
}

async fn raw(addr: &str) -> Conn {
    Client::new()
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .unwrap()
}

async fn as_(addr: &str, token: &str) -> Conn {
    let conn = raw(addr).await;
    let _: Value = conn
        .call("drs.auth", json!({"token": token}))
        .await
        .unwrap();
    conn
}

async fn identify(conn: &Conn, name: &str) -> Result<Value, drs_core::Error> {
    conn.call(IDENTIFY, json!({ "name": name })).await
}

async fn leave(server: &Server, conn: Conn, name: &str) {
    conn.close();
    conn.closed().await;
    while server.named(name).is_some() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_served_only_after_authentication_and_only_to_its_owner() {
    tokio::time::timeout(LIMIT, async {
        let (server, broker, addr) = server(BrokerConfig::default()).await;
        // The owner names itself, subscribes retroactively, and leaves.
        let ada = as_(&addr, "ada").await;
        assert_eq!(identify(&ada, "billing").await.unwrap()["resumed"], false);
        let _: Value = ada
            .call(
                "drs.subscribe",
                json!({"topic": "pay.>", "retroactive": true}),
            )
            .await
            .unwrap();
        leave(&server, ada, "billing").await;
        assert_eq!(broker.publish("pay.card", "4242").await.unwrap(), 1);

        // A peer that never authenticated: refused, nothing delivered.
        let anonymous = raw(&addr).await;
        assert_eq!(
            message(identify(&anonymous, "billing").await),
            drs_auth::UNAUTHENTICATED
        );
        assert!(server.named("billing").is_none());
        // Another identity: the name is taken, and stays unclaimed.
        let eve = as_(&addr, "eve").await;
        assert_eq!(message(identify(&eve, "billing").await), NAME_TAKEN);
        assert!(server.named("billing").is_none());
        assert!(server.peers().iter().all(|p| p.name.is_none()));
        // The owner comes back to what it missed.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let subs = drs_pubsub::Subscriptions::new();
        subs.insert("pay.>", true, move |body: Value| {
            let _ = tx.send(body);
            async { HandlerResult::Ok(()) }
        })
        .unwrap();
        let again = Client::new()
            .layer(subs)
            .connect(TcpDialer::new(&addr), Arc::new(Json))
            .await
            .unwrap();
        let _: Value = again
            .call("drs.auth", json!({"token": "ada"}))
            .await
            .unwrap();
        assert_eq!(identify(&again, "billing").await.unwrap()["resumed"], true);
        assert_eq!(rx.recv().await.unwrap(), json!("4242"));
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jail_holds_for_built_in_actions_too() {
    tokio::time::timeout(LIMIT, async {
        let server = Server::new();
        server.jail(Jail::parse("echo").unwrap());
        server.on("echo", |v: Value| async move { HandlerResult::Ok(v) });
        let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
        let addr = common::listen(&server).await;
        let conn = raw(&addr).await;
        for (action, body) in [
            (IDENTIFY, json!({"name": "billing"})),
            ("drs.subscribe", json!({"topic": "pay.>"})),
            ("drs.publish", json!({"topic": "pay.x", "body": 1})),
            ("drs.expose", json!({"action": "thumbs.make"})),
            ("drs.stats", Value::Null),
        ] {
            assert_eq!(
                message(conn.call(action, body).await),
                format!("{}{action}", drs_auth::NOT_ALLOWED),
            );
        }
        let echoed: Value = conn.call("echo", 1).await.unwrap();
        assert_eq!(echoed, 1);
        let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        assert_eq!(broker.stats().names, 0);
        assert!(server.named("billing").is_none());
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_without_state_are_forgotten_and_names_are_bounded() {
    tokio::time::timeout(LIMIT, async {
        let (server, broker, addr) =
            server(BrokerConfig::default().max_names_per_identity(3)).await;
        // One connection renaming itself keeps only its current name.
        let conn = as_(&addr, "ada").await;
        for i in 0..MAX_NAMES_PER_CONN {
            identify(&conn, &format!("ghost{i}")).await.unwrap();
        }
        assert_eq!(broker.stats().names, 1);
        // Past its bound, a new name is refused; one it had is not.
        let refused = message(identify(&conn, "one-too-many").await);
        assert!(refused.contains("too many names"), "{refused}");
        identify(&conn, "ghost0").await.unwrap();
        // Gone: nothing is kept for names with no state.
        leave(&server, conn, "ghost0").await;
        assert_eq!(broker.stats().names, 0);

        // An identity holds state for at most 3 names.
        for i in 0..3 {
            let conn = as_(&addr, "eve").await;
            identify(&conn, &format!("eve{i}")).await.unwrap();
            let _: Value = conn
                .call("drs.subscribe", json!({"topic": "x", "retroactive": true}))
                .await
                .unwrap();
            leave(&server, conn, &format!("eve{i}")).await;
        }
        assert_eq!(broker.stats().names, 3);
        let conn = as_(&addr, "eve").await;
        let refused = message(identify(&conn, "eve3").await);
        assert!(
            refused.contains("too many names for one identity"),
            "{refused}"
        );
        // Its own names it may still take; other identities are not held.
        identify(&conn, "eve0").await.unwrap();
        identify(&as_(&addr, "bob").await, "bob0").await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposing_is_a_privilege() {
    tokio::time::timeout(LIMIT, async {
        let config = BrokerConfig::default()
            .expose_jail(Jail::parse("thumbs.*,add,jobs.*").unwrap())
            .role_expose("thumbnailer", Jail::parse("thumbs.*").unwrap());
        let (_server, broker, addr) = server(config).await;
        let ada = as_(&addr, "ada").await;
        // Never over the server's own handler, nor outside the jail.
        assert_eq!(
            message(ada.call("drs.expose", json!({"action": "add"})).await),
            "expose not allowed: add"
        );
        assert_eq!(
            message(
                ada.call("drs.expose", json!({"action": "admin.drop"}))
                    .await
            ),
            "expose not allowed: admin.drop"
        );
        // A role with an expose jail: only what it allows.
        let thumbs = as_(&addr, "thumbs").await;
        assert_eq!(
            message(
                thumbs
                    .call("drs.expose", json!({"action": "jobs.run"}))
                    .await
            ),
            "expose not allowed: jobs.run"
        );
        let _: Value = thumbs
            .call("drs.expose", json!({"action": "thumbs.make"}))
            .await
            .unwrap();
        let _: Value = ada
            .call("drs.expose", json!({"action": "jobs.run"}))
            .await
            .unwrap();
        assert_eq!(broker.stats().exposed_actions, 2);
        // The server's own `add` still answers.
        let sum: f64 = ada.call("add", json!({"a": 1, "b": 2})).await.unwrap();
        assert_eq!(sum, 3.0);

        // Configured overrides may take over a handled action.
        let config = BrokerConfig::default().expose_overrides(Jail::parse("add").unwrap());
        let (_server, _broker, addr) = server(config).await;
        let exposer = Client::new()
            .on("add", |_: Value| async { HandlerResult::Ok(42) })
            .connect(TcpDialer::new(&addr), Arc::new(Json))
            .await
            .unwrap();
        let _: Value = exposer
            .call("drs.auth", json!({"token": "admin"}))
            .await
            .unwrap();
        let _: Value = exposer
            .call("drs.expose", json!({"action": "add"}))
            .await
            .unwrap();
        let caller = as_(&addr, "bob").await;
        let sum: f64 = caller.call("add", json!({"a": 1, "b": 2})).await.unwrap();
        assert_eq!(sum, 42.0);
    })
    .await
    .expect("within the limit");
}
