//! Pools: least-busy choice, cast, a broken member, a restarting peer.

mod common;

use std::{
    collections::HashSet,
    future::IntoFuture,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{bounded, fast, listen_tcp, until};
use drs_core::{Conn, ConnConfig, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{Pool, DEFAULT_POOL_SIZE};
use drs_transport_tcp::TcpDialer;
use tokio::sync::watch;

/// A server whose `park` records the connection it ran on and answers
/// when released; `seen` records the connection of every `seen` fire.
struct Parking {
    server: Server,
    parked: Arc<Mutex<Vec<u64>>>,
    seen: Arc<Mutex<Vec<u64>>>,
    release: watch::Sender<bool>,
}

fn parking() -> Parking {
    let server = Server::new();
    let parked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (release, released) = watch::channel(false);
    let p = parked.clone();
    server.on("park", move |conn: Conn| {
        p.lock().unwrap().push(conn.id());
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            HandlerResult::Ok(conn.id())
        }
    });
    let s = seen.clone();
    server.on("seen", move |conn: Conn| {
        s.lock().unwrap().push(conn.id());
        async { HandlerResult::Ok(()) }
    });
    server.on("echo", |n: u64| async move { HandlerResult::Ok(n) });
    Parking {
        server,
        parked,
        seen,
        release,
    }
}

fn long_calls() -> ConnConfig {
    ConnConfig::default().call_timeout(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_least_busy_member_and_casts_spread() {
    bounded(async {
        let p = parking();
        let addr = listen_tcp(&p.server, "127.0.0.1:0").await;
        let pool = Pool::builder(TcpDialer::new(addr), Json)
            .config(long_calls())
            .connect()
            .await
            .expect("connect");
        assert_eq!(pool.members().len(), DEFAULT_POOL_SIZE);
        assert_eq!(pool.connected(), DEFAULT_POOL_SIZE);

        let mut calls = Vec::new();
        for i in 0..DEFAULT_POOL_SIZE {
            calls.push(tokio::spawn(pool.call::<u64, _>("park", ()).into_future()));
            until("the call is parked", || {
                p.parked.lock().unwrap().len() == i + 1
            })
            .await;
        }
        let members: HashSet<u64> = p.parked.lock().unwrap().iter().copied().collect();
        assert_eq!(members.len(), DEFAULT_POOL_SIZE, "one call per member");
        p.release.send_replace(true);
        for c in calls {
            c.await.expect("join").expect("answered");
        }

        // With nothing in flight, casts take the members in turn.
        for _ in 0..2 * DEFAULT_POOL_SIZE {
            pool.cast("seen", ()).await.expect("cast");
        }
        until("every cast arrived", || {
            p.seen.lock().unwrap().len() == 2 * DEFAULT_POOL_SIZE
        })
        .await;
        let used: HashSet<u64> = p.seen.lock().unwrap().iter().copied().collect();
        assert_eq!(used, members, "casts went through every member");
        pool.close();
        p.server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_member_reconnects_without_failing_calls_on_the_others() {
    bounded(async {
        let p = parking();
        let addr = listen_tcp(&p.server, "127.0.0.1:0").await;
        let pool = Pool::builder(TcpDialer::new(addr), Json)
            .size(3)
            .policy(fast())
            .config(long_calls())
            .connect()
            .await
            .expect("connect");
        let mut calls = Vec::new();
        for i in 0..3 {
            calls.push(tokio::spawn(pool.call::<u64, _>("park", ()).into_future()));
            until("parked", || p.parked.lock().unwrap().len() == i + 1).await;
        }
        let broken = p.parked.lock().unwrap()[1];
        p.server.connection(broken).expect("live").close();
        let lost = calls.remove(1).await.expect("join");
        assert!(matches!(lost, Err(Error::Closed)), "{lost:?}");
        until("the member is back", || pool.connected() == 3).await;
        assert!(
            calls.iter().all(|c| !c.is_finished()),
            "the others still wait"
        );
        p.release.send_replace(true);
        for c in calls {
            let conn = c.await.expect("join").expect("answered on its own member");
            assert_ne!(conn, broken);
        }
        pool.close();
        p.server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_peer_restarts_recovers() {
    bounded(async {
        let p = parking();
        let addr = listen_tcp(&p.server, "127.0.0.1:0").await;
        let pool = Pool::builder(TcpDialer::new(addr.clone()), Json)
            .policy(fast())
            .config(long_calls())
            .connect()
            .await
            .expect("connect");
        let n: u64 = pool.call("echo", 1).await.expect("echo");
        assert_eq!(n, 1);
        p.server.shutdown(Duration::ZERO).await;
        until("every member noticed", || pool.connected() == 0).await;
        // Calls made while the peer is down wait for it.
        let waiting: Vec<_> = (0..8u64)
            .map(|i| tokio::spawn(pool.call::<u64, _>("echo", i).into_future()))
            .collect();
        let restarted = parking();
        listen_tcp(&restarted.server, &addr).await;
        for (i, call) in waiting.into_iter().enumerate() {
            assert_eq!(call.await.expect("join").expect("answered"), i as u64);
        }
        until("every member is back", || {
            pool.connected() == DEFAULT_POOL_SIZE
        })
        .await;
        pool.close();
        restarted.server.shutdown(Duration::ZERO).await;
    })
    .await;
}
