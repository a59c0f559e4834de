//! The servers under test, one per process: `drs-bench serve SYSTEM`.
//! Each prints `ready ADDR` on stdout once it listens.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::{Bytes, BytesMut};
use drs_core::{layer_fn, Body, HandlerResult, ItemSink, Next, Server};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

/// Every system a server can be.
pub(crate) const SYSTEMS: &[&str] = &[
    "floor-tcp",
    "floor-ipc",
    "floor-ws",
    "floor-fanout",
    "floor-sink",
    "floor-stream",
    "floor-tls",
    "floor-wss",
    "drs-tcp-json",
    "drs-tcp-json-layer",
    "drs-tcp-json-jailed",
    "drs-tcp-json-broker",
    "drs-tcp-json-durable",
    "drs-tcp-msgpack",
    "drs-ipc-json",
    "drs-ws-json",
    "drs-ws-msgpack",
    "drs-tls-json",
    "drs-wss-json",
    "tarpc-tcp",
    "jsonrpsee-ws",
    "nats-echo",
    "drs-nats-json",
    "redis-echo",
    "drs-redis-json",
];

fn ready(addr: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready {addr}");
    let _ = out.flush();
}

fn socket_path() -> String {
    std::env::temp_dir()
        .join(format!("drs-bench-{}.sock", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

pub(crate) async fn serve(system: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match system {
        "floor-tcp" => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ready(&l.local_addr()?.to_string());
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                tokio::spawn(echo_lines(s));
            }
        }
        "floor-ipc" => {
            let path = socket_path();
            let _ = std::fs::remove_file(&path);
            let l = tokio::net::UnixListener::bind(&path)?;
            ready(&path);
            loop {
                let (s, _) = l.accept().await?;
                tokio::spawn(echo_lines(s));
            }
        }
        "floor-ws" => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ready(&l.local_addr()?.to_string());
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                tokio::spawn(echo_ws(s));
            }
        }
        "floor-fanout" | "floor-sink" => floor_fanout().await,
        "floor-tls" | "floor-wss" => {
            let tls = server_tls()?;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ready(&l.local_addr()?.to_string());
            let ws = system == "floor-wss";
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Ok((s, _)) = tls.accept(s).await else {
                        return;
                    };
                    if ws {
                        echo_ws(s).await
                    } else {
                        echo_lines(s).await
                    }
                });
            }
        }
        "floor-stream" => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ready(&l.local_addr()?.to_string());
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                tokio::spawn(stream_lines(s));
            }
        }
        "drs-tcp-json"
        | "drs-tcp-json-layer"
        | "drs-tcp-json-jailed"
        | "drs-tcp-json-broker"
        | "drs-tcp-json-durable"
        | "drs-tcp-msgpack"
        | "drs-ipc-json"
        | "drs-ws-json"
        | "drs-ws-msgpack"
        | "drs-tls-json"
        | "drs-wss-json"
        | "drs-nats-json"
        | "drs-redis-json" => drs_server(system).await,
        "nats-echo" => nats_echo().await,
        "redis-echo" => redis_echo().await,
        "tarpc-tcp" => tarpc_server().await,
        "jsonrpsee-ws" => jsonrpsee_server().await,
        other => Err(format!("unknown system {other}; one of {SYSTEMS:?}").into()),
    }
}

/// The floor: echo every complete line back, unparsed, one write per read.
async fn echo_lines<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(last) = memchr::memrchr(b'\n', &buf) {
            let lines = buf.split_to(last + 1);
            if s.write_all(&lines).await.is_err() {
                return;
            }
        }
    }
}

/// The stream floor: after the first line (a streamed call), write
/// `drs.next` lines carrying its body back to back, 64 KiB at a time, until
/// the peer goes; whatever else the peer sends (credit) is read and dropped.
async fn stream_lines(s: tokio::net::TcpStream) {
    let (mut rd, mut wr) = s.into_split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let first = loop {
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(end) = memchr::memchr(b'\n', &buf) {
            break buf.split_to(end + 1);
        }
    };
    let body = crate::load::field(&first, br#""body":"#).unwrap_or(b"null");
    let mut line = br#"{"key":"1","action":"drs.next","body":"#.to_vec();
    line.extend_from_slice(body);
    line.extend_from_slice(b"}\n");
    let batch = Bytes::from(line.repeat((64 * 1024 / line.len()).max(1)));
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut rd, &mut sink).await;
    });
    while wr.write_all(&batch).await.is_ok() {}
}

/// The TLS settings of the TLS servers: the certificate the orchestrator
/// made for `localhost` (`DRS_BENCH_TLS_DIR`).
fn server_tls() -> Result<drs_tls::ServerTls, Box<dyn std::error::Error + Send + Sync>> {
    let dir = std::env::var("DRS_BENCH_TLS_DIR").map_err(|_| "DRS_BENCH_TLS_DIR is not set")?;
    let dir = std::path::Path::new(&dir);
    Ok(
        drs_tls::ServerTls::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?
            .build()?,
    )
}

/// The WebSocket floor: echo every text message, flushing once per batch.
async fn echo_ws<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(msg)) = rx.next().await {
        if !msg.is_text() {
            continue;
        }
        if tx.feed(msg).await.is_err() {
            return;
        }
        while let Some(Some(Ok(msg))) = rx.next().now_or_never() {
            if msg.is_text() && tx.feed(msg).await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

/// The fan-out floor: a task per connection writing what its bounded queue
/// holds; `bench.broadcast` lines are sent to every connection as one
/// shared buffer. Also counts `bench.fire` lines (the fire floor).
async fn floor_fanout() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    ready(&l.local_addr()?.to_string());
    let conns: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>> = Arc::default();
    // Connections that subscribed (pub/sub goes to these only).
    let subscribers: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>> = Arc::default();
    let fired = Arc::new(AtomicU64::new(0));
    loop {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        let (mut rd, mut wr) = s.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        conns.lock().unwrap().push(tx.clone());
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some(first) = rx.recv().await {
                out.extend_from_slice(&first);
                while let Ok(more) = rx.try_recv() {
                    out.extend_from_slice(&more);
                }
                if wr.write_all(&out.split()).await.is_err() {
                    return;
                }
            }
        });
        let conns = conns.clone();
        let subscribers = subscribers.clone();
        let fired = fired.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some(end) = memchr::memchr(b'\n', &buf) {
                    let line = buf.split_to(end + 1);
                    const BCAST: &[u8] = br#"{"action":"bench.broadcast","body":"#;
                    const PUBLISH: &[u8] =
                        br#"{"action":"drs.publish","body":{"topic":"news","body":"#;
                    if line.starts_with(PUBLISH) {
                        // `{"action":"news","body":X}`: X without the
                        // publish's closing brace.
                        let x = &line[PUBLISH.len()..line.len() - 2];
                        let mut frame = BytesMut::from(&br#"{"action":"news","body":"#[..]);
                        frame.extend_from_slice(x);
                        frame.extend_from_slice(b"\n");
                        let frame = frame.freeze();
                        for c in subscribers.lock().unwrap().iter() {
                            let _ = c.try_send(frame.clone());
                        }
                    } else if line.starts_with(BCAST) {
                        let mut frame = BytesMut::from(&br#"{"action":"news","body":"#[..]);
                        frame.extend_from_slice(&line[BCAST.len()..]);
                        let frame = frame.freeze();
                        for c in conns.lock().unwrap().iter() {
                            let _ = c.try_send(frame.clone());
                        }
                    } else if line.starts_with(br#"{"key":"s","action":"drs.subscribe""#) {
                        subscribers.lock().unwrap().push(tx.clone());
                        let reply = "{\"key\":\"s\",\"action\":\"drs.response\"}\n";
                        let _ = tx.send(Bytes::from(reply)).await;
                    } else if line.starts_with(br#"{"key""#) {
                        // A call (ping or count): answer with the fire count.
                        let key = crate::load::find_key(&line).unwrap_or(0);
                        let n = fired.load(Ordering::Relaxed);
                        let reply = format!(
                            "{{\"key\":\"{key}\",\"action\":\"drs.response\",\"body\":{n}}}\n"
                        );
                        let _ = tx.send(Bytes::from(reply)).await;
                    } else {
                        fired.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

async fn drs_server(system: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // DRS_BENCH_STATS=0 turns the server's statistics off, to measure
    // what they cost (README, Performance).
    let stats = std::env::var("DRS_BENCH_STATS").map_or(true, |v| v != "0");
    let server = Server::new();
    if stats {
        drs_stats::Stats::install(&server);
    }
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    let fired = Arc::new(AtomicU64::new(0));
    let f = fired.clone();
    server.on("bench.fire", move || {
        f.fetch_add(1, Ordering::Relaxed);
        async { HandlerResult::Ok(()) }
    });
    server.on("bench.count", move || {
        let n = fired.load(Ordering::Relaxed);
        async move { HandlerResult::Ok(n) }
    });
    let fanout = server.clone();
    server.on("bench.broadcast", move |body: Body| {
        let n = fanout.broadcast("news", &body);
        async move { HandlerResult::Ok(n?) }
    });
    // Streams its body as items, as fast as the caller's credit allows,
    // until the caller cancels.
    server.on("bench.stream", |item: String, items: ItemSink| async move {
        let ended: HandlerResult<()> = loop {
            if let Err(e) = items.send(&item).await {
                break Err(e.into());
            }
        };
        ended
    });
    if system == "drs-tcp-json-layer" {
        // What one layer on every route costs: the smallest one there is.
        server.layer(layer_fn(|msg, next: Next| next.run(msg)));
    }
    if system == "drs-tcp-json-jailed" {
        // What drs-auth's gate costs on every command: each connection is
        // authenticated by a connect hook (as a trusted network would
        // be), and every command passes the server's and its role's jails.
        use drs_auth::{ConnAuth, Identity, Jail, ServerAuth};
        server.jail(Jail::new(["echo", "bench.*"])?);
        server.jail_role("bench", Jail::new(["echo", "bench.*"])?);
        server.on_connect(|conn: drs_core::Conn| async move {
            conn.authenticate_as(Identity::new("bench").role("bench"));
            Ok::<(), String>(())
        });
    }
    let store = (system == "drs-tcp-json-durable")
        .then(|| std::env::temp_dir().join(format!("drs-bench-store-{}", std::process::id())));
    let broker = match system {
        "drs-tcp-json-broker" | "drs-tcp-json-durable" => {
            let mut config = drs_broker::BrokerConfig::default();
            if let Some(dir) = &store {
                let _ = std::fs::remove_dir_all(dir);
                config = config.store(dir);
            }
            Some(drs_broker::Broker::attach(&server, config)?)
        }
        _ => None,
    };
    let json = drs_protocol_json::Json;
    let msgpack = drs_protocol_msgpack::MsgPack;
    let addr = match system {
        "drs-tcp-json"
        | "drs-tcp-json-layer"
        | "drs-tcp-json-jailed"
        | "drs-tcp-json-broker"
        | "drs-tcp-json-durable" => server.listen(
            drs_transport_tcp::TcpListener::bind("127.0.0.1:0").await?,
            json,
        )?,
        "drs-tcp-msgpack" => server.listen(
            drs_transport_tcp::TcpListener::bind("127.0.0.1:0").await?,
            msgpack,
        )?,
        "drs-ipc-json" => {
            server.listen(drs_transport_ipc::IpcListener::bind(socket_path())?, json)?
        }
        "drs-ws-json" => server.listen(
            drs_transport_ws::WsListener::bind("127.0.0.1:0").await?,
            json,
        )?,
        "drs-ws-msgpack" => server.listen(
            drs_transport_ws::WsListener::bind("127.0.0.1:0").await?,
            msgpack,
        )?,
        "drs-tls-json" => server.listen(
            drs_tls::TlsListener::bind("127.0.0.1:0", server_tls()?).await?,
            json,
        )?,
        "drs-wss-json" => server.listen(
            drs_transport_ws::WsListener::bind("127.0.0.1:0")
                .await?
                .tls(server_tls()?),
            json,
        )?,
        "drs-nats-json" => {
            let url = broker_url(NATS_URL)?;
            let nats = async_nats::connect(&url).await?;
            server.listen(
                drs_transport_nats::NatsListener::bind(&nats, "bench").await?,
                json,
            )?;
            format!("{url}|bench")
        }
        "drs-redis-json" => {
            let url = broker_url(REDIS_URL)?;
            let listener = drs_transport_redis::RedisListener::bind(&url, "bench", json).await?;
            server.listen(listener, json)?;
            format!("{url}|bench")
        }
        _ => unreachable!("checked by the caller"),
    };
    if broker.is_some() {
        // One named subscriber of `durable.>`, retroactive and away: every
        // publication there is stored for it.
        let conn = drs_transport_tcp::connect(&addr, drs_protocol_json::Json).await?;
        let _: serde_json::Value = conn
            .call("drs.identify", serde_json::json!({"name": "archive"}))
            .await?;
        let _: serde_json::Value = conn
            .call(
                "drs.subscribe",
                serde_json::json!({"topic": "durable.>", "retroactive": true}),
            )
            .await?;
        conn.close();
    }
    ready(&addr);
    std::future::pending::<()>().await;
    Ok(())
}

/// The tarpc service: echo a string.
#[tarpc::service]
pub(crate) trait Bench {
    /// Returns its argument.
    async fn echo(payload: String) -> String;
}

#[derive(Clone)]
struct BenchServer;

impl Bench for BenchServer {
    async fn echo(self, _: tarpc::context::Context, payload: String) -> String {
        payload
    }
}

async fn tarpc_server() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tarpc::server::{BaseChannel, Channel};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    ready(&l.local_addr()?.to_string());
    loop {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        let framed =
            tokio_util::codec::Framed::new(s, tokio_util::codec::LengthDelimitedCodec::new());
        let transport = tarpc::serde_transport::new(framed, tokio_serde::formats::Json::default());
        let channel = BaseChannel::with_defaults(transport);
        tokio::spawn(
            channel
                .execute(BenchServer.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                }),
        );
    }
}

async fn jsonrpsee_server() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_connections(20_000)
        .build();
    let server = jsonrpsee::server::Server::builder()
        .set_config(config)
        .build("127.0.0.1:0")
        .await?;
    let mut module = jsonrpsee::RpcModule::new(());
    module.register_method("echo", |params, _, _| params.one::<String>())?;
    let addr = server.local_addr()?;
    let handle = server.start(module);
    ready(&addr.to_string());
    handle.stopped().await;
    Ok(())
}

/// The environment variables the orchestrator sets to its brokers' URLs.
pub(crate) const NATS_URL: &str = "DRS_BENCH_NATS";
pub(crate) const REDIS_URL: &str = "DRS_BENCH_REDIS";

fn broker_url(var: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    std::env::var(var).map_err(|_| format!("{var} is not set (the orchestrator sets it)").into())
}

/// The NATS floor: a plain request/reply echo on `bench.echo`.
async fn nats_echo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use futures::StreamExt;
    let url = broker_url(NATS_URL)?;
    let nats = async_nats::connect(&url).await?;
    let mut sub = nats
        .queue_subscribe("bench.echo", "bench.echo".to_string())
        .await?;
    nats.flush().await?;
    ready(&format!("{url}|bench.echo"));
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            nats.publish(reply, msg.payload).await?;
        }
    }
    Ok(())
}

/// The Redis floor: a list-queue echo. Requests are `<reply list>\n<payload>`
/// on `bench:queue`; each payload is pushed to its reply list.
async fn redis_echo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use drs_transport_redis::redis;
    let url = broker_url(REDIS_URL)?;
    let client = redis::Client::open(url.as_str())?;
    let blocking = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut popper = client
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;
    let pusher = client.get_multiplexed_async_connection().await?;
    ready(&format!("{url}|bench:queue"));
    loop {
        let (_, entry): (String, Vec<u8>) = redis::cmd("BLPOP")
            .arg("bench:queue")
            .arg(0)
            .query_async(&mut popper)
            .await?;
        let Some(nl) = entry.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let mut pusher = pusher.clone();
        // The reply is written while the next request is popped.
        tokio::spawn(async move {
            let _: redis::RedisResult<()> = redis::cmd("RPUSH")
                .arg(&entry[..nl])
                .arg(&entry[nl + 1..])
                .query_async(&mut pusher)
                .await;
        });
    }
}
