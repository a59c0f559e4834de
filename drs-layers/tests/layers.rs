//! Layers: nesting order, short-circuit, per-connection layers, and the
//! pool, cache and timeout layers, over the in-memory transport.

use std::{
    future::{Future, IntoFuture},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use drs_core::{
    layer_fn, memory, Client, Conn, HandlerError, HandlerResult, Msg, Next, Outcome, Server,
};
use drs_layers::{Cache, Pool, Timeout};
use drs_protocol_json::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Every test under a timeout, so a bug fails fast instead of hanging.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

async fn connect(server: &Server) -> Conn {
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).expect("listen");
    Client::new().connect(dialer, Json).await.expect("connect")
}

/// A layer that writes `name` before and `name'` after the rest.
fn tracer(log: &Arc<Mutex<Vec<String>>>, name: &'static str) -> impl drs_core::Layer {
    let log = log.clone();
    layer_fn(move |msg: Msg, next: Next| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(name.to_owned());
            let outcome = next.run(msg).await;
            log.lock().unwrap().push(format!("{name}'"));
            outcome
        }
    })
}

/// Yields until `cond` holds (no sleeps; the test's timeout bounds it).
async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn layers_nest_connection_server_action_in_the_order_added() {
    within(async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = Server::new();
        let l = log.clone();
        server.on("x", move || {
            let l = l.clone();
            async move {
                l.lock().unwrap().push("handler".to_owned());
                HandlerResult::Ok(1)
            }
        });
        server.layer(tracer(&log, "s1"));
        server.layer(tracer(&log, "s2"));
        server.layer_for("x", tracer(&log, "a1"));
        server.layer_for("x", tracer(&log, "a2"));
        let l = log.clone();
        server.on_connect(move |conn: Conn| {
            conn.layer(tracer(&l, "c1"));
            async { Ok::<_, HandlerError>(()) }
        });
        // Registering the handler again keeps its layers.
        let l = log.clone();
        server.on("x", move || {
            let l = l.clone();
            async move {
                l.lock().unwrap().push("handler".to_owned());
                HandlerResult::Ok(2)
            }
        });
        let conn = connect(&server).await;
        let v: u32 = conn.call("x", ()).await.unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            *log.lock().unwrap(),
            ["c1", "s1", "s2", "a1", "a2", "handler", "a2'", "a1'", "s2'", "s1'", "c1'"]
        );
        // A command with no handler passes the connection's and server's layers.
        log.lock().unwrap().clear();
        let err = conn.call::<()>("nothing", ()).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "No handlers for nothing");
        assert_eq!(
            *log.lock().unwrap(),
            ["c1", "s1", "s2", "s2'", "s1'", "c1'"]
        );
    })
    .await
}

/// A connection's own handler runs inside the connection's layers once,
/// with the server's layers between them, on a server connection and on a
/// client's.
#[tokio::test]
async fn a_connections_own_handler_is_wrapped_by_its_layers_once() {
    within(async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = Server::new();
        server.layer(tracer(&log, "s1"));
        let l = log.clone();
        server.on_connect(move |conn: Conn| {
            conn.layer(tracer(&l, "c1"));
            let l = l.clone();
            conn.on("own", move || {
                l.lock().unwrap().push("own".to_owned());
                async { HandlerResult::Ok(1) }
            });
            async { Ok::<_, HandlerError>(()) }
        });
        let conn = connect(&server).await;
        let v: u32 = conn.call("own", ()).await.unwrap();
        assert_eq!(v, 1);
        assert_eq!(*log.lock().unwrap(), ["c1", "s1", "own", "s1'", "c1'"]);

        // A client's connection: the client's layers, then the connection's.
        log.lock().unwrap().clear();
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).expect("listen");
        let client = Client::new().layer(tracer(&log, "k1"));
        let conn = client.dial(&dialer, Arc::new(Json)).await.expect("dial");
        conn.layer(tracer(&log, "c2"));
        let l = log.clone();
        conn.on("back", move || {
            l.lock().unwrap().push("back".to_owned());
            async { HandlerResult::Ok(2) }
        });
        let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        let peer = server
            .connections()
            .into_iter()
            .max_by_key(Conn::id)
            .expect("the client's connection");
        log.lock().unwrap().clear();
        let v: u32 = peer.call("back", ()).await.unwrap();
        assert_eq!(v, 2);
        assert_eq!(*log.lock().unwrap(), ["c2", "k1", "back", "k1'", "c2'"]);
    })
    .await
}

#[tokio::test]
async fn a_layer_short_circuits_and_rewrites() {
    within(async {
        let runs = Arc::new(AtomicUsize::new(0));
        let server = Server::new();
        let r = runs.clone();
        server.on("echo", move |v: Value| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { HandlerResult::Ok(v) }
        });
        server.layer(layer_fn(|msg: Msg, next: Next| async move {
            if msg.body_as::<Value>().ok() == Some(json!("secret")) {
                return Outcome::error("not allowed");
            }
            let outcome = next.run(msg).await;
            if outcome.is_ok() {
                Outcome::value(json!({"wrapped": true}))
            } else {
                outcome
            }
        }));
        let conn = connect(&server).await;
        let err = conn.call::<Value>("echo", "secret").await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "not allowed");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let v: Value = conn.call("echo", 1).await.unwrap();
        assert_eq!(v, json!({"wrapped": true}));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    })
    .await
}

#[tokio::test]
async fn a_connection_layer_applies_to_that_connection_only() {
    within(async {
        let server = Server::new();
        server.on("echo", |v: Value| async move { HandlerResult::Ok(v) });
        let first = Arc::new(AtomicUsize::new(0));
        server.on_connect(move |conn: Conn| {
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                conn.layer(layer_fn(|_msg: Msg, _next: Next| async {
                    Outcome::error("jailed")
                }));
            }
            async { Ok::<_, HandlerError>(()) }
        });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let jailed = Client::new().connect(dialer.clone(), Json).await.unwrap();
        let free = Client::new().connect(dialer, Json).await.unwrap();
        let err = jailed.call::<Value>("echo", 1).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "jailed");
        let v: u32 = free.call("echo", 1).await.unwrap();
        assert_eq!(v, 1);
    })
    .await
}

/// Takes one off a count when dropped.
struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A handler that counts its runs (and the most at once) and waits for a permit.
fn gated(
    server: &Server,
    action: &str,
    gate: &Arc<Semaphore>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (started, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let running = Arc::new(AtomicUsize::new(0));
    let (s, m, g) = (started.clone(), max.clone(), gate.clone());
    server.on(action, move |n: u64| {
        let (s, m, g, running) = (s.clone(), m.clone(), g.clone(), running.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            // Leaves the count even when cancelled while it waits.
            let _leave = Leave(running);
            g.acquire().await.expect("open").forget();
            HandlerResult::Ok(n)
        }
    });
    (started, max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_bounds_running_and_waiting_calls() {
    within(async {
        let server = Server::new();
        let gate = Arc::new(Semaphore::new(0));
        let (started, max) = gated(&server, "work", &gate);
        let pool = Pool::new(2, 2);
        server.layer_for("work", pool.clone());
        let conn = connect(&server).await;
        let calls: Vec<_> = (0..4)
            .map(|i| tokio::spawn(conn.call::<u64>("work", i).into_future()))
            .collect();
        until(|| pool.running() == 2 && pool.waiting() == 2).await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        // A fifth caller is refused at once.
        let err = conn.call::<u64>("work", 9).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "queue full");
        // A waiting caller that cancels leaves the queue.
        calls[3].abort();
        until(|| pool.waiting() == 1).await;
        let late = tokio::spawn(conn.call::<u64>("work", 5).into_future());
        until(|| pool.waiting() == 2).await;
        gate.add_permits(100);
        let mut done = Vec::new();
        for call in calls.into_iter().take(3).chain([late]) {
            done.push(call.await.unwrap().unwrap());
        }
        done.sort();
        assert_eq!(done, [0, 1, 2, 5]);
        assert_eq!(max.load(Ordering::SeqCst), 2);
        // Four ran: the one cancelled (running or waiting) and the others.
        assert!(started.load(Ordering::SeqCst) >= 4);
        assert_eq!((pool.running(), pool.waiting()), (0, 0));
    })
    .await
}

/// A server whose `now` handler counts its runs and returns the count;
/// `flaky` fails every time.
fn counting_server(cache: &Cache) -> (Server, Arc<AtomicUsize>) {
    let server = Server::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    server.on("now", move |_: Value| {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        async move { HandlerResult::Ok(n) }
    });
    let r = runs.clone();
    server.on("flaky", move || {
        r.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(HandlerError::new("flaky")) }
    });
    server.layer_for("now", cache.clone());
    server.layer_for("flaky", cache.clone());
    (server, runs)
}

#[tokio::test(start_paused = true)]
async fn the_cache_answers_from_kept_results_until_they_expire() {
    within(async {
        let cache = Cache::new(Duration::from_secs(2));
        let (server, runs) = counting_server(&cache);
        let conn = connect(&server).await;
        let a: usize = conn.call("now", json!({"q": 1})).await.unwrap();
        let b: usize = conn.call("now", json!({"q": 1})).await.unwrap();
        assert_eq!((a, b), (1, 1));
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        // Another body is another entry.
        let c: usize = conn.call("now", json!({"q": 2})).await.unwrap();
        assert_eq!(c, 2);
        tokio::time::advance(Duration::from_millis(1999)).await;
        let d: usize = conn.call("now", json!({"q": 1})).await.unwrap();
        assert_eq!(d, 1);
        tokio::time::advance(Duration::from_millis(2)).await;
        let e: usize = conn.call("now", json!({"q": 1})).await.unwrap();
        assert_eq!(e, 3, "expired after its TTL");
        // Errors are not kept.
        for _ in 0..2 {
            let err = conn.call::<()>("flaky", ()).await.unwrap_err();
            assert_eq!(err.remote().unwrap().message, "flaky");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        // The entry for q:2 expired and was dropped when another was kept.
        assert_eq!(cache.len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_calls_run_the_handler_once() {
    within(async {
        let server = Server::new();
        let gate = Arc::new(Semaphore::new(0));
        let (started, _) = gated(&server, "slow", &gate);
        let cache = Cache::new(Duration::from_secs(60));
        server.layer_for("slow", cache.clone());
        let conn = connect(&server).await;
        let calls: Vec<_> = (0..5)
            .map(|_| tokio::spawn(conn.call::<u64>("slow", 7).into_future()))
            .collect();
        until(|| cache.misses() == 5).await;
        assert_eq!(cache.running(), 1);
        gate.add_permits(1);
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 7);
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        // Every waiter cancelled: the run is dropped and the next starts afresh.
        let lone = tokio::spawn(conn.call::<u64>("slow", 8).into_future());
        until(|| started.load(Ordering::SeqCst) == 2).await;
        lone.abort();
        until(|| cache.running() == 0).await;
        let again = tokio::spawn(conn.call::<u64>("slow", 8).into_future());
        until(|| started.load(Ordering::SeqCst) == 3).await;
        gate.add_permits(1);
        assert_eq!(again.await.unwrap().unwrap(), 8);
    })
    .await
}

#[tokio::test]
async fn the_cache_is_bounded_in_entries_and_bytes() {
    within(async {
        let by_count = Cache::new(Duration::from_secs(60)).max_entries(3);
        let (server, _) = counting_server(&by_count);
        let conn = connect(&server).await;
        for q in 0..10 {
            let _: usize = conn.call("now", json!({ "q": q })).await.unwrap();
            assert!(by_count.len() <= 3);
        }
        assert_eq!(by_count.len(), 3);

        let by_bytes = Cache::new(Duration::from_secs(60)).max_bytes(300);
        let (server, runs) = counting_server(&by_bytes);
        let conn = connect(&server).await;
        for q in 0..10 {
            let _: usize = conn
                .call("now", json!({ "q": "x".repeat(40 + q) }))
                .await
                .unwrap();
            assert!(by_bytes.bytes() <= 300, "{}", by_bytes.bytes());
        }
        assert!(by_bytes.len() >= 2);
        // A result over the whole budget is not kept.
        let before = runs.load(Ordering::SeqCst);
        let big = "y".repeat(400);
        let _: usize = conn.call("now", json!({ "q": big })).await.unwrap();
        let _: usize = conn.call("now", json!({ "q": big })).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), before + 2);
    })
    .await
}

#[tokio::test]
async fn a_timeout_layer_stops_a_slow_handler() {
    within(async {
        let server = Server::new();
        let cancelled = Arc::new(Semaphore::new(0));
        let c = cancelled.clone();
        server.on("stuck", move |msg: Msg| {
            let token = msg.cancel_token();
            let c = c.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                c.add_permits(1);
            });
            async {
                std::future::pending::<()>().await;
                HandlerResult::Ok(())
            }
        });
        server.on("quick", || async { HandlerResult::Ok(1) });
        server.layer(Timeout::new(Duration::from_millis(50)));
        let conn = connect(&server).await;
        let err = conn.call::<()>("stuck", ()).await.unwrap_err();
        assert!(err.is_exception(), "{err:?}");
        assert_eq!(err.remote().unwrap().message, "handler deadline exceeded");
        cancelled.acquire().await.unwrap().forget();
        let v: u32 = conn.call("quick", ()).await.unwrap();
        assert_eq!(v, 1);
    })
    .await
}

/// A panicking `before` hook is the command's `drs.exception` and the
/// handler does not run; a panicking `after` hook changes no reply; an
/// `after` hook added outermost sees a rejection by a layer added later.
#[tokio::test]
async fn before_and_after_hooks_contain_panics() {
    within(async {
        let server = Server::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        server.layer_outermost(drs_layers::after(move |msg: &Msg, outcome: &Outcome| {
            log.lock()
                .unwrap()
                .push(format!("{} {}", msg.action(), outcome.reply_action()));
            if msg.action() == "echo" {
                panic!("after hook bug");
            }
        }));
        server.layer(drs_layers::before(|msg: Msg| async move {
            if msg.action() == "boom" {
                panic!("before hook bug");
            }
            HandlerResult::Ok(())
        }));
        let count = ran.clone();
        server.on("boom", move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { HandlerResult::Ok("ran") }
        });
        server.on("echo", |v: Value| async move { HandlerResult::Ok(v) });
        let conn = connect(&server).await;
        let err = conn.call::<Value>("boom", ()).await.unwrap_err();
        assert!(err.is_exception(), "{err}");
        assert!(err.to_string().contains("before hook bug"), "{err}");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let v: Value = conn.call("echo", json!([1])).await.unwrap();
        assert_eq!(v, json!([1]));
        assert_eq!(
            *seen.lock().unwrap(),
            ["boom drs.exception", "echo drs.response"]
        );
    })
    .await;
}

/// A chain stops at its first error; a panic in one of its handlers is
/// that error, as `drs.exception`.
#[tokio::test]
async fn a_chain_stops_at_a_panic() {
    within(async {
        let server = Server::new();
        let second = Arc::new(AtomicUsize::new(0));
        let count = second.clone();
        server.on(
            "two",
            drs_layers::Chain::new()
                .then(|n: i64| async move {
                    assert!(n >= 0, "negative");
                    HandlerResult::Ok(())
                })
                .then(move |n: i64| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move { HandlerResult::Ok(n * 2) }
                }),
        );
        let conn = connect(&server).await;
        let v: i64 = conn.call("two", 4).await.unwrap();
        assert_eq!(v, 8);
        let err = conn.call::<i64>("two", -1).await.unwrap_err();
        assert!(err.is_exception(), "{err}");
        assert!(err.to_string().contains("negative"), "{err}");
        assert_eq!(second.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// A `Timeout` on one action replaces the connection's handler deadline
/// for it, longer as well as shorter; nested, the shortest counts. (Under
/// Tokio's paused clock: no real waiting.)
#[tokio::test(start_paused = true)]
async fn a_timeout_on_one_action_replaces_the_connections_deadline() {
    within(async {
        let config =
            drs_core::ConnConfig::default().handler_timeout(Some(Duration::from_millis(50)));
        let server = Server::with_config(config);
        for action in ["long", "default", "nested"] {
            server.on(action, |ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                HandlerResult::Ok(ms)
            });
        }
        // The caller waits 5 s (its default call timeout).
        server.layer_for("long", Timeout::new(Duration::from_secs(2)));
        server.layer_for("nested", Timeout::new(Duration::from_millis(100)));
        server.layer_for("nested", Timeout::new(Duration::from_secs(2)));
        let conn = connect(&server).await;
        let v: u64 = conn.call("long", 1_000).await.unwrap();
        assert_eq!(v, 1_000, "past the connection's 50 ms, within its own 2 s");
        let err = conn.call::<u64>("long", 3_000).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "handler deadline exceeded");
        let err = conn.call::<u64>("default", 1_000).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "handler deadline exceeded");
        let v: u64 = conn.call("nested", 80).await.unwrap();
        assert_eq!(v, 80);
        let err = conn.call::<u64>("nested", 1_000).await.unwrap_err();
        assert_eq!(err.remote().unwrap().message, "handler deadline exceeded");
    })
    .await
}
