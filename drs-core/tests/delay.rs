//! Delayed commands (`"delay": ms`) on a paused clock: held by the
//! receiver, run when due, cancellable while held, bounded in number and
//! in how far ahead; the field decodes in both protocols.

use std::{
    future::IntoFuture,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use drs_core::{
    memory, ActionObserver, Client, ConnConfig, ConnInfo, HandlerResult, Observer, OutBody,
    Outgoing, Protocol, Server, ServerConfig, INVALID_DELAY,
};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(7200);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

/// When each run happened (ms since the start) and with what body.
type Runs = Arc<Mutex<Vec<(u64, Value)>>>;

/// A server whose `stamp` records when it ran (ms since `t0`).
/// The actions whose commands ended, in order.
#[derive(Clone, Default)]
struct Ended(Arc<Mutex<Vec<String>>>);

struct EndedAction(Ended, String);

impl Observer for Ended {
    fn action(&self, action: &str, _: bool) -> Arc<dyn ActionObserver> {
        Arc::new(EndedAction(self.clone(), action.to_string()))
    }
}

impl ActionObserver for EndedAction {
    fn ended(&self, _: Duration, _: Option<&drs_core::Outcome>, _: bool) {
        self.0 .0.lock().unwrap().push(self.1.clone());
    }
}

fn stamping(config: ServerConfig, t0: Instant) -> (Server, Runs) {
    let server = Server::with_config(config);
    let runs = Arc::new(Mutex::new(Vec::new()));
    let seen = runs.clone();
    server.on("stamp", move |body: Value| {
        seen.lock()
            .unwrap()
            .push((t0.elapsed().as_millis() as u64, body.clone()));
        async move { HandlerResult::Ok(body) }
    });
    (server, runs)
}

/// A raw JSON peer of `server`: frames in, frames out.
fn raw_peer(server: &Server) -> memory::MemoryTransport {
    let (ours, theirs) = memory::pair();
    server.accept_transport(ours, ConnInfo::new("memory"), Arc::new(Json));
    theirs
}

async fn send(raw: &mut memory::MemoryTransport, v: Value) {
    raw.send(Bytes::from(v.to_string())).await.unwrap();
}

async fn recv(raw: &mut memory::MemoryTransport) -> Value {
    let frame = within(raw.next())
        .await
        .expect("open")
        .expect("no error")
        .frame()
        .expect("a frame");
    serde_json::from_slice(&frame).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_delayed_call_runs_when_due_and_a_delayed_fire_too() {
    let t0 = Instant::now();
    let (server, runs) = stamping(ServerConfig::default(), t0);
    let ended = Ended::default();
    assert!(server.observe(ended.clone()));
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    let conn = within(Client::new().connect(dialer, Json)).await.unwrap();
    within(conn.fire_after(Duration::from_millis(1500), "stamp", "fired"))
        .await
        .unwrap();
    let answer: Value = within(
        conn.call_after(Duration::from_secs(2), "stamp", "called")
            .into_future(),
    )
    .await
    .unwrap();
    assert_eq!(answer, json!("called"));
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "the reply came when it ran"
    );
    assert_eq!(
        *runs.lock().unwrap(),
        [(1500, json!("fired")), (2000, json!("called"))]
    );
    // Observed once each, as any call.
    assert_eq!(*ended.0.lock().unwrap(), ["stamp", "stamp"]);
    // A delay of 0 is no delay.
    let now: Value = within(conn.call_after(Duration::ZERO, "stamp", 0).into_future())
        .await
        .unwrap();
    assert_eq!(now, json!(0));
}

#[tokio::test(start_paused = true)]
async fn a_held_call_can_be_cancelled_and_never_runs() {
    let t0 = Instant::now();
    let (server, runs) = stamping(ServerConfig::default(), t0);
    let mut raw = raw_peer(&server);
    send(
        &mut raw,
        json!({"key": "a", "action": "stamp", "body": 1, "delay": 10000}),
    )
    .await;
    send(
        &mut raw,
        json!({"key": "b", "action": "stamp", "body": 2, "delay": 5000}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&mut raw, json!({"key": "a", "action": "drs.cancel"})).await;
    assert_eq!(
        recv(&mut raw).await,
        json!({"key": "a", "action": "drs.error", "body": {"message": "cancelled"}})
    );
    assert_eq!(
        recv(&mut raw).await,
        json!({"key": "b", "action": "drs.response", "body": 2})
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // Well past a's time: it never ran.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(*runs.lock().unwrap(), [(5000, json!(2))]);
}

#[tokio::test(start_paused = true)]
async fn held_commands_are_bounded_in_number_and_in_delay() {
    let conn = ConnConfig::default()
        .max_delayed(2)
        .max_delay(Duration::from_secs(60));
    let (server, runs) = stamping(ServerConfig::from(conn), Instant::now());
    let mut raw = raw_peer(&server);
    send(
        &mut raw,
        json!({"key": "1", "action": "stamp", "delay": 1000}),
    )
    .await;
    send(
        &mut raw,
        json!({"key": "2", "action": "stamp", "delay": 1000}),
    )
    .await;
    send(
        &mut raw,
        json!({"key": "3", "action": "stamp", "delay": 1000}),
    )
    .await;
    assert_eq!(
        recv(&mut raw).await,
        json!({"key": "3", "action": "drs.error", "body": {"message": "too many delayed commands (at most 2)"}})
    );
    send(
        &mut raw,
        json!({"key": "4", "action": "stamp", "delay": 60001}),
    )
    .await;
    assert_eq!(
        recv(&mut raw).await,
        json!({"key": "4", "action": "drs.error", "body": {"message": "delay exceeds 60000 ms"}})
    );
    send(
        &mut raw,
        json!({"key": "1", "action": "stamp", "delay": 10}),
    )
    .await;
    assert_eq!(
        recv(&mut raw).await,
        json!({"key": "1", "action": "drs.error", "body": {"message": "duplicate key in flight: 1"}})
    );
    // A bad delay is refused like any malformed field.
    send(
        &mut raw,
        json!({"key": "5", "action": "stamp", "delay": -1}),
    )
    .await;
    let refused = recv(&mut raw).await;
    assert_eq!(refused["key"], "5");
    assert!(
        refused["body"]["message"]
            .as_str()
            .unwrap()
            .ends_with(INVALID_DELAY),
        "{refused}"
    );
    // The two held ones run, then there is room again.
    for _ in 0..2 {
        assert_eq!(recv(&mut raw).await["action"], "drs.response");
    }
    assert_eq!(runs.lock().unwrap().len(), 2);
    send(&mut raw, json!({"key": "6", "action": "stamp", "delay": 1})).await;
    assert_eq!(recv(&mut raw).await["key"], "6");
}

#[test]
fn the_delay_field_round_trips_in_both_protocols() {
    for protocol in [&Json as &dyn Protocol, &MsgPack] {
        let mut buf = BytesMut::new();
        protocol
            .encode(
                &Outgoing::new("x")
                    .key(Some("k"))
                    .body(OutBody::Value(&1))
                    .delay(Some(1500)),
                &mut buf,
            )
            .unwrap();
        let cmd = protocol.decode(buf.freeze()).unwrap();
        assert_eq!((cmd.delay, cmd.action.as_str()), (Some(1500), "x"));
    }
    let bad = |text: &str| {
        Json.decode(Bytes::from(text.to_string()))
            .unwrap_err()
            .to_string()
    };
    assert!(bad(r#"{"action":"x","delay":"soon"}"#).contains("delay"));
    assert!(bad(r#"{"action":"x","delay":4294967296}"#).contains("delay"));
    assert!(bad(r#"{"action":"x","delay":1.5}"#).contains("delay"));
    let cmd = Json
        .decode(Bytes::from(r#"{"action":"x","delay":null}"#))
        .unwrap();
    assert_eq!(cmd.delay, None);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_vanishes_leaves_nothing_held() {
    let (server, runs) = stamping(ServerConfig::default(), Instant::now());
    let mut raw = raw_peer(&server);
    for key in ["a", "b", "c"] {
        let big = "x".repeat(10_000);
        send(
            &mut raw,
            json!({"key": key, "action": "stamp", "body": big, "delay": 60000}),
        )
        .await;
    }
    // Held: their frames count against the server's memory budget.
    within(async {
        while server.memory_budget().used() < 30_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    drop(raw);
    within(async {
        while server.connection_count() > 0 || server.memory_budget().used() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // Past their time: none ran.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(runs.lock().unwrap().is_empty());
}

#[test]
fn a_bad_delay_in_msgpack_is_refused() {
    // {"action": "x", "delay": "soon"} and {"action": "x", "delay": -1}
    for delay in [rmp_str("soon"), vec![0xff]] {
        let mut frame = vec![0x82];
        frame.extend(rmp_str("action"));
        frame.extend(rmp_str("x"));
        frame.extend(rmp_str("delay"));
        frame.extend(delay);
        let e = MsgPack.decode(Bytes::from(frame)).unwrap_err().to_string();
        assert!(e.contains("delay"), "{e}");
    }
}

fn rmp_str(s: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}
