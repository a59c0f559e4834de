//! Three worker processes behind one service on a real nats-server: calls
//! spread over all three; one killed with SIGKILL mid-load loses no call
//! (each is answered or fails as closed, none hangs past its timeout) and
//! runs none twice (an execution log written by the workers says so).
//!
//! The workers are this test binary run again with `DRS_NATS_WORKER` set.

use drs_transport_nats::LinkSettings;
use std::{
    collections::{HashMap, HashSet},
    future::IntoFuture,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use drs_core::{ConnConfig, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{Pool, ReconnectPolicy};
use drs_testkit::{NatsServer, TestProcess};
use drs_transport_nats::{NatsConfig, NatsDialer, NatsListener};

const WORKER: &str = "DRS_NATS_WORKER";
const SERVICE: &str = "pool";

fn config() -> NatsConfig {
    NatsConfig::default().heartbeat(Duration::from_millis(200))
}

/// A worker process: serves `work` (which logs `PID ID` to the execution
/// log, then answers its pid), until killed or its parent goes.
#[test]
fn worker_process() {
    let Ok(spec) = std::env::var(WORKER) else {
        return;
    };
    let (url, log) = spec.split_once(' ').expect("URL LOG");
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
        let pid = std::process::id();
        let server = Server::new();
        server.on("work", move |id: u64| {
            // One write of the whole line: lines of three processes
            // appended to one file do not interleave.
            let line = format!("{pid} {id}\n");
            let written = log.lock().unwrap().write_all(line.as_bytes());
            async move {
                written?;
                // Work takes a moment, so that calls are in flight when a
                // worker dies.
                tokio::time::sleep(Duration::from_millis(2)).await;
                HandlerResult::Ok(pid)
            }
        });
        let nats = async_nats::connect(url).await.expect("connect to NATS");
        let listener = NatsListener::bind_with(&nats, SERVICE, config())
            .await
            .expect("bind");
        server.listen(listener, Json).expect("listen");
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready").expect("write");
        out.flush().expect("flush");
        drop(out);
        // Ends with the parent: its end of our stdin closes.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await
        .ok();
    });
}

async fn start_worker(url: &str, log: &str) -> TestProcess {
    let spec = format!("{url} {log}");
    let mut worker = TestProcess::spawn("worker_process", &[(WORKER, &spec)]);
    worker.wait_for("ready").await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_calls_and_a_killed_one_loses_none_and_repeats_none() {
    let Some(nats_server) = NatsServer::start_or_skip("three_workers_share_calls") else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let url = nats_server.url();
        let log = std::env::temp_dir()
            .join(format!("drs-nats-exec-{}.log", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let _ = std::fs::remove_file(&log);
        let mut workers = Vec::new();
        for _ in 0..3 {
            workers.push(start_worker(&url, &log).await);
        }
        let pids: HashSet<u32> = workers.iter().filter_map(|w| w.id()).collect();
        let nats = async_nats::connect(&url).await.unwrap();
        let timeout = Duration::from_secs(5);
        // 48 sessions: each lands on a worker the queue group picks.
        let pool = Pool::builder(NatsDialer::new(nats, SERVICE).config(config()), Json)
            .size(48)
            .config(ConnConfig::default().call_timeout(timeout))
            .policy(
                ReconnectPolicy::default()
                    .initial_delay(Duration::from_millis(10))
                    .max_delay(Duration::from_millis(100)),
            )
            .connect()
            .await
            .unwrap();

        // Spread: 300 calls, answered by all three.
        let mut by_pid: HashMap<u32, usize> = HashMap::new();
        let calls = (0..300u64).map(|id| pool.call::<u32, _>("work", id).into_future());
        for pid in futures::future::join_all(calls).await {
            *by_pid.entry(pid.unwrap()).or_default() += 1;
        }
        assert_eq!(
            by_pid.keys().copied().collect::<HashSet<_>>(),
            pids,
            "every worker served: {by_pid:?}"
        );

        // Load, and one worker killed in the middle of it.
        let next = Arc::new(AtomicU64::new(1000));
        let answered = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (pool, next, answered) = (pool.clone(), next.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    loop {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        if id >= 3000 {
                            return results;
                        }
                        let r = pool.call::<u32, _>("work", id).await;
                        answered.fetch_add(1, Ordering::SeqCst);
                        results.push((id, r));
                    }
                })
            })
            .collect();
        while answered.load(Ordering::SeqCst) < 500 {
            tokio::task::yield_now().await;
        }
        let mut victim = workers.remove(0);
        let victim_pid = victim.id().unwrap();
        victim.kill().await; // SIGKILL
        let mut results = Vec::new();
        for t in tasks {
            results.extend(t.await.unwrap());
        }
        assert_eq!(results.len(), 2000, "every call finished");
        let mut ok = HashMap::new();
        let mut closed = HashSet::new();
        for (id, r) in results {
            match r {
                Ok(pid) => {
                    ok.insert(id, pid);
                }
                Err(Error::Closed) => {
                    closed.insert(id);
                }
                Err(e) => panic!("call {id}: {e:?} (only Closed is expected)"),
            }
        }
        // The execution log: each id ran at most once, and an answered
        // call ran exactly once, where its answer says.
        let text = std::fs::read_to_string(&log).unwrap();
        let mut ran: HashMap<u64, u32> = HashMap::new();
        for line in text.lines() {
            let (pid, id) = line.split_once(' ').unwrap();
            let (pid, id): (u32, u64) = (pid.parse().unwrap(), id.parse().unwrap());
            if id < 1000 {
                continue;
            }
            assert!(ran.insert(id, pid).is_none(), "call {id} ran twice");
        }
        for (id, pid) in &ok {
            assert_eq!(ran.get(id), Some(pid), "call {id}");
        }
        // Those lost with the worker either ran there or not at all.
        for id in &closed {
            if let Some(pid) = ran.get(id) {
                assert_eq!(*pid, victim_pid, "call {id}");
            }
        }
        let survivors: HashSet<u32> = ok
            .iter()
            .filter(|(id, _)| **id >= 2500)
            .map(|(_, pid)| *pid)
            .collect();
        assert!(!survivors.contains(&victim_pid));
        eprintln!(
            "{} answered, {} lost with the killed worker",
            ok.len(),
            closed.len()
        );
        pool.close();
    })
    .await
    .unwrap();
}
