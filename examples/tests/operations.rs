//! demo_server's operations flags, as a process: `--crontab` runs its
//! commands through the server (a bad line skipped), `--watch` fires
//! `file_changed`, which the demo broadcasts; `drs.stats` on a listener.

mod common;

use std::{future::IntoFuture, time::Duration};

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

    let stats: Value = within(conn.call::<Value>("drs.stats", ()).into_future())
        .await
        .unwrap();
    assert!(
        stats["actions"]["shout"]["calls"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(stats["actions"]["file_changed"]["ok"].as_u64().unwrap() >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}
