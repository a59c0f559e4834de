//! The subcommands that talk to a server: call, fire, stream, listen,
//! publish, ping.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use drs::{layer_fn, Body, Client, ConnConfig, Msg, Next, Outcome, PubSub};
use futures::StreamExt;
use serde_json::Value;

use crate::{
    body,
    exit::{self, Failure},
    Conn,
};

/// Connects to `args.url` within its timeout, then authenticates and
/// identifies as asked.
pub(crate) async fn connect(args: &Conn, client: Client) -> Result<drs::Conn, Failure> {
    let conn = open(args, client).await?;
    login(args, &conn).await?;
    Ok(conn)
}

/// Connects to `args.url` within its timeout.
async fn open(args: &Conn, client: Client) -> Result<drs::Conn, Failure> {
    let client = client.config(ConnConfig::default().call_timeout(args.timeout));
    let conn = match tokio::time::timeout(args.timeout, drs::connect_with(client, &args.url)).await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_failure(&args.url, e)),
        Err(_) => {
            return Err(Failure::new(
                exit::CONNECTION,
                format!(
                    "cannot connect to {}: no connection within {:?}",
                    args.url, args.timeout
                ),
            ))
        }
    };
    Ok(conn)
}

/// Authenticates and identifies as `args` asks.
async fn login(args: &Conn, conn: &drs::Conn) -> Result<(), Failure> {
    if let Some(token) = &args.token {
        conn.call::<Body>("drs.auth", serde_json::json!({ "token": token }))
            .await
            .map_err(|e| context("authentication failed", e))?;
    }
    if let Some(name) = &args.name {
        conn.call::<Body>("drs.identify", serde_json::json!({ "name": name }))
            .await
            .map_err(|e| context(&format!("cannot identify as {name:?}"), e))?;
    }
    Ok(())
}

/// A connection error: a bad URL is a usage error, the rest a connection
/// failure.
fn connect_failure(url: &str, e: drs::Error) -> Failure {
    let code = match &e {
        drs::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput => exit::USAGE,
        _ => exit::CONNECTION,
    };
    Failure::new(code, format!("cannot connect to {url}: {e}"))
}

/// `e`, its message prefixed with `what`.
fn context(what: &str, e: drs::Error) -> Failure {
    let mut failure = Failure::from_drs(e);
    failure.message = format!("{what}: {}", failure.message);
    failure
}

/// A body as JSON, whatever the protocol.
fn json(body: &Body) -> Value {
    if body.is_absent() {
        return Value::Null;
    }
    body.deserialize::<Value>()
        .unwrap_or_else(|e| Value::String(format!("<a body that is not JSON-representable: {e}>")))
}

/// Prints `value` on a line of stdout: pretty on a terminal unless `raw`.
fn print(value: &Value, raw: bool) -> Result<(), Failure> {
    let pretty = !raw && std::io::stdout().is_terminal();
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .unwrap_or_default();
    line(&text)
}

/// Writes `text` and a newline to stdout and flushes it (a reader at the
/// other end of a pipe sees each line as it comes).
fn line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(exit::CONNECTION, format!("cannot write to stdout: {e}")))
}

/// Closes `conn` after what is queued is written.
async fn finish(conn: drs::Conn) {
    conn.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
}

pub(crate) async fn call(
    args: &Conn,
    action: &str,
    body: Option<String>,
    delay: Option<Duration>,
) -> Result<(), Failure> {
    let body = body::read(body.as_deref())?;
    let conn = connect(args, Client::new()).await?;
    let reply = match delay {
        // The server holds it; --timeout counts from when it runs.
        Some(delay) => conn.call_after::<Body>(delay, action, &body).await,
        None => conn.call::<Body>(action, &body).await,
    };
    finish(conn).await;
    print(&json(&reply?), args.raw)
}

pub(crate) async fn fire(
    args: &Conn,
    action: &str,
    body: Option<String>,
    delay: Option<Duration>,
) -> Result<(), Failure> {
    let body = body::read(body.as_deref())?;
    let conn = connect(args, Client::new()).await?;
    let sent = match delay {
        Some(delay) => conn.fire_after(delay, action, &body).await,
        None => conn.fire(action, &body).await,
    };
    finish(conn).await;
    Ok(sent?)
}

pub(crate) async fn publish(
    args: &Conn,
    topic: &str,
    body: Option<String>,
    confirm: bool,
) -> Result<(), Failure> {
    let body = body::read(body.as_deref())?;
    let conn = connect(args, Client::new()).await?;
    let result = if confirm {
        conn.publish_confirmed(topic, &body).await.map(Some)
    } else {
        conn.publish(topic, &body).await.map(|()| None)
    };
    finish(conn).await;
    match result? {
        Some(reached) => line(&reached.to_string()),
        None => Ok(()),
    }
}

/// Where `drs stream` puts the handler's final value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Final {
    /// A last line, like an item.
    Line,
    /// A last line `{"final": VALUE}`.
    Json,
    /// A line on stderr.
    Stderr,
    /// Not printed.
    None,
}

pub(crate) async fn stream(
    args: &Conn,
    action: &str,
    body: Option<String>,
    window: u32,
    final_value: Final,
) -> Result<(), Failure> {
    let body = body::read(body.as_deref())?;
    let conn = connect(args, Client::new()).await?;
    let mut items = conn
        .call_stream::<Body>(action, &body)
        .window(window)
        .idle_timeout(args.timeout);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            item = items.next() => match item {
                Some(Ok(item)) => line(&serde_json::to_string(&json(&item)).unwrap_or_default())?,
                Some(Err(e)) => {
                    drop(items);
                    finish(conn).await;
                    return Err(e.into());
                }
                None => break,
            },
            _ = &mut interrupted => {
                // Dropping the stream sends drs.cancel; closing writes it.
                drop(items);
                finish(conn).await;
                return Err(Failure::new(exit::INTERRUPTED, "interrupted: the call is cancelled"));
            }
        }
    }
    if let Some(last) = items.final_body().filter(|b| !b.is_absent()) {
        let value = json(last);
        match final_value {
            Final::Line => line(&serde_json::to_string(&value).unwrap_or_default())?,
            Final::Json => line(&serde_json::json!({ "final": value }).to_string())?,
            Final::Stderr => eprintln!("{value}"),
            Final::None => {}
        }
    }
    finish(conn).await;
    Ok(())
}

pub(crate) async fn listen(
    args: &Conn,
    topics: &[String],
    retroactive: bool,
    count: Option<u64>,
) -> Result<(), Failure> {
    let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let record = move |msg: &Msg| {
        let mut line = serde_json::Map::new();
        if let Some(key) = msg.key() {
            line.insert("key".into(), Value::from(key));
        }
        line.insert("action".into(), Value::from(msg.action()));
        line.insert("body".into(), json(msg.body()));
        let _ = seen.send(Value::Object(line));
    };
    let conn = open(args, Client::new()).await?;
    // Every command the server sends, whatever its action, is printed and
    // answered null when it is a call; topic deliveries go to the
    // subscriptions' handler (a retroactive delivery is acknowledged by
    // its answer).
    let all = record.clone();
    conn.layer(layer_fn(move |msg: Msg, _next: Next| {
        all(&msg);
        async { Outcome::value(()) }
    }));
    // After the layer: a name's kept messages come as soon as it is back.
    login(args, &conn).await?;
    for topic in topics {
        let delivered = record.clone();
        let handler = move |msg: Msg| {
            delivered(&msg);
            async { drs::HandlerResult::Ok(()) }
        };
        let subscribed = if retroactive {
            conn.subscribe_retroactive(topic, handler).await
        } else {
            conn.subscribe(topic, handler).await
        };
        subscribed.map_err(|e| context(&format!("cannot subscribe to {topic:?}"), e))?;
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut printed = 0u64;
    while count.is_none_or(|n| printed < n) {
        tokio::select! {
            command = heard.recv() => match command {
                Some(command) => {
                    line(&serde_json::to_string(&command).unwrap_or_default())?;
                    printed += 1;
                }
                None => break,
            },
            _ = conn.closed() => {
                // What arrived before the end is printed first.
                while let Ok(command) = heard.try_recv() {
                    line(&serde_json::to_string(&command).unwrap_or_default())?;
                }
                let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
                return Err(Failure::new(exit::CONNECTION, format!("the connection ended: {reason}")));
            }
            _ = &mut interrupted => {
                finish(conn).await;
                return Err(Failure::new(exit::INTERRUPTED, ""));
            }
        }
    }
    finish(conn).await;
    Ok(())
}

pub(crate) async fn ping(args: &Conn, count: u64, interval: Duration) -> Result<(), Failure> {
    let conn = connect(args, Client::new()).await?;
    for seq in 1..=count {
        if seq > 1 {
            tokio::time::sleep(interval).await;
        }
        let start = Instant::now();
        let server_time = conn.call::<Body>("drs.ping", ()).await;
        let rtt = start.elapsed();
        let server_time = match server_time {
            Ok(time) => json(&time),
            Err(e) => {
                finish(conn).await;
                return Err(e.into());
            }
        };
        let report = serde_json::json!({
            "seq": seq,
            "rtt_ms": (rtt.as_secs_f64() * 1e6).round() / 1e3,
            "server_time_ms": server_time,
        });
        if args.raw || !std::io::stdout().is_terminal() {
            line(&report.to_string())?;
        } else {
            line(&format!(
                "pong from {}: seq={seq} time={:.3} ms",
                args.url,
                rtt.as_secs_f64() * 1e3
            ))?;
        }
    }
    finish(conn).await;
    Ok(())
}
