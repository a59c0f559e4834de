//! The durable store across a SIGKILL, and the errors of a store that
//! cannot be used. The broker runs in a child process: this test binary
//! run again with [`CHILD`] set.

use drs_pubsub::PubSub;
use std::{io::Write, sync::Arc, time::Duration};

use drs_broker::{Broker, BrokerConfig, StoreError, STORE_FILE};
use drs_core::{Client, Conn, HandlerResult, Msg, Server};
use drs_names::IDENTIFY;
use drs_protocol_json::Json;
use drs_pubsub::Subscriptions;
use drs_testkit::TestProcess;
use drs_transport_tcp::{TcpDialer, TcpListener};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Set in the environment of the child broker process: "ADDR DIR".
const CHILD: &str = "DRS_BROKER_DURABLE_CHILD";

const LIMIT: Duration = Duration::from_secs(60);

/// Not a test: the child broker process (returns at once without
/// [`CHILD`]).
#[test]
fn child_broker_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (addr, dir) = spec.split_once(' ').expect("ADDR DIR");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default().store(dir)).expect("store");
        let b = broker.clone();
        server.on("stored", move || {
            let n = b.stats().stored_messages;
            async move { HandlerResult::Ok(n) }
        });
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = server.listen(listener, Json).expect("listen");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {addr}").expect("write");
        out.flush().expect("flush");
        drop(out);
        std::future::pending::<()>().await;
    });
}

/// Starts the child on `addr`; returns it and its address.
async fn start_child(addr: &str, dir: &str) -> (TestProcess, String) {
    let spec = format!("{addr} {dir}");
    let mut child = TestProcess::spawn("child_broker_process", &[(CHILD, &spec)]);
    let addr = child.wait_for("ready ").await;
    (child, addr)
}

async fn connect(addr: &str, client: Client) -> Conn {
    client
        .connect(TcpDialer::new(addr), Arc::new(Json))
        .await
        .expect("connect")
}

/// Connects as `name` with `d.*` delivered to `tx`.
async fn subscriber(
    addr: &str,
    name: &str,
    tx: mpsc::UnboundedSender<(String, Value)>,
) -> (Conn, bool) {
    let subs = Subscriptions::new();
    subs.insert("d.*", true, move |msg: Msg, body: Value| {
        let _ = tx.send((msg.action().to_string(), body));
        async { HandlerResult::Ok(()) }
    })
    .expect("pattern");
    let conn = connect(addr, Client::new().layer(subs)).await;
    let answer: Value = conn
        .call(IDENTIFY, json!({"name": name}))
        .await
        .expect("identify");
    conn.call::<Value>(
        "drs.subscribe",
        json!({"topic": "d.*", "retroactive": true}),
    )
    .await
    .expect("subscribe");
    (conn, answer["resumed"] == json!(true))
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("drs-broker-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_and_acks_survive_sigkill() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("sigkill");
        let dir_s = dir.to_string_lossy().into_owned();
        let (mut child, addr) = start_child("127.0.0.1:0", &dir_s).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (sub, resumed) = subscriber(&addr, "keeper", tx.clone()).await;
        assert!(!resumed);
        sub.close();
        sub.closed().await;
        let publisher = connect(&addr, Client::new()).await;
        // Confirmed publishes: each answered once written. The name may
        // not be released yet when the first arrives: it is stored for
        // the name either way.
        for i in 0..100 {
            let n = publisher
                .publish_confirmed(&format!("d.{i}"), json!({"i": i}))
                .await
                .expect("publish");
            assert_eq!(n, 1);
        }
        child.kill().await;
        let (mut child, addr2) = start_child(&addr, &dir_s).await;
        assert_eq!(addr2, addr);
        let (sub, resumed) = subscriber(&addr, "keeper", tx.clone()).await;
        assert!(resumed, "the name's state survived");
        for i in 0..100 {
            let (topic, body) = rx.recv().await.expect("delivery");
            assert_eq!(
                (topic.as_str(), &body),
                (format!("d.{i}").as_str(), &json!({"i": i}))
            );
        }
        // Every acknowledgement taken in, then made durable by a confirmed
        // publish (the store writes in order).
        loop {
            let stored: u64 = sub.call("stored", ()).await.expect("stored");
            if stored == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let publisher = connect(&addr, Client::new()).await;
        publisher
            .publish_confirmed("other.flush", 0)
            .await
            .expect("flush");
        child.kill().await;
        let (_child, _) = start_child(&addr, &dir_s).await;
        let (_sub, resumed) = subscriber(&addr, "keeper", tx).await;
        assert!(resumed, "its subscription is kept");
        let publisher = connect(&addr, Client::new()).await;
        publisher
            .publish_confirmed("d.after", "new")
            .await
            .expect("publish");
        let (topic, body) = rx.recv().await.expect("delivery");
        assert_eq!(
            (topic.as_str(), body),
            ("d.after", json!("new")),
            "nothing acknowledged came back"
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_a_clear_error_at_start() {
    let dir = temp_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(STORE_FILE),
        b"this is not a database, just some text".repeat(100),
    )
    .unwrap();
    let server = Server::new();
    let err = Broker::attach(&server, BrokerConfig::default().store(&dir)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(STORE_FILE), "{text}");
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Open { .. }),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A retroactive subscription (and the name it belongs to) is on disk
/// when `drs.subscribe` is answered: killed right after, the broker comes
/// back with it, and a publication is stored for the name. Each of the
/// tries subscribes a new name and is killed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_subscription_survives_sigkill() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("sigkill-subscribe");
        let dir_s = dir.to_string_lossy().into_owned();
        let (mut child, addr) = start_child("127.0.0.1:0", &dir_s).await;
        const TRIES: usize = 5;
        for i in 0..TRIES {
            let conn = connect(&addr, Client::new()).await;
            let _: Value = conn
                .call(IDENTIFY, json!({"name": format!("quick{i}")}))
                .await
                .expect("identify");
            let _: Value = conn
                .call(
                    "drs.subscribe",
                    json!({"topic": format!("q{i}.*"), "retroactive": true}),
                )
                .await
                .expect("subscribe");
            child.kill().await;
            let (next, again) = start_child(&addr, &dir_s).await;
            assert_eq!(again, addr);
            child = next;
            let publisher = connect(&addr, Client::new()).await;
            // Every name subscribed so far is still there.
            for j in 0..=i {
                let n = publisher
                    .publish_confirmed(&format!("q{j}.x"), i)
                    .await
                    .expect("publish");
                assert_eq!(n, 1, "try {i}: quick{j}'s subscription was lost");
            }
        }
        drop(child);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("within the limit");
}

/// A real store cut short, cut in half, one byte short, grown by 100 kB,
/// or emptied: each is refused as damaged, naming the file, and the
/// process goes on (redb asserts on some of these instead of answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_grown_store_is_refused_naming_its_path() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("truncated-source");
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default().store(&dir)).expect("open");
        let addr = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (sub, _) = subscriber(&addr, "kept", tx).await;
        sub.close();
        sub.closed().await;
        for i in 0..200 {
            broker.publish("d.x", "y".repeat(200 + i)).await.unwrap();
        }
        server.shutdown(Duration::from_secs(1)).await;
        broker.close().await.unwrap();
        drop((server, broker));
        let good = loop {
            // The writer thread may still hold the file a moment.
            match std::fs::read(dir.join(STORE_FILE)) {
                Ok(bytes) if !bytes.is_empty() => break bytes,
                _ => tokio::task::yield_now().await,
            }
        };
        let len = good.len();
        let mut grown = good.clone();
        grown.extend(std::iter::repeat_n(0x5a, 100_000));
        let damaged: [(&str, Vec<u8>); 5] = [
            ("4k", good[..4096.min(len)].to_vec()),
            ("half", good[..len / 2].to_vec()),
            ("short", good[..len - 1].to_vec()),
            ("grown", grown),
            ("empty", Vec::new()),
        ];
        for (tag, bytes) in damaged {
            let bad = temp_dir(&format!("truncated-{tag}"));
            std::fs::create_dir_all(&bad).unwrap();
            std::fs::write(bad.join(STORE_FILE), bytes).unwrap();
            let server = Server::new();
            match Broker::attach(&server, BrokerConfig::default().store(&bad)) {
                Err(err @ StoreError::Corrupt { .. }) => {
                    let text = err.to_string();
                    assert!(text.contains(&*bad.to_string_lossy()), "{tag}: {text}");
                }
                // redb repairs some damage by itself; what it opens must
                // then hold what was written or nothing of it, never a
                // panic.
                Ok(broker) => assert!(
                    broker.stats().stored_messages <= 200,
                    "{tag}: {:?}",
                    broker.stats()
                ),
                Err(other) => panic!("{tag}: {other:?}"),
            }
            let _ = std::fs::remove_dir_all(&bad);
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_store_directory_is_a_clear_error_at_start() {
    let base = temp_dir("unusable");
    std::fs::create_dir_all(&base).unwrap();
    let file = base.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let server = Server::new();
    let err =
        Broker::attach(&server, BrokerConfig::default().store(file.join("store"))).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("a-file"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reopened_in_process_keeps_names_and_backlogs() {
    tokio::time::timeout(LIMIT, async {
        let dir = temp_dir("reopen");
        let server = Server::new();
        let broker = Broker::attach(&server, BrokerConfig::default().store(&dir)).expect("open");
        let addr = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (sub, _) = subscriber(&addr, "kept", tx.clone()).await;
        sub.close();
        sub.closed().await;
        assert_eq!(broker.publish("d.one", 1).await.unwrap(), 1);
        assert_eq!(broker.publish("d.two", "two").await.unwrap(), 1);
        server.shutdown(Duration::from_secs(1)).await;
        broker.close().await.unwrap();
        drop((server, broker));
        // The first broker's writer may still hold the file a moment:
        // open until it lets go.
        let server = Server::new();
        let broker = loop {
            match Broker::attach(&server, BrokerConfig::default().store(&dir)) {
                Ok(b) => break b,
                Err(StoreError::Open { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(broker.stats().stored_messages, 2);
        let addr = server
            .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
            .unwrap();
        let (_sub, resumed) = subscriber(&addr, "kept", tx).await;
        assert!(resumed);
        assert_eq!(rx.recv().await.unwrap(), ("d.one".to_string(), json!(1)));
        assert_eq!(
            rx.recv().await.unwrap(),
            ("d.two".to_string(), json!("two"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("within the limit");
}
