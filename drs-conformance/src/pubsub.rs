//! Pub/sub and broker RPC (docs/PROTOCOL.md §2 `identity`, `pub/sub`, `broker
//! RPC`), served by drs-broker, for every pair.

use std::sync::Mutex;

use drs_broker::{Backlog, Broker, BrokerConfig};
use drs_core::{CloseReason, Error, Handler};
use drs_names::{IDENTIFY, NAME_TAKEN};
use drs_pubsub::{PubSub, Subscriptions};

use super::{behaviours::record_close_reasons, *};

/// A test server with a broker.
fn broker_server(config: ConnConfig, broker: BrokerConfig) -> (Server, Broker) {
    let server = test_server(config);
    let broker = Broker::attach(&server, broker).expect("broker");
    (server, broker)
}

/// What a subscriber received: (topic, body), in order.
#[derive(Debug, Default)]
pub struct Inbox {
    got: Mutex<Vec<(String, Value)>>,
    count: Counter,
}

impl Inbox {
    fn push(&self, topic: &str, body: Value) {
        self.got.lock().unwrap().push((topic.to_string(), body));
        self.count.incr();
    }

    fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }

    async fn reach(&self, n: usize) {
        self.count.reach(n).await;
    }
}

/// A handler that puts what it gets in `inbox`.
fn recorder(
    inbox: Arc<Inbox>,
) -> impl Fn(Msg, Value) -> futures::future::Ready<HandlerResult<()>> + Clone + Send + Sync + 'static
{
    move |msg: Msg, body: Value| {
        inbox.push(msg.action(), body);
        futures::future::ready(Ok(()))
    }
}

async fn publish(conn: &Conn, topic: &str, body: Value) -> u64 {
    conn.publish_confirmed(topic, body).await.expect("publish")
}

/// Topics, wildcards, unsubscribe; a publisher gets its own publication
/// only if it subscribed; a connection gets a message once even when
/// several of its subscriptions match.
pub async fn pubsub_wildcards_and_unsubscribe(pair: Pair) {
    let (server, _broker) = broker_server(ConnConfig::default(), BrokerConfig::default());
    let ep = pair.listen(&server).await;
    let inbox = Arc::new(Inbox::default());
    let sub = ep.connect().await;
    for pattern in ["s.*", "s.>", "s.t1", "x.>"] {
        sub.subscribe(pattern, recorder(inbox.clone()))
            .await
            .expect("subscribe");
    }
    // Idempotent.
    sub.subscribe("s.*", recorder(inbox.clone()))
        .await
        .expect("again");
    let publisher = ep.connect().await;
    let own = Arc::new(Inbox::default());
    publisher.on("s.t1", recorder(own.clone()));
    assert_eq!(publish(&publisher, "s.t1", json!({"t": 21.5})).await, 1);
    assert_eq!(
        publish(&publisher, "s.t1.raw", json!(1)).await,
        1,
        "s.> matches"
    );
    assert_eq!(publish(&publisher, "x.a.b", json!("deep")).await, 1);
    assert_eq!(publish(&publisher, "y.a", json!(0)).await, 0);
    inbox.reach(3).await;
    sub.unsubscribe("s.>").await.expect("unsubscribe");
    assert_eq!(publish(&publisher, "s.t1.raw", json!(2)).await, 0);
    sub.unsubscribe("s.*").await.expect("unsubscribe");
    sub.unsubscribe("s.t1").await.expect("unsubscribe");
    assert_eq!(publish(&publisher, "s.t1", json!(3)).await, 0);
    // The publisher subscribes: now it receives its own.
    publisher
        .subscribe("s.t1", recorder(own.clone()))
        .await
        .expect("subscribe");
    assert_eq!(publish(&publisher, "s.t1", json!(4)).await, 1);
    own.reach(1).await;
    // A fire publish arrives too (after everything before it).
    publisher
        .publish("x.end", json!("fired"))
        .await
        .expect("fire");
    inbox.reach(4).await;
    assert_eq!(
        inbox.take(),
        vec![
            ("s.t1".to_string(), json!({"t": 21.5})),
            ("s.t1.raw".to_string(), json!(1)),
            ("x.a.b".to_string(), json!("deep")),
            ("x.end".to_string(), json!("fired")),
        ]
    );
    assert_eq!(own.take(), vec![("s.t1".to_string(), json!(4))]);
    // Bad topics and patterns are refused with a clear error.
    let err = publisher
        .call::<Value>("drs.publish", json!({"topic": "a.*", "body": 1}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wildcards"), "{err}");
    let err = publisher
        .call::<Value>("drs.subscribe", json!({"topic": "a..b"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid topic"), "{err}");
    let err = publisher
        .call::<Value>("drs.publish", json!({"body": 1}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("topic"), "{err}");
}

/// A subscriber that does not read is disconnected as a slow consumer;
/// the others get everything.
pub async fn slow_subscriber_is_isolated(pair: Pair) {
    let config = ConnConfig::default()
        .outbound_queue(8)
        .max_outbound(64 << 10);
    let (server, _broker) = broker_server(config, BrokerConfig::default());
    let (reasons, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let mut slow = ep.raw().await;
    slow.send(Some("1"), "drs.subscribe", json!({"topic": "feed"}))
        .await;
    assert_eq!(
        slow.recv().await.expect("reply").action.as_str(),
        "drs.response"
    );
    let inbox = Arc::new(Inbox::default());
    let fast = ep.connect().await;
    fast.subscribe("feed", recorder(inbox.clone()))
        .await
        .expect("subscribe");
    let publisher = ep.connect().await;
    // Until the slow one is gone (kernel buffers hold megabytes first):
    // confirmed one at a time and paced by the fast subscriber, so that
    // only the subscriber that does not read falls behind.
    let payload = "x".repeat(64 << 10);
    let mut n = 0;
    loop {
        assert!(n < 5000, "the slow subscriber's queue never filled");
        let reached = publish(&publisher, "feed", json!({"i": n, "pad": payload})).await;
        n += 1;
        inbox.reach(n).await;
        if reached < 2 {
            break;
        }
    }
    gone.reach(1).await;
    assert_eq!(
        reasons.lock().unwrap()[0],
        Some(CloseReason::TooSlow.name())
    );
    let got = inbox.take();
    assert_eq!(got.len(), n);
    assert!(got.iter().enumerate().all(|(i, (_, b))| b["i"] == json!(i)));
    drop(slow);
}

/// Connects, registering `inbox` for `pattern` before naming itself, so
/// that the backlog has somewhere to go; returns the connection and
/// whether the broker resumed the name.
async fn named(
    ep: &Endpoint,
    name: &str,
    pattern: &str,
    handler: impl Handler<(Msg, Value)>,
) -> (Conn, bool) {
    let subs = Subscriptions::new();
    subs.insert(pattern, true, handler).expect("pattern");
    let conn = ep.connect_with(Client::new().layer(subs)).await;
    let answer: Value = conn
        .call(IDENTIFY, json!({"name": name}))
        .await
        .expect("identify");
    conn.call::<Value>(
        "drs.subscribe",
        json!({"topic": pattern, "retroactive": true}),
    )
    .await
    .expect("subscribe");
    (conn, answer["resumed"] == json!(true))
}

/// Closes `conn` and waits until the server has let its name go.
async fn leave(conn: Conn, gone: &Counter) {
    let before = gone.get();
    conn.close();
    gone.reach(before + 1).await;
}

/// A named retroactive subscriber gets, when it comes back, exactly what
/// was published while it was away, in order; nothing again on a second
/// reconnect; then live messages.
pub async fn retroactive_delivery_after_reconnect(pair: Pair) {
    let (server, broker) = broker_server(ConnConfig::default(), BrokerConfig::default());
    let (_, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let inbox = Arc::new(Inbox::default());
    let publisher = ep.connect().await;
    let (alpha, resumed) = named(&ep, "alpha", "r.*", recorder(inbox.clone())).await;
    assert!(!resumed, "a new name has nothing to resume");
    assert_eq!(publish(&publisher, "r.live", json!(0)).await, 1);
    inbox.reach(1).await;
    acknowledged(&broker).await;
    leave(alpha, &gone).await;
    for i in 1..=3 {
        assert_eq!(
            publish(&publisher, &format!("r.{i}"), json!(i)).await,
            1,
            "stored for alpha"
        );
    }
    assert_eq!(broker.stats().stored_messages, 3);
    let (alpha, resumed) = named(&ep, "alpha", "r.*", recorder(inbox.clone())).await;
    assert!(resumed);
    inbox.reach(4).await;
    let got = inbox.take();
    assert_eq!(
        got,
        vec![
            ("r.live".to_string(), json!(0)),
            ("r.1".to_string(), json!(1)),
            ("r.2".to_string(), json!(2)),
            ("r.3".to_string(), json!(3)),
        ]
    );
    // Acknowledged: nothing is kept, and a second reconnect brings nothing
    // but what is published after it.
    acknowledged(&broker).await;
    leave(alpha, &gone).await;
    let (_alpha, resumed) = named(&ep, "alpha", "r.*", recorder(inbox.clone())).await;
    assert!(resumed, "its subscription is kept");
    assert_eq!(publish(&publisher, "r.after", json!("a")).await, 1);
    inbox.reach(5).await;
    assert_eq!(inbox.take(), vec![("r.after".to_string(), json!("a"))]);
}

/// Waits until the broker holds no message (every delivery acknowledged):
/// the acknowledgement is the reply, which the client sends after its
/// handler ran, so there is no event here to wait on but the broker's
/// state.
async fn acknowledged(broker: &Broker) {
    while broker.stats().stored_messages != 0 {
        tokio::task::yield_now().await;
    }
}

/// A delivery that was not acknowledged when the connection ended is
/// delivered again, in its place, when the name comes back.
pub async fn unacknowledged_delivery_is_redelivered(pair: Pair) {
    let (server, _broker) = broker_server(ConnConfig::default(), BrokerConfig::default().window(1));
    let (_, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let publisher = ep.connect().await;
    let stuck = Arc::new(Counter::default());
    let s = stuck.clone();
    let (alpha, _) = named(&ep, "alpha", "q.*", move |msg: Msg, _: Value| {
        let s = s.clone();
        async move {
            if msg.action() == "q.2" {
                s.incr();
                std::future::pending::<()>().await;
            }
            HandlerResult::Ok(())
        }
    })
    .await;
    for i in 1..=3 {
        publish(&publisher, &format!("q.{i}"), json!(i)).await;
    }
    stuck.reach(1).await;
    leave(alpha, &gone).await;
    let inbox = Arc::new(Inbox::default());
    let (_alpha, resumed) = named(&ep, "alpha", "q.*", recorder(inbox.clone())).await;
    assert!(resumed);
    inbox.reach(2).await;
    assert_eq!(
        inbox.take(),
        vec![("q.2".to_string(), json!(2)), ("q.3".to_string(), json!(3))]
    );
}

/// A backlog over its bound drops the oldest, and the subscriber is told
/// how many before the rest.
pub async fn backlog_overflow_reports_the_missed_count(pair: Pair) {
    let config =
        BrokerConfig::default().backlog(Backlog::new(3, 1 << 20, Duration::from_secs(3600)));
    let (server, _broker) = broker_server(ConnConfig::default(), config);
    let (_, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let publisher = ep.connect().await;
    let (alpha, _) = named(&ep, "alpha", "o.*", recorder(Arc::new(Inbox::default()))).await;
    leave(alpha, &gone).await;
    for i in 1..=5 {
        publish(&publisher, &format!("o.{i}"), json!(i)).await;
    }
    let inbox = Arc::new(Inbox::default());
    let subs = Subscriptions::new();
    subs.insert("o.*", true, recorder(inbox.clone()))
        .expect("pattern");
    let i2 = inbox.clone();
    let client = Client::new().layer(subs).on("drs.missed", move |m: Value| {
        i2.push("drs.missed", m);
        async { HandlerResult::Ok(()) }
    });
    let conn = ep.connect_with(client).await;
    let _: Value = conn
        .call(IDENTIFY, json!({"name": "alpha"}))
        .await
        .expect("identify");
    inbox.reach(4).await;
    assert_eq!(
        inbox.take(),
        vec![
            ("drs.missed".to_string(), json!({"missed": 2})),
            ("o.3".to_string(), json!(3)),
            ("o.4".to_string(), json!(4)),
            ("o.5".to_string(), json!(5)),
        ]
    );
}

/// A second live connection cannot take a name in use.
pub async fn a_name_in_use_is_refused(pair: Pair) {
    let (server, _broker) = broker_server(ConnConfig::default(), BrokerConfig::default());
    let ep = pair.listen(&server).await;
    let a = ep.connect().await;
    let _: Value = a
        .call(IDENTIFY, json!({"name": "solo"}))
        .await
        .expect("identify");
    let b = ep.connect().await;
    let err = b
        .call::<Value>(IDENTIFY, json!({"name": "solo"}))
        .await
        .unwrap_err();
    assert_eq!(err.remote().map(|r| r.message.as_str()), Some(NAME_TAKEN));
}

/// Exposed actions are routed to an exposer and relayed, before the
/// server's own handler where the server lets exposers take it over
/// (`expose_overrides`); without exposers the server's handler (or "No
/// handlers for") answers; an exposer lost mid-call gives "closed".
pub async fn expose_routes_and_relays(pair: Pair) {
    let overrides = drs_auth::Jail::parse("add").expect("jail");
    let (server, broker) = broker_server(
        ConnConfig::default(),
        BrokerConfig::default().expose_overrides(overrides),
    );
    let ep = pair.listen(&server).await;
    let worker = ep.connect().await;
    worker
        .expose("triple", |n: f64| async move { HandlerResult::Ok(n * 3.0) })
        .await
        .expect("expose");
    worker
        .expose("add", |_: Value| async move {
            HandlerResult::Ok("from the exposer")
        })
        .await
        .expect("expose");
    worker
        .expose("refuse", |_: Value| async move {
            Err::<(), _>(HandlerError::new("no thanks"))
        })
        .await
        .expect("expose");
    let started = Arc::new(Counter::default());
    let s = started.clone();
    worker
        .expose("hang", move |_: Value| {
            s.incr();
            async move {
                std::future::pending::<()>().await;
                HandlerResult::Ok(())
            }
        })
        .await
        .expect("expose");
    assert!(broker.is_exposed("triple"));
    let caller = ep.connect().await;
    assert_eq!(
        caller.call::<f64>("triple", 14).await.expect("relayed"),
        42.0
    );
    let via: String = caller
        .call("add", json!({"a": 1, "b": 2}))
        .await
        .expect("relayed");
    assert_eq!(via, "from the exposer");
    let err = caller.call::<Value>("refuse", ()).await.unwrap_err();
    assert_eq!(err.remote().map(|r| r.message.as_str()), Some("no thanks"));
    worker.unexpose("add").await.expect("unexpose");
    let own: f64 = caller
        .call("add", json!({"a": 1, "b": 2}))
        .await
        .expect("own handler");
    assert_eq!(own, 3.0);
    let err = caller.call::<Value>("nobody.serves", ()).await.unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.message.as_str()),
        Some("No handlers for nobody.serves")
    );
    let hanging = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call::<Value>("hang", ()).await }
    });
    started.reach(1).await;
    worker.close();
    let err = hanging.await.expect("task").unwrap_err();
    assert!(
        matches!(&err, Error::Remote(r) if r.message == "closed"),
        "{err}"
    );
    let err = caller.call::<f64>("triple", 1).await.unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.message.as_str()),
        Some("No handlers for triple")
    );
}

/// Calls are spread over exposers: a busy one is passed over.
pub async fn calls_go_to_the_least_busy_exposer(pair: Pair) {
    let (server, _broker) = broker_server(ConnConfig::default(), BrokerConfig::default());
    let ep = pair.listen(&server).await;
    let busy_started = Arc::new(Counter::default());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let busy = ep.connect().await;
    let (s, r) = (busy_started.clone(), release.clone());
    busy.expose("work", move |_: Value| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.incr();
            let _permit = r.acquire().await;
            HandlerResult::Ok("busy")
        }
    })
    .await
    .expect("expose");
    let idle = ep.connect().await;
    idle.expose("work", |_: Value| async move { HandlerResult::Ok("idle") })
        .await
        .expect("expose");
    let caller = ep.connect().await;
    // Calls until one lands on `busy`, which keeps it.
    let mut first = Vec::new();
    loop {
        let c = caller.clone();
        let mut call = tokio::spawn(async move { c.call::<String>("work", ()).await });
        tokio::select! {
            answer = &mut call => {
                assert_eq!(answer.expect("task").expect("answer"), "idle");
            }
            () = busy_started.reach(1) => {
                first.push(call);
                break;
            }
        }
    }
    for _ in 0..5 {
        let answer: String = caller.call("work", ()).await.expect("work");
        assert_eq!(answer, "idle", "the busy exposer is passed over");
    }
    release.add_permits(10);
    for call in first {
        call.await.expect("task").expect("answer");
    }
}
