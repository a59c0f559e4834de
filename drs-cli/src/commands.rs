//! The subcommands that talk to a server: call, fire, stream, listen,
//! publish, reply, ping.

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

/// `drs reply`: serves `action` with `command` (or echoes), exposed to the
/// server's broker if it has one.
pub(crate) async fn reply(
    args: &Conn,
    action: &str,
    command: Option<String>,
    count: Option<u64>,
) -> Result<(), Failure> {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };
    let conn = open(args, Client::new()).await?;
    // Every call answered (ours or not) is one frame to write: counted
    // here, to know when the last reply has left before closing; each
    // call of `action` is reported once counted.
    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    let (served, mut calls) = tokio::sync::mpsc::unbounded_channel::<()>();
    let ours: Arc<str> = action.into();
    conn.layer(layer_fn(move |msg: Msg, next: Next| {
        let counted = counted.clone();
        let served = served.clone();
        let keyed = msg.key().is_some();
        let mine = msg.action() == &*ours;
        async move {
            let outcome = next.run(msg).await;
            if keyed {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            if mine {
                let _ = served.send(());
            }
            outcome
        }
    }));
    let command: Option<Arc<str>> = command.map(Into::into);
    let handler = move |msg: Msg| {
        let command = command.clone();
        async move {
            let body = json(msg.body());
            match command {
                None => Ok(body),
                Some(command) => run_reply_command(&command, &body).await,
            }
        }
    };
    login(args, &conn).await?;
    match conn.expose(action, handler).await {
        Ok(()) => eprintln!("serving {action} (exposed: the broker's clients' calls come here)"),
        Err(e)
            if e.remote()
                .is_some_and(|r| r.message.starts_with("No handlers for")) =>
        {
            eprintln!("serving {action} (the server has no broker: only the server calls it)")
        }
        Err(e) => return Err(context(&format!("cannot expose {action:?}"), e)),
    }
    let base = (conn.io().frames_out, answered.load(Ordering::SeqCst));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut done = 0u64;
    while count.is_none_or(|n| done < n) {
        tokio::select! {
            call = calls.recv() => match call {
                Some(()) => done += 1,
                None => break,
            },
            _ = conn.closed() => {
                let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
                return Err(Failure::new(exit::CONNECTION, format!("the connection ended: {reason}")));
            }
            _ = &mut interrupted => {
                finish(conn).await;
                return Err(Failure::new(exit::INTERRUPTED, ""));
            }
        }
    }
    // The last reply is queued once its handler returns: wait until every
    // reply counted has been written (within the timeout), then close.
    let written = base.0 + (answered.load(Ordering::SeqCst) - base.1);
    let _ = tokio::time::timeout(args.timeout, async {
        while conn.io().frames_out < written && !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    finish(conn).await;
    Ok(())
}

/// Runs `command` with `body` on its stdin: its stdout as JSON (or as a
/// string), or `drs.error` with its stderr when it fails.
async fn run_reply_command(command: &str, body: &Value) -> Result<Value, drs::HandlerError> {
    use tokio::io::AsyncWriteExt;
    #[cfg(windows)]
    let mut shell = tokio::process::Command::new("cmd");
    #[cfg(windows)]
    shell.arg("/C");
    #[cfg(not(windows))]
    let mut shell = tokio::process::Command::new("sh");
    #[cfg(not(windows))]
    shell.arg("-c");
    let mut child = shell
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A call cancelled or past its deadline stops its command.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| drs::HandlerError::new(format!("cannot run `{command}`: {e}")))?;
    let mut input = serde_json::to_vec(body).unwrap_or_default();
    input.push(b'\n');
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input may close it first.
        let _ = stdin.write_all(&input).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| drs::HandlerError::new(format!("`{command}` failed: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out
            .status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| c.to_string());
        return Err(drs::HandlerError::new(format!(
            "`{command}` exited with {code}: {}",
            stderr.trim_end()
        )));
    }
    Ok(reply_value(&out.stdout))
}

/// A command's stdout as a reply: JSON when it is, a string otherwise
/// (one trailing newline dropped).
fn reply_value(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(stdout);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        Value::from(text.strip_suffix('\r').unwrap_or(text))
    })
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

#[cfg(test)]
mod tests {
    use super::reply_value;
    use serde_json::json;

    #[test]
    fn a_commands_output_is_json_when_it_is_and_a_string_otherwise() {
        assert_eq!(reply_value(b"{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(reply_value(b"3\n"), json!(3));
        assert_eq!(reply_value(b"HELLO\n"), json!("HELLO"));
        assert_eq!(reply_value(b"two\nlines\n"), json!("two\nlines"));
        assert_eq!(reply_value(b"crlf\r\n"), json!("crlf"));
        assert_eq!(reply_value(b""), json!(""));
    }
}
