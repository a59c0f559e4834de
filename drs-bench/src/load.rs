//! The load generator, in its own process: `drs-bench load MODE ...`.
//!
//! Closed loop: C connections, K calls in flight on each; a reply's key is
//! the time its request was sent (ns since the generator started), so
//! matching a reply needs no table and gives the latency directly. Writes
//! are batched: every reply read in one go is answered with one write.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout_at,
};
use tokio_tungstenite::tungstenite::Message;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Every reply received, in or out of the measuring window (for counting
/// the server's instructions per call under a profiler).
static REPLIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ts() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// The measuring window: replies before `warm` and after `end` do not count.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    warm: Instant,
    end: Instant,
}

impl Window {
    pub(crate) fn new(warmup: Duration, duration: Duration) -> Self {
        let warm = Instant::now() + warmup;
        Self {
            warm,
            end: warm + duration,
        }
    }

    fn counts(&self, at: Instant) -> bool {
        at >= self.warm && at < self.end
    }
}

/// What a call load run reports.
fn report(hists: Vec<Histogram<u64>>, window: Window) -> serde_json::Value {
    let mut all = histogram();
    for h in hists {
        all.add(h).expect("same bounds");
    }
    let secs = (window.end - window.warm).as_secs_f64();
    json!({
        "calls": all.len(),
        "secs": secs,
        "rate": all.len() as f64 / secs,
        "p50_us": all.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_us": all.value_at_quantile(0.99) as f64 / 1000.0,
        "replies": REPLIES.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// The key of a JSON line (`"key":"123"`), as a number.
pub(crate) fn find_key(line: &[u8]) -> Option<u64> {
    number_after(line, br#""key":""#)
}

/// The string value after `needle` in a JSON line, quotes included (the
/// benchmark's payloads hold no escapes).
pub(crate) fn field<'a>(line: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(line, needle)? + needle.len();
    let rest = line.get(at..)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let end = memchr::memchr(b'"', &rest[1..])? + 2;
    Some(&rest[..end])
}

fn number_after(haystack: &[u8], needle: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(haystack, needle)? + needle.len();
    let digits = haystack[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n * 10 + u64::from(d - b'0');
        any = true;
    }
    any.then_some(n)
}

fn push_json_call(out: &mut BytesMut, key: u64, payload: &str) {
    out.put_slice(br#"{"key":""#);
    out.put_slice(key.to_string().as_bytes());
    out.put_slice(br#"","action":"echo","body":""#);
    out.put_slice(payload.as_bytes());
    out.put_slice(b"\"}\n");
}

/// A confirmed publish on `durable.bench`, stored for the broker's one
/// named retroactive subscriber (see `drs-bench serve drs-tcp-json-broker`).
fn push_json_publish(out: &mut BytesMut, key: u64, payload: &str) {
    out.put_slice(br#"{"key":""#);
    out.put_slice(key.to_string().as_bytes());
    out.put_slice(br#"","action":"drs.publish","body":{"topic":"durable.bench","body":""#);
    out.put_slice(payload.as_bytes());
    out.put_slice(b"\"}}\n");
}

/// `{"key": key, "action": "echo", "body": payload}` as MessagePack.
fn msgpack_call(key: u64, payload: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 48);
    m.push(0x83);
    for (k, v) in [
        ("key", key.to_string().as_str()),
        ("action", "echo"),
        ("body", payload),
    ] {
        write_str(&mut m, k);
        write_str(&mut m, v);
    }
    m
}

fn write_str(m: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        m.push(0xa0 | n as u8);
    } else if n < 256 {
        m.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        m.push(0xda);
        m.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        m.push(0xdb);
        m.extend_from_slice(&(n as u32).to_be_bytes());
    }
    m.extend_from_slice(s.as_bytes());
}

/// The key of a MessagePack reply: drs writes `key` first.
fn msgpack_key(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(&[0x83])?.strip_prefix(b"\xa3key")?;
    let (len, digits) = match *rest.first()? {
        m @ 0xa0..=0xbf => (usize::from(m & 0x1f), &rest[1..]),
        0xd9 => (usize::from(*rest.get(1)?), &rest[2..]),
        _ => return None,
    };
    std::str::from_utf8(digits.get(..len)?).ok()?.parse().ok()
}

/// A call load: `client` is how requests are written and replies read.
pub(crate) async fn calls(
    client: &str,
    addr: &str,
    conns: usize,
    inflight: usize,
    payload: usize,
    window: Window,
) -> Res<serde_json::Value> {
    let payload = "x".repeat(payload);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let payload = payload.clone();
        let task: tokio::task::JoinHandle<Res<Vec<Histogram<u64>>>> = match client {
            "lines" | "msgpack" | "publish-lines" => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                let kind = match client {
                    "msgpack" => Request::MsgPack,
                    "publish-lines" => Request::Publish,
                    _ => Request::Echo,
                };
                tokio::spawn(async move {
                    stream_loop(r, w, inflight, payload, kind, window)
                        .await
                        .map(|h| vec![h])
                })
            }
            "lines-ipc" => {
                let s = tokio::net::UnixStream::connect(addr).await?;
                let (r, w) = s.into_split();
                tokio::spawn(async move {
                    stream_loop(r, w, inflight, payload, Request::Echo, window)
                        .await
                        .map(|h| vec![h])
                })
            }
            "lines-tls" => {
                let s = tls_connect(addr).await?;
                let (r, w) = tokio::io::split(s);
                tokio::spawn(async move {
                    stream_loop(r, w, inflight, payload, Request::Echo, window)
                        .await
                        .map(|h| vec![h])
                })
            }
            "wss-text" => {
                let s = tls_connect(addr).await?;
                let (ws, _) = tokio_tungstenite::client_async("wss://localhost/socket", s).await?;
                tokio::spawn(async move {
                    ws_loop(ws, "ws-text", inflight, payload, window)
                        .await
                        .map(|h| vec![h])
                })
            }
            "ws-text" | "ws-msgpack" | "jsonrpc-ws" => {
                let url = format!("ws://{addr}/socket");
                let (ws, _) =
                    tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await?;
                let kind = client.to_string();
                tokio::spawn(async move {
                    ws_loop(ws, &kind, inflight, payload, window)
                        .await
                        .map(|h| vec![h])
                })
            }
            "drs-rust" => {
                let conn = drs_transport_tcp::connect(addr, drs_protocol_json::Json).await?;
                tokio::spawn(async move { drs_client(conn, inflight, payload, window).await })
            }
            "drs-nats" => {
                let (url, service) = addr.split_once('|').ok_or("URL|service")?;
                let nats = async_nats::connect(url).await?;
                let dialer = drs_transport_nats::NatsDialer::new(nats, service);
                let conn = drs_core::Client::new()
                    .connect(dialer, drs_protocol_json::Json)
                    .await?;
                tokio::spawn(async move { drs_client(conn, inflight, payload, window).await })
            }
            "drs-redis" => {
                let (url, service) = addr.split_once('|').ok_or("URL|service")?;
                let dialer = drs_transport_redis::RedisDialer::new(url, service);
                let conn = drs_core::Client::new()
                    .connect(dialer, drs_protocol_json::Json)
                    .await?;
                tokio::spawn(async move { drs_client(conn, inflight, payload, window).await })
            }
            "nats-raw" => {
                let (url, subject) = addr.split_once('|').ok_or("URL|subject")?;
                let nats = async_nats::connect(url).await?;
                let (subject, payload) = (subject.to_string(), bytes::Bytes::from(payload));
                tokio::spawn(client_loop(inflight, window, move || {
                    let (nats, subject, payload) = (nats.clone(), subject.clone(), payload.clone());
                    async move {
                        let back = nats.request(subject, payload).await?;
                        debug_assert!(!back.payload.is_empty());
                        Ok::<_, async_nats::RequestError>(())
                    }
                }))
            }
            "redis-raw" => {
                use drs_transport_redis::redis;
                let (url, queue) = addr.split_once('|').ok_or("URL|queue")?;
                let client = redis::Client::open(url)?;
                let blocking = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                // Each request in flight waits on a reply list and a
                // connection of its own.
                let mut slots = Vec::new();
                for i in 0..inflight {
                    let conn = client
                        .get_multiplexed_async_connection_with_config(&blocking)
                        .await?;
                    let reply = format!("bench:reply:{}:{i}:{}", std::process::id(), ts());
                    let mut entry = format!("{reply}\n").into_bytes();
                    entry.extend(payload.as_bytes());
                    slots.push((conn, reply, entry));
                }
                let queue = queue.to_string();
                tokio::spawn(async move {
                    let mut hists = Vec::new();
                    let runs: Vec<_> = slots
                        .into_iter()
                        .map(|slot| {
                            let queue = queue.clone();
                            let slot = std::sync::Arc::new(tokio::sync::Mutex::new(slot));
                            client_loop(1, window, move || {
                                let (queue, slot) = (queue.clone(), slot.clone());
                                async move {
                                    let mut slot = slot.lock().await;
                                    let (conn, reply, entry) = &mut *slot;
                                    let entry = entry.clone();
                                    let reply = reply.clone();
                                    redis::cmd("RPUSH")
                                        .arg(&queue)
                                        .arg(entry)
                                        .query_async::<()>(conn)
                                        .await?;
                                    let _: (String, Vec<u8>) = redis::cmd("BLPOP")
                                        .arg(&reply)
                                        .arg(0)
                                        .query_async(conn)
                                        .await?;
                                    Ok::<_, redis::RedisError>(())
                                }
                            })
                        })
                        .collect();
                    for h in futures::future::join_all(runs).await {
                        hists.extend(h?);
                    }
                    Ok(hists)
                })
            }
            "tarpc" => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                tokio::spawn(async move { tarpc_client(s, inflight, payload, window).await })
            }
            other => return Err(format!("unknown client {other}").into()),
        };
        tasks.push(task);
    }
    let mut hists = Vec::new();
    for t in tasks {
        hists.extend(t.await??);
    }
    Ok(report(hists, window))
}

/// What a call load sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    /// `echo` in JSON lines.
    Echo,
    /// `echo` in MessagePack.
    MsgPack,
    /// A confirmed `drs.publish` in JSON lines.
    Publish,
}

async fn stream_loop<R, W>(
    mut rd: R,
    mut wr: W,
    inflight: usize,
    payload: String,
    kind: Request,
    window: Window,
) -> Res<Histogram<u64>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hist = histogram();
    let mut out = BytesMut::with_capacity(inflight * (payload.len() + 64));
    let binary = kind == Request::MsgPack;
    let push = |out: &mut BytesMut, key: u64| match kind {
        Request::MsgPack => {
            let m = msgpack_call(key, &payload);
            out.put_u32(m.len() as u32);
            out.put_slice(&m);
        }
        Request::Echo => push_json_call(out, key, &payload),
        Request::Publish => push_json_publish(out, key, &payload),
    };
    for _ in 0..inflight {
        push(&mut out, ts());
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let deadline = tokio::time::sleep_until(window.end.into());
    tokio::pin!(deadline);
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024 + payload.len());
        }
        // Read and write at once: a large batch must never wait for the
        // peer to read while the peer waits for us to read (deadlock).
        tokio::select! {
            biased;
            () = &mut deadline => return Ok(hist),
            n = wr.write(&out), if !out.is_empty() => {
                let n = n?;
                let _ = out.split_to(n);
                continue;
            }
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err("the server closed the connection".into());
                }
            }
        }
        let now = Instant::now();
        let now_ts = ts();
        loop {
            let key = if binary {
                if buf.len() < 4 {
                    break;
                }
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + len {
                    break;
                }
                let frame = buf.split_to(4 + len);
                msgpack_key(&frame[4..])
            } else {
                let Some(end) = memchr::memchr(b'\n', &buf) else {
                    break;
                };
                let line = buf.split_to(end + 1);
                find_key(&line)
            };
            let Some(sent) = key else {
                return Err("a reply without a key".into());
            };
            REPLIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if window.counts(now) {
                hist.record(now_ts.saturating_sub(sent).max(1))?;
            }
            if now < window.end {
                push(&mut out, now_ts);
            }
        }
    }
}

/// The TLS settings of the load generator: trust the CA the orchestrator
/// made (`DRS_BENCH_TLS_DIR`).
pub(crate) fn client_tls() -> Res<drs_tls::ClientTls> {
    let dir = std::env::var("DRS_BENCH_TLS_DIR").map_err(|_| "DRS_BENCH_TLS_DIR is not set")?;
    Ok(drs_tls::ClientTls::builder()
        .trust_pem_file(std::path::Path::new(&dir).join("ca.pem"))?
        .build()?)
}

/// A TLS connection to `addr`, the certificate checked for `localhost`.
async fn tls_connect(
    addr: &str,
) -> Res<drs_tls::tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(client_tls()?.connect("localhost", tcp).await?.0)
}

async fn ws_loop<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    kind: &str,
    inflight: usize,
    payload: String,
    window: Window,
) -> Res<Histogram<u64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut hist = histogram();
    let (mut tx, mut rx) = ws.split();
    let request = |key: u64| -> Message {
        match kind {
            "ws-msgpack" => Message::Binary(Bytes::from(msgpack_call(key, &payload))),
            "jsonrpc-ws" => Message::text(format!(
                r#"{{"jsonrpc":"2.0","id":{key},"method":"echo","params":["{payload}"]}}"#
            )),
            _ => {
                let mut out = BytesMut::new();
                push_json_call(&mut out, key, &payload);
                out.truncate(out.len() - 1);
                Message::text(String::from_utf8(out.to_vec()).expect("ascii"))
            }
        }
    };
    for _ in 0..inflight {
        tx.feed(request(ts())).await?;
    }
    tx.flush().await?;
    loop {
        let first = match timeout_at(window.end.into(), rx.next()).await {
            Err(_) => return Ok(hist),
            Ok(None) => return Err("the server closed the connection".into()),
            Ok(Some(msg)) => msg?,
        };
        let now = Instant::now();
        let now_ts = ts();
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            let key = match &m {
                Message::Text(t) if kind == "jsonrpc-ws" => number_after(t.as_bytes(), br#""id":"#),
                Message::Text(t) => find_key(t.as_bytes()),
                Message::Binary(b) => msgpack_key(b),
                _ => None,
            };
            if let Some(sent) = key {
                if window.counts(now) {
                    hist.record(now_ts.saturating_sub(sent).max(1))?;
                }
                if now < window.end {
                    tx.feed(request(now_ts)).await?;
                }
            }
            if let Some(Some(next)) = rx.next().now_or_never() {
                msg = Some(next?);
            }
        }
        tx.flush().await?;
        if now >= window.end {
            return Ok(hist);
        }
    }
}

/// `inflight` tasks, each calling `call` in a loop until the window ends:
/// the closed loop for clients that come with their own client library.
async fn client_loop<F, Fut, E>(
    inflight: usize,
    window: Window,
    call: F,
) -> Res<Vec<Histogram<u64>>>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                loop {
                    let start = Instant::now();
                    if start >= window.end {
                        return Ok::<_, E>(hist);
                    }
                    call().await?;
                    let done = Instant::now();
                    if window.counts(done) {
                        let _ = hist.record((done - start).as_nanos() as u64);
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

async fn drs_client(
    conn: drs_core::Conn,
    inflight: usize,
    payload: String,
    window: Window,
) -> Res<Vec<Histogram<u64>>> {
    let payload = std::sync::Arc::new(payload);
    client_loop(inflight, window, move || {
        let (conn, payload) = (conn.clone(), payload.clone());
        async move {
            let back: String = conn.call("echo", &*payload).await?;
            debug_assert_eq!(back.len(), payload.len());
            Ok::<_, drs_core::Error>(())
        }
    })
    .await
}

async fn tarpc_client(
    s: tokio::net::TcpStream,
    inflight: usize,
    payload: String,
    window: Window,
) -> Res<Vec<Histogram<u64>>> {
    use crate::servers::BenchClient;
    let framed = tokio_util::codec::Framed::new(s, tokio_util::codec::LengthDelimitedCodec::new());
    let transport = tarpc::serde_transport::new(framed, tokio_serde::formats::Json::default());
    let client = BenchClient::new(tarpc::client::Config::default(), transport).spawn();
    client_loop(inflight, window, move || {
        let (client, payload) = (client.clone(), payload.clone());
        async move {
            let back = client.echo(tarpc::context::current(), payload).await?;
            debug_assert!(!back.is_empty());
            Ok::<_, tarpc::client::RpcError>(())
        }
    })
    .await
}

/// A raw JSON-lines connection that has been answered once (so the server
/// has admitted it).
async fn admitted(addr: &str) -> Res<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"{\"key\":\"1\",\"action\":\"drs.ping\"}\n")
        .await?;
    let mut byte = [0u8; 1];
    loop {
        if s.read(&mut byte).await? == 0 {
            return Err("closed before answering".into());
        }
        if byte[0] == b'\n' {
            return Ok(s);
        }
    }
}

/// A connection subscribed to `news` (the reply read).
async fn subscribed(addr: &str) -> Res<tokio::net::TcpStream> {
    let mut s = admitted(addr).await?;
    s.write_all(b"{\"key\":\"s\",\"action\":\"drs.subscribe\",\"body\":{\"topic\":\"news\"}}\n")
        .await?;
    let mut reply = Vec::new();
    while !reply.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        if s.read(&mut byte).await? == 0 {
            return Err("closed while subscribing".into());
        }
        reply.push(byte[0]);
    }
    Ok(s)
}

/// Broadcast (or, with `publish`, pub/sub): `clients` connections receive
/// `news` broadcasts (publications) triggered by a control connection. First one broadcast at a time (time for it to reach
/// every client), then `pipeline` at a time (deliveries per second).
pub(crate) async fn broadcast(
    addr: &str,
    clients: usize,
    payload: usize,
    pipeline: usize,
    publish: bool,
    window: Window,
) -> Res<serde_json::Value> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    for _ in 0..clients {
        let s = if publish {
            subscribed(addr).await?
        } else {
            admitted(addr).await?
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut s = s;
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while let Ok(n) = s.read_buf(&mut buf).await {
                if n == 0 {
                    return;
                }
                while let Some(end) = memchr::memchr(b'\n', &buf) {
                    let line = buf.split_to(end + 1);
                    if let Some(round) = number_after(&line, br#""body":"r"#) {
                        let _ = tx.send(round);
                    }
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(16 * 1024);
                }
            }
        });
    }
    let control = admitted(addr).await?;
    let (mut control_rd, mut control) = control.into_split();
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut control_rd, &mut sink).await;
    });
    let filler = "x".repeat(payload.saturating_sub(10));
    let trigger = |round: u64| {
        if publish {
            format!("{{\"action\":\"drs.publish\",\"body\":{{\"topic\":\"news\",\"body\":\"r{round:08}-{filler}\"}}}}\n")
        } else {
            format!("{{\"action\":\"bench.broadcast\",\"body\":\"r{round:08}-{filler}\"}}\n")
        }
    };
    let mut counts = std::collections::HashMap::<u64, usize>::new();
    let mut next_round = 0u64;
    let mut sent_at = std::collections::HashMap::<u64, Instant>::new();

    // Phase 1: one at a time, for the first half: time to reach everyone.
    let half = window.warm + (window.end - window.warm) / 2;
    let mut reach = histogram();
    while Instant::now() < half {
        let round = next_round;
        next_round += 1;
        let start = Instant::now();
        control.write_all(trigger(round).as_bytes()).await?;
        loop {
            let r = timeout_at(window.end.into(), rx.recv())
                .await?
                .ok_or("receivers gone")?;
            let c = counts.entry(r).or_default();
            *c += 1;
            if r == round && *c == clients {
                break;
            }
        }
        if Instant::now() >= window.warm {
            reach.record((Instant::now() - start).as_nanos() as u64)?;
        }
    }

    // Phase 2: `pipeline` broadcasts in flight: deliveries per second.
    let phase2 = Instant::now();
    let mut delivered = 0u64;
    for _ in 0..pipeline {
        sent_at.insert(next_round, Instant::now());
        control.write_all(trigger(next_round).as_bytes()).await?;
        next_round += 1;
    }
    let mut done_at = phase2;
    while let Ok(Some(r)) = timeout_at(window.end.into(), rx.recv()).await {
        delivered += 1;
        let c = counts.entry(r).or_default();
        *c += 1;
        if *c == clients && sent_at.remove(&r).is_some() {
            done_at = Instant::now();
            if done_at < window.end {
                sent_at.insert(next_round, Instant::now());
                control.write_all(trigger(next_round).as_bytes()).await?;
                next_round += 1;
            }
        }
    }
    let secs = (done_at - phase2).as_secs_f64().max(1e-9);
    Ok(json!({
        "clients": clients,
        "rate": delivered as f64 / (window.end - phase2).as_secs_f64(),
        "rounds": next_round,
        "p50_us": reach.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_us": reach.value_at_quantile(0.99) as f64 / 1000.0,
        "busy_secs": secs,
    }))
}

/// Fire: `conns` connections write one-way commands as fast as TCP takes
/// them; the server's count, read before and after, gives the rate.
pub(crate) async fn fire(
    addr: &str,
    conns: usize,
    payload: usize,
    window: Window,
) -> Res<serde_json::Value> {
    let line = format!(
        "{{\"action\":\"bench.fire\",\"body\":\"{}\"}}\n",
        "x".repeat(payload)
    );
    let batch = Bytes::from(line.repeat(64));
    for _ in 0..conns {
        let mut s = admitted(addr).await?;
        let batch = batch.clone();
        tokio::spawn(async move {
            while Instant::now() < window.end {
                if s.write_all(&batch).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut control = admitted(addr).await?;
    tokio::time::sleep_until(window.warm.into()).await;
    let (t0, c0) = fired_count(&mut control).await?;
    tokio::time::sleep_until(window.end.into()).await;
    let (t1, c1) = fired_count(&mut control).await?;
    let secs = (t1 - t0).as_secs_f64();
    Ok(json!({ "calls": c1 - c0, "secs": secs, "rate": (c1 - c0) as f64 / secs }))
}

/// Asks the server how many fires it has served.
async fn fired_count(control: &mut tokio::net::TcpStream) -> Res<(Instant, u64)> {
    control
        .write_all(b"{\"key\":\"2\",\"action\":\"bench.count\"}\n")
        .await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while control.read(&mut byte).await? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let n = number_after(&line, br#""body":"#).ok_or("no count in the reply")?;
    Ok((Instant::now(), n))
}

/// Idle: opens `conns` connections, each answered once, prints `connected`,
/// and holds them until standard input closes.
pub(crate) async fn idle(addr: &str, conns: usize) -> Res<serde_json::Value> {
    let mut held = Vec::with_capacity(conns);
    for chunk in 0..conns.div_ceil(100) {
        let n = (conns - chunk * 100).min(100);
        let batch = futures::future::try_join_all((0..n).map(|_| admitted(addr))).await?;
        held.extend(batch);
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "connected {}", held.len())?;
        out.flush()?;
    }
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = stdin.read_to_end(&mut sink).await;
    Ok(json!({ "conns": held.len() }))
}

/// What a stream load run reports: items received inside the window.
fn stream_report(items: u64, streams: usize, window: Window) -> serde_json::Value {
    let secs = (window.end - window.warm).as_secs_f64();
    json!({ "items": items, "streams": streams, "secs": secs, "rate": items as f64 / secs })
}

/// Streams: `streams` streamed calls of `bench.stream` on one TCP
/// connection, each with a window of `window_items`; counts the items that
/// arrive inside the window.
///
/// `stream-lines` writes the calls and the credit as JSON lines and counts
/// `drs.next` lines (also the client of the stream floor, which ignores the
/// credit); `stream-rust` uses [`drs_core::Conn::call_stream`].
pub(crate) async fn streams(
    client: &str,
    addr: &str,
    streams: usize,
    window_items: u32,
    payload: usize,
    window: Window,
) -> Res<serde_json::Value> {
    let payload = "x".repeat(payload);
    let items = match client {
        "stream-lines" => stream_lines(addr, streams, window_items, &payload, window).await?,
        "stream-rust" => stream_rust(addr, streams, window_items, payload, window).await?,
        other => return Err(format!("unknown stream client {other}").into()),
    };
    Ok(stream_report(items, streams, window))
}

async fn stream_lines(
    addr: &str,
    streams: usize,
    window_items: u32,
    payload: &str,
    window: Window,
) -> Res<u64> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (mut rd, mut wr) = s.into_split();
    let mut out = BytesMut::new();
    for key in 1..=streams {
        out.put_slice(format!(
            "{{\"key\":\"{key}\",\"action\":\"bench.stream\",\"body\":\"{payload}\",\"stream\":{window_items}}}\n"
        ).as_bytes());
    }
    let grant = (window_items / 2).max(1);
    // Items read since the last grant, per key (keys are 1..=streams).
    let mut unthanked = vec![0u32; streams + 1];
    let mut counted = 0u64;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let deadline = tokio::time::sleep_until(window.end.into());
    tokio::pin!(deadline);
    loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        tokio::select! {
            biased;
            () = &mut deadline => return Ok(counted),
            n = wr.write(&out), if !out.is_empty() => {
                let n = n?;
                let _ = out.split_to(n);
                continue;
            }
            r = rd.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err("the server closed the connection".into());
                }
            }
        }
        let counts = window.counts(Instant::now());
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &buf[start..]) {
            let line = &buf[start..start + end + 1];
            start += end + 1;
            let key = find_key(line).map_or(usize::MAX, |k| k as usize);
            if key > streams || memchr::memmem::find(line, b"\"drs.next\"").is_none() {
                return Err(
                    format!("not an item of a stream: {}", String::from_utf8_lossy(line)).into(),
                );
            }
            if counts {
                counted += 1;
            }
            unthanked[key] += 1;
            if unthanked[key] >= grant {
                unthanked[key] = 0;
                out.put_slice(
                    format!("{{\"key\":\"{key}\",\"action\":\"drs.more\",\"body\":{grant}}}\n")
                        .as_bytes(),
                );
            }
        }
        let _ = buf.split_to(start);
    }
}

async fn stream_rust(
    addr: &str,
    streams: usize,
    window_items: u32,
    payload: String,
    window: Window,
) -> Res<u64> {
    let conn = drs_transport_tcp::connect(addr, drs_protocol_json::Json).await?;
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let mut items = conn
                .call_stream::<String>("bench.stream", &payload)
                .window(window_items);
            let len = payload.len();
            tokio::spawn(async move {
                let mut counted = 0u64;
                loop {
                    match timeout_at(window.end.into(), items.next()).await {
                        Err(_) => return Ok::<_, drs_core::Error>(counted),
                        Ok(None) => return Err(drs_core::Error::Closed),
                        Ok(Some(item)) => {
                            let item = item?;
                            debug_assert_eq!(item.len(), len);
                            if window.counts(Instant::now()) {
                                counted += 1;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}
