//! Chat over drs: `join` names a connection, `say` broadcasts to everyone.
//!
//! ```text
//! cargo run --example chat                          # a scripted chat between three clients
//! cargo run --example chat -- serve 127.0.0.1:12001 # a chat server
//! cargo run --example chat -- join 127.0.0.1:12001 alice   # type lines to say them
//! ```
//!
//! Or with nothing but netcat:
//!
//! ```text
//! $ nc 127.0.0.1 12001
//! {"key":"1","action":"join","body":"carol"}
//! {"key":"2","action":"say","body":"hi all"}
//! ```

use std::{process::ExitCode, sync::Arc, time::Duration};

use drs_core::{Client, Conn, HandlerError, HandlerResult, Server};
use drs_protocol_json::Json;
use drs_transport_tcp::{TcpDialer, TcpListener};
use examples::init_tracing;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;

/// What every client receives for each message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    from: String,
    text: String,
}

/// A connection's chat name, attached by `join`.
#[derive(Clone)]
struct Name(String);

fn chat_server() -> Server {
    let server = Server::new();
    server.on("join", |conn: Conn, name: String| async move {
        if name.trim().is_empty() {
            return Err(HandlerError::new("a name cannot be empty"));
        }
        conn.insert(Name(name.clone()));
        Ok(format!("welcome, {name}"))
    });
    let room = server.clone();
    server.on("say", move |conn: Conn, text: String| {
        let room = room.clone();
        async move {
            let Name(from) = conn.get::<Name>().ok_or(HandlerError::new("join first"))?;
            HandlerResult::Ok(room.broadcast("message", Line { from, text })?)
        }
    });
    server
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("warn");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => scripted().await,
        ["serve", addr] => serve(addr).await,
        ["join", addr, name] => join(addr, name).await,
        _ => {
            eprintln!("usage: chat | chat serve ADDR | chat join ADDR NAME");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

async fn serve(addr: &str) -> Res {
    let server = chat_server();
    let bound = server.listen(TcpListener::bind(addr).await?, Json)?;
    println!("listening tcp://{bound}");
    tokio::signal::ctrl_c().await?;
    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

async fn join(addr: &str, name: &str) -> Res {
    let conn = Client::new()
        .on("message", |line: Line| async move {
            println!("{}: {}", line.from, line.text);
            HandlerResult::Ok(())
        })
        .connect(TcpDialer::new(addr), Json)
        .await?;
    let welcome: String = conn.call("join", name).await?;
    println!("{welcome} (type lines; Ctrl-D to leave)");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let _: usize = conn.call("say", line).await?;
    }
    Ok(())
}

/// Three clients chat; each prints what it hears, then all leave.
async fn scripted() -> Res {
    let server = chat_server();
    let addr = server.listen(TcpListener::bind("127.0.0.1:0").await?, Json)?;
    println!("chat server on {addr}");
    let names = ["alice", "bob", "carol"];
    let heard = Arc::new(tokio::sync::Semaphore::new(0));
    let mut conns = Vec::new();
    for name in names {
        let heard = heard.clone();
        let conn = Client::new()
            .on("message", move |line: Line| {
                let heard = heard.clone();
                async move {
                    println!("  [{name} hears] {}: {}", line.from, line.text);
                    heard.add_permits(1);
                    HandlerResult::Ok(())
                }
            })
            .connect(TcpDialer::new(&addr), Json)
            .await?;
        let welcome: String = conn.call("join", name).await?;
        println!("{name} joined: {welcome}");
        conns.push(conn);
    }
    let script = [(0, "hi everyone"), (1, "hello alice"), (2, "hey both")];
    for (who, text) in script {
        let delivered: usize = conns[who].call("say", text).await?;
        println!("{} says {text:?} (delivered to {delivered})", names[who]);
        // Wait until everyone heard it, so the output reads in order.
        heard.acquire_many(delivered as u32).await?.forget();
    }
    let err = Client::new()
        .connect(TcpDialer::new(&addr), Json)
        .await?
        .call::<usize>("say", "who am I?")
        .await
        .unwrap_err();
    println!("a client that never joined gets: {err}");
    server.shutdown(Duration::from_secs(1)).await;
    println!("chat over");
    Ok(())
}
