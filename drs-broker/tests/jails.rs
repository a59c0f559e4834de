//! Topic allowlists: server-wide and per role, for publishing and
//! subscribing, refused with a clear error that changes nothing.

use drs_auth::{Identity, Jail, ServerAuth};
use drs_pubsub::PubSub;
use std::{sync::Arc, time::Duration};

use drs_auth::Credentials;
use drs_broker::{Broker, BrokerConfig};
use drs_core::{Client, Conn, Server};
use drs_protocol_json::Json;
use drs_transport_tcp::{TcpDialer, TcpListener};
use serde_json::{json, Value};

async fn conn(addr: &str, token: &str) -> Conn {
    let conn = Client::new()
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .unwrap();
    let _: Value = conn
        .call("drs.auth", json!({"token": token}))
        .await
        .unwrap();
    conn
}

fn refused(err: drs_core::Error, says: &str) {
    let message = err
        .remote()
        .map(|r| r.message.clone())
        .unwrap_or_else(|| err.to_string());
    assert_eq!(message, says);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_outside_the_jails_are_refused() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let server = Server::new();
        server.authenticate(|creds: Credentials| async move {
            match creds.token.as_deref() {
                Some("sensor") => Ok(Identity::new("s1").role("sensor")),
                Some("viewer") => Ok(Identity::new("v1").role("viewer")),
                _ => Ok(Identity::new("someone")),
            }
        });
        let config = BrokerConfig::default()
            .publish_jail(Jail::parse("sensors.*,chat.*").unwrap())
            .role_jails(
                "sensor",
                Some(Jail::parse("sensors.*").unwrap()),
                Some(Jail::parse("cmd.*").unwrap()),
            )
            .role_jails("viewer", Some(Jail::new(Vec::<&str>::new()).unwrap()), None);
        let broker = Broker::attach(&server, config).unwrap();
        let addr = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        let sensor = conn(&addr, "sensor").await;
        let viewer = conn(&addr, "viewer").await;
        let other = conn(&addr, "x").await;
        // The sensor role: publish sensors.*, subscribe cmd.* only.
        sensor.publish_confirmed("sensors.t1", 1).await.unwrap();
        refused(
            sensor.publish_confirmed("chat.room", 1).await.unwrap_err(),
            "publish not allowed: chat.room",
        );
        sensor
            .subscribe("cmd.>", |_: Value| async {
                Ok::<(), drs_core::HandlerError>(())
            })
            .await
            .unwrap();
        refused(
            sensor
                .subscribe("sensors.*", |_: Value| async {
                    Ok::<(), drs_core::HandlerError>(())
                })
                .await
                .unwrap_err(),
            "subscribe not allowed: sensors.*",
        );
        // The viewer may publish nothing; it may subscribe to anything.
        refused(
            viewer.publish_confirmed("sensors.t1", 1).await.unwrap_err(),
            "publish not allowed: sensors.t1",
        );
        viewer
            .subscribe(">", |_: Value| async {
                Ok::<(), drs_core::HandlerError>(())
            })
            .await
            .unwrap();
        // No role jail: the server-wide publish jail alone.
        other.publish_confirmed("chat.room", 1).await.unwrap();
        refused(
            other.publish_confirmed("admin.x", 1).await.unwrap_err(),
            "publish not allowed: admin.x",
        );
        // Refusals changed nothing: only the two allowed subscriptions.
        assert_eq!(broker.stats().subscriptions, 2);
    })
    .await
    .unwrap();
}
