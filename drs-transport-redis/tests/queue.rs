//! A drs service on a real redis-server (started here on a free port of
//! 127.0.0.1): plain requests through the queue, workers sharing it, and
//! what a worker killed with SIGKILL leaves behind: "worker lost" for what
//! it held, a second run for idempotent actions, a drs connection to it
//! closed.
//!
//! The killed worker is this test binary run again with
//! `DRS_REDIS_WORKER` set.

use drs_transport_redis::LinkSettings;
use std::{collections::HashMap, io::Write, sync::Arc, time::Duration};

use drs_core::{Client, ConnConfig, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_testkit::{RedisServer, TestProcess};
use drs_transport_redis::{
    redis::{self, AsyncCommands},
    Keys, RedisConfig, RedisDialer, RedisListener,
};
use serde_json::{json, Value};

const WORKER: &str = "DRS_REDIS_WORKER";
const LIMIT: Duration = Duration::from_secs(60);

fn config() -> RedisConfig {
    RedisConfig::default()
        .heartbeat(Duration::from_millis(200))
        .idempotent(["again"])
}

/// Pushes a plain request and returns its reply list.
async fn push(r: &mut redis::aio::MultiplexedConnection, keys: &Keys, frame: Value) -> String {
    let reply = keys.reply_list();
    let mut entry = format!("R{reply}\n").into_bytes();
    entry.extend(frame.to_string().as_bytes());
    let _: () = r.rpush(keys.queue(), entry).await.unwrap();
    reply
}

/// A connection whose replies may take long (BLPOP).
async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

async fn take(r: &mut redis::aio::MultiplexedConnection, reply: &str) -> Value {
    let (_, frame): (String, Vec<u8>) = redis::cmd("BLPOP")
        .arg(reply)
        .arg(30)
        .query_async(r)
        .await
        .unwrap();
    serde_json::from_slice(&frame).unwrap()
}

async fn worker_server(url: &str, service: &str, name: &'static str) -> Server {
    let server = Server::new();
    server.on("who", move || async move { HandlerResult::Ok(name) });
    server.on("again", move || async move { HandlerResult::Ok(name) });
    server.on("add", |(a, b): (i64, i64)| async move {
        HandlerResult::Ok(a + b)
    });
    let listener = RedisListener::bind_with(url, service, Arc::new(Json), config())
        .await
        .unwrap();
    server.listen(listener, Json).unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_are_shared_by_the_workers_and_answered_once() {
    let Some(redis_server) = RedisServer::start_or_skip("plain_requests_are_shared") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(0);
        let _a = worker_server(&url, "calc", "a").await;
        let _b = worker_server(&url, "calc", "b").await;
        let keys = Keys::new("calc");
        let mut r = redis_conn(&url).await;
        let reply = push(
            &mut r,
            &keys,
            json!({"action": "add", "body": [2, 3], "key": "k"}),
        )
        .await;
        let answer = take(&mut r, &reply).await;
        assert_eq!(answer["action"], "drs.response");
        assert_eq!(answer["key"], "k");
        assert_eq!(answer["body"], 5);
        // A frame that does not decode is answered with the protocol's
        // error; garbage in the queue is dropped; what follows is served.
        let reply = keys.reply_list();
        let _: () = r
            .rpush(keys.queue(), format!("R{reply}\n{{not json"))
            .await
            .unwrap();
        let answer = take(&mut r, &reply).await;
        assert_eq!(answer["action"], "drs.error", "{answer}");
        let _: () = r.rpush(keys.queue(), "R\nno reply list").await.unwrap();
        let _: () = r.rpush(keys.queue(), "Xunknown kind").await.unwrap();
        let _: () = r.rpush(keys.queue(), "nonsense").await.unwrap();
        let mut by = HashMap::<String, usize>::new();
        let mut replies = Vec::new();
        for i in 0..200 {
            let frame = json!({"action": "who", "key": i.to_string()});
            replies.push(push(&mut r, &keys, frame).await);
        }
        for (i, reply) in replies.iter().enumerate() {
            let answer = take(&mut r, reply).await;
            assert_eq!(answer["key"], i.to_string());
            *by.entry(answer["body"].as_str().unwrap().to_string())
                .or_default() += 1;
            let left: usize = r.llen(reply).await.unwrap();
            assert_eq!(left, 0, "one reply each");
        }
        assert_eq!(by.len(), 2, "both workers took requests: {by:?}");
        // Nothing is left in anyone's processing list.
        let processing: Vec<String> = r.keys("drs:{calc}:processing:*").await.unwrap();
        for list in processing {
            let n: usize = r.llen(&list).await.unwrap();
            assert_eq!(n, 0, "{list}");
        }
    })
    .await
    .unwrap();
}

/// A worker process whose handlers never finish; it says `started ACTION`
/// for each.
#[test]
fn hanging_worker_process() {
    let Ok(url) = std::env::var(WORKER) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = Server::new();
        for action in ["hang", "again"] {
            server.on(action, move || {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "started {action}");
                let _ = out.flush();
                std::future::pending::<HandlerResult<()>>()
            });
        }
        let listener = RedisListener::bind_with(&url, "fragile", Arc::new(Json), config())
            .await
            .unwrap();
        server.listen(listener, Json).unwrap();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        drop(out);
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_worker_held_is_answered_worker_lost_or_run_again() {
    let Some(redis_server) = RedisServer::start_or_skip("what_a_killed_worker_held") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(0);
        let mut victim = TestProcess::spawn("hanging_worker_process", &[(WORKER, &url)]);
        victim.wait_for("ready").await;
        let keys = Keys::new("fragile");
        let mut r = redis_conn(&url).await;
        // A drs connection to the victim, with a call in flight.
        let conn = Client::new()
            .config(ConnConfig::default().call_timeout(Duration::from_secs(60)))
            .connect(
                RedisDialer::new(url.clone(), "fragile").config(config()),
                Json,
            )
            .await
            .unwrap();
        let call = tokio::spawn(async move { conn.call::<Value>("hang", ()).await });
        victim.wait_for("started hang").await;
        // And plain requests it took: one not idempotent, one idempotent.
        let lost = push(&mut r, &keys, json!({"action": "hang", "key": "h"})).await;
        victim.wait_for("started hang").await;
        let again = push(&mut r, &keys, json!({"action": "again", "key": "a"})).await;
        victim.wait_for("started again").await;
        victim.kill().await; // SIGKILL
                             // A worker that is alive reaps them.
        let _survivor = worker_server(&url, "fragile", "survivor").await;
        let answer = take(&mut r, &lost).await;
        assert_eq!(answer["action"], "drs.error", "{answer}");
        assert_eq!(answer["key"], "h");
        assert_eq!(answer["body"]["message"], "worker lost");
        let answer = take(&mut r, &again).await;
        assert_eq!(answer["action"], "drs.response", "{answer}");
        assert_eq!(answer["key"], "a");
        assert_eq!(answer["body"], "survivor");
        // The connection's call failed as closed, not by its timeout.
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_service_without_workers_times_out_and_takes_its_connect_back() {
    let Some(redis_server) = RedisServer::start_or_skip("dialing_a_service_without_workers") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(0);
        let dialer = RedisDialer::new(url.clone(), "nobody")
            .config(RedisConfig::default().connect_timeout(Duration::from_millis(300)));
        let err = Client::new().connect(dialer, Json).await.unwrap_err();
        let Error::Io(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("drs:{nobody}:queue"), "{err}");
        let mut r = redis_conn(&url).await;
        let queued: usize = r.llen(Keys::new("nobody").queue()).await.unwrap();
        assert_eq!(queued, 0, "the connect was taken back");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_the_clients_of_every_worker() {
    let Some(redis_server) = RedisServer::start_or_skip("a_broadcast_reaches_the_clients") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(0);
        let mut workers = Vec::new();
        for name in ["a", "b"] {
            let server = worker_server(&url, &format!("bc-{name}"), "w").await;
            let broadcast = drs_transport_redis::RedisBroadcast::attach(&server, &url, "bc")
                .await
                .unwrap();
            workers.push((server, broadcast));
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conns = Vec::new();
        for name in ["a", "b"] {
            let (tx, evil) = (tx.clone(), tx.clone());
            let client = Client::new()
                .on("alert", move |body: Value| {
                    let _ = tx.send(body);
                    async { HandlerResult::Ok(()) }
                })
                .on("evil", move |body: Value| {
                    let _ = evil.send(json!({"evil": body}));
                    async { HandlerResult::Ok(()) }
                });
            let conn = client
                .connect(RedisDialer::new(url.clone(), &format!("bc-{name}")), Json)
                .await
                .unwrap();
            let _: u64 = conn.call("drs.ping", ()).await.unwrap();
            conns.push(conn);
        }
        // Anyone on the Redis can publish on the channel: a message that is
        // not an action and one JSON value reaches no client.
        let mut r = redis_conn(&url).await;
        let forged = "alert\n1}\n{\"action\":\"evil\",\"body\":1";
        let _: () = r
            .publish(Keys::new("bc").broadcast(), forged)
            .await
            .unwrap();
        workers[1]
            .1
            .broadcast("alert", json!([1, 2]))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), json!([1, 2]));
        assert_eq!(rx.recv().await.unwrap(), json!([1, 2]));
    })
    .await
    .unwrap();
}

/// A request whose reply list is a key outside the service's own is
/// dropped: the worker writes nothing to it and sets no expiry on it,
/// whatever its type; the next good request is answered. A connect
/// (`K<name>`) that nobody follows leaves a client list that expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_make_the_worker_write_outside_the_service() {
    let Some(redis_server) = RedisServer::start_or_skip("a_client_cannot_make_the_worker_write")
    else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(0);
        let _worker = worker_server(&url, "guarded", "w1").await;
        let keys = Keys::new("guarded");
        let mut r = redis_conn(&url).await;
        // Victims: a list and a string of someone else's.
        let _: () = r.rpush("victim:list", "theirs").await.unwrap();
        let _: () = r.set("victim:string", "theirs").await.unwrap();
        for victim in ["victim:list", "victim:string", "drs:{guarded}:queue"] {
            let mut entry = format!("R{victim}\n").into_bytes();
            entry.extend(br#"{"key":"1","action":"who"}"#);
            let _: () = r.rpush(keys.queue(), entry).await.unwrap();
        }
        // A good request after them is answered: the bad ones are gone.
        let reply = push(&mut r, &keys, json!({"key": "2", "action": "who"})).await;
        assert_eq!(take(&mut r, &reply).await["body"], "w1");
        let list: Vec<String> = r.lrange("victim:list", 0, -1).await.unwrap();
        assert_eq!(list, ["theirs"]);
        let ttl: i64 = r.pttl("victim:list").await.unwrap();
        assert_eq!(ttl, -1, "no expiry set on another's key");
        let ttl: i64 = r.pttl("victim:string").await.unwrap();
        assert_eq!(ttl, -1, "no expiry set on another's key");
        let queued: i64 = r.llen(keys.queue()).await.unwrap();
        assert_eq!(queued, 0);

        // Connects nobody follows: their lists expire.
        for i in 0..20 {
            let entry = format!("Kghost{i}\n").into_bytes();
            let _: () = r.rpush(keys.queue(), entry).await.unwrap();
        }
        let last = "drs:{guarded}:client:ghost19";
        loop {
            let exists: bool = r.exists(last).await.unwrap();
            if exists {
                break;
            }
            tokio::task::yield_now().await;
        }
        for i in 0..20 {
            let ttl: i64 = r
                .pttl(format!("drs:{{guarded}}:client:ghost{i}"))
                .await
                .unwrap();
            assert!(ttl > 0, "client list ghost{i} has no expiry ({ttl})");
        }
    })
    .await
    .expect("within the limit");
}
