//! A tour of drs from the client side: calls, fires, errors, timeouts, a
//! server calling back, broadcast, concurrency, and a session riding
//! through a server restart.
//!
//! ```text
//! cargo run --example client                     # starts the demo server in-process
//! cargo run --example client -- 127.0.0.1:12000  # or talks to a running demo_server
//! ```

use std::{future::IntoFuture, process::ExitCode, time::Duration};

use drs_core::{Client, Error, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_session::{ReconnectPolicy, Session, SessionEvent};
use drs_transport_tcp::{TcpDialer, TcpListener};
use examples::{demo_actions, demo_actions_named, init_tracing};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> ExitCode {
    // The tour prints what a client sees. The in-process server logs
    // `kaboom`'s panic (on purpose) as an error that would land in the
    // middle of it: its connections' log is off here (RUST_LOG=info shows
    // it), and any other panic keeps to one line.
    init_tracing("warn,drs_core::conn::driver=off");
    std::panic::set_hook(Box::new(|info| {
        eprintln!("  (server log) handler panicked: {info}")
    }));
    match tour().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tour failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn tour() -> Result<(), Box<dyn std::error::Error>> {
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => {
            let server = Server::new();
            demo_actions(&server);
            let addr = server.listen(TcpListener::bind("127.0.0.1:0").await?, Json)?;
            println!("(started the demo server in-process on {addr})");
            addr
        }
    };

    // Handlers for what the server sends us, registered before connecting.
    let conn = Client::new()
        .on("shout", |text: String| async move {
            println!("  <- broadcast: {text}");
            HandlerResult::Ok(())
        })
        .on("whoami", || async { HandlerResult::Ok("the client tour") })
        .connect(TcpDialer::new(&addr), Json)
        .await?;
    println!("connected to {addr}");

    let now: u64 = conn.call("drs.ping", ()).await?;
    println!("drs.ping               -> {now} (ms since the epoch)");

    let sum: f64 = conn.call("add", json!({"a": 2, "b": 40})).await?;
    println!("add 2 + 40             -> {sum}");

    let echoed: Value = conn.call("echo", json!({"any": ["json", 1, true]})).await?;
    println!("echo                   -> {echoed}");

    let heard: u64 = conn.call("shout", "hello, everyone").await?;
    println!("shout                  -> delivered to {heard} client(s)");

    conn.fire("echo", "a one-way command gets no reply").await?;
    println!("fire echo              -> sent, no reply expected");

    match conn
        .call::<Value>("fail", json!({"message": "invalid input"}))
        .await
    {
        Err(Error::Remote(e)) => println!("fail                   -> drs.error: {e}"),
        other => println!("fail                   -> unexpected {other:?}"),
    }
    match conn.call::<Value>("kaboom", ()).await {
        Err(Error::Exception(e)) => println!("kaboom                 -> drs.exception: {e}"),
        other => println!("kaboom                 -> unexpected {other:?}"),
    }
    match conn.call::<Value>("nope", ()).await {
        Err(e) => println!("nope                   -> {e}"),
        Ok(v) => println!("nope                   -> unexpected {v}"),
    }
    let err = conn
        .call::<u64>("sleep", json!({"ms": 1000}))
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    println!(
        "sleep 1s, timeout 100ms -> {err} (is_timeout: {})",
        err.is_timeout()
    );

    let answer: String = conn
        .call("ask_back", json!({"action": "whoami", "timeout_ms": 1000}))
        .await?;
    println!("ask_back whoami        -> the server asked us and got {answer:?}");

    let start = std::time::Instant::now();
    let calls = (0..20).map(|_| conn.call::<u64>("sleep", json!({"ms": 200})));
    let slept: Vec<u64> = futures_join(calls).await?;
    println!(
        "20 x sleep 200ms       -> all {} done in {:?} (they run concurrently)",
        slept.len(),
        start.elapsed()
    );

    conn.close();
    conn.closed().await;
    println!("closed");

    session_through_a_restart().await
}

/// A named session rides through a restart of its server (one the tour
/// starts and stops itself, on a port it picks).
async fn session_through_a_restart() -> Result<(), Box<dyn std::error::Error>> {
    println!("\na session through a server restart:");
    let start = |addr: String, name: &'static str| async move {
        let server = Server::new();
        demo_actions_named(&server, name);
        let addr = server.listen(TcpListener::bind(addr).await?, Json)?;
        Ok::<_, std::io::Error>((server, addr))
    };
    let (server, addr) = start("127.0.0.1:0".into(), "first server").await?;
    let session = Session::builder(TcpDialer::new(&addr), Json)
        .name("tour")
        .policy(ReconnectPolicy::default().initial_delay(Duration::from_millis(50)))
        .on_event(|event| println!("  (session) {event:?}"))
        .connect()
        .await?;
    let me: Value = session.call("session", ()).await?;
    println!("session                -> {me}");

    let mut events = session.events();
    server.shutdown(Duration::ZERO).await;
    // A call sent before the session has seen the end would be lost with
    // that connection (failing as closed, never sent twice); once it has,
    // calls wait for the next connection.
    while let Some(event) = events.next().await {
        if matches!(event, SessionEvent::Disconnected { .. }) {
            break;
        }
    }
    println!("  (the server stopped; a call made now waits for the next connection)");
    let waiting = tokio::spawn(session.call::<Value, _>("session", ()).into_future());
    // The old port may take a moment to be free again.
    let restarted = loop {
        match start(addr.clone(), "second server").await {
            Ok((server, _)) => break server,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let me = waiting.await??;
    println!("session                -> {me} (same name, new connection)");
    session.close();
    session.stopped().await;
    restarted.shutdown(Duration::ZERO).await;
    Ok(())
}

/// Awaits every call, in order.
async fn futures_join<T>(calls: impl Iterator<Item = drs_core::Call<T>>) -> Result<Vec<T>, Error>
where
    T: drs_core::FromBody + Send + 'static,
{
    let handles: Vec<_> = calls.map(|c| tokio::spawn(c.into_future())).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("call task")?);
    }
    Ok(out)
}
