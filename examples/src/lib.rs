//! Shared pieces of the drs examples: the demo server's actions, used by the
//! `demo_server` and `client` examples and by the wire tests.

use std::time::Duration;

use drs_core::{Body, HandlerError, HandlerResult, Msg, Server};
use serde::Deserialize;

/// Arguments of `add`.
#[derive(Debug, Deserialize)]
pub struct Add {
    /// First term.
    pub a: f64,
    /// Second term.
    pub b: f64,
}

/// Arguments of `sleep`.
#[derive(Debug, Deserialize)]
pub struct Sleep {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

/// Arguments of `fail`.
#[derive(Debug, Deserialize)]
pub struct Fail {
    /// The error message to answer with.
    pub message: String,
}

/// Arguments of `ask_back`.
#[derive(Debug, Deserialize)]
pub struct AskBack {
    /// The action to call on the requesting client.
    pub action: String,
    /// The body to send with it.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Timeout of that call, in milliseconds (default 5000).
    pub timeout_ms: Option<u64>,
}

/// Registers the demo server's actions on `server`:
///
/// | action | body | reply |
/// |---|---|---|
/// | `echo` | anything | the body back |
/// | `add` | `{"a": n, "b": n}` | their sum |
/// | `sleep` | `{"ms": n}` | waits n ms, returns n |
/// | `fail` | `{"message": s}` | `drs.error` with that message |
/// | `kaboom` | anything | the handler panics: `drs.exception` |
/// | `shout` | anything | broadcasts `shout` with the body to every client; returns how many got it |
/// | `ask_back` | `{"action": a, "body": b, "timeout_ms": t}` | calls the client with `a`/`b`, returns its answer |
pub fn demo_actions(server: &Server) {
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    server.on("add", |args: Add| async move {
        HandlerResult::Ok(args.a + args.b)
    });
    server.on("sleep", |args: Sleep| async move {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        HandlerResult::Ok(args.ms)
    });
    server.on("fail", |args: Fail| async move {
        Err::<(), _>(HandlerError::new(args.message))
    });
    server.on("kaboom", |_: Body| async move {
        if true {
            panic!("kaboom");
        }
        HandlerResult::Ok(())
    });
    let broadcaster = server.clone();
    server.on("shout", move |body: Body| {
        let server = broadcaster.clone();
        // The body's bytes are copied to peers of its own protocol.
        async move { HandlerResult::Ok(server.broadcast_body("shout", &body)) }
    });
    server.on("ask_back", |msg: Msg, args: AskBack| async move {
        let timeout = Duration::from_millis(args.timeout_ms.unwrap_or(5000));
        let answer: Body = msg
            .conn()
            .call(&args.action, &args.body)
            .timeout(timeout)
            .await?;
        HandlerResult::Ok(answer)
    });
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
