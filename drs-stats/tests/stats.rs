//! Statistics after a scripted load are exact: every command counted once,
//! by outcome, with its latency; connections and bytes; `drs.stats` over
//! the wire.

use std::{future::IntoFuture, time::Duration};

use drs_core::{memory, Body, Client, HandlerError, HandlerResult, Observer, Server};
use drs_protocol_json::Json;
use drs_stats::{Stats, OTHER};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

fn demo() -> Server {
    let server = Server::new();
    Stats::install(&server);
    server.on("double", |x: i64| async move { x * 2 });
    server.on("fail", || async { Err::<(), _>(HandlerError::new("no")) });
    server.on("boom", |_: Body| async move {
        if true {
            std::panic::resume_unwind(Box::new("boom"));
        }
    });
    server.on("sleep", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        HandlerResult::Ok(ms)
    });
    server
}

#[tokio::test]
async fn counts_after_a_scripted_load_are_exact() {
    let server = demo();
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    let conn = within(Client::new().connect(dialer, Json)).await.unwrap();

    for i in 0..40 {
        within(conn.call::<i64>("double", i).into_future())
            .await
            .unwrap();
    }
    for _ in 0..3 {
        assert!(within(conn.call::<()>("fail", ()).into_future())
            .await
            .unwrap_err()
            .is_remote());
    }
    for _ in 0..2 {
        assert!(within(conn.call::<()>("boom", ()).into_future())
            .await
            .unwrap_err()
            .is_exception());
    }
    for _ in 0..5 {
        assert!(within(conn.call::<()>("nobody", ()).into_future())
            .await
            .unwrap_err()
            .is_remote());
        assert!(within(
            conn.call::<()>(&format!("made.up.{}", rand_ish()), ())
                .into_future()
        )
        .await
        .unwrap_err()
        .is_remote());
    }
    // A fire is counted too (when it ends).
    conn.fire("double", 1).await.unwrap();
    // Two calls cancelled (their futures dropped: drs.cancel), one running.
    let running = tokio::spawn(conn.call::<u64>("sleep", 60_000).into_future());
    for _ in 0..2 {
        let call = conn.call::<u64>("sleep", 60_000).into_future();
        let _ = tokio::time::timeout(Duration::from_millis(50), call).await;
    }
    let stats = Stats::get(&server).expect("installed");
    // Wait for the fire and the cancels to be counted.
    within(async {
        while stats.of("double").unwrap().calls() < 41
            || stats.of("sleep").map_or(0, |s| {
                s.cancelled.load(std::sync::atomic::Ordering::Relaxed)
            }) < 2
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let snapshot: Value = within(conn.call::<Value>("drs.stats", ()).into_future())
        .await
        .unwrap();
    let a = &snapshot["actions"];
    assert_eq!(a["double"]["calls"], 41, "{snapshot:#}");
    assert_eq!(a["double"]["ok"], 41);
    assert_eq!(a["double"]["errors"], 0);
    assert_eq!(a["fail"]["errors"], 3);
    assert_eq!(a["fail"]["calls"], 3);
    assert_eq!(a["boom"]["exceptions"], 2);
    assert_eq!(a["sleep"]["cancelled"], 2);
    assert_eq!(a["sleep"]["in_flight"], 1);
    assert_eq!(
        a["sleep"]["calls"], 2,
        "a running call is not counted until it ends"
    );
    // Unknown actions share one entry: a peer cannot grow the table.
    assert_eq!(a[OTHER]["errors"], 10);
    assert!(a.get("nobody").is_none());
    // The drs.stats call being answered is not counted until it ends.
    assert_eq!(a["drs.stats"]["calls"], 0);
    // Latencies: the histogram holds every ended call.
    let double = stats.of("double").unwrap();
    assert_eq!(double.latency.count(), 41);
    assert!(a["double"]["p50_ms"].as_f64().unwrap() <= a["double"]["max_ms"].as_f64().unwrap());
    assert!(
        a["sleep"]["p50_ms"].as_f64().unwrap() >= 50.0,
        "cancelled calls ran ≥ 50 ms"
    );

    let c = &snapshot["connections"];
    assert_eq!(
        (c["live"].as_u64(), c["accepted"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(c["by_transport"]["memory"], 1);
    assert_eq!(c["by_protocol"]["json"], 1);
    let io = &snapshot["io"];
    // Frames in: 40 + 3 + 2 + 10 calls, 1 fire, 3 sleeps, 2 cancels, and
    // the drs.stats call, which a connection publishes with its batch of
    // frames (after this snapshot, or before).
    let frames_in = io["frames_in"].as_u64().unwrap();
    assert!((61..=62).contains(&frames_in), "{frames_in}");
    assert!(io["bytes_in"].as_u64().unwrap() > 0 && io["frames_out"].as_u64().unwrap() >= 57);

    conn.close();
    within(conn.closed()).await;
    assert!(within(running).await.unwrap().unwrap_err().is_closed());
    within(async {
        while server.connection_count() > 0 || stats.disconnects().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        stats.disconnects().values().sum::<u64>(),
        1,
        "{:?}",
        stats.disconnects()
    );
    // The call still running when the connection closed was stopped.
    let sleep = stats.of("sleep").unwrap();
    assert_eq!(
        (
            sleep.cancelled.load(std::sync::atomic::Ordering::Relaxed),
            sleep.calls()
        ),
        (3, 3)
    );
    // The ended connection's bytes stay in the totals.
    assert_eq!(stats.io([]).frames_in, 62);
}

fn rand_ish() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[tokio::test]
async fn without_stats_nothing_is_counted_or_served() {
    let server = Server::new();
    server.on("double", |x: i64| async move { x * 2 });
    assert!(Stats::get(&server).is_none());
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    let conn = within(Client::new().connect(dialer, Json)).await.unwrap();
    assert_eq!(
        within(conn.call::<i64>("double", 2).into_future())
            .await
            .unwrap(),
        4
    );
    let e = within(conn.call::<Value>("drs.stats", ()).into_future())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No handlers for drs.stats"), "{e}");
}

#[tokio::test]
async fn install_is_idempotent_and_sections_come_in_any_order() {
    let server = Server::new();
    drs_stats::section(&server, "early", || json!(1));
    let stats = Stats::install(&server);
    let again = Stats::install(&server);
    drs_stats::section(&server, "late", || json!({"n": 2}));
    drs_stats::section(&server, "early", || json!("replaced"));
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    let conn = within(Client::new().connect(dialer, Json)).await.unwrap();
    let wire: Value = within(conn.call::<Value>("drs.stats", ()).into_future())
        .await
        .unwrap();
    // The same statistics: one observer, one drs.stats.
    assert_eq!((stats.accepted(), again.accepted()), (1, 1));
    assert_eq!(wire["late"], json!({"n": 2}));
    assert_eq!(
        wire["actions"]["drs.stats"]["calls"],
        json!(0),
        "counted when it ends"
    );
    conn.close();
    let snapshot = stats.snapshot(&server);
    assert_eq!(snapshot["early"], json!("replaced"));
    assert_eq!(snapshot["late"], json!({"n": 2}));
    // A second observer is refused: the statistics stay the server's.
    struct Other;
    impl Observer for Other {
        fn action(&self, _: &str, _: bool) -> std::sync::Arc<dyn drs_core::ActionObserver> {
            unreachable!("never installed")
        }
    }
    assert!(!server.observe(Other));
}

/// The server's name and listeners, as the dashboard's header shows them.
#[tokio::test]
async fn a_server_names_itself_and_its_listeners() {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let server = Server::new();
        drs_stats::Stats::install(&server);
        let info = drs_stats::ServerInfo::install(&server, "orders");
        info.listening("tcp://127.0.0.1:1");
        info.listening("ws://127.0.0.1:2");
        let snapshot = drs_stats::Stats::get(&server).unwrap().snapshot(&server);
        assert_eq!(
            snapshot["server"],
            json!({"name": "orders", "listeners": ["tcp://127.0.0.1:1", "ws://127.0.0.1:2"]})
        );
    })
    .await
    .unwrap();
}
