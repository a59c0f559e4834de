//! The drs demo actions: what `drs serve --demo` and the `demo_server`
//! example serve, and what the README, the client tour and the
//! cross-language tests call. See [`demo_actions`] for the table.

use std::time::Duration;

use drs_core::{Body, Conn, HandlerError, HandlerResult, ItemSink, Msg, Server};
use drs_layers::{Cache, Pool};
use drs_names::ConnName;
use serde::Deserialize;

/// Arguments of `add`.
#[derive(Debug, Deserialize)]
pub struct Add {
    /// First term.
    pub a: f64,
    /// Second term.
    pub b: f64,
}

/// `a + b`, as an integer when the sum is integral and exact in an `f64`
/// (a Go DRS caller decoding into an integer fails on `3.0`), else as a
/// float.
pub fn sum(a: f64, b: f64) -> serde_json::Value {
    /// 2^53: beyond it an `f64` no longer holds every integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let s = a + b;
    if s.fract() == 0.0 && s.abs() <= EXACT {
        serde_json::Value::from(s as i64)
    } else {
        serde_json::Value::from(s)
    }
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
/// | `add` | `{"a": n, "b": n}` | their sum (an integer when it is integral: 1 + 2 is `3`, not `3.0`) |
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
/// answers). Peers may name themselves (`drs.identify`, `drs-names`):
/// `session` says which name a connection has.
pub fn demo_actions_named(server: &Server, name: impl Into<String>) {
    drs_names::Names::install(server);
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
        HandlerResult::Ok(sum(args.a, args.b))
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
            // A panic that skips the panic hook: the server logs it once
            // (an error naming the action) instead of the hook's message
            // and backtrace landing in the middle of a demo's output.
            std::panic::resume_unwind(Box::new("kaboom"));
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

#[cfg(test)]
mod tests {
    use super::sum;

    #[test]
    fn integral_sums_are_integers_and_others_floats() {
        assert_eq!(sum(1.0, 2.0).to_string(), "3");
        assert_eq!(sum(1.5, 1.5).to_string(), "3");
        assert_eq!(sum(-4.0, 1.0).to_string(), "-3");
        assert_eq!(sum(0.5, 0.25).to_string(), "0.75");
        assert_eq!(sum(1e300, 1e300).as_f64(), Some(2e300));
        assert!(sum(f64::NAN, 1.0).is_null(), "NaN is not a JSON number");
    }
}
