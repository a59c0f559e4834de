//! Streamed replies and cancellation (docs/PROTOCOL.md §2), for every pair.

use std::{future::IntoFuture, task::Poll};

use drs_core::{Error, ItemSink, Streamed};
use futures::poll;

use super::{behaviours::long_timeout, *};

/// What the stream handlers did, counted.
#[derive(Debug, Default)]
pub struct Probe {
    /// Items a handler started to send.
    pub attempts: Counter,
    /// Items a handler finished sending.
    pub sent: Counter,
    /// Handlers started (`block`).
    pub started: Counter,
    /// Handlers whose cancellation token fired.
    pub cancelled: Counter,
    /// Handler futures dropped before they finished.
    pub dropped: Counter,
}

/// Counts a handler future dropped before it finished.
struct DropProbe(Option<Arc<Probe>>);

impl DropProbe {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.dropped.incr();
        }
    }
}

#[derive(Debug, Deserialize)]
struct Count {
    n: u64,
    #[serde(default)]
    fail: bool,
}

type CountFuture = std::pin::Pin<Box<dyn Future<Output = HandlerResult<u64>> + Send>>;

/// `count`: sends the integers `0..n` through an [`ItemSink`], counting
/// each attempt and each item sent, then ends with `n` (or "nope").
fn count_handler(p: Arc<Probe>) -> impl Fn(Count, ItemSink) -> CountFuture + Clone + Send + Sync {
    move |args: Count, items: ItemSink| {
        let p = p.clone();
        Box::pin(async move {
            let guard = DropProbe(Some(p.clone()));
            for i in 0..args.n {
                p.attempts.incr();
                items.send(&i).await?;
                p.sent.incr();
            }
            guard.finished();
            if args.fail {
                return Err(HandlerError::new("nope"));
            }
            Ok(args.n)
        })
    }
}

fn stream_server(config: ConnConfig) -> (Server, Arc<Probe>) {
    let server = test_server(config);
    let probe = Arc::new(Probe::default());
    server.on("count", count_handler(probe.clone()));
    server.on("letters", || async {
        HandlerResult::Ok(Streamed::new(futures::stream::iter(["a", "b", "c"])))
    });
    server.on("try_letters", || async {
        let items = futures::stream::iter([Ok("a"), Err(HandlerError::exception("broke"))]);
        HandlerResult::Ok(Streamed::try_new(items))
    });
    server.on("blob_items", |n: usize, items: ItemSink| async move {
        for _ in 0..n {
            items.send(&"x".repeat(100)).await?;
        }
        HandlerResult::Ok(n)
    });
    let p = probe.clone();
    server.on("block", move |msg: Msg| {
        let p = p.clone();
        async move {
            let guard = DropProbe(Some(p.clone()));
            let token = msg.cancel_token();
            let watcher = p.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                watcher.cancelled.incr();
            });
            p.started.incr();
            std::future::pending::<()>().await;
            guard.finished();
            HandlerResult::Ok(())
        }
    });
    (server, probe)
}

fn message(cmd: &Command) -> String {
    let body: Value = cmd.body.deserialize().expect("a body");
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// Items arrive in order, the credit window refilling as they are read,
/// and the handler's value is the final value; the stream form too.
pub async fn stream_items_arrive_in_order_with_a_final_value(pair: Pair) {
    let (server, _probe) = stream_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let mut items = conn.call_stream::<u64>("count", json!({"n": 50})).window(3);
    let mut got = Vec::new();
    while let Some(item) = items.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert_eq!(items.final_value::<u64>().unwrap(), Some(50));

    let mut letters = conn.call_stream::<String>("letters", ());
    let mut got = Vec::new();
    while let Some(item) = letters.next().await {
        got.push(item.unwrap());
    }
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(letters.final_value::<Value>().unwrap(), None);
    assert_eq!(conn.pending_calls(), 0);
}

/// A producer sends no more than the caller granted: it waits for
/// `drs.more`, then sends exactly that many; `drs.cancel` ends it.
pub async fn stream_credit_bounds_the_producer(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send_stream("s", "count", json!({"n": 100}), 3).await;
    for i in 0..3 {
        let item = raw.recv().await.unwrap();
        assert_eq!(
            (item.action.as_str(), item.key.as_deref()),
            ("drs.next", Some("s"))
        );
        assert_eq!(item.body.deserialize::<u64>().unwrap(), i);
    }
    // The fourth item waits for credit.
    probe.attempts.reach(4).await;
    raw.send(Some("p"), "drs.ping", Value::Null).await;
    let pong = raw.recv().await.unwrap();
    assert_eq!(pong.key.as_deref(), Some("p"), "{pong:?}");
    assert_eq!(probe.sent.get(), 3);
    raw.send(Some("s"), "drs.more", json!(2)).await;
    for i in 3..5 {
        let item = raw.recv().await.unwrap();
        assert_eq!(item.body.deserialize::<u64>().unwrap(), i);
    }
    probe.attempts.reach(6).await;
    raw.send(Some("s"), "drs.cancel", Value::Null).await;
    let end = raw.recv().await.unwrap();
    assert_eq!(
        (end.action.as_str(), end.key.as_deref()),
        ("drs.error", Some("s"))
    );
    assert_eq!(message(&end), "cancelled");
    assert_eq!(probe.sent.get(), 5);
    probe.dropped.reach(1).await;
}

/// A stream nobody reads holds at most its window on the caller's side,
/// its producer waits, and other calls on the connection go on. Dropping
/// it stops the producer.
pub async fn stalled_stream_holds_its_window_and_blocks_nothing(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default());
    let conn = pair
        .listen(&server)
        .await
        .connect_with(long_timeout())
        .await;
    let mut items = conn
        .call_stream::<u64>("count", json!({"n": 1000}))
        .window(4);
    // The first poll sends the call (an item may already be back: it
    // leaves the window's credit ungranted either way).
    let first = match poll!(items.next()) {
        Poll::Ready(Some(item)) => Some(item.unwrap()),
        _ => None,
    };
    probe.attempts.reach(5).await;
    for i in 0..20 {
        let sum: f64 = conn.call("add", json!({"a": i, "b": 1})).await.unwrap();
        assert_eq!(sum, f64::from(i + 1));
    }
    assert_eq!(probe.sent.get(), 4);
    let read = match first {
        Some(item) => vec![item, items.next().await.unwrap().unwrap()],
        None => vec![items.next().await.unwrap().unwrap()],
    };
    assert_eq!(read, (0..read.len() as u64).collect::<Vec<_>>());
    drop(items);
    probe.dropped.reach(1).await;
    let v: u32 = conn.call("echo", 7).await.unwrap();
    assert_eq!(v, 7);
    assert_eq!(conn.pending_calls(), 0);
}

/// A caller that did not opt in gets one `drs.response` with the array of
/// all items; past the maximum frame size, a `drs.error` saying so.
pub async fn stream_without_opt_in_is_one_array(pair: Pair) {
    let (server, _probe) = stream_server(ConnConfig::default().max_frame_len(4096));
    let ep = pair.listen(&server).await;
    let conn = ep.connect().await;
    let all: Vec<u64> = conn.call("count", json!({"n": 5})).await.unwrap();
    assert_eq!(all, [0, 1, 2, 3, 4]);
    let letters: Vec<String> = conn.call("letters", ()).await.unwrap();
    assert_eq!(letters, ["a", "b", "c"]);
    let none: Vec<u64> = conn.call("count", json!({"n": 0})).await.unwrap();
    assert!(none.is_empty());
    let err = conn.call::<Value>("blob_items", 100).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert!(err.to_string().contains("maximum frame size"), "{err}");
    // A raw peer sees the plain DRS v1 reply.
    let mut raw = ep.raw().await;
    raw.send(Some("k"), "count", json!({"n": 2})).await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.response", Some("k"))
    );
    assert_eq!(reply.body.deserialize::<Value>().unwrap(), json!([0, 1]));
}

/// A stream that ends in an error yields its items, then the error, then
/// ends; both forms.
pub async fn stream_ending_in_an_error(pair: Pair) {
    let (server, _probe) = stream_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let mut items = conn.call_stream::<u64>("count", json!({"n": 2, "fail": true}));
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    assert_eq!(items.next().await.unwrap().unwrap(), 1);
    let err = items.next().await.unwrap().unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(err.remote().unwrap().message, "nope");
    assert!(items.next().await.is_none());
    assert_eq!(items.final_value::<u64>().unwrap(), None);

    let mut letters = conn.call_stream::<String>("try_letters", ());
    assert_eq!(letters.next().await.unwrap().unwrap(), "a");
    let err = letters.next().await.unwrap().unwrap_err();
    assert!(err.is_exception(), "{err:?}");
    assert!(letters.next().await.is_none());
    // Without the opt-in the error is the one reply.
    let err = conn
        .call::<Value>("count", json!({"n": 2, "fail": true}))
        .await
        .unwrap_err();
    assert_eq!(err.remote().unwrap().message, "nope");
}

/// A server streams to a client's call, and a client to a server's.
pub async fn streams_go_both_ways(pair: Pair) {
    let (server, _probe) = stream_server(ConnConfig::default());
    server.on("ask_stream", |msg: Msg, n: u64| async move {
        let mut items = msg
            .conn()
            .call_stream::<u64>("count", json!({ "n": n }))
            .window(2);
        let mut got = Vec::new();
        while let Some(item) = items.next().await {
            got.push(item?);
        }
        let last: Option<u64> = items.final_value()?;
        HandlerResult::Ok((got, last))
    });
    let client_probe = Arc::new(Probe::default());
    let client = Client::new().on("count", count_handler(client_probe.clone()));
    let conn = pair.listen(&server).await.connect_with(client).await;
    let (got, last): (Vec<u64>, Option<u64>) = conn.call("ask_stream", 7).await.unwrap();
    assert_eq!(got, (0..7).collect::<Vec<_>>());
    assert_eq!(last, Some(7));
    assert_eq!(client_probe.sent.get(), 7);
}

/// A callee that sends past its credit fails the caller's stream at once,
/// and is told to stop with `drs.cancel`.
pub async fn over_credit_fails_the_stream_and_cancels_it(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (o, g) = (outcome.clone(), gate.clone());
    server.on("pull", move |msg: Msg| {
        let (o, g) = (o.clone(), g.clone());
        async move {
            let mut items = msg.conn().call_stream::<u64>("produce", ()).window(4);
            // Read at most one item (too few to grant credit) until the
            // peer has overrun.
            let mut got = Vec::new();
            if let Poll::Ready(Some(Ok(item))) = poll!(items.next()) {
                got.push(item);
            }
            g.acquire().await.expect("gate open").forget();
            let err = loop {
                match items.next().await {
                    Some(Ok(item)) => got.push(item),
                    Some(Err(e)) => break e,
                    None => panic!("the stream should fail"),
                }
            };
            *o.lock().unwrap() = Some(got);
            HandlerResult::Ok(err.to_string())
        }
    });
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("a"), "pull", Value::Null).await;
    let call = raw.recv().await.unwrap();
    assert_eq!(call.action, "produce");
    let key = call.key.clone().unwrap();
    for i in 0..5 {
        raw.send(Some(&key), "drs.next", json!(i)).await;
    }
    let cancel = raw.recv().await.unwrap();
    assert_eq!(
        (cancel.action.as_str(), cancel.key.as_deref()),
        ("drs.cancel", Some(key.as_str()))
    );
    gate.add_permits(1);
    let reply = raw.recv().await.unwrap();
    assert_eq!(reply.key.as_deref(), Some("a"), "{reply:?}");
    let why: String = reply.body.deserialize().unwrap();
    assert!(
        why.contains("more stream items than it was granted"),
        "{why}"
    );
    assert_eq!(outcome.lock().unwrap().clone(), Some(vec![0, 1, 2, 3]));
}

/// A `stream` field that is not an integer from 1 to 2³²−1 is refused
/// with a keyed `drs.error`, and the connection goes on.
pub async fn invalid_stream_field_is_refused(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    for (key, credit) in [
        ("a", json!(0)),
        ("b", json!(-1)),
        ("c", json!("x")),
        ("d", json!(1u64 << 32)),
    ] {
        let frame = json!({"key": key, "action": "count", "body": {"n": 1}, "stream": credit});
        raw.send_frame(pair.proto.frame(&frame)).await;
        let reply = raw.recv().await.unwrap();
        assert_eq!(
            (reply.action.as_str(), reply.key.as_deref()),
            ("drs.error", Some(key))
        );
        assert!(
            message(&reply).contains("`stream` must be an integer"),
            "{reply:?}"
        );
    }
    assert_eq!(probe.attempts.get(), 0);
    let frame = json!({"key": "e", "action": "count", "body": {"n": 1}, "stream": 4294967295u64});
    raw.send_frame(pair.proto.frame(&frame)).await;
    assert_eq!(raw.recv().await.unwrap().action, "drs.next");
    assert_eq!(raw.recv().await.unwrap().action, "drs.response");
}

/// A stream with no item for its idle timeout fails with a timeout and
/// cancels the call on the peer.
pub async fn stream_idle_timeout_cancels(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let mut items = conn
        .call_stream::<Value>("block", ())
        .idle_timeout(Duration::from_millis(100));
    let err = items.next().await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(items.next().await.is_none());
    probe.cancelled.reach(1).await;
    probe.dropped.reach(1).await;
    assert_eq!(conn.pending_calls(), 0);
}

/// `drs.cancel` stops a plain call's handler (its future is dropped, its
/// token fires), answers `drs.error` "cancelled", and frees its in-flight
/// slot at once; a cancelled command that had not started never starts.
pub async fn cancel_stops_a_call_and_frees_its_slot(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default().max_in_flight(2));
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("a"), "block", Value::Null).await;
    raw.send(Some("a2"), "block", Value::Null).await;
    probe.started.reach(2).await;
    // At the limit: `b` waits for a slot.
    raw.send(Some("b"), "echo", json!("b")).await;
    raw.send(Some("a"), "drs.cancel", Value::Null).await;
    let first = raw.recv().await.unwrap();
    assert_eq!(
        (first.action.as_str(), first.key.as_deref()),
        ("drs.error", Some("a"))
    );
    assert_eq!(message(&first), "cancelled");
    // The slot is free at once: the waiting echo runs.
    let second = raw.recv().await.unwrap();
    assert_eq!(
        (second.action.as_str(), second.key.as_deref()),
        ("drs.response", Some("b"))
    );
    probe.cancelled.reach(1).await;
    probe.dropped.reach(1).await;
    // A command cancelled while it waits for a slot never starts.
    raw.send(Some("c"), "block", Value::Null).await;
    probe.started.reach(3).await;
    raw.send(Some("d"), "block", Value::Null).await;
    raw.send(Some("d"), "drs.cancel", Value::Null).await;
    let third = raw.recv().await.unwrap();
    assert_eq!(
        (third.key.as_deref(), message(&third).as_str()),
        (Some("d"), "cancelled")
    );
    raw.send(Some("c"), "drs.cancel", Value::Null).await;
    let fourth = raw.recv().await.unwrap();
    assert_eq!(fourth.key.as_deref(), Some("c"));
    probe.dropped.reach(2).await;
    assert_eq!(
        probe.started.get(),
        3,
        "the cancelled waiting command never started"
    );
}

/// Dropping a call future sends `drs.cancel`: the handler is stopped.
pub async fn dropping_a_call_cancels_it(pair: Pair) {
    let (server, probe) = stream_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let call = tokio::spawn(conn.call::<()>("block", ()).into_future());
    probe.started.reach(1).await;
    call.abort();
    probe.cancelled.reach(1).await;
    probe.dropped.reach(1).await;
    assert_eq!(conn.pending_calls(), 0);
    let v: u32 = conn.call("echo", 1).await.unwrap();
    assert_eq!(v, 1);
}

/// A cancel for a key that is unknown or already answered gets no reply.
pub async fn cancel_of_an_unknown_or_finished_key_is_ignored(pair: Pair) {
    let (server, _probe) = stream_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("done"), "echo", json!(1)).await;
    assert_eq!(raw.recv().await.unwrap().key.as_deref(), Some("done"));
    raw.send(Some("done"), "drs.cancel", Value::Null).await;
    raw.send(Some("never"), "drs.cancel", Value::Null).await;
    raw.send(None, "drs.cancel", Value::Null).await;
    raw.send(Some("x"), "drs.more", json!(3)).await;
    raw.send(Some("p"), "drs.ping", Value::Null).await;
    let next = raw.recv().await.unwrap();
    assert_eq!(
        (next.action.as_str(), next.key.as_deref()),
        ("drs.response", Some("p")),
        "{next:?}"
    );
}

/// A caller that vanishes mid-stream: the producer is stopped within the
/// close linger and the server holds nothing of it. A callee that vanishes:
/// the caller's stream fails at once with "closed".
pub async fn peer_vanishing_mid_stream_cleans_up(pair: Pair) {
    let config = ConnConfig::default().close_linger(Duration::from_millis(50));
    let (server, probe) = stream_server(config);
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    let ep = pair.listen(&server).await;
    let mut raw = ep.raw().await;
    raw.send_stream("s", "count", json!({"n": 1000}), 2).await;
    probe.attempts.reach(3).await;
    drop(raw);
    probe.dropped.reach(1).await;
    gone.reach(1).await;
    assert_eq!(server.connection_count(), 0);

    let conn = ep.connect_with(long_timeout()).await;
    let mut items = conn
        .call_stream::<u64>("count", json!({"n": 1000}))
        .window(2);
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    for c in server.connections() {
        c.close();
    }
    let mut result = Ok(0);
    while let Some(item) = items.next().await {
        result = item;
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    assert_eq!(conn.pending_calls(), 0);
}
