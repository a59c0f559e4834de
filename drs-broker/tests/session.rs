//! A reconnecting session subscribes and exposes again on every
//! connection.

use std::{sync::Arc, time::Duration};

use drs_broker::{Broker, BrokerConfig};
use drs_core::{Client, HandlerResult, Msg, Server};
use drs_protocol_json::Json;
use drs_session::{ReconnectPolicy, Session};
use drs_transport_tcp::{TcpDialer, TcpListener};
use serde_json::{json, Value};
use tokio::sync::mpsc;

async fn broker_on(addr: &str) -> (Server, Broker, String) {
    let server = Server::new();
    let broker = Broker::attach(&server, BrokerConfig::default()).expect("broker");
    let addr = server
        .listen(TcpListener::bind(addr).await.expect("bind"), Json)
        .expect("listen");
    (server, broker, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_subscribes_and_exposes_again_after_a_reconnect() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (server, broker, addr) = broker_on("127.0.0.1:0").await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("sensor-reader")
            .policy(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(50)),
            )
            .expose("double", |n: f64| async move { HandlerResult::Ok(n * 2.0) })
            .connect()
            .await
            .expect("connect");
        session
            .subscribe("sensors.*", move |msg: Msg, body: Value| {
                let _ = tx.send((msg.action().to_string(), body));
                async { HandlerResult::Ok(()) }
            })
            .await
            .expect("subscribe");
        assert_eq!(broker.publish("sensors.t1", 20).await.unwrap(), 1);
        assert_eq!(
            rx.recv().await.unwrap(),
            ("sensors.t1".to_string(), json!(20))
        );
        let caller = Client::new()
            .connect(TcpDialer::new(addr.clone()), Arc::new(Json))
            .await
            .unwrap();
        assert_eq!(caller.call::<f64>("double", 4).await.unwrap(), 8.0);

        // The server goes; a new one (with a new broker) comes on the
        // same address.
        let mut events = session.events();
        server.shutdown(Duration::from_millis(100)).await;
        let (_server, broker, _) = broker_on(&addr).await;
        use futures::StreamExt;
        while let Some(event) = events.next().await {
            if matches!(event, drs_session::SessionEvent::Connected { .. }) {
                break;
            }
        }
        assert_eq!(
            broker.publish("sensors.t2", 21).await.unwrap(),
            1,
            "subscribed again"
        );
        assert_eq!(
            rx.recv().await.unwrap(),
            ("sensors.t2".to_string(), json!(21))
        );
        let caller = Client::new()
            .connect(TcpDialer::new(addr.clone()), Arc::new(Json))
            .await
            .unwrap();
        assert_eq!(
            caller.call::<f64>("double", 5).await.unwrap(),
            10.0,
            "exposed again"
        );
        session.unsubscribe("sensors.*").await.unwrap();
        assert_eq!(broker.publish("sensors.t3", 22).await.unwrap(), 0);
        session.publish("news.x", "fired").await.unwrap();
        assert_eq!(
            session.publish_confirmed("news.x", "called").await.unwrap(),
            0
        );
    })
    .await
    .expect("within the limit");
}
