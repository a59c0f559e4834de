//! The behaviours. Each takes the pair under test and panics on failure.

use std::{
    future::IntoFuture,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use drs_core::{Error, Outcome, ServerConfig};
use drs_layers::{after, before, Chain};
use futures::future::join_all;
use tokio::sync::Semaphore;

use super::*;

fn remote_message(err: &Error) -> &str {
    &err.remote()
        .unwrap_or_else(|| panic!("expected a remote error, got {err:?}"))
        .message
}

/// What a peer told before closing is exactly one keyless `drs.error`;
/// returns its message.
fn sole_notice(got: &[Command]) -> String {
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].action.as_str(), got[0].key.as_deref()),
        ("drs.error", None)
    );
    let body: Value = got[0].body.deserialize().unwrap();
    body["message"].as_str().expect("a message").to_owned()
}

/// The close reasons of the connections that ended, in order.
pub(crate) type Reasons = Arc<Mutex<Vec<Option<&'static str>>>>;

/// Records the close reason of every connection that ends, and counts them.
pub(crate) fn record_close_reasons(server: &Server) -> (Reasons, Arc<Counter>) {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let gone = Arc::new(Counter::default());
    let (r, g) = (reasons.clone(), gone.clone());
    server.on_disconnect(move |conn| {
        r.lock()
            .unwrap()
            .push(conn.close_reason().map(|c| c.name()));
        g.incr();
    });
    (reasons, gone)
}

/// Connects and waits until the server has admitted the connection.
async fn admitted(ep: &Endpoint, client: Client) -> Conn {
    let conn = ep.connect_with(client).await;
    let _: u64 = conn.call("drs.ping", ()).await.expect("ping");
    conn
}

/// A handler that counts its starts and waits for a permit.
fn blocking_handler(server: &Server, started: Arc<Counter>, release: Arc<Semaphore>) {
    server.on("block", move || {
        let (started, release) = (started.clone(), release.clone());
        async move {
            started.incr();
            release.acquire().await.expect("semaphore open").forget();
            HandlerResult::Ok(())
        }
    });
}

pub(crate) fn long_timeout() -> Client {
    Client::new().config(ConnConfig::default().call_timeout(Duration::from_secs(60)))
}

/// Calls return the handler's value, typed, for bodies of every JSON shape.
pub async fn call_round_trip(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let ep = pair.listen(&server).await;
    let conn = ep.connect().await;
    let sum: f64 = conn.call("add", json!({"a": 1, "b": 2.5})).await.unwrap();
    assert_eq!(sum, 3.5);
    let value = json!({"nested": [1, "two", null, {"x": true, "y": -1.5e300}], "empty": {}});
    let echoed: Value = conn.call("echo", &value).await.unwrap();
    assert_eq!(echoed, value);
    let nothing: Value = conn.call("echo", ()).await.unwrap();
    assert_eq!(nothing, Value::Null);
    let text = "line\nbreak \"quoted\" \\ ünïcödé \u{1F980} \t";
    let echoed: String = conn.call("echo", text).await.unwrap();
    assert_eq!(echoed, text);
    let raw: Body = conn.call("echo", [1, 2, 3]).await.unwrap();
    assert_eq!(raw.deserialize::<Vec<u8>>().unwrap(), vec![1, 2, 3]);
}

/// A body that does not fit the handler's type is a `drs.error` naming the
/// action; a reply that does not fit the caller's type is a decode error.
pub async fn typed_body_errors_name_the_action(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let err = conn.call::<f64>("add", json!({"a": 1})).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(remote_message(&err), "add's body misses field `b`");
    let err = conn.call::<f64>("add", "not an object").await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    let message = remote_message(&err);
    assert!(
        message
            .starts_with("add's body has the string \"not an object\" where an object was wanted"),
        "{message}"
    );
    let err = conn.call::<f64>("add", ()).await.unwrap_err();
    assert_eq!(remote_message(&err), "add needs a body: an object");
    let err = conn.call::<u32>("echo", "text").await.unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
}

/// A fire runs its handler and gets no reply.
pub async fn fire_reaches_handler(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    server.on("note", move |text: String| {
        let tx = tx.clone();
        async move {
            tx.send(text).await.ok();
            HandlerResult::Ok("ignored")
        }
    });
    let ep = pair.listen(&server).await;
    let conn = ep.connect().await;
    conn.fire("note", "hello").await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), "hello");

    let mut raw = ep.raw().await;
    raw.send(None, "note", json!("raw")).await;
    raw.send(Some("k1"), "echo", json!(1)).await;
    assert_eq!(rx.recv().await.unwrap(), "raw");
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        reply.key.as_deref(),
        Some("k1"),
        "a fire must get no reply: {reply:?}"
    );
}

/// `No handlers for <action>`.
pub async fn unknown_action_is_an_error(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let err = conn.call::<Value>("nope", ()).await.unwrap_err();
    assert!(err.is_remote());
    assert_eq!(remote_message(&err), "No handlers for nope");
}

/// `drs.error` and `drs.exception` are told apart, with their messages.
pub async fn remote_error_and_exception_are_distinct(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let err = conn.call::<()>("fail", "bad thing").await.unwrap_err();
    assert!(err.is_remote() && !err.is_exception() && !err.is_timeout() && !err.is_closed());
    assert_eq!(remote_message(&err), "bad thing");
    let err = conn.call::<()>("kaboom", ()).await.unwrap_err();
    assert!(err.is_exception() && !err.is_remote(), "{err:?}");
    assert!(remote_message(&err).contains("kaboom"));
}

/// Both sides answer `drs.ping` with the time in ms since the epoch.
pub async fn ping_is_built_in(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = admitted(&pair.listen(&server).await, Client::new()).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let t: u64 = conn.call("drs.ping", ()).await.unwrap();
    assert!(t + 60_000 > now && t < now + 60_000, "{t} vs {now}");
    let server_side = server.connections().pop().unwrap();
    let t: u64 = server_side.call("drs.ping", ()).await.unwrap();
    assert!(t + 60_000 > now);
}

/// A call's own timeout applies; nothing is left pending; the connection goes on.
pub async fn per_call_timeout(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let err = conn
        .call::<u64>("sleep", 10_000)
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(conn.pending_calls(), 0);
    let ms: u64 = conn.call("sleep", 1).await.unwrap();
    assert_eq!(ms, 1);
}

/// The connection's call timeout applies when a call sets none.
pub async fn per_connection_timeout(pair: Pair) {
    assert_eq!(ConnConfig::default().call_timeout, Duration::from_secs(5));
    let server = test_server(ConnConfig::default());
    let ep = pair.listen(&server).await;
    let client =
        Client::new().config(ConnConfig::default().call_timeout(Duration::from_millis(100)));
    let conn = ep.connect_with(client).await;
    let err = conn.call::<u64>("sleep", 10_000).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(conn.pending_calls(), 0);
}

/// When the connection ends, pending calls fail with `Closed` at once (the
/// calls here have a 60 s timeout; the test has 30 s).
pub async fn pending_calls_fail_at_once_on_disconnect(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release);
    let ep = pair.listen(&server).await;
    let conn = admitted(&ep, long_timeout()).await;
    let call = tokio::spawn(conn.call::<()>("block", ()).into_future());
    started.reach(1).await;
    for c in server.connections() {
        c.close();
    }
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    conn.closed().await;
    assert!(conn.call::<Value>("echo", 1).await.unwrap_err().is_closed());
    assert!(conn.fire("echo", 1).await.unwrap_err().is_closed());

    // The other way round: the server waits on the client, the client leaves.
    // (The first connection may still be listed while it lingers: wait for
    // it to go, so that the one picked below is the new client's.)
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    if server.connection_count() > 0 {
        gone.reach(1).await;
    }
    let entered = Arc::new(Counter::default());
    let hang = entered.clone();
    let client = long_timeout().on("hang", move || {
        let entered = hang.clone();
        async move {
            entered.incr();
            std::future::pending::<()>().await;
            HandlerResult::Ok(())
        }
    });
    let conn = admitted(&ep, client).await;
    let server_side = server.connections().pop().unwrap();
    let call = tokio::spawn(
        server_side
            .call::<()>("hang", ())
            .timeout(Duration::from_secs(60))
            .into_future(),
    );
    entered.reach(1).await;
    conn.close();
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
}

/// A call future dropped before its reply removes its pending entry.
pub async fn dropped_call_leaves_no_pending_entry(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let mut call = conn.call::<u64>("sleep", 10_000).into_future();
    assert!(futures::poll!(&mut call).is_pending());
    assert_eq!(conn.pending_calls(), 1);
    drop(call);
    assert_eq!(conn.pending_calls(), 0);
    let ms: u64 = conn.call("sleep", 0).await.unwrap();
    assert_eq!(ms, 0);
}

/// A reply arriving after its call timed out is dropped; nothing breaks.
pub async fn late_reply_is_dropped(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release.clone());
    let conn = pair.listen(&server).await.connect().await;
    let err = conn
        .call::<()>("block", ())
        .timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    release.add_permits(1);
    // Replies come back in order from a handler that is ready at once, so
    // by the time two echoes return, the late reply has certainly been read.
    for i in 0..2 {
        let v: u32 = conn.call("echo", i).await.unwrap();
        assert_eq!(v, i);
    }
    assert_eq!(conn.pending_calls(), 0);
}

/// Many calls in flight on one connection are matched to their replies.
pub async fn many_calls_multiplexed(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let conn = pair.listen(&server).await.connect().await;
    let calls = (0..500u32).map(|i| {
        let call = conn.call::<u32>(if i % 2 == 0 { "echo" } else { "sleep" }, i % 7);
        async move { (i, call.await.unwrap()) }
    });
    for (i, got) in join_all(calls).await {
        assert_eq!(got, i % 7);
    }
    assert_eq!(conn.pending_calls(), 0);
}

/// Commands on one connection run concurrently: N handlers that each wait
/// for all N to arrive can only finish if they all run at once.
pub async fn commands_run_concurrently(pair: Pair) {
    const N: usize = 16;
    let server = test_server(ConnConfig::default());
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    server.on("meet", move || {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            HandlerResult::Ok(())
        }
    });
    let conn = pair
        .listen(&server)
        .await
        .connect_with(long_timeout())
        .await;
    let calls = (0..N).map(|_| conn.call::<()>("meet", ()).into_future());
    for r in join_all(calls).await {
        r.unwrap();
    }
}

/// Past `max_in_flight` running handlers the connection stops reading:
/// even a ping waits until a slot frees.
pub async fn in_flight_limit_applies_backpressure(pair: Pair) {
    let server = test_server(ConnConfig::default().max_in_flight(4));
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release.clone());
    let conn = pair
        .listen(&server)
        .await
        .connect_with(long_timeout())
        .await;
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(conn.call::<()>("block", ()).into_future()))
        .collect();
    started.reach(4).await;
    let err = conn
        .call::<u64>("drs.ping", ())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        err.is_timeout(),
        "the server kept reading past its in-flight limit: {err:?}"
    );
    assert_eq!(started.get(), 4);
    release.add_permits(10);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(started.get(), 10);
}

/// A panicking handler answers `drs.exception`; its connection, the server
/// and other connections go on.
pub async fn panic_is_isolated(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let ep = pair.listen(&server).await;
    let a = ep.connect().await;
    let b = admitted(&ep, Client::new()).await;
    let err = a.call::<()>("kaboom", ()).await.unwrap_err();
    assert!(err.is_exception());
    assert!(remote_message(&err).contains("kaboom"));
    let v: u32 = a.call("echo", 1).await.unwrap();
    assert_eq!(v, 1);
    let v: u32 = b.call("echo", 2).await.unwrap();
    assert_eq!(v, 2);
    assert_eq!(server.connection_count(), 2);
}

/// Chains run in order over shared extensions; the first error stops them;
/// the last value is the reply; registering again replaces; `off` removes.
pub async fn handler_chain_semantics(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let second_runs = Arc::new(Counter::default());
    let runs = second_runs.clone();
    let chain = Chain::new()
        .then(|msg: Msg| async move {
            let name: String = msg.body_as()?;
            if name.is_empty() {
                return Err(HandlerError::new("empty name"));
            }
            msg.insert(name.to_uppercase());
            HandlerResult::Ok("not the reply")
        })
        .then(move |msg: Msg| {
            runs.incr();
            async move { HandlerResult::Ok(format!("hello {}", msg.get::<String>().unwrap())) }
        });
    server.on("greet", chain);
    let conn = pair.listen(&server).await.connect().await;
    let hello: String = conn.call("greet", "ann").await.unwrap();
    assert_eq!(hello, "hello ANN");
    let err = conn.call::<String>("greet", "").await.unwrap_err();
    assert_eq!(remote_message(&err), "empty name");
    assert_eq!(
        second_runs.get(),
        1,
        "the chain must stop at the first error"
    );

    server.on("greet", || async { HandlerResult::Ok("replaced") });
    let v: String = conn.call("greet", "ann").await.unwrap();
    assert_eq!(v, "replaced");
    assert!(server.off("greet"));
    let err = conn.call::<String>("greet", "ann").await.unwrap_err();
    assert_eq!(remote_message(&err), "No handlers for greet");
}

/// A before hook sees every command and may refuse it; an after hook sees
/// every outcome.
pub async fn before_and_after_hooks(pair: Pair) {
    let server = test_server(ConnConfig::default());
    server.layer(before(|msg: Msg| async move {
        if msg.action() == "secret" {
            return Err(HandlerError::new("forbidden"));
        }
        HandlerResult::Ok(())
    }));
    server.on("secret", || async { HandlerResult::Ok("leaked") });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    server.layer_outermost(after(move |msg: &Msg, outcome: &Outcome| {
        log.lock()
            .unwrap()
            .push((msg.action().to_string(), outcome.reply_action()));
    }));
    let conn = pair.listen(&server).await.connect().await;
    let err = conn.call::<String>("secret", ()).await.unwrap_err();
    assert_eq!(remote_message(&err), "forbidden");
    let _: u32 = conn.call("echo", 1).await.unwrap();
    let _ = conn.call::<()>("nope", ()).await.unwrap_err();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("secret".to_string(), "drs.error"),
            ("echo".to_string(), "drs.response"),
            ("nope".to_string(), "drs.error"),
        ]
    );
}

/// An `on_connect` hook that fails rejects the connection: the peer gets a
/// keyless `drs.error` with the reason, none of its commands is served, and
/// it never joins the server's connections.
pub async fn connect_hook_rejects(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let served = Arc::new(Counter::default());
    let count = served.clone();
    server.layer(before(move |_: Msg| {
        count.incr();
        async { HandlerResult::Ok(()) }
    }));
    server.on_connect(|_conn: Conn| async move { Err::<(), _>("go away") });
    let ep = pair.listen(&server).await;
    let mut raw = ep.raw().await;
    // The server may have rejected and closed before this arrives.
    let _ = raw.try_send(Some("1"), "echo", json!(1)).await;
    let got = raw.until_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].action, "drs.error");
    assert_eq!(got[0].key, None);
    assert_eq!(
        got[0].body.deserialize::<Value>().unwrap(),
        json!({"message": "connection rejected: go away"})
    );
    assert_eq!(served.get(), 0);
    assert_eq!(server.connection_count(), 0);

    let conn = ep.connect().await;
    let err = conn.call::<Value>("echo", 1).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
}

/// An `on_connect` hook sees the connection's info, may call the peer
/// before admitting it, and may attach state to it.
pub async fn connect_hook_sees_connection_and_can_call(pair: Pair) {
    let server = test_server(ConnConfig::default());
    server.on_connect(|conn: Conn| async move {
        assert!(conn.info().peer_addr.is_some());
        let name: String = conn.call("name", ()).await?;
        conn.insert(name);
        HandlerResult::Ok(())
    });
    server.on("whoami", |conn: Conn| async move {
        HandlerResult::Ok(conn.get::<String>())
    });
    let client = Client::new().on("name", || async { HandlerResult::Ok("alice") });
    let conn = pair.listen(&server).await.connect_with(client).await;
    let me: Option<String> = conn.call("whoami", ()).await.unwrap();
    assert_eq!(me.as_deref(), Some("alice"));
    let server_side = server.connections().pop().unwrap();
    assert_eq!(server_side.info().transport, pair.net.name());
}

/// A broadcast reaches every connected client once, and says how many.
pub async fn broadcast_reaches_every_client(pair: Pair) {
    const N: usize = 8;
    let server = test_server(ConnConfig::default());
    let ep = pair.listen(&server).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2 * N);
    let mut conns = Vec::new();
    for i in 0..N {
        let tx = tx.clone();
        let client = Client::new().on("news", move |text: String| {
            let tx = tx.clone();
            async move {
                tx.send((i, text)).await.ok();
                HandlerResult::Ok(())
            }
        });
        conns.push(admitted(&ep, client).await);
    }
    assert_eq!(server.broadcast("news", "extra").unwrap(), N);
    let mut got: Vec<_> = Vec::new();
    for _ in 0..N {
        got.push(rx.recv().await.unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        (0..N).map(|i| (i, "extra".to_string())).collect::<Vec<_>>()
    );
    drop(conns);
}

/// The server calls and fires to a client exactly as a client does to it.
pub async fn server_calls_client(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let client = Client::new()
        .on("name", || async { HandlerResult::Ok("bob") })
        .on("fail", || async {
            Err::<(), _>(HandlerError::new("client says no"))
        })
        .on("note", move |text: String| {
            let tx = tx.clone();
            async move {
                tx.send(text).await.ok();
                HandlerResult::Ok(())
            }
        });
    let conn = admitted(&pair.listen(&server).await, client).await;
    let server_side = server.connections().pop().unwrap();
    let name: String = server_side.call("name", ()).await.unwrap();
    assert_eq!(name, "bob");
    let err = server_side.call::<()>("fail", ()).await.unwrap_err();
    assert_eq!(remote_message(&err), "client says no");
    server_side.fire("note", "from the server").await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), "from the server");
    // From inside a handler, through the command's connection.
    let name: String = conn.call("peer_name", ()).await.unwrap();
    assert_eq!(name, "bob");
}

/// Shutdown lets a running handler finish and its reply go out, then
/// closes connections and stops accepting.
pub async fn graceful_shutdown_lets_handlers_finish(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release.clone());
    let ep = pair.listen(&server).await;
    let conn = ep.connect_with(long_timeout()).await;
    let call = tokio::spawn(conn.call::<()>("block", ()).into_future());
    started.reach(1).await;
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(Duration::from_secs(60)).await }
    });
    release.add_permits(1);
    call.await.unwrap().expect("the in-flight call completes");
    shutdown.await.unwrap();
    conn.closed().await;
    assert_eq!(server.connection_count(), 0);
    let late = ep.place.dial(Client::new(), ep.protocol.clone()).await;
    assert!(late.is_err(), "the server still accepts after shutdown");
}

/// Handlers still running when the grace period ends are stopped, and
/// their callers see the connection close.
pub async fn shutdown_grace_expires(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    blocking_handler(&server, started.clone(), Arc::new(Semaphore::new(0)));
    let conn = pair
        .listen(&server)
        .await
        .connect_with(long_timeout())
        .await;
    let call = tokio::spawn(conn.call::<()>("block", ()).into_future());
    started.reach(1).await;
    server.shutdown(Duration::from_millis(200)).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
}

/// Frames that do not decode are answered with a `drs.error` and skipped;
/// the connection goes on. The error is keyed only when the frame is
/// known to be a call (its key and a non-reply action could be read):
/// answering a broken reply would give the peer's own call of that key a
/// second reply.
pub async fn garbage_is_skipped_with_an_error(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let ep = pair.listen(&server).await;
    let mut raw = ep.raw().await;
    raw.send_frame(&b"\x00\x01 not a command {"[..]).await;
    let notice = raw.recv().await.unwrap();
    assert_eq!(
        (notice.action.as_str(), notice.key.as_deref()),
        ("drs.error", None)
    );
    let message =
        drs_core::RemoteError::deserialize(notice.body.deserialize::<Value>().unwrap()).unwrap();
    assert!(
        message.message.starts_with("invalid command"),
        "{message:?}"
    );

    // Whole, without an action: not a reply, so a broken call.
    raw.send_frame(pair.proto.frame_without_action("k8")).await;
    let notice = raw.recv().await.unwrap();
    assert_eq!(
        (notice.action.as_str(), notice.key.as_deref()),
        ("drs.error", Some("k8"))
    );

    raw.send_frame(pair.proto.frame_with_bad_version("k9", "echo"))
        .await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.error", Some("k9"))
    );
    // A broken reply for a call we never made: nothing comes back.
    raw.send_frame(pair.proto.frame_with_bad_version("k11", "drs.response"))
        .await;

    raw.send(Some("k10"), "echo", json!("still here")).await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.response", Some("k10"))
    );
    assert_eq!(reply.body.deserialize::<String>().unwrap(), "still here");
}

/// A frame over the maximum size gets a keyless `drs.error` and the peer is
/// disconnected; other connections do not notice.
pub async fn oversize_frame_disconnects_only_that_peer(pair: Pair) {
    let server = test_server(ConnConfig::default().max_frame_len(1024));
    let ep = pair.listen(&server).await;
    let other = admitted(&ep, Client::new()).await;
    let mut raw = ep.raw().await;
    raw.send(Some("1"), "echo", json!("x".repeat(4096))).await;
    let message = sole_notice(&raw.until_closed().await);
    assert!(message.contains("maximum frame size"), "{message}");
    let v: String = other.call("echo", "fine").await.unwrap();
    assert_eq!(v, "fine");
}

/// A command over the maximum size is refused before it is sent; a reply
/// over it becomes a `drs.exception`.
pub async fn oversize_outgoing_is_refused_locally(pair: Pair) {
    let server = test_server(ConnConfig::default().max_frame_len(1024));
    server.on("big", || async { HandlerResult::Ok("y".repeat(4096)) });
    let ep = pair.listen(&server).await;
    let conn = ep
        .connect_with(Client::new().config(ConnConfig::default().max_frame_len(1024)))
        .await;
    let err = conn
        .call::<String>("echo", "x".repeat(4096))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(conn.pending_calls(), 0);
    let err = conn.call::<String>("big", ()).await.unwrap_err();
    assert!(err.is_exception(), "{err:?}");
    assert!(remote_message(&err).contains("maximum frame size"));
    let v: String = conn.call("echo", "fine").await.unwrap();
    assert_eq!(v, "fine");
}

struct DropCount(Arc<Counter>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.incr();
    }
}

/// A peer that vanishes mid-call has its handlers stopped and its
/// connection removed; other clients are served as before.
pub async fn peer_vanishing_mid_call_harms_no_one(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    let dropped = Arc::new(Counter::default());
    let (s, d) = (started.clone(), dropped.clone());
    server.on("hold", move || {
        let guard = DropCount(d.clone());
        let started = s.clone();
        async move {
            let _guard = guard;
            started.incr();
            std::future::pending::<()>().await;
            HandlerResult::Ok(())
        }
    });
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    let ep = pair.listen(&server).await;
    let other = admitted(&ep, Client::new()).await;
    let mut raw = ep.raw().await;
    raw.send(Some("1"), "hold", Value::Null).await;
    started.reach(1).await;
    drop(raw);
    gone.reach(1).await;
    dropped.reach(1).await;
    assert_eq!(server.connection_count(), 1);
    let v: u32 = other.call("echo", 7).await.unwrap();
    assert_eq!(v, 7);
}

/// Replies that match no pending call are dropped without disturbing anything.
pub async fn reply_for_unknown_key_is_ignored(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("424242"), "drs.response", json!(1)).await;
    raw.send(Some("not-a-number"), "drs.error", json!({"message": "m"}))
        .await;
    raw.send(None, "drs.response", json!(1)).await;
    raw.send(None, "drs.exception", json!({"message": "from nowhere"}))
        .await;
    raw.send(Some("k"), "echo", json!(5)).await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.response", Some("k"))
    );
}

/// When the last handle to a client connection is dropped, it closes.
pub async fn dropping_every_handle_closes(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    let conn = admitted(&pair.listen(&server).await, Client::new()).await;
    assert_eq!(server.connection_count(), 1);
    drop(conn);
    gone.reach(1).await;
    assert_eq!(server.connection_count(), 0);
}

/// A consumer that stops reading is disconnected by broadcasts once its
/// outbound queue is full; the broadcast and other clients go on.
pub async fn slow_consumer_is_disconnected(pair: Pair) {
    let config = ConnConfig::default()
        .outbound_queue(8)
        .close_linger(Duration::from_millis(100));
    let server = test_server(config);
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    let ep = pair.listen(&server).await;
    let received = Arc::new(Counter::default());
    let r = received.clone();
    let fast = admitted(
        &ep,
        Client::new().on("news", move |_: Body| {
            r.incr();
            async { HandlerResult::Ok(()) }
        }),
    )
    .await;
    let mut slow = ep.raw().await;
    slow.send(Some("1"), "echo", Value::Null).await;
    assert!(slow.recv().await.is_some()); // admitted; from now on it reads nothing
    let body = "z".repeat(64 * 1024);
    let mut sent = 0;
    loop {
        assert!(sent < 5000, "the slow consumer's queue never filled");
        let delivered = server.broadcast("news", &body).unwrap();
        sent += 1;
        // Paced by the fast client, whose queue therefore never fills.
        received.reach(sent).await;
        if delivered < 2 {
            break;
        }
    }
    gone.reach(1).await;
    assert_eq!(server.connection_count(), 1);
    let v: u32 = fast.call("echo", 3).await.unwrap();
    assert_eq!(v, 3);
    drop(slow);
}

/// A reply that does not decode fails the call it answers (one outcome,
/// at once, not a timeout) and is not itself answered.
pub async fn broken_reply_fails_our_call_and_gets_no_reply(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("a"), "peer_name", Value::Null).await;
    let call = raw.recv().await.unwrap();
    assert_eq!(call.action, "name");
    let key = call.key.expect("a call has a key");
    raw.send_frame(pair.proto.frame_with_bad_version(&key, "drs.response"))
        .await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.exception", Some("a")),
        "{reply:?}"
    );
    let message: Value = reply.body.deserialize().unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("invalid reply"),
        "{message}"
    );
    raw.send(Some("b"), "echo", json!(1)).await;
    let next = raw.recv().await.unwrap();
    assert_eq!(next.key.as_deref(), Some("b"), "{next:?}");
}

/// A second call with the key of one still running is refused; the
/// running one is untouched.
pub async fn duplicate_key_in_flight_is_refused(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release.clone());
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("k"), "block", Value::Null).await;
    started.reach(1).await;
    raw.send(Some("k"), "echo", json!("again")).await;
    let refused = raw.recv().await.unwrap();
    assert_eq!(
        (refused.action.as_str(), refused.key.as_deref()),
        ("drs.error", Some("k"))
    );
    let body: Value = refused.body.deserialize().unwrap();
    assert_eq!(body["message"], "duplicate key in flight: k");
    release.add_permits(1);
    let done = raw.recv().await.unwrap();
    assert_eq!(
        (done.action.as_str(), done.key.as_deref()),
        ("drs.response", Some("k"))
    );
    // Once it is done, the key may be used again.
    raw.send(Some("k"), "echo", json!(2)).await;
    let again = raw.recv().await.unwrap();
    assert_eq!(again.body.deserialize::<u32>().unwrap(), 2);
}

/// A handler past its deadline is stopped; its caller gets exactly
/// `drs.exception` "handler deadline exceeded". Per action, and server-wide.
pub async fn handler_deadline_stops_the_handler(pair: Pair) {
    let server =
        test_server(ConnConfig::default().handler_timeout(Some(Duration::from_millis(100))));
    let dropped = Arc::new(Counter::default());
    let d = dropped.clone();
    server.on("forever", move || {
        let guard = DropCount(d.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            HandlerResult::Ok(())
        }
    });
    server.layer_for("sleep", drs_layers::Timeout::new(Duration::from_millis(50)));
    let conn = pair
        .listen(&server)
        .await
        .connect_with(long_timeout())
        .await;
    let err = conn.call::<()>("forever", ()).await.unwrap_err();
    assert!(err.is_exception(), "{err:?}");
    assert_eq!(remote_message(&err), "handler deadline exceeded");
    dropped.reach(1).await; // the handler was stopped, not left running
    let err = conn.call::<u64>("sleep", 60_000).await.unwrap_err();
    assert_eq!(remote_message(&err), "handler deadline exceeded");
    // Within its deadline a handler answers as usual.
    let v: u64 = conn.call("sleep", 1).await.unwrap();
    assert_eq!(v, 1);
}

/// Why a connection ended is known on both sides.
pub async fn close_reason_is_reported(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let (reasons, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let a = admitted(&ep, Client::new()).await;
    assert!(a.close_reason().is_none());
    a.close();
    a.closed().await;
    assert_eq!(a.close_reason().unwrap().name(), "closed");
    gone.reach(1).await;
    let b = admitted(&ep, Client::new()).await;
    server.connections().pop().unwrap().close();
    b.closed().await;
    assert_eq!(b.close_reason().unwrap().name(), "peer_closed");
    gone.reach(2).await;
    assert_eq!(
        *reasons.lock().unwrap(),
        [Some("peer_closed"), Some("closed")]
    );
}

/// With an idle timeout, a connection with nothing in flight and nothing
/// received for that long is closed; one with a call running is not.
pub async fn idle_connection_is_closed(pair: Pair) {
    let server = test_server(ConnConfig::default().idle_timeout(Some(Duration::from_millis(200))));
    let started = Arc::new(Counter::default());
    let release = Arc::new(Semaphore::new(0));
    blocking_handler(&server, started.clone(), release.clone());
    let (reasons, gone) = record_close_reasons(&server);
    let ep = pair.listen(&server).await;
    let busy = admitted(&ep, long_timeout()).await;
    let call = tokio::spawn(busy.call::<()>("block", ()).into_future());
    started.reach(1).await;
    let idle = admitted(&ep, Client::new()).await;
    idle.closed().await;
    gone.reach(1).await;
    assert_eq!(*reasons.lock().unwrap(), [Some("idle")]);
    // The busy one outlived the idle one's timeout with its call running.
    assert!(!busy.is_closed());
    release.add_permits(1);
    call.await.unwrap().unwrap();
}

/// `on_connect` hooks that do not finish within the admission deadline
/// close the connection with a clear error.
pub async fn admission_deadline_closes_the_connection(pair: Pair) {
    let server = test_server(ConnConfig::default().admission_timeout(Duration::from_millis(100)));
    server.on_connect(|_conn| async {
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    });
    let mut raw = pair.listen(&server).await.raw().await;
    assert_eq!(
        sole_notice(&raw.until_closed().await),
        "connection rejected: admission deadline exceeded"
    );
    assert_eq!(server.connection_count(), 0);
}

/// Frames a handler sends before returning arrive before its reply, even
/// when it runs in a task of its own and the outbound queue is backed up.
pub async fn fires_before_a_reply_arrive_before_it(pair: Pair) {
    let server = test_server(ConnConfig::default());
    server.on("burst", |n: u32, conn: Conn| async move {
        tokio::task::yield_now().await; // not ready on first poll: a task
        let chunk = "b".repeat(16 * 1024);
        for i in 0..n {
            conn.fire("note", (i, &chunk)).await?;
        }
        HandlerResult::Ok(n)
    });
    let mut raw = pair.listen(&server).await.raw().await;
    raw.send(Some("1"), "burst", json!(600)).await;
    let mut notes = 0;
    loop {
        let cmd = raw.recv().await.expect("open");
        if cmd.action == "note" {
            let (i, _): (u32, String) = cmd.body.deserialize().unwrap();
            assert_eq!(i, notes);
            notes += 1;
        } else {
            assert_eq!(cmd.action, "drs.response", "{cmd:?}");
            break;
        }
    }
    assert_eq!(notes, 600, "the reply overtook the handler's fires");
}

/// A handler registered on a connection that holds a handle to it (a
/// cycle through the router) is freed when the connection ends.
pub async fn handler_holding_its_own_conn_is_freed(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let probe = Arc::new(());
    let p = probe.clone();
    server.on_connect(move |conn: Conn| {
        let (probe, me) = (p.clone(), conn.clone());
        conn.on("who", move || {
            let (_probe, me) = (probe.clone(), me.clone());
            async move { HandlerResult::Ok(me.id()) }
        });
        async { Ok::<(), String>(()) }
    });
    let gone = Arc::new(Counter::default());
    let g = gone.clone();
    server.on_disconnect(move |_| {
        g.incr();
    });
    let conn = admitted(&pair.listen(&server).await, Client::new()).await;
    let _: u64 = conn.call("who", ()).await.unwrap();
    // Ours, the hook's, the connection's handler's.
    assert_eq!(Arc::strong_count(&probe), 3);
    conn.close();
    gone.reach(1).await;
    assert_eq!(
        Arc::strong_count(&probe),
        2,
        "the connection's handler leaked"
    );
}

/// Past the connection limit a newcomer is told why and closed; the
/// connections already there are untouched.
pub async fn connection_limit_refuses_newcomers(pair: Pair) {
    let server = Server::with_config(ServerConfig::default().max_connections(2));
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    let ep = pair.listen(&server).await;
    let a = admitted(&ep, Client::new()).await;
    let b = admitted(&ep, Client::new()).await;
    let mut third = ep.raw().await;
    let message = sole_notice(&third.until_closed().await);
    assert!(message.contains("connection limit (2)"), "{message}");
    let v: u32 = a.call("echo", 1).await.unwrap();
    let w: u32 = b.call("echo", 2).await.unwrap();
    assert_eq!((v, w), (1, 2));
    // A slot freed is a slot for the next one.
    b.close();
    b.closed().await;
    until_count(&server, 1).await;
    let c = admitted(&ep, Client::new()).await;
    let v: u32 = c.call("echo", 3).await.unwrap();
    assert_eq!(v, 3);
}

async fn until_count(server: &Server, n: usize) {
    while server.connection_count() != n {
        tokio::task::yield_now().await;
    }
}

/// A received body broadcast to peers of its own protocol arrives with the
/// very bytes it was sent with (no re-encoding, no loss of precision).
pub async fn broadcast_copies_a_received_body_exactly(pair: Pair) {
    let server = test_server(ConnConfig::default());
    let s = server.clone();
    server.on("shout", move |body: Body| {
        let reached = s.broadcast_body("shout", &body);
        async move { HandlerResult::Ok(reached) }
    });
    let ep = pair.listen(&server).await;
    let mut listener = ep.raw().await;
    listener.send(Some("0"), "echo", Value::Null).await;
    listener.recv().await.unwrap(); // admitted
    let mut shouter = ep.raw().await;
    let exact = pair.proto.exact_body();
    let body = Body::from_raw(exact.clone(), pair.protocol().body_format());
    let mut frame = BytesMut::new();
    let out = Outgoing::new("shout")
        .key(Some("1"))
        .body(drs_core::OutBody::Raw(&body));
    pair.protocol().encode(&out, &mut frame).unwrap();
    shouter.send_frame(frame.freeze()).await;
    let heard = listener.recv().await.unwrap();
    assert_eq!(heard.action, "shout");
    assert_eq!(heard.body.raw().unwrap().0, &exact);
}
