//! Fault injection over real sockets on 127.0.0.1: a server killed and
//! restarted mid-traffic, a slow consumer among many receivers, a flood of
//! bad frames beside well-behaved clients.

mod common;

use std::{
    collections::HashSet,
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{bounded, listen_tcp, until};
use drs_core::{CloseReason, ConnConfig, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{ReconnectPolicy, Session};
use drs_testkit::TestProcess;
use drs_transport_tcp::TcpDialer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Set in the environment of the child server process.
const CHILD: &str = "DRS_SESSION_FAULTS_CHILD";

/// Not a test: the entry point of the server process that
/// `a_killed_server` starts (this test binary, run again with [`CHILD`]
/// set). Without it, returns at once.
#[test]
fn child_server_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (addr, log) = spec.split_once(' ').expect("ADDR LOG");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open the execution log"),
        ));
        let server = Server::new();
        // Records each execution (one write of one line, appended) before
        // answering.
        server.on("exec", move |id: u64| {
            let written = writeln!(log.lock().unwrap(), "{id}");
            async move {
                written?;
                HandlerResult::Ok(id)
            }
        });
        let addr = listen_tcp(&server, addr).await;
        // The parent reads this line from our standard output.
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {addr}").expect("write");
        out.flush().expect("flush");
        drop(out);
        std::future::pending::<()>().await;
    });
}

/// Starts the child server on `addr`; returns it and its address.
async fn start_child(addr: &str, log: &str) -> (TestProcess, String) {
    let spec = format!("{addr} {log}");
    let mut child = TestProcess::spawn("child_server_process", &[(CHILD, &spec)]);
    let addr = child.wait_for("ready ").await;
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarted_on_its_address_loses_no_session_and_runs_no_call_twice() {
    bounded(async {
        let log = std::env::temp_dir()
            .join(format!("drs-session-exec-{}.log", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&log);
        let (mut child, addr) = start_child("127.0.0.1:0", &log).await;
        let timeout = Duration::from_secs(3);
        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .policy(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(100)),
            )
            .config(ConnConfig::default().call_timeout(timeout))
            .connect()
            .await
            .expect("connect");

        let next_id = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (session, next_id, answered, stop) =
                    (session.clone(), next_id.clone(), answered.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut ok = Vec::new();
                    let mut failed = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let id = next_id.fetch_add(1, Ordering::SeqCst);
                        let started = Instant::now();
                        let result = session.call::<u64, _>("exec", id).await;
                        let took = started.elapsed();
                        assert!(
                            took < timeout + Duration::from_secs(2),
                            "a call hung for {took:?} past its {timeout:?} timeout"
                        );
                        match result {
                            Ok(back) => {
                                assert_eq!(back, id);
                                ok.push(id);
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(Error::Closed | Error::Timeout(_)) => failed += 1,
                            Err(e) => panic!("unexpected error {e:?}"),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();

        until("traffic flows", || answered.load(Ordering::SeqCst) >= 200).await;
        child.kill().await;
        let before = answered.load(Ordering::SeqCst);
        let (mut restarted, again) = start_child(&addr, &log).await;
        assert_eq!(again, addr);
        until("traffic flows again", || {
            answered.load(Ordering::SeqCst) >= before + 200
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        let mut ok = Vec::new();
        let mut failed = 0;
        for w in workers {
            let (o, f) = w.await.expect("a worker");
            ok.extend(o);
            failed += f;
        }
        restarted.kill().await;

        let text = std::fs::read_to_string(&log).expect("the execution log");
        let mut executed = HashSet::new();
        for line in text.lines() {
            let id: u64 = line.parse().expect("one id per line");
            assert!(executed.insert(id), "call {id} ran twice");
        }
        for id in &ok {
            assert!(executed.contains(id), "answered call {id} is not in the log");
        }
        eprintln!(
            "killed and restarted: {} calls answered, {failed} failed with the connection, {} executed",
            ok.len(),
            executed.len()
        );
        let _ = std::fs::remove_file(&log);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_consumer_among_100_receivers_is_cut_off_and_the_others_get_everything() {
    bounded(async {
        let server = Server::with_config(
            ConnConfig::default()
                .max_outbound(64 * 1024)
                .write_stall_timeout(None),
        );
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let received: Arc<Vec<AtomicU64>> = Arc::new((0..99).map(|_| AtomicU64::new(0)).collect());
        let mut readers = Vec::new();
        for i in 0..99 {
            let s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let received = received.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                let mut next = 0u64;
                while let Ok(Some(line)) = lines.next_line().await {
                    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
                    if v["action"] == "end" {
                        return next;
                    }
                    assert_eq!(v["body"]["n"], next, "receiver {i} lost or reordered");
                    next += 1;
                    received[i].store(next, Ordering::SeqCst);
                }
                panic!("receiver {i} was disconnected");
            }));
        }
        // The slow one: a tiny receive buffer, and it never reads.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let slow = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let slow_addr = slow.local_addr().expect("addr").to_string();
        until("100 connections", || server.connection_count() == 100).await;
        let slow_conn = server
            .connections()
            .into_iter()
            .find(|c| c.peer_addr() == Some(slow_addr.as_str()))
            .expect("the slow connection");

        let filler = "x".repeat(1000);
        let mut sent = 0u64;
        while !slow_conn.is_closed() {
            assert!(sent < 200_000, "the slow consumer was never cut off");
            for _ in 0..50 {
                let n = server
                    .broadcast("news", serde_json::json!({"n": sent, "pad": filler}))
                    .expect("broadcast");
                assert!(n >= 99, "reached only {n}");
                sent += 1;
            }
            // Pace by the readers (never by time): all have the batch.
            until("the readers have the batch", || {
                received.iter().all(|r| r.load(Ordering::SeqCst) == sent)
            })
            .await;
        }
        assert!(matches!(
            slow_conn.close_reason(),
            Some(CloseReason::TooSlow)
        ));
        server.broadcast("end", ()).expect("end");
        for r in readers {
            assert_eq!(r.await.expect("reader"), sent);
        }
        drop(slow);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_frames_leaves_well_behaved_clients_served() {
    bounded(async {
        let server = Server::with_config(
            ConnConfig::default()
                .max_frame_len(64 * 1024)
                .frame_timeout(Some(Duration::from_millis(300))),
        );
        server.on("echo", |n: u64| async move { HandlerResult::Ok(n) });
        let addr = listen_tcp(&server, "127.0.0.1:0").await;

        // 60 attackers: garbage lines, an oversize frame, a half-written one.
        let mut attackers = Vec::new();
        for i in 0..60 {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            attackers.push(tokio::spawn(async move {
                let started = Instant::now();
                // Until the server hangs up: writes fail, or (for the
                // half-written frame) the read side ends.
                let _ = match i % 3 {
                    0 => loop {
                        if let Err(e) = s
                            .write_all(b"this is not a command\n{\"action\":\n[1,2,3]\n")
                            .await
                        {
                            break Err(e);
                        }
                    },
                    1 => {
                        let chunk = vec![b'x'; 16 * 1024];
                        let mut r = s.write_all(b"{\"action\":\"echo\",\"body\":\"").await;
                        while r.is_ok() {
                            r = s.write_all(&chunk).await;
                        }
                        r
                    }
                    _ => {
                        let r = s.write_all(b"{\"key\":\"1\",\"action\":\"ec").await;
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                        r
                    }
                };
                started.elapsed()
            }));
        }
        // Meanwhile, well-behaved sessions.
        let mut good = Vec::new();
        for _ in 0..4 {
            let session = Session::builder(TcpDialer::new(addr.clone()), Json)
                .connect()
                .await
                .expect("connect");
            good.push(tokio::spawn(async move {
                for n in 0..200u64 {
                    let back: u64 = session.call("echo", n).await.expect("served");
                    assert_eq!(back, n);
                }
                session
            }));
        }
        let sessions: Vec<Session> = futures::future::join_all(good)
            .await
            .into_iter()
            .map(|s| s.expect("good client"))
            .collect();
        for a in attackers {
            let took = a.await.expect("attacker");
            assert!(
                took < Duration::from_secs(20),
                "an attacker was held {took:?}"
            );
        }
        until("only the good clients remain", || {
            server.connection_count() == 4
        })
        .await;
        for s in sessions {
            assert!(s.is_connected());
        }
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}
