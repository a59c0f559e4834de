//! The bounds of what the broker keeps for names that are away: per name
//! (count, bytes, age), per topic, and for everything together. Past a
//! bound the oldest go and the name is told how many it missed.

use std::{sync::Arc, time::Duration};

use drs_broker::{Backlog, Broker, BrokerConfig};
use drs_core::{Client, Conn, HandlerResult, Msg, Server};
use drs_names::{ServerNames, IDENTIFY};
use drs_protocol_json::Json;
use drs_pubsub::Subscriptions;
use drs_transport_tcp::{TcpDialer, TcpListener};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const HOUR: Duration = Duration::from_secs(3600);

async fn broker(config: BrokerConfig) -> (Server, Broker, String) {
    let server = Server::new();
    let broker = Broker::attach(&server, config).unwrap();
    let addr = server
        .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
        .unwrap();
    (server, broker, addr)
}

/// Connects as `name` with `x.*` (retroactive) and `drs.missed` going to
/// `tx`.
async fn named(addr: &str, name: &str, tx: mpsc::UnboundedSender<(String, Value)>) -> Conn {
    named_with(addr, name, tx, json!({"topic": "x.*", "retroactive": true})).await
}

/// [`named`], subscribing with `subscription`.
async fn named_with(
    addr: &str,
    name: &str,
    tx: mpsc::UnboundedSender<(String, Value)>,
    subscription: Value,
) -> Conn {
    let subs = Subscriptions::new();
    let t = tx.clone();
    subs.insert("x.*", true, move |msg: Msg, body: Value| {
        let _ = t.send((msg.action().to_string(), body));
        async { HandlerResult::Ok(()) }
    })
    .unwrap();
    let client = Client::new()
        .layer(subs)
        .on("drs.missed", move |body: Value| {
            let _ = tx.send(("drs.missed".to_string(), body));
            async { HandlerResult::Ok(()) }
        });
    let conn = client
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .unwrap();
    let _: Value = conn.call(IDENTIFY, json!({"name": name})).await.unwrap();
    let _: Value = conn.call("drs.subscribe", subscription).await.unwrap();
    conn
}

/// Names `name`, subscribes, and leaves: closed on our side, and the
/// server has let the name go (until it does, coming back as `name` is
/// refused as "name taken"). What is published after the subscription is
/// stored for the name whether or not the server had seen the close.
async fn away(server: &Server, addr: &str, name: &str) {
    let (tx, _rx) = mpsc::unbounded_channel();
    leave(server, named(addr, name, tx).await, name).await;
}

/// Closes `conn`, named `name`, and waits until the server has let the
/// name go.
async fn leave(server: &Server, conn: Conn, name: &str) {
    conn.close();
    conn.closed().await;
    while server.named(name).is_some() {
        tokio::task::yield_now().await;
    }
}

async fn publish(broker: &Broker, topic: &str, body: Value) {
    broker.publish(topic, body).await.unwrap();
}

async fn take(rx: &mut mpsc::UnboundedReceiver<(String, Value)>, n: usize) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(rx.recv().await.expect("a delivery"));
    }
    got
}

fn d(topic: &str, body: Value) -> (String, Value) {
    (topic.to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_backlog_over_its_bytes_keeps_the_newest() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let config = BrokerConfig::default().backlog(Backlog::new(1000, 100, HOUR));
        let (s, broker, addr) = broker(config).await;
        away(&s, &addr, "n").await;
        let body = "x".repeat(38); // 40 bytes as JSON
        for i in 0..5 {
            publish(&broker, &format!("x.{i}"), json!(body)).await;
        }
        assert_eq!(broker.stats().stored_messages, 2);
        assert!(broker.stats().stored_bytes <= 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _n = named(&addr, "n", tx).await;
        assert_eq!(
            take(&mut rx, 3).await,
            [
                d("drs.missed", json!({"missed": 3})),
                d("x.3", json!(body)),
                d("x.4", json!(body))
            ]
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_over_its_bound_loses_its_oldest_for_everyone() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let config = BrokerConfig::default().topic_backlog(Backlog::new(2, 1 << 20, HOUR));
        let (s, broker, addr) = broker(config).await;
        away(&s, &addr, "a").await;
        away(&s, &addr, "b").await;
        for i in 0..4 {
            publish(&broker, "x.hot", json!(i)).await;
        }
        publish(&broker, "x.cold", json!("c")).await;
        assert_eq!(
            broker.stats().stored_messages,
            3,
            "two of x.hot, one of x.cold"
        );
        for name in ["a", "b"] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let _c = named(&addr, name, tx).await;
            assert_eq!(
                take(&mut rx, 4).await,
                [
                    d("drs.missed", json!({"missed": 2})),
                    d("x.hot", json!(2)),
                    d("x.hot", json!(3)),
                    d("x.cold", json!("c")),
                ],
                "{name}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_together_is_bounded_too() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let config = BrokerConfig::default().total_backlog(Backlog::new(3, 1 << 20, HOUR));
        let (s, broker, addr) = broker(config).await;
        away(&s, &addr, "a").await;
        for i in 0..6 {
            publish(&broker, &format!("x.t{}", i % 3), json!(i)).await;
        }
        assert_eq!(broker.stats().stored_messages, 3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _c = named(&addr, "a", tx).await;
        assert_eq!(
            take(&mut rx, 4).await,
            [
                d("drs.missed", json!({"missed": 3})),
                d("x.t0", json!(3)),
                d("x.t1", json!(4)),
                d("x.t2", json!(5)),
            ]
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_their_age_are_reported_missed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        // An age of zero: anything stored is too old by the time it could
        // be delivered.
        let config = BrokerConfig::default().backlog(Backlog::new(1000, 1 << 20, Duration::ZERO));
        let (s, broker, addr) = broker(config).await;
        away(&s, &addr, "old").await;
        for i in 0..3 {
            publish(&broker, "x.a", json!(i)).await;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = named(&addr, "old", tx).await;
        assert_eq!(
            take(&mut rx, 1).await,
            [d("drs.missed", json!({"missed": 3}))]
        );
        // Nothing else came: a ping's reply comes after anything sent
        // before it.
        let _: u64 = c.call("drs.ping", ()).await.unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(broker.stats().stored_messages, 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_renames_itself_leaves_its_former_name() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (_s, broker, addr) = broker(BrokerConfig::default()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let conn = named(&addr, "first", tx).await;
        let _: Value = conn
            .call(IDENTIFY, json!({"name": "second"}))
            .await
            .unwrap();
        publish(&broker, "x.1", json!(1)).await;
        assert_eq!(
            broker.stats().stored_messages,
            1,
            "kept for `first`, now away"
        );
        let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        assert!(
            rx.try_recv().is_err(),
            "not delivered to the renamed connection"
        );
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let _first = named(&addr, "first", tx2).await;
        assert_eq!(take(&mut rx2, 1).await, [d("x.1", json!(1))]);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_limits_what_comes_back_but_not_live_messages() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (s, broker, addr) = broker(BrokerConfig::default()).await;
        // A window of 0 s: nothing missed is wanted back.
        let windowed = json!({"topic": "x.*", "retroactive": true, "window": 0});
        let (tx, _rx) = mpsc::unbounded_channel();
        leave(&s, named_with(&addr, "w", tx, windowed.clone()).await, "w").await;
        for i in 0..3 {
            publish(&broker, "x.a", json!(i)).await;
        }
        assert_eq!(broker.stats().stored_messages, 3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let c = named_with(&addr, "w", tx, windowed).await;
        assert_eq!(broker.stats().stored_messages, 0, "dropped, not delivered");
        publish(&broker, "x.live", json!("now")).await;
        assert_eq!(
            take(&mut rx, 1).await,
            [d("x.live", json!("now"))],
            "no drs.missed either"
        );
        let err = c
            .call::<Value>(
                "drs.subscribe",
                json!({"topic": "x.b", "retroactive": true, "window": -1}),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid window"), "{err}");
    })
    .await
    .unwrap();
}

/// A message evicted while its delivery awaits an acknowledgement that
/// never comes (the subscriber leaves first) is reported missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_evicted_on_its_way_and_never_acknowledged_is_missed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let config = BrokerConfig::default().total_backlog(Backlog::new(3, 1 << 20, HOUR));
        let (s, broker, addr) = broker(config).await;
        // A subscriber that takes deliveries and never answers them.
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let subs = Subscriptions::new();
        subs.insert("x.*", true, move |msg: Msg| {
            let _ = seen_tx.send(msg.action().to_string());
            std::future::pending::<HandlerResult<()>>()
        })
        .unwrap();
        let conn = Client::new()
            .layer(subs)
            .connect(TcpDialer::new(&addr), Arc::new(Json))
            .await
            .unwrap();
        let _: Value = conn.call(IDENTIFY, json!({"name": "a"})).await.unwrap();
        let _: Value = conn
            .call(
                "drs.subscribe",
                json!({"topic": "x.*", "retroactive": true}),
            )
            .await
            .unwrap();
        publish(&broker, "x.t", json!(0)).await;
        assert_eq!(seen.recv().await.unwrap(), "x.t", "0 is on its way");
        for i in 1..4 {
            publish(&broker, "x.t", json!(i)).await;
        }
        assert_eq!(broker.stats().stored_messages, 3, "0 was evicted");
        leave(&s, conn, "a").await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _c = named(&addr, "a", tx).await;
        assert_eq!(
            take(&mut rx, 4).await,
            [
                d("drs.missed", json!({"missed": 1})),
                d("x.t", json!(1)),
                d("x.t", json!(2)),
                d("x.t", json!(3)),
            ]
        );
    })
    .await
    .unwrap();
}
