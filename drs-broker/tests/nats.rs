//! Pub/sub through NATS between the workers of a service, and a named
//! component's retroactive subscription kept by JetStream across a
//! restart of the NATS server (a real nats-server with JetStream, started
//! here on a free port of 127.0.0.1).

use std::time::Duration;

use drs_broker::{Broker, BrokerConfig, NatsBroker, NatsBrokerConfig};
use drs_core::{Client, Conn, HandlerResult, Server};
use drs_names::{ServerNames, IDENTIFY};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_testkit::NatsServer;
use drs_transport_nats::{async_nats, NatsDialer, NatsListener};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

/// A worker: a server with a broker, listening as `service`, its broker
/// joined to the others of `topics`.
async fn worker(url: &str, service: &str, topics: &str) -> (Server, Broker, NatsBroker) {
    let nats = async_nats::connect(url).await.unwrap();
    let server = Server::new();
    let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
    let bridge = NatsBroker::attach(&server, &broker, &nats, topics, NatsBrokerConfig::default())
        .await
        .unwrap();
    server
        .listen(NatsListener::bind(&nats, service).await.unwrap(), Json)
        .unwrap();
    (server, broker, bridge)
}

/// Connects to `service`, recording what arrives for `news.*`.
async fn subscriber(
    url: &str,
    service: &str,
    tx: mpsc::UnboundedSender<(String, Value)>,
) -> Result<Conn, drs_core::Error> {
    let nats = async_nats::connect(url).await.unwrap();
    let mut client = Client::new();
    for topic in ["news.a", "news.b"] {
        let tx = tx.clone();
        client = client.on(topic, move |msg: drs_core::Msg, body: Value| {
            let _ = tx.send((msg.action().to_string(), body));
            async { HandlerResult::Ok(()) }
        });
    }
    client.connect(NatsDialer::new(nats, service), Json).await
}

/// Names itself `name` on `service`, subscribes to `news.*`
/// retroactively, and leaves; returns once the worker has let the name go.
async fn away(server: &Server, url: &str, service: &str, name: &str) {
    let (tx, _rx) = mpsc::unbounded_channel();
    let first = subscriber(url, service, tx).await.unwrap();
    let _: Value = first.call(IDENTIFY, json!({ "name": name })).await.unwrap();
    let _: Value = first
        .call(
            "drs.subscribe",
            json!({"topic": "news.*", "retroactive": true}),
        )
        .await
        .unwrap();
    first.close();
    first.closed().await;
    while server.named(name).is_some() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_worker_reaches_subscribers_on_another() {
    let Some(nats_server) = NatsServer::start_jetstream_or_skip("a_publish_on_one_worker") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = nats_server.url();
        let _a = worker(&url, "svc-a", "shared").await;
        let _b = worker(&url, "svc-b", "shared").await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sub = subscriber(&url, "svc-a", tx).await.unwrap();
        let _: Value = sub
            .call("drs.subscribe", json!({"topic": "news.*"}))
            .await
            .unwrap();
        // A MessagePack publisher on the other worker.
        let nats = async_nats::connect(&url).await.unwrap();
        let b_mp = Server::new();
        let broker = Broker::attach(&b_mp, BrokerConfig::default()).unwrap();
        let _bridge =
            NatsBroker::attach(&b_mp, &broker, &nats, "shared", NatsBrokerConfig::default())
                .await
                .unwrap();
        b_mp.listen(NatsListener::bind(&nats, "svc-c").await.unwrap(), MsgPack)
            .unwrap();
        let publisher = Client::new()
            .connect(NatsDialer::new(nats, "svc-c"), MsgPack)
            .await
            .unwrap();
        let n: u64 = publisher
            .call(
                "drs.publish",
                json!({"topic": "news.a", "body": {"x": 1.5}}),
            )
            .await
            .unwrap();
        assert_eq!(n, 1, "stored by JetStream");
        assert_eq!(
            rx.recv().await.unwrap(),
            ("news.a".to_string(), json!({"x": 1.5}))
        );
        // Jails and topics are checked before anything goes to NATS.
        let err = publisher
            .call::<Value>("drs.publish", json!({"topic": "news.*", "body": 1}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("topic"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_component_gets_what_it_missed_across_a_nats_restart_once_in_order() {
    let Some(mut nats_server) = NatsServer::start_jetstream_or_skip("a_named_component_gets")
    else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = nats_server.url();
        let (server, _broker, _bridge) = worker(&url, "archive", "archive").await;
        // The component names itself, subscribes retroactively, leaves.
        away(&server, &url, "archive", "archiver").await;
        // Published while it is away; each answered once stored.
        let nats = async_nats::connect(&url).await.unwrap();
        let publisher = Client::new()
            .connect(NatsDialer::new(nats, "archive"), Json)
            .await
            .unwrap();
        for i in 0..10 {
            let topic = if i % 2 == 0 { "news.a" } else { "news.b" };
            let n: u64 = publisher
                .call("drs.publish", json!({"topic": topic, "body": i}))
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        drop(publisher);
        // NATS goes down hard and comes back on its address and store.
        nats_server.restart();
        // The worker's NATS connection comes back by itself; until it has,
        // the service has no responders.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let back = loop {
            match subscriber(&url, "archive", tx.clone()).await {
                Ok(conn) => break conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let _: Value = back
            .call(IDENTIFY, json!({"name": "archiver"}))
            .await
            .unwrap();
        for i in 0..10 {
            let topic = if i % 2 == 0 { "news.a" } else { "news.b" };
            assert_eq!(rx.recv().await.unwrap(), (topic.to_string(), json!(i)));
        }
        // Then live, and nothing twice: a publication after them is the
        // next thing to arrive.
        let nats = async_nats::connect(&url).await.unwrap();
        let publisher = Client::new()
            .connect(NatsDialer::new(nats, "archive"), Json)
            .await
            .unwrap();
        let _: u64 = publisher
            .call("drs.publish", json!({"topic": "news.a", "body": "live"}))
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            ("news.a".to_string(), json!("live"))
        );
        // Unsubscribing deletes its consumer: nothing more is kept.
        let _: Value = back
            .call("drs.unsubscribe", json!({"topic": "news.*"}))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut stream = js.get_stream("DRS_archive").await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.state.consumer_count, 0);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_the_clients_of_every_worker() {
    let Some(nats_server) = NatsServer::start_or_skip("a_broadcast_reaches_the_clients") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = nats_server.url();
        let nats = async_nats::connect(&url).await.unwrap();
        let mut bridges = Vec::new();
        let mut servers = Vec::new();
        for service in ["bc-a", "bc-b"] {
            let server = Server::new();
            let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
            let config = NatsBrokerConfig::default().jetstream(false);
            bridges.push(
                NatsBroker::attach(&server, &broker, &nats, "bc", config)
                    .await
                    .unwrap(),
            );
            server
                .listen(NatsListener::bind(&nats, service).await.unwrap(), Json)
                .unwrap();
            servers.push(server);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut conns = Vec::new();
        for service in ["bc-a", "bc-b"] {
            let tx = tx.clone();
            let client = Client::new().on("alert", move |body: Value| {
                let _ = tx.send(body);
                async { HandlerResult::Ok(()) }
            });
            let nats = async_nats::connect(&url).await.unwrap();
            let conn = client
                .connect(NatsDialer::new(nats, service), Json)
                .await
                .unwrap();
            let _: u64 = conn.call("drs.ping", ()).await.unwrap();
            conns.push(conn);
        }
        bridges[0]
            .broadcast("alert", json!({"level": 3}))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), json!({"level": 3}));
        assert_eq!(rx.recv().await.unwrap(), json!({"level": 3}));
    })
    .await
    .unwrap();
}

/// What arrives from NATS is checked before it reaches a client: 40
/// broadcasts that are not JSON, published by a raw NATS client with a
/// `Drs-Action` header, are dropped; the client stays connected (they
/// would have made it disconnect the worker as a bad peer) and gets the
/// good broadcast after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_broadcasts_from_nats_are_dropped() {
    let Some(nats_server) = NatsServer::start_or_skip("undecodable_broadcasts") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = nats_server.url();
        let nats = async_nats::connect(&url).await.unwrap();
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
        let config = NatsBrokerConfig::default().jetstream(false);
        let _bridge = NatsBroker::attach(&server, &broker, &nats, "bad", config)
            .await
            .unwrap();
        server
            .listen(NatsListener::bind(&nats, "bad-svc").await.unwrap(), Json)
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let client = Client::new().on("alert", move |body: Value| {
            let _ = tx.send(body);
            async { HandlerResult::Ok(()) }
        });
        let conn = client
            .connect(
                NatsDialer::new(async_nats::connect(&url).await.unwrap(), "bad-svc"),
                Json,
            )
            .await
            .unwrap();
        let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        let raw = async_nats::connect(&url).await.unwrap();
        let send = |payload: &'static [u8], format: Option<&'static str>| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Drs-Action", "alert");
            if let Some(format) = format {
                headers.insert("Drs-Format", format);
            }
            raw.publish_with_headers("drs.bad.broadcast", headers, payload.into())
        };
        for i in 0..40 {
            let (payload, format): (&[u8], _) = match i % 4 {
                0 => (b"not json at all", None),
                1 => (b"{\"open\": ", Some("json")),
                2 => (b"\xc1\xc1", Some("msgpack")),
                _ => (b"1", Some("cbor")),
            };
            send(payload, format).await.unwrap();
        }
        send(b"{\"level\": 3}", None).await.unwrap();
        raw.flush().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), json!({"level": 3}));
        let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        assert!(!conn.is_closed());
    })
    .await
    .unwrap();
}

/// A message in the JetStream stream that is not what its header says
/// (MessagePack) would fail at every delivery and be sent again forever,
/// blocking the named subscriber: it is terminated, and the next good
/// message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_in_jetstream_is_terminated() {
    let Some(nats_server) = NatsServer::start_jetstream_or_skip("a_poison_message") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = nats_server.url();
        let (server, _broker, _bridge) = worker(&url, "poison", "poison").await;
        away(&server, &url, "poison", "reader").await;
        // A raw publisher puts a message that is not MessagePack in the
        // stream, under a MessagePack header; then a good one follows.
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Drs-Format", "msgpack");
        js.publish_with_headers(
            "drs.poison.topic.news.a",
            headers,
            b"\xc1 not msgpack"[..].into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let nats = async_nats::connect(&url).await.unwrap();
        let publisher = Client::new()
            .connect(NatsDialer::new(nats, "poison"), Json)
            .await
            .unwrap();
        let n: u64 = publisher
            .call("drs.publish", json!({"topic": "news.b", "body": "good"}))
            .await
            .unwrap();
        assert_eq!(n, 1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let back = subscriber(&url, "poison", tx).await.unwrap();
        let _: Value = back
            .call(IDENTIFY, json!({"name": "reader"}))
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap(),
            ("news.b".to_string(), json!("good"))
        );
    })
    .await
    .unwrap();
}
