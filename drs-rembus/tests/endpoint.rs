//! A Rembus peer speaking raw CBOR over WebSocket, beside drs clients on
//! TCP, on one broker: reactive, setup, direct calls, retroactive
//! delivery, QoS acknowledgements.

use drs_pubsub::PubSub;
use std::{sync::Arc, time::Duration};

use ciborium::Value;
use drs_broker::{Broker, BrokerConfig};
use drs_core::{Client, Conn, HandlerResult, Msg, Server};
use drs_names::{ConnName, ServerNames};
use drs_protocol_json::Json;
use drs_transport_tcp::{TcpDialer, TcpListener};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value as J};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Peer {
    ws: Ws,
    next: u64,
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn n(i: u64) -> Value {
    Value::Integer(i.into())
}

impl Peer {
    async fn connect(addr: &str) -> Peer {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
            .await
            .expect("ws");
        Peer { ws, next: 1 }
    }

    fn id(&mut self) -> Value {
        self.next += 1;
        Value::Bytes(self.next.to_le_bytes().to_vec())
    }

    async fn send(&mut self, items: Vec<Value>) {
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Array(items), &mut out).unwrap();
        self.ws
            .send(Message::Binary(out.into()))
            .await
            .expect("send");
    }

    async fn recv(&mut self) -> Vec<Value> {
        loop {
            match self.ws.next().await.expect("open").expect("frame") {
                Message::Binary(b) => {
                    match ciborium::from_reader::<Value, _>(&b[..]).expect("CBOR") {
                        Value::Array(items) => return items,
                        other => panic!("not an array: {other:?}"),
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends a request (`items` after the type and id) and returns the
    /// status and data of its response.
    async fn ask(&mut self, ty: u64, rest: Vec<Value>) -> (u64, Value) {
        let id = self.id();
        let mut items = vec![n(ty), id.clone()];
        items.extend(rest);
        self.send(items).await;
        let reply = self.recv().await;
        assert_eq!(reply[1], id, "{reply:?}");
        assert_eq!(reply[0], n(4), "{reply:?}");
        (int(&reply[2]), reply[3].clone())
    }

    async fn admin(&mut self, topic: &str, spec: Vec<(Value, Value)>) -> u64 {
        self.ask(3, vec![t(topic), Value::Map(spec)]).await.0
    }
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Integer(i) => u64::try_from(i128::from(*i)).unwrap(),
        other => panic!("not an integer: {other:?}"),
    }
}

async fn setup() -> (Server, Broker, String, String) {
    let server = Server::new();
    let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
    drs_rembus::attach(&server, &broker);
    server.on("whoami", |msg: Msg| async move {
        HandlerResult::Ok(msg.conn().name().map(|n| n.to_string()))
    });
    let rembus = drs_rembus::listen(&server, "127.0.0.1:0").await.unwrap();
    let tcp = server
        .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
        .unwrap();
    (server, broker, rembus, tcp)
}

async fn drs(addr: &str) -> Conn {
    Client::new()
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_rembus_peer_on_the_broker() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (_server, _broker, rembus, tcp) = setup().await;
        let mut peer = Peer::connect(&rembus).await;
        assert_eq!(peer.ask(0, vec![t("raw"), Value::Map(vec![])]).await.0, 0);
        // Subscribed but not reactive: nothing is delivered yet.
        assert_eq!(
            peer.admin("news", vec![(t("cmd"), t("subscribe"))]).await,
            0
        );
        let publisher = drs(&tcp).await;
        assert_eq!(
            publisher.publish_confirmed("news", "first").await.unwrap(),
            0,
            "held back"
        );
        assert_eq!(
            peer.admin(
                "__config__",
                vec![(t("cmd"), t("reactive")), (t("status"), Value::Bool(true))]
            )
            .await,
            0
        );
        assert_eq!(
            publisher.publish_confirmed("news", "second").await.unwrap(),
            1
        );
        assert_eq!(
            peer.recv().await,
            vec![n(1), t("news"), Value::Array(vec![t("second")])]
        );
        // The server's own handler, by a Rembus RPC, knows the name.
        assert_eq!(
            peer.ask(2, vec![t("whoami"), Value::Null, Value::Array(vec![])])
                .await,
            (0, t("raw"))
        );
        // QoS 1 publish: acknowledged.
        let id = peer.id();
        peer.send(vec![
            n(0x11),
            id.clone(),
            t("other"),
            Value::Array(vec![n(1)]),
        ])
        .await;
        assert_eq!(peer.recv().await, vec![n(5), id]);
        // QoS 2: a repeat of the id is acknowledged, not published again,
        // until the peer releases the id with [6, id].
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = drs(&tcp).await;
        watcher
            .subscribe("quiet", move |body: J| {
                let _ = tx.send(body);
                async { HandlerResult::Ok(()) }
            })
            .await
            .unwrap();
        let id = peer.id();
        for _ in 0..2 {
            peer.send(vec![
                n(0x31),
                id.clone(),
                t("quiet"),
                Value::Array(vec![t("once")]),
            ])
            .await;
            assert_eq!(peer.recv().await, vec![n(5), id.clone()]);
        }
        peer.send(vec![n(6), id.clone()]).await;
        peer.send(vec![
            n(0x31),
            id.clone(),
            t("quiet"),
            Value::Array(vec![t("again")]),
        ])
        .await;
        assert_eq!(peer.recv().await, vec![n(5), id.clone()]);
        publisher
            .publish_confirmed("quiet", "marker")
            .await
            .unwrap();
        for want in ["once", "again", "marker"] {
            assert_eq!(rx.recv().await.unwrap(), json!(want));
        }
        // Unknown admin command: 47.
        assert_eq!(peer.admin("x", vec![(t("cmd"), t("frobnicate"))]).await, 47);
        // No exposer: 42 with the name.
        assert_eq!(
            peer.ask(2, vec![t("ghost"), Value::Null, Value::Array(vec![])])
                .await,
            (42, t("ghost"))
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_exposes_and_subscribes_again_and_retroactive_delivery_follows() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (_server, _broker, rembus, tcp) = setup().await;
        let mut peer = Peer::connect(&rembus).await;
        assert_eq!(
            peer.ask(0, vec![t("worker"), Value::Map(vec![])]).await.0,
            0
        );
        assert_eq!(
            peer.admin(
                "log",
                vec![
                    (t("cmd"), t("subscribe")),
                    (t("msg_from"), Value::Float(f64::INFINITY))
                ]
            )
            .await,
            0
        );
        drop(peer);
        let publisher = drs(&tcp).await;
        // Stored for the name while it is away (the server may not have
        // seen the close yet: stored either way).
        for i in 0..3 {
            assert_eq!(publisher.publish_confirmed("log", i).await.unwrap(), 1);
        }
        let mut peer = Peer::connect(&rembus).await;
        let (status, _) = loop {
            let answer = peer.ask(0, vec![t("worker"), Value::Map(vec![])]).await;
            if answer.0 == 0 {
                break answer;
            }
            // The old connection is still being closed.
            tokio::task::yield_now().await;
        };
        assert_eq!(status, 0);
        // setup: expose `triple`, subscribe again, and become reactive.
        let spec = vec![
            (t("cmd"), t("setup")),
            (t("exposers"), Value::Array(vec![t("triple")])),
            (t("subscribers"), Value::Array(vec![t("log")])),
        ];
        let id = peer.id();
        peer.send(vec![n(3), id.clone(), t("__config__"), Value::Map(spec)])
            .await;
        let mut got = Vec::new();
        let mut answered = false;
        while !(answered && got.len() == 3) {
            let frame = peer.recv().await;
            if frame[0] == n(4) && frame[1] == id {
                assert_eq!(frame[2], n(0));
                answered = true;
            } else {
                assert_eq!(frame[0], n(1), "{frame:?}");
                got.push(frame[2].clone());
            }
        }
        assert_eq!(
            got,
            (0..3).map(|i| Value::Array(vec![n(i)])).collect::<Vec<_>>()
        );
        // A drs caller reaches the Rembus exposer.
        let caller = drs(&tcp).await;
        let (tx, mut rx) = mpsc::channel(1);
        let c = caller.clone();
        tokio::spawn(async move { tx.send(c.call::<J>("triple", 14).await).await });
        let call = peer.recv().await;
        assert_eq!(
            (call[0].clone(), call[2].clone(), call[4].clone()),
            (n(2), t("triple"), Value::Array(vec![n(14)]))
        );
        peer.send(vec![n(4), call[1].clone(), n(0), n(42)]).await;
        assert_eq!(rx.recv().await.unwrap().unwrap(), json!(42));
        // A direct call from a Rembus peer to a named drs connection.
        let named = drs(&tcp).await;
        named.on("hello", |who: String| async move {
            HandlerResult::Ok(format!("hello {who}"))
        });
        let _: J = named
            .call("drs.identify", json!({"name": "greeter"}))
            .await
            .unwrap();
        assert_eq!(
            peer.ask(
                2,
                vec![t("hello"), t("greeter"), Value::Array(vec![t("ada")])]
            )
            .await,
            (0, t("hello ada"))
        );
        let (status, data) = peer
            .ask(2, vec![t("hello"), t("nobody"), Value::Array(vec![])])
            .await;
        assert_eq!(status, 45);
        assert!(
            matches!(data, Value::Text(ref s) if s.contains("target not found")),
            "{data:?}"
        );
    })
    .await
    .unwrap();
}

/// With a token on the server, the Rembus listener requires it like any
/// other: a component that presented none is refused with the Rembus
/// identification error (20), its RPCs, exposes and subscriptions too,
/// and what it publishes reaches nobody. One that gives the token on its
/// WebSocket request (`?token=`) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rembus_component_without_the_token_is_refused() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default()).unwrap();
        drs_rembus::attach(&server, &broker);
        server.on("whoami", |msg: Msg| async move {
            HandlerResult::Ok(msg.conn().name().map(|n| n.to_string()))
        });
        let tokens = drs_auth::ListenerTokens::install(&server);
        let rembus = drs_rembus::listen(&server, "127.0.0.1:0").await.unwrap();
        let tcp = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        tokens.set(rembus.clone(), Some("T".into()));
        tokens.set(tcp.clone(), Some("T".into()));

        let holder = drs(&tcp).await;
        let _: J = holder
            .call("drs.auth", json!({"token": "T"}))
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        holder
            .subscribe("news", move |body: J| {
                let _ = tx.send(body);
                async { HandlerResult::Ok(()) }
            })
            .await
            .unwrap();

        let mut anonymous = Peer::connect(&rembus).await;
        let refused = (20, t("unauthenticated"));
        assert_eq!(
            anonymous
                .ask(0, vec![t("billing"), Value::Map(vec![])])
                .await,
            refused
        );
        assert_eq!(
            anonymous
                .ask(2, vec![t("whoami"), Value::Null, Value::Array(vec![])])
                .await,
            refused
        );
        assert_eq!(
            anonymous
                .ask(
                    3,
                    vec![t("whoami"), Value::Map(vec![(t("cmd"), t("expose"))])]
                )
                .await,
            refused
        );
        anonymous
            .send(vec![n(1), t("news"), Value::Array(vec![t("forged")])])
            .await;
        assert_eq!(broker.stats().exposed_actions, 0);
        assert!(server.named("billing").is_none());

        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{rembus}/?token=T"))
            .await
            .expect("ws");
        let mut holder_peer = Peer { ws, next: 1 };
        assert_eq!(
            holder_peer
                .ask(0, vec![t("billing"), Value::Map(vec![])])
                .await
                .0,
            0
        );
        assert_eq!(
            holder_peer
                .ask(2, vec![t("whoami"), Value::Null, Value::Array(vec![])])
                .await,
            (0, t("billing"))
        );
        holder_peer
            .send(vec![n(1), t("news"), Value::Array(vec![t("real")])])
            .await;
        // The forged publication, sent first, never arrived.
        assert_eq!(rx.recv().await.unwrap(), json!("real"));
    })
    .await
    .expect("within the limit");
}
