//! Once per connection, however its subscriptions were made.

use drs_pubsub::PubSub;
use std::{sync::Arc, time::Duration};

use drs_broker::{Broker, BrokerConfig};
use drs_core::{Client, HandlerResult, Server};
use drs_names::IDENTIFY;
use drs_protocol_json::Json;
use drs_transport_tcp::{TcpDialer, TcpListener};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_subscribed_before_and_after_naming_itself_gets_one_copy() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
        let addr = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let conn = Client::new()
            .connect(TcpDialer::new(&addr), Arc::new(Json))
            .await
            .unwrap();
        let t = tx.clone();
        conn.subscribe("y.a", move |v: Value| {
            let _ = t.send(v);
            async { HandlerResult::Ok(()) }
        })
        .await
        .unwrap();
        let _: Value = conn.call(IDENTIFY, json!({"name": "z"})).await.unwrap();
        conn.subscribe("y.*", move |v: Value| {
            let _ = tx.send(v);
            async { HandlerResult::Ok(()) }
        })
        .await
        .unwrap();
        assert_eq!(broker.publish("y.a", 1).await.unwrap(), 1);
        assert_eq!(broker.publish("y.b", 2).await.unwrap(), 1);
        assert_eq!(rx.recv().await.unwrap(), json!(1));
        assert_eq!(rx.recv().await.unwrap(), json!(2), "y.a came once");
    })
    .await
    .unwrap();
}
