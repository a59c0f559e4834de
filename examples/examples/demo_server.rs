//! The demo server: `echo`, `add`, `sleep`, `fail`, `kaboom`, `shout` and
//! `ask_back` over TCP with the DRS JSON protocol.
//!
//! ```text
//! cargo run --example demo_server -- --tcp 127.0.0.1:12000
//! ```
//!
//! With port 0 the system picks a port. The first line on stdout is
//! `listening tcp ADDR` with the address bound. Ctrl-C shuts down gracefully.

use std::{process::ExitCode, time::Duration};

use drs_core::Server;
use drs_protocol_json::Json;
use drs_transport_tcp::TcpListener;
use examples::{demo_actions, init_tracing};

const USAGE: &str = "usage: demo_server [--tcp ADDR]   (default 127.0.0.1:12000)";

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let mut tcp = "127.0.0.1:12000".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--tcp", Some(addr)) => tcp = addr,
            ("-h" | "--help", _) => {
                eprintln!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("unexpected argument `{arg}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }

    let server = Server::new();
    demo_actions(&server);
    server.on_connect(|conn| async move {
        tracing::info!(id = conn.id(), peer = conn.peer_addr(), "client connected");
        Ok::<_, std::convert::Infallible>(())
    });
    server.on_disconnect(|conn| tracing::info!(id = conn.id(), "client disconnected"));

    let listener = match TcpListener::bind(&tcp).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {tcp}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.listen(listener, Json) {
        Ok(addr) => announce(&format!("listening tcp {addr}")),
        Err(e) => {
            eprintln!("cannot serve on {tcp}: {e}");
            return ExitCode::FAILURE;
        }
    }

    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
    }
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

/// Prints a line on stdout and flushes it (tests read it through a pipe).
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
