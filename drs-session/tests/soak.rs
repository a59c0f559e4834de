//! The soak test: thousands of sessions and millions of calls over
//! minutes, with forced disconnects; memory must not grow with time.
//! Ignored by default; run it with
//!
//! ```text
//! cargo test --release -p drsrpc-session --test soak -- --ignored --nocapture
//! ```
//!
//! `DRS_SOAK_SECS` (default 120) and `DRS_SOAK_SESSIONS` (default 2000)
//! size it; each session is one TCP connection, so the process needs
//! about twice as many file descriptors (`ulimit -n`).

// It reports as it goes: its output is the point.
#![allow(clippy::print_stdout)]

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use drs_core::{ConnConfig, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{ReconnectPolicy, Session, SessionEvent};
use drs_transport_tcp::TcpDialer;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "minutes long; run with --ignored soak"]
async fn soak() {
    let secs = env("DRS_SOAK_SECS", 120);
    let sessions = env("DRS_SOAK_SESSIONS", 2000) as usize;
    let limit = Duration::from_secs(secs + 120);
    tokio::time::timeout(limit, run(Duration::from_secs(secs), sessions))
        .await
        .expect("the soak test ends on time");
}

async fn run(length: Duration, sessions: usize) {
    let server = Server::with_config(ConnConfig::default());
    server.on("echo", |n: u64| async move { HandlerResult::Ok(n) });
    let listener = drs_transport_tcp::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = server.listen(listener, Json).expect("listen");
    let stats = Arc::new(Stats::default());

    let mut all = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let s = stats.clone();
        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .policy(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)))
            .on_event(move |e| {
                if matches!(e, SessionEvent::Connected { .. }) {
                    s.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            })
            .connect()
            .await
            .expect("connect");
        all.push(session);
    }
    stats
        .reconnects
        .fetch_sub(sessions as u64, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = all
        .iter()
        .map(|session| {
            let (session, stats, stop) = (session.clone(), stats.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match session.call::<u64, _>("echo", n).await {
                        Ok(back) => {
                            assert_eq!(back, n);
                            stats.calls.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();

    // Forced disconnects: every 250 ms the server drops 1% of its peers.
    let disrupter = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let conns = server.connections();
                for conn in conns.iter().step_by(100) {
                    conn.close();
                }
            }
        })
    };

    let started = Instant::now();
    let report = |label: &str| {
        let rss = rss_kib();
        println!(
            "soak {label:>6} {:>6.1}s: {} calls, {} errors, {} reconnects, {} connections, RSS {} KiB",
            started.elapsed().as_secs_f64(),
            stats.calls.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
            stats.reconnects.load(Ordering::Relaxed),
            server.connection_count(),
            rss
        );
        rss
    };
    let start_rss = report("start");
    tokio::time::sleep(length / 2).await;
    let middle_rss = report("middle");
    tokio::time::sleep(length / 2).await;
    let end_rss = report("end");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    disrupter.await.expect("disrupter");
    assert!(stats.calls.load(Ordering::Relaxed) > 0);
    assert!(
        stats.reconnects.load(Ordering::Relaxed) > 0,
        "no forced disconnect happened"
    );
    assert!(
        end_rss <= middle_rss + middle_rss / 4 + 16 * 1024,
        "RSS grew from {middle_rss} KiB (middle) to {end_rss} KiB (end); it started at {start_rss} KiB"
    );
    for s in &all {
        s.close();
    }
    server.shutdown(Duration::from_secs(1)).await;
}
