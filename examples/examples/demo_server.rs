//! The demo server: `echo`, `add`, `sleep`, `fail`, `kaboom`, `shout` and
//! `ask_back`, on any number of transports at once.
//!
//! ```text
//! cargo run --example demo_server                                  # TCP on 127.0.0.1:12000, JSON
//! cargo run --example demo_server -- --tcp 127.0.0.1:12000 --ws 127.0.0.1:12001 --ipc /tmp/drs-demo.sock
//! cargo run --example demo_server -- --tcp 127.0.0.1:0 --protocol msgpack --tcp 127.0.0.1:0
//! ```
//!
//! `--protocol json|msgpack` sets the protocol of the listeners that follow
//! it (default json), so one server can serve JSON and MessagePack clients
//! together; they see each other's `shout`s. Port 0 picks a free port. Each
//! listener prints `listening tcp ADDR`, `listening ws ADDR` or
//! `listening ipc PATH` on stdout as it binds. Ctrl-C shuts down gracefully.

use std::{process::ExitCode, sync::Arc, time::Duration};

use drs_core::{Protocol, Server};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_transport_ipc::IpcListener;
use drs_transport_tcp::TcpListener;
use drs_transport_ws::WsListener;
use examples::{demo_actions, init_tracing};

const USAGE: &str =
    "usage: demo_server [--protocol json|msgpack] [--tcp ADDR] [--ws ADDR] [--ipc PATH] ...
  default: --tcp 127.0.0.1:12000 (JSON); --protocol applies to the listeners after it";

/// The page served to browsers on the WebSocket listener's `/`.
const PAGE: &str = include_str!("../browser/index.html");

enum Bind {
    Tcp(String),
    Ws(String),
    Ipc(String),
}

/// What to listen on, each with its protocol.
type Listeners = Vec<(Bind, Arc<dyn Protocol>)>;

fn parse(args: impl Iterator<Item = String>) -> Result<Listeners, String> {
    let mut protocol: Arc<dyn Protocol> = Arc::new(Json);
    let mut binds = Vec::new();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tcp" => binds.push((Bind::Tcp(value()?), protocol.clone())),
            "--ws" => binds.push((Bind::Ws(value()?), protocol.clone())),
            "--ipc" => binds.push((Bind::Ipc(value()?), protocol.clone())),
            "--protocol" => {
                protocol = match value()?.as_str() {
                    "json" => Arc::new(Json),
                    "msgpack" => Arc::new(MsgPack),
                    other => return Err(format!("unknown protocol `{other}` (json or msgpack)")),
                }
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if binds.is_empty() {
        binds.push((Bind::Tcp("127.0.0.1:12000".into()), protocol));
    }
    Ok(binds)
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let binds = match parse(args.into_iter()) {
        Ok(binds) => binds,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let server = Server::new();
    demo_actions(&server);
    server.on_connect(|conn| async move {
        tracing::info!(
            id = conn.id(),
            transport = conn.info().transport,
            peer = conn.peer_addr(),
            "client connected"
        );
        Ok::<_, std::convert::Infallible>(())
    });
    server.on_disconnect(|conn| tracing::info!(id = conn.id(), "client disconnected"));

    for (bind, protocol) in binds {
        let (kind, asked, bound) = match bind {
            Bind::Tcp(addr) => {
                let bound = match TcpListener::bind(&addr).await {
                    Ok(l) => server.listen_arc(l, protocol),
                    Err(e) => Err(e),
                };
                ("tcp", addr, bound)
            }
            Bind::Ws(addr) => {
                let bound = match WsListener::bind(&addr).await {
                    Ok(l) => {
                        server.listen_arc(l.page("/", "text/html; charset=utf-8", PAGE), protocol)
                    }
                    Err(e) => Err(e),
                };
                ("ws", addr, bound)
            }
            Bind::Ipc(path) => {
                let bound =
                    IpcListener::bind(path.clone()).and_then(|l| server.listen_arc(l, protocol));
                ("ipc", path, bound)
            }
        };
        match bound {
            Ok(addr) => announce(&format!("listening {kind} {addr}")),
            Err(e) => {
                eprintln!("cannot listen on {kind} {asked}: {e}");
                return ExitCode::FAILURE;
            }
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
