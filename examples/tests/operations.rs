//! demo_server's operations flags, as a process: `--crontab` runs its
//! commands through the server (a bad line skipped), `--watch` fires
//! `file_changed`, which the demo broadcasts; `drs.stats` on a listener.

mod common;

use std::time::Duration;

use common::DemoServer;
use drs_core::{Client, HandlerResult, Msg};
use drs_protocol_json::Json;
use drs_transport_tcp::TcpDialer;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crontab_and_watch_run_through_the_server() {
    let dir = std::env::temp_dir().join(format!("drs-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let watched = dir.join("inbox");
    std::fs::create_dir_all(&watched).unwrap();
    let crontab = dir.join("crontab");
    std::fs::write(
        &crontab,
        "# every second: a broadcast\n\
         * * * * * * | {\"action\": \"shout\", \"body\": \"from cron\"}\n\
         this line is wrong\n",
    )
    .unwrap();
    let server = DemoServer::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--crontab",
        crontab.to_str().unwrap(),
        "--watch",
        watched.to_str().unwrap(),
    ]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
    let heard = move |msg: Msg, body: Value| {
        let _ = tx.send((msg.action().to_string(), body));
        async { HandlerResult::Ok(()) }
    };
    let client = Client::new()
        .on("shout", heard.clone())
        .on("file_changed", heard);
    let conn = within(client.connect(TcpDialer::new(server.addr(0)), Json))
        .await
        .unwrap();
    let (action, body) = within(rx.recv()).await.unwrap();
    assert_eq!((action.as_str(), body), ("shout", Value::from("from cron")));

    std::fs::write(watched.join("new.txt"), "hello").unwrap();
    let changed = within(async {
        loop {
            let (action, body) = rx.recv().await.expect("open");
            if action == "file_changed" {
                return body;
            }
        }
    })
    .await;
    assert!(
        changed["path"].as_str().unwrap().ends_with("new.txt"),
        "{changed}"
    );

    // The server counts a call when its reply comes back, which can be
    // after the handler above has told us: ask until the count shows it.
    let count = |stats: &Value, action: &str, what: &str| {
        stats["actions"][action][what].as_u64().unwrap_or(0)
    };
    let stats: Value = within(async {
        loop {
            let stats: Value = conn.call("drs.stats", ()).await.unwrap();
            if count(&stats, "file_changed", "ok") >= 1 {
                return stats;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(count(&stats, "shout", "calls") >= 1, "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}
