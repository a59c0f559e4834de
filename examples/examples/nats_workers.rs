//! One service, three worker processes, NATS in the middle: calls spread
//! over the workers, and a worker that dies is noticed.
//!
//! ```text
//! cargo run --example nats_workers            # needs nats-server (apt-get install nats-server)
//! ```
//!
//! It starts a `nats-server` on a free port of 127.0.0.1, then three
//! workers (this program again, as `nats_workers worker URL NAME`), each a
//! drs server joined to service `demo` (subject and queue group
//! `drs.demo`). A pool of 12 sessions calls `session`, which answers the
//! worker's name, 300 times and prints who answered how many; then one
//! worker is killed and the pool keeps going on the other two. Any NATS
//! client can call the same service: the last step is a plain NATS request
//! carrying one drs frame.
//!
//! The same workers come from `demo_server --nats URL --service demo`.

use drs_transport_nats::LinkSettings;
use std::{collections::BTreeMap, future::IntoFuture, process::ExitCode, time::Duration};

use drs_core::{ConnConfig, Error, Server};
use drs_protocol_json::Json;
use drs_session::{Pool, ReconnectPolicy};
use drs_testkit::NatsServer;
use drs_transport_nats::{async_nats, NatsConfig, NatsDialer, NatsListener};
use examples::{demo_actions_named, init_tracing};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const SERVICE: &str = "demo";

fn nats_config() -> NatsConfig {
    // Notice a dead worker within about half a second.
    NatsConfig::default().heartbeat(Duration::from_millis(250))
}

/// A worker: the demo actions as service `demo`, until stdin closes.
async fn worker(url: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let nats = async_nats::connect(url).await?;
    let server = Server::new();
    demo_actions_named(&server, name);
    let listener = NatsListener::bind_with(&nats, SERVICE, nats_config()).await?;
    server.listen(listener, Json)?;
    println!("ready");
    // The parent holds our stdin: when it goes, so do we.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
    Ok(())
}

async fn start_worker(url: &str, name: &str) -> std::io::Result<tokio::process::Child> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["worker", url, name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "ready" {
            return Ok(child);
        }
    }
    Err(std::io::Error::other(format!(
        "{name} ended before it was ready"
    )))
}

/// Makes `calls` calls of `session` at once; counts the answers by
/// worker, and the calls lost with a worker that died under them.
async fn spread(pool: &Pool, calls: usize) -> Result<(BTreeMap<String, usize>, usize), Error> {
    let mut by_worker = BTreeMap::new();
    let mut lost = 0;
    let answers = (0..calls).map(|_| pool.call::<Value, _>("session", ()).into_future());
    for answer in futures::future::join_all(answers).await {
        match answer {
            Ok(v) => {
                let server = v["server"].as_str().unwrap_or("?").to_string();
                *by_worker.entry(server).or_insert(0) += 1;
            }
            Err(Error::Closed) => lost += 1,
            Err(e) => return Err(e),
        }
    }
    Ok((by_worker, lost))
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let Some(nats_server) = NatsServer::start_or_skip("nats_workers") else {
        return Ok(());
    };
    let url = nats_server.url();
    println!("nats-server at {url}");
    let mut workers = Vec::new();
    for name in ["worker-1", "worker-2", "worker-3"] {
        workers.push(start_worker(&url, name).await?);
    }
    println!("3 workers serve drs.{SERVICE}");

    let nats = async_nats::connect(&url).await?;
    let pool = Pool::builder(
        NatsDialer::new(nats.clone(), SERVICE).config(nats_config()),
        Json,
    )
    .size(12)
    .config(ConnConfig::default().call_timeout(Duration::from_secs(5)))
    .policy(ReconnectPolicy::default().initial_delay(Duration::from_millis(20)))
    .connect()
    .await?;
    let (by_worker, _) = spread(&pool, 300).await?;
    println!("300 calls answered by: {by_worker:?}");
    if by_worker.len() < 2 {
        return Err("the calls did not spread over the workers".into());
    }

    let mut victim = workers.remove(0);
    victim.start_kill()?;
    victim.wait().await?;
    println!("worker-1 killed");
    // Sessions that were on worker-1 notice (no responders to their
    // heartbeat), fail its calls as closed, and reconnect through the
    // queue group to the others.
    let (by_worker, lost) = spread(&pool, 300).await?;
    println!("300 more: answered by {by_worker:?}, {lost} lost with worker-1 (failed as closed)");
    if by_worker.contains_key("worker-1") {
        return Err("a dead worker answered".into());
    }

    // Any NATS client: one request, one drs frame each way.
    let frame = r#"{"action":"add","body":{"a":40,"b":2},"key":"1"}"#;
    let reply = nats
        .request(format!("drs.{SERVICE}"), frame.as_bytes().to_vec().into())
        .await?;
    println!(
        "plain NATS request {frame} -> {}",
        String::from_utf8_lossy(&reply.payload)
    );
    pool.close();
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, url, name] = args.as_slice() {
        if mode == "worker" {
            return match worker(url, name).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    init_tracing("warn");
    if NatsServer::binary().is_none() && std::env::var_os("CI").is_none() {
        eprintln!("nats_workers needs nats-server (apt-get install nats-server); skipped");
        return ExitCode::SUCCESS;
    }
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nats_workers: {e}");
            ExitCode::FAILURE
        }
    }
}
