//! `demo_server` behind a broker: `--nats URL --service NAME` (a real
//! nats-server on a free port, started here; skipped, visibly, where it is
//! not installed, and a failure under CI).

mod common;

use std::time::Duration;

use common::DemoServer;
use drs_testkit::NatsServer;
use drs_transport_nats::async_nats;
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn demo_server_serves_a_nats_service_and_opens_no_default_port() {
    let Some(nats_server) = NatsServer::start_or_skip("demo_server_serves_a_nats_service") else {
        return;
    };
    let server = DemoServer::start(&["--nats", &nats_server.url(), "--service", "brokers-test"]);
    assert_eq!(
        server.listening,
        [(
            "nats".to_string(),
            format!(
                "{}/brokers-test",
                nats_server.url().trim_start_matches("nats://")
            )
        )],
        "one listener, and no default TCP port"
    );
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let nats = async_nats::connect(nats_server.url()).await.unwrap();
            let frame = json!({"action": "add", "body": {"a": 1, "b": 2}, "key": "7"});
            let reply = nats
                .request("drs.brokers-test", frame.to_string().into())
                .await
                .unwrap();
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["key"], "7");
            assert_eq!(reply["action"], "drs.response");
            assert_eq!(reply["body"], 3.0);
            // And a drs client, through the same service.
            let conn = drs_core::Client::new()
                .connect(
                    drs_transport_nats::NatsDialer::new(nats, "brokers-test"),
                    drs_protocol_json::Json,
                )
                .await
                .unwrap();
            let echoed: String = conn.call("echo", "over nats").await.unwrap();
            assert_eq!(echoed, "over nats");
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_bad_service_name_is_a_usage_error() {
    let out = std::process::Command::new(common::example_path("demo_server"))
        .args(["--nats", "nats://127.0.0.1:1", "--service", "a.*"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--service: invalid service name"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_nats_server_fails_the_start_with_its_url() {
    let store = std::env::temp_dir().join(format!("drs-brokers-test-{}", std::process::id()));
    let out = std::process::Command::new(common::example_path("demo_server"))
        .args(["--nats", "nats://127.0.0.1:1", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&store);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on nats nats://127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn demo_server_serves_a_redis_service() {
    let Some(redis_server) =
        drs_testkit::RedisServer::start_or_skip("demo_server_serves_a_redis_service")
    else {
        return;
    };
    let url = redis_server.url(2);
    let server = DemoServer::start(&["--redis", &url, "--service", "brokers-test"]);
    assert_eq!(
        server.listening,
        [(
            "redis".to_string(),
            format!("{}/brokers-test", url.trim_start_matches("redis://"))
        )],
        "one listener, and no default TCP port"
    );
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            use drs_transport_redis::redis;
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let mut r = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            let keys = drs_transport_redis::Keys::new("brokers-test");
            let reply = keys.reply_list();
            let entry = format!(
                "R{reply}\n{}",
                json!({"action": "add", "body": {"a": 1, "b": 2}, "key": "9"})
            );
            redis::cmd("RPUSH")
                .arg(keys.queue())
                .arg(entry)
                .query_async::<()>(&mut r)
                .await
                .unwrap();
            let (_, frame): (String, Vec<u8>) = redis::cmd("BLPOP")
                .arg(&reply)
                .arg(20)
                .query_async(&mut r)
                .await
                .unwrap();
            let reply: Value = serde_json::from_slice(&frame).unwrap();
            assert_eq!(reply["key"], "9");
            assert_eq!(reply["body"], 3.0);
            // And a drs client, through the same service.
            let conn = drs_core::Client::new()
                .connect(
                    drs_transport_redis::RedisDialer::new(url.clone(), "brokers-test"),
                    drs_protocol_json::Json,
                )
                .await
                .unwrap();
            let echoed: String = conn.call("echo", "over redis").await.unwrap();
            assert_eq!(echoed, "over redis");
        })
        .await
        .unwrap();
    });
}

/// Plain requests through NATS and Redis are connections of one request
/// with their own bound: 40 NATS fires and 40 Redis requests of a 20 s
/// `sleep`, against `--max-connections 4`, take none of the server's
/// connection slots, so a TCP client is served at once (they had locked
/// socket clients out for the 30 s a fire's connection lingers).
#[test]
fn plain_requests_through_brokers_never_lock_out_socket_clients() {
    let Some(nats_server) = NatsServer::start_or_skip("plain_requests_through_brokers") else {
        return;
    };
    let Some(redis_server) =
        drs_testkit::RedisServer::start_or_skip("plain_requests_through_brokers")
    else {
        return;
    };
    let url = redis_server.url(3);
    let server = DemoServer::start(&[
        "--max-connections",
        "4",
        "--tcp",
        "127.0.0.1:0",
        "--nats",
        &nats_server.url(),
        "--redis",
        &url,
        "--service",
        "lockout",
    ]);
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let nats = async_nats::connect(nats_server.url()).await.unwrap();
            let slow = json!({"action": "sleep", "body": {"ms": 20000}});
            for _ in 0..40 {
                nats.publish("drs.lockout", slow.to_string().into())
                    .await
                    .unwrap();
            }
            nats.flush().await.unwrap();
            use drs_transport_redis::redis;
            let mut r = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let keys = drs_transport_redis::Keys::new("lockout");
            for i in 0..40 {
                let entry = format!(
                    "R{}\n{}",
                    keys.reply_list(),
                    json!({"action": "sleep", "body": {"ms": 20000}, "key": i.to_string()})
                );
                redis::cmd("RPUSH")
                    .arg(keys.queue())
                    .arg(entry)
                    .query_async::<()>(&mut r)
                    .await
                    .unwrap();
            }
            // Taken by the worker: the queue empties.
            loop {
                let queued: i64 = redis::cmd("LLEN")
                    .arg(keys.queue())
                    .query_async(&mut r)
                    .await
                    .unwrap();
                if queued == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // A NATS request is still served, and so are socket clients.
            let frame = json!({"action": "add", "body": {"a": 1, "b": 2}, "key": "7"});
            let reply = nats
                .request("drs.lockout", frame.to_string().into())
                .await
                .unwrap();
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["body"], 3.0);
            for _ in 0..3 {
                let conn = drs_core::Client::new()
                    .connect(
                        drs_transport_tcp::TcpDialer::new(server.addr(0)),
                        drs_protocol_json::Json,
                    )
                    .await
                    .unwrap();
                let sum: f64 = conn
                    .call("add", json!({"a": 2, "b": 2}))
                    .await
                    .expect("a socket client is served");
                assert_eq!(sum, 4.0);
            }
        })
        .await
        .unwrap();
    });
}
