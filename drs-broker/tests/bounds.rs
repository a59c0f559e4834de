//! What one peer can make the broker hold: topics and patterns are
//! bounded in length and depth; subscriptions, names and backlogs are held
//! on the server's memory budget at their size; the backlog of all names
//! together is bounded in bytes with its fan-out counted.

use std::{sync::Arc, time::Duration};

use drs_broker::{Backlog, Broker, BrokerConfig, BUDGET_EXCEEDED};
use drs_core::{Client, Conn, HandlerResult, Server, ServerConfig};
use drs_names::{ServerNames, IDENTIFY};
use drs_protocol_json::Json;
use drs_pubsub::{MAX_TOPIC_DEPTH, MAX_TOPIC_LEN};
use drs_transport_tcp::TcpDialer;
use serde_json::{json, Value};

mod common;
use common::message;

const LIMIT: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

async fn broker(budget: usize, config: BrokerConfig) -> (Server, Broker, String) {
    let server = Server::with_config(ServerConfig::default().memory_budget(budget));
    let broker = Broker::attach(&server, config).unwrap();
    let addr = common::listen(&server).await;
    (server, broker, addr)
}

async fn conn(addr: &str) -> Conn {
    Client::new()
        .on("drs.missed", |_: Value| async { HandlerResult::Ok(()) })
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .unwrap()
}

/// A pattern of `n` segments, `*` in every other place.
fn deep(n: usize, salt: usize) -> String {
    (0..n)
        .map(|i| {
            if i % 2 == 1 {
                "*".to_string()
            } else {
                format!("s{salt}x{i}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_patterns_are_bounded_in_depth_and_length() {
    tokio::time::timeout(LIMIT, async {
        let (_server, broker, addr) = broker(256 << 20, BrokerConfig::default()).await;
        let c = conn(&addr).await;
        let too_deep = deep(MAX_TOPIC_DEPTH + 1, 0);
        let refused = message(c.call("drs.subscribe", json!({ "topic": too_deep })).await);
        assert!(refused.contains("more than 32 segments"), "{refused}");
        let too_long = format!("a.{}", "b".repeat(MAX_TOPIC_LEN));
        let refused = message(
            c.call("drs.publish", json!({"topic": too_long, "body": 1}))
                .await,
        );
        assert!(refused.contains("longer than 256 bytes"), "{refused}");
        // At the bounds: accepted.
        let _: Value = c
            .call("drs.subscribe", json!({"topic": deep(MAX_TOPIC_DEPTH, 0)}))
            .await
            .unwrap();
        assert_eq!(broker.stats().subscriptions, 1);
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_held_on_the_memory_budget() {
    tokio::time::timeout(LIMIT, async {
        let budget = 512 << 10;
        let (server, broker, addr) = broker(budget, BrokerConfig::default()).await;
        // A name's subscriptions: refused once the budget has no room, and
        // released when they go.
        let named = conn(&addr).await;
        let _: Value = named
            .call(IDENTIFY, json!({"name": "hoarder"}))
            .await
            .unwrap();
        let mut taken = 0;
        let refused = loop {
            let pattern = deep(MAX_TOPIC_DEPTH, taken);
            match named
                .call::<Value>("drs.subscribe", json!({ "topic": pattern }))
                .await
            {
                Ok(_) => taken += 1,
                Err(e) => break e.remote().map(|r| r.message.clone()).unwrap_or_default(),
            }
            assert!(taken < 1024, "never refused");
        };
        assert_eq!(refused, BUDGET_EXCEEDED);
        assert!(taken > 10, "only {taken} subscriptions fit");
        let used = server.memory_budget().used();
        assert!(used > budget * 3 / 4, "{used} of {budget} used");
        assert_eq!(broker.stats().subscriptions, taken);
        for i in 0..taken {
            let _: Value = named
                .call(
                    "drs.unsubscribe",
                    json!({"topic": deep(MAX_TOPIC_DEPTH, i)}),
                )
                .await
                .unwrap();
        }
        assert!(server.memory_budget().used() < 4096);

        // A connection's own subscriptions count as what it holds: past
        // the budget it is disconnected as the largest holder.
        let plain = conn(&addr).await;
        let mut evicted = false;
        for i in 0..1024 {
            let pattern = deep(MAX_TOPIC_DEPTH, i);
            if plain
                .call::<Value>("drs.subscribe", json!({ "topic": pattern }))
                .await
                .is_err()
            {
                evicted = true;
                break;
            }
        }
        assert!(evicted, "never disconnected");
        plain.closed().await;
        // Released once the server has processed the end (the test's
        // timeout bounds the wait).
        while server.memory_budget().used() >= 4096 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_of_all_names_counts_its_fan_out() {
    tokio::time::timeout(LIMIT, async {
        // Each message: 10 bytes of body, shared by 100 names.
        let config = BrokerConfig::default()
            .total_backlog(Backlog::new(1_000_000, 1 << 20, HOUR))
            .max_names_per_identity(1000);
        let (server, broker, addr) = broker(256 << 20, config).await;
        for i in 0..100 {
            let c = conn(&addr).await;
            let name = format!("n{i}");
            let _: Value = c.call(IDENTIFY, json!({ "name": name })).await.unwrap();
            let _: Value = c
                .call(
                    "drs.subscribe",
                    json!({"topic": "f.*", "retroactive": true}),
                )
                .await
                .unwrap();
            c.close();
            c.closed().await;
            while server.named(&name).is_some() {
                tokio::task::yield_now().await;
            }
        }
        for i in 0..1000 {
            broker.publish("f.x", format!("{i:08}")).await.unwrap();
        }
        let stats = broker.stats();
        // 1 MiB over (10 + 160 + 100 × 64) bytes a message: 159 at most;
        // counting bodies alone would have kept all 1,000.
        assert!(
            stats.stored_messages <= 160 && stats.stored_messages > 100,
            "{stats:?}"
        );
        assert!(server.memory_budget().used() >= stats.stored_messages * 6400);
        // A name coming back hears what it missed.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let back = Client::new()
            .on("drs.missed", move |body: Value| {
                let _ = tx.send(body);
                async { HandlerResult::Ok(()) }
            })
            .on("f.x", |_: Value| async { HandlerResult::Ok(()) })
            .connect(TcpDialer::new(&addr), Arc::new(Json))
            .await
            .unwrap();
        let _: Value = back.call(IDENTIFY, json!({"name": "n0"})).await.unwrap();
        let missed = rx.recv().await.unwrap();
        assert_eq!(
            missed["missed"].as_u64().unwrap() as usize,
            1000 - stats.stored_messages
        );
    })
    .await
    .expect("within the limit");
}

/// Past 4,096 subscriptions a publication's matching runs off the
/// runtime's worker threads (so a peer's many patterns never stall
/// unrelated work); deliveries are the same, on a multi-threaded runtime
/// and on a current-thread one (where it stays inline).
#[test]
fn many_subscriptions_still_deliver_on_either_runtime() {
    for multi in [true, false] {
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(async {
            tokio::time::timeout(LIMIT, async {
                let config = BrokerConfig::default().max_subscriptions(5000);
                let (_server, broker, addr) = broker(256 << 20, config).await;
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let c = Client::new()
                    .on("hot.x", move |body: Value| {
                        let _ = tx.send(body);
                        async { HandlerResult::Ok(()) }
                    })
                    .connect(TcpDialer::new(&addr), Arc::new(Json))
                    .await
                    .unwrap();
                for i in 0..4200 {
                    let _: Value = c
                        .call("drs.subscribe", json!({ "topic": format!("cold.{i}.*") }))
                        .await
                        .unwrap();
                }
                let _: Value = c
                    .call("drs.subscribe", json!({"topic": "hot.*"}))
                    .await
                    .unwrap();
                assert_eq!(broker.stats().subscriptions, 4201);
                assert_eq!(broker.publish("hot.x", "served").await.unwrap(), 1);
                assert_eq!(rx.recv().await.unwrap(), json!("served"));
            })
            .await
            .expect("within the limit");
        });
    }
}
