//! Clients that stay connected: a pool of sessions keeps calling through a
//! server restart; calls lost with the connection fail at once and are
//! never run twice.
//!
//! ```text
//! cargo run --example resilient
//! ```
//!
//! It starts a server in-process on a free port, a pool of 4 sessions
//! with 16 tasks calling `record` (which notes each call's id), stops the
//! server mid-traffic, starts another on the same address, and checks
//! that every answered id was recorded once and no id was run twice.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use drs_core::{ConnConfig, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{Pool, ReconnectPolicy, SessionEvent};
use drs_transport_tcp::{TcpDialer, TcpListener};
use examples::init_tracing;

/// How many times each call id ran, over both servers.
type Runs = Arc<Mutex<HashMap<u64, u32>>>;

async fn start(addr: &str, runs: &Runs) -> std::io::Result<(Server, String)> {
    let server = Server::new();
    let runs = runs.clone();
    server.on("record", move |id: u64| {
        *runs.lock().unwrap().entry(id).or_default() += 1;
        async move { HandlerResult::Ok(id) }
    });
    let addr = server.listen(TcpListener::bind(addr).await?, Json)?;
    Ok((server, addr))
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("warn");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resilient: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let runs = Runs::default();
    let (server, addr) = start("127.0.0.1:0", &runs).await?;
    println!("server on {addr}");
    let reconnects = Arc::new(AtomicU64::new(0));
    let r = reconnects.clone();
    let pool = Pool::builder(TcpDialer::new(&addr), Json)
        .size(4)
        .policy(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)))
        .config(ConnConfig::default().call_timeout(Duration::from_secs(5)))
        .on_event(move |member, event| {
            if let SessionEvent::Connected { .. } = event {
                r.fetch_add(1, Ordering::Relaxed);
            }
            if !matches!(event, SessionEvent::Reconnecting { .. }) {
                println!("  member {member}: {event:?}");
            }
        })
        .connect()
        .await?;

    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (pool, next, answered, lost, stop) = (
                pool.clone(),
                next.clone(),
                answered.clone(),
                lost.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    match pool.call::<u64, _>("record", id).await {
                        Ok(back) => {
                            assert_eq!(back, id);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        // Lost with its connection: maybe run, never re-sent.
                        Err(Error::Closed) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
        })
        .collect();

    let wait_for = |n: u64| {
        let answered = answered.clone();
        async move {
            while answered.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait_for(2_000)).await?;
    println!(
        "{} calls answered; stopping the server",
        answered.load(Ordering::Relaxed)
    );
    server.shutdown(Duration::ZERO).await;
    let restarted = loop {
        match start(&addr, &runs).await {
            Ok((server, _)) => break server,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    println!("restarted on {addr}");
    let target = answered.load(Ordering::Relaxed) + 2_000;
    tokio::time::timeout(Duration::from_secs(30), wait_for(target)).await?;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await??;
    }

    let (run, twice) = {
        let runs = runs.lock().unwrap();
        (runs.len(), runs.values().filter(|n| **n > 1).count())
    };
    println!(
        "{} answered, {} lost with a connection, {} run, {} run twice, {} reconnects",
        answered.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        run,
        twice,
        reconnects.load(Ordering::Relaxed) - 4
    );
    if twice > 0 {
        return Err("a call ran twice".into());
    }
    pool.close();
    restarted.shutdown(Duration::ZERO).await;
    Ok(())
}
