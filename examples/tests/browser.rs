//! A real browser (headless Chromium) loads the example page from a drs
//! WebSocket listener and talks to the server through the JavaScript
//! client package (`clients/js`, served at `/drs-client.js`): calls, an
//! exception, the server calling the page back, a broadcast, a stream with
//! credit, a cancel through an AbortSignal, publish and subscribe.
//!
//! CI installs Chromium (`.ci/run`); where it is missing and `CI` is not
//! set, this test says so and passes without running.

mod common;

use std::time::Duration;

use drs_core::{HandlerResult, Server};
use drs_protocol_json::Json;
use drs_transport_ws::WsListener;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_page_works_in_a_real_browser() {
    let Some(browser) = common::chromium("the_example_page_works_in_a_real_browser") else {
        return;
    };
    let server = Server::new();
    examples::demo_actions(&server);
    // Pub/sub, as demo_server has it.
    let _broker = drs_broker::Broker::attach(&server, drs_broker::BrokerConfig::default())
        .expect("an in-memory broker");
    let (tx, mut reports) = tokio::sync::mpsc::channel::<Value>(1);
    server.on("selftest.report", move |report: Value| {
        let tx = tx.clone();
        async move {
            tx.send(report).await.ok();
            HandlerResult::Ok(())
        }
    });
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = progress.clone();
    server.on("selftest.progress", move |step: Value| {
        seen.lock().unwrap().push(step);
        async { HandlerResult::Ok(()) }
    });
    let listener = examples::with_browser_page(WsListener::bind("127.0.0.1:0").await.unwrap());
    let addr = server.listen(listener, Json).unwrap();

    let profile = std::env::temp_dir().join(format!("drs-chromium-{}", std::process::id()));
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{addr}/?selftest"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");

    let report = tokio::time::timeout(Duration::from_secs(60), reports.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the page did not report within 60 s; its checks so far: {:?}",
                progress.lock().unwrap()
            )
        })
        .expect("report");
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);

    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 8, "{report:#}");
    for r in results {
        assert_eq!(r["ok"], true, "{}: {}", r["name"], r["error"]);
    }
    assert!(
        report["userAgent"].as_str().unwrap().contains("Chrome"),
        "{report}"
    );
}
