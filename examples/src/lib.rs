//! Shared pieces of the drs examples: the demo server's actions, used by the
//! `demo_server` and `client` examples and by the wire tests.

use std::time::Duration;

use drs_core::{Body, Conn, HandlerError, HandlerResult, ItemSink, Msg, Server};
use drs_layers::{Cache, Pool};
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

/// Arguments of `count`.
#[derive(Debug, Deserialize)]
pub struct Count {
    /// How many integers (at most [`MAX_COUNT`]).
    pub n: u64,
    /// Milliseconds between them (default 0).
    #[serde(default)]
    pub ms: u64,
}

/// The most items `count` streams.
pub const MAX_COUNT: u64 = 1_000_000;

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
/// | `count` | `{"n": n, "ms": m}` | streams 0..n-1, one every m ms, ends with n (without `"stream"`: the array) |
/// | `cached_time` | — | the server's time in ms, cached for 2 s (server-wide) |
/// | `pooled_sleep` | `{"ms": n}` | like `sleep`, 2 at once and 2 waiting server-wide; more: `drs.error` "queue full" |
/// | `session` | — | `{"name": the caller's session name or null, "conn": its connection id, "server": the server's name}` |
///
/// The server's name is [`default_server_name`]; [`demo_actions_named`]
/// sets another.
///
/// Every call can be cancelled (`drs.cancel`): a cancelled `sleep` frees
/// its slot at once.
pub fn demo_actions(server: &Server) {
    demo_actions_named(server, default_server_name());
}

/// `<hostname>:<pid>`: the demo server's name unless `--name` gives one.
pub fn default_server_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// [`demo_actions`], with `name` as the server's name (what `session`
/// answers).
pub fn demo_actions_named(server: &Server, name: impl Into<String>) {
    let name: std::sync::Arc<str> = name.into().into();
    server.on("session", move |conn: Conn| {
        let answer = serde_json::json!({
            "name": conn.name().as_deref(),
            "conn": conn.id(),
            "server": &*name,
        });
        async move { HandlerResult::Ok(answer) }
    });
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
    server.on("count", |args: Count, items: ItemSink| async move {
        if args.n > MAX_COUNT {
            return Err(HandlerError::new(format!("n is at most {MAX_COUNT}")));
        }
        for i in 0..args.n {
            if args.ms > 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(args.ms)).await;
            }
            items.send(&i).await?;
        }
        HandlerResult::Ok(args.n)
    });
    server.on("cached_time", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        HandlerResult::Ok(now)
    });
    server.layer_for("cached_time", Cache::new(Duration::from_secs(2)));
    server.on("pooled_sleep", |args: Sleep| async move {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        HandlerResult::Ok(args.ms)
    });
    server.layer_for("pooled_sleep", Pool::new(2, 2));
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

/// Cerbas's demo functions (`hello`, `echo`, `sum`, `withargs`,
/// `witherror`, `slow`, `asyncfunc`, `halt`) as drs handlers on a server of
/// their own, and a Cerbas worker for the Redis at `url` declaring them as
/// Cerbas does: `hello` cached 20 s; `asyncfunc` and `halt` async; `halt`
/// stops the worker taking requests after `delay` ms.
pub fn cerbas_demo(
    url: &str,
    crontab: Option<std::path::PathBuf>,
) -> (Server, drs_transport_redis::cerbas::CerbasWorker) {
    use drs_transport_redis::cerbas::{CerbasWorker, Halt};
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
