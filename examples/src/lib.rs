//! Shared pieces of the drs examples: the demo server's actions, used by the
//! `demo_server` and `client` examples and by the wire tests.

use std::{io::IsTerminal, time::Duration};

use drs_core::{HandlerError, HandlerResult, Server};
use serde::Deserialize;

pub use drs_demo::{
    default_server_name, demo_actions, demo_actions_named, Add, AskBack, Count, Fail, Sleep,
    MAX_COUNT,
};

/// The example browser page (`examples/browser/index.html`).
pub const BROWSER_PAGE: &str = include_str!("../browser/index.html");

/// The JavaScript client package (`clients/js/drs-client.js`), which the
/// page imports.
pub const CLIENT_JS: &str = include_str!("../../clients/js/drs-client.js");

/// `listener`, serving the example page at `/` and the JavaScript client
/// at `/drs-client.js` to plain HTTP `GET`s.
pub fn with_browser_page(listener: drs_transport_ws::WsListener) -> drs_transport_ws::WsListener {
    listener
        .page("/", "text/html; charset=utf-8", BROWSER_PAGE)
        .page(
            "/drs-client.js",
            "text/javascript; charset=utf-8",
            CLIENT_JS,
        )
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default`).
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Cerbas's demo functions (`hello`, `echo`, `sum`, `withargs`,
/// `witherror`, `slow`, `asyncfunc`, `halt`) as drs handlers on a server of
/// their own, and a Cerbas worker for the Redis at `url` declaring them as
/// Cerbas does: `hello` cached 20 s; `asyncfunc` and `halt` async; `halt`
/// stops the worker taking requests after `delay` ms.
pub fn cerbas_demo(
    url: &str,
    crontab: Option<std::path::PathBuf>,
) -> (Server, drs_cerbas::CerbasWorker) {
    use drs_cerbas::{CerbasWorker, Halt};
    use serde_json::Value;

    #[derive(Deserialize)]
    struct Message {
        message: Value,
    }
    #[derive(Deserialize)]
    struct Foo {
        foo: Value,
    }
    #[derive(Deserialize)]
    struct HaltArgs {
        delay: f64,
    }

    let halt = Halt::new();
    let server = Server::new();
    server.on("hello", || async { HandlerResult::Ok("hello world!") });
    server.on("asyncfunc", || async { HandlerResult::Ok("") });
    server.on("withargs", |args: Foo| async move {
        HandlerResult::Ok(args.foo)
    });
    server.on("echo", |args: Message| async move {
        HandlerResult::Ok(args.message)
    });
    server.on("witherror", || async {
        HandlerResult::<()>::Err(HandlerError::new("unexpected error"))
    });
    server.on("sum", |args: Value| async move {
        match (args["a"].as_f64(), args["b"].as_f64()) {
            (Some(a), Some(b)) if args["a"].is_i64() && args["b"].is_i64() => {
                HandlerResult::Ok(Value::from(a as i64 + b as i64))
            }
            (Some(a), Some(b)) => HandlerResult::Ok(Value::from(a + b)),
            _ => HandlerResult::Err(HandlerError::new("bad arguments")),
        }
    });
    server.on("slow", || async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        HandlerResult::Ok("slept")
    });
    let h = halt.clone();
    server.on("halt", move |args: HaltArgs| {
        h.after(Duration::from_secs_f64(args.delay.max(0.0) / 1000.0));
        async { HandlerResult::Ok("") }
    });
    let mut worker = CerbasWorker::new(url)
        .func("hello", &[])
        .cache("hello", Duration::from_secs(20))
        .func("echo", &["message"])
        .func("sum", &["a", "b"])
        .func("withargs", &["foo"])
        .func("witherror", &[])
        .func("slow", &[])
        .async_func("asyncfunc", &[])
        .async_func("halt", &["delay"])
        .halt_with(halt);
    if let Some(path) = crontab {
        worker = worker.crontab(path);
    }
    (server, worker)
}
