//! Cerbas mode against a real redis-server (started by each test on a free
//! port of 127.0.0.1): what the Python client tests (examples/python/
//! test_cerbas.py) cannot see from outside.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use drs_cerbas::{
    redis::{self, AsyncCommands},
    request_key, response_channel, CerbasConfig, CerbasWorker, QUEUE,
};
use drs_core::{HandlerResult, Server};
use drs_testkit::RedisServer;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(30);

async fn push(r: &mut redis::aio::MultiplexedConnection, request: Value) -> u64 {
    let k: u64 = r.incr("CERBAS-COUNTER", 1).await.unwrap();
    let _: () = r.set(request_key(k), request.to_string()).await.unwrap();
    let _: () = r.rpush(QUEUE, k).await.unwrap();
    k
}

async fn redis_conn(url: &str) -> (redis::Client, redis::aio::MultiplexedConnection) {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    (client, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_only_publishes_no_messagepack_and_delay_has_a_ceiling() {
    let Some(redis_server) = RedisServer::start_or_skip("json_only_publishes_no_messagepack")
    else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(3);
        let server = Server::new();
        server.on("hello", || async { HandlerResult::Ok("hi") });
        let config = CerbasConfig::default()
            .json_only(true)
            .max_delay(Duration::from_millis(100));
        let _worker = CerbasWorker::new(&url)
            .config(config)
            .func("hello", &[])
            .start(&server)
            .await
            .unwrap();
        let (client, mut r) = redis_conn(&url).await;
        let mut sub = client.get_async_pubsub().await.unwrap();
        let counter: u64 = r.get("CERBAS-COUNTER").await.unwrap_or(0);
        let (k1, k2) = (counter + 1, counter + 2);
        for k in [k1, k2] {
            sub.subscribe(response_channel(3, k)).await.unwrap();
            sub.subscribe(format!("MSGPACK:{}", response_channel(3, k)))
                .await
                .unwrap();
        }
        let mut messages = sub.on_message();
        assert_eq!(
            push(&mut r, json!({"func": "hello", "source": "foo"})).await,
            k1
        );
        let first = messages.next().await.unwrap();
        assert_eq!(first.get_channel_name(), response_channel(3, k1));
        assert_eq!(
            first.get_payload::<String>().unwrap(),
            r#"{"data":"hi","status":"ok"}"#
        );
        // A delay over the ceiling is refused, not waited.
        let request = json!({"func": "hello", "source": "foo", "delay": 60_000});
        assert_eq!(push(&mut r, request).await, k2);
        let second = messages.next().await.unwrap();
        // Had k1's MessagePack answer been published, it would have come
        // first: both went out before k2 was pushed.
        assert_eq!(second.get_channel_name(), response_channel(3, k2));
        assert_eq!(
            second.get_payload::<String>().unwrap(),
            r#"{"data":"delay exceeds 100 ms","status":"error"}"#
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_in_flight_wait_in_redis() {
    let Some(redis_server) = RedisServer::start_or_skip("requests_past_max_in_flight") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(1);
        let server = Server::new();
        let started = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let (s, rel) = (started.clone(), release.clone());
        server.on("block", move || {
            s.fetch_add(1, Ordering::SeqCst);
            let rel = rel.clone();
            async move {
                rel.acquire().await.unwrap().forget();
                HandlerResult::Ok(1)
            }
        });
        let _worker = CerbasWorker::new(&url)
            .config(CerbasConfig::default().max_in_flight(2))
            .func("block", &[])
            .start(&server)
            .await
            .unwrap();
        let (_client, mut r) = redis_conn(&url).await;
        for _ in 0..3 {
            push(&mut r, json!({"func": "block", "source": "foo"})).await;
        }
        while started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let queued: usize = r.llen(QUEUE).await.unwrap();
        assert_eq!(queued, 1, "the third waits in Redis");
        release.add_permits(3);
        while started.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_queue_and_answer_each_request_once() {
    let Some(redis_server) = RedisServer::start_or_skip("two_workers_share_the_queue") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(1);
        let runs = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for name in ["a", "b"] {
            let server = Server::new();
            let runs = runs.clone();
            server.on("who", move || {
                runs.fetch_add(1, Ordering::SeqCst);
                async move { HandlerResult::Ok(name) }
            });
            let handle = CerbasWorker::new(&url)
                .func("who", &[])
                .start(&server)
                .await
                .unwrap();
            workers.push((server, handle));
        }
        let (client, mut r) = redis_conn(&url).await;
        let mut sub = client.get_async_pubsub().await.unwrap();
        let counter: u64 = r.get("CERBAS-COUNTER").await.unwrap_or(0);
        for k in counter + 1..=counter + 200 {
            sub.subscribe(response_channel(1, k)).await.unwrap();
        }
        for _ in 0..200 {
            push(&mut r, json!({"func": "who", "source": "foo"})).await;
        }
        let mut messages = sub.on_message();
        let mut seen = std::collections::HashSet::new();
        let mut by = std::collections::HashMap::<String, usize>::new();
        while seen.len() < 200 {
            let m = messages.next().await.unwrap();
            assert!(
                seen.insert(m.get_channel_name().to_string()),
                "answered twice"
            );
            let v: Value = serde_json::from_str(&m.get_payload::<String>().unwrap()).unwrap();
            *by.entry(v["data"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 200);
        assert_eq!(by.len(), 2, "both workers took requests: {by:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crontab_runs_its_requests_and_is_read_again_when_it_changes() {
    let Some(redis_server) = RedisServer::start_or_skip("a_crontab_runs_its_requests") else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = Server::new();
        for func in ["tick", "tock"] {
            let tx = tx.clone();
            server.on(func, move |args: Value| {
                let _ = tx.send((func, args));
                async { HandlerResult::Ok(()) }
            });
        }
        let path = std::env::temp_dir().join(format!("drs-crontab-{}", std::process::id()));
        // Every second (a 6-field expression), with a bad line beside it
        // and a request from a source that is not allowed.
        std::fs::write(
            &path,
            "* * * * * * | {\"func\": \"tick\", \"args\": {\"n\": 1}, \"source\": \"foo\"}\n\
             not cron | {\"func\": \"tick\"}\n\
             * * * * * * | {\"func\": \"tock\", \"source\": \"mallory\"}\n",
        )
        .unwrap();
        let _worker = CerbasWorker::new(&url)
            .func("tick", &["n"])
            .func("tock", &[])
            .crontab(&path)
            .start(&server)
            .await
            .unwrap();
        // Two seconds of ticks, and no tock: mallory's request is refused
        // (it would run beside each tick).
        for _ in 0..2 {
            assert_eq!(rx.recv().await.unwrap(), ("tick", json!({"n": 1})));
        }
        // Changed: now tock, from an allowed source.
        std::fs::write(
            &path,
            "* * * * * * | {\"func\": \"tock\", \"source\": \"foo\"}\n",
        )
        .unwrap();
        loop {
            let (func, _) = rx.recv().await.unwrap();
            if func == "tock" {
                break;
            }
        }
        let _ = std::fs::remove_file(&path);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_number_without_its_request_is_answered_with_an_error() {
    let Some(redis_server) = RedisServer::start_or_skip("a_queued_number_without_its_request")
    else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let url = redis_server.url(1);
        let server = Server::new();
        let _worker = CerbasWorker::new(&url).start(&server).await.unwrap();
        let (client, mut r) = redis_conn(&url).await;
        let mut sub = client.get_async_pubsub().await.unwrap();
        sub.subscribe(response_channel(1, 424242)).await.unwrap();
        let _: () = r.rpush(QUEUE, 424242).await.unwrap();
        let mut messages = sub.on_message();
        let m = messages.next().await.unwrap();
        assert_eq!(
            m.get_payload::<String>().unwrap(),
            r#"{"data":"no request stored at CERBAS-REQUEST-0000424242","status":"error"}"#
        );
    })
    .await
    .unwrap();
}
