//! drs side by side with tarpc, jsonrpsee and the raw-socket floor.
//!
//! ```text
//! cargo run --release -p drsrpc-bench            # every scenario, a few minutes; table + target/drs-bench.json
//! cargo run -p drsrpc-bench -- --smoke           # a fraction of a second per scenario (CI)
//! ```
//!
//! Options: `--duration SECS` (default 3), `--warmup SECS` (default 0.5),
//! `--no-pin` (do not pin the server and the load generator to separate
//! cores), `--json PATH`, `--only TEXT` (scenarios whose name contains TEXT).
//!
//! The orchestrator starts each server in its own process (`serve SYSTEM`)
//! pinned to core 0 and the load generator in another (`load ...`) pinned to
//! core 1, both single-threaded, and compares rates measured in the same run.
//!
//! Scenarios: calls (C connections × K in flight, 64 B and 16 KiB) over TCP,
//! WebSocket and IPC, with a row for the same drs server with one no-op
//! [`layer_fn`](drs_core::layer_fn) around every route; streamed replies
//! (items/s through one stream and through 32 on one connection, each
//! granting credit as it reads, against a floor that writes the same lines
//! back to back and ignores credit); TLS over TCP and `wss://` against
//! the same echo floors inside rustls; broadcast; pub/sub fan-out to 1, 100
//! and 1,000 subscribers against the same fan-out floor; confirmed
//! publishes stored for a retroactive subscriber, in memory and in the
//! redb store; calls through NATS (drs over NATS against a raw async-nats
//! request/reply echo) and through Redis (drs over Redis lists against a
//! raw list-queue echo), on servers started on free ports, skipped where
//! not installed; fire; idle memory.

// A command-line tool: its output is the point.
#![allow(clippy::print_stdout)]

mod load;
mod servers;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => runtime().block_on(servers::serve(args.get(1).map_or("", |s| s.as_str()))),
        Some("load") => run_load(&args[1..]),
        _ => orchestrate(&args),
    };
    if let Err(e) = result {
        eprintln!("drs-bench: {e}");
        std::process::exit(1);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Res<T> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("load: bad or missing {name}").into())
}

/// `load MODE ADDR ...`: prints one JSON object.
fn run_load(args: &[String]) -> Res<()> {
    let mode = args.first().ok_or("load: missing mode")?.clone();
    let addr: String = arg(args, 1, "address")?;
    let rt = runtime();
    let report = rt.block_on(async {
        match mode.as_str() {
            "idle" => load::idle(&addr, arg(args, 2, "conns")?).await,
            _ => {
                let warmup = Duration::from_secs_f64(arg(args, 2, "warmup")?);
                let duration = Duration::from_secs_f64(arg(args, 3, "duration")?);
                let window = load::Window::new(warmup, duration);
                match mode.as_str() {
                    "broadcast" | "publish" => {
                        load::broadcast(
                            &addr,
                            arg(args, 4, "clients")?,
                            arg(args, 5, "payload")?,
                            8,
                            mode == "publish",
                            window,
                        )
                        .await
                    }
                    "stream-lines" | "stream-rust" => {
                        load::streams(
                            &mode,
                            &addr,
                            arg(args, 4, "streams")?,
                            arg(args, 5, "window")?,
                            arg(args, 6, "payload")?,
                            window,
                        )
                        .await
                    }
                    "fire" => {
                        load::fire(
                            &addr,
                            arg(args, 4, "conns")?,
                            arg(args, 5, "payload")?,
                            window,
                        )
                        .await
                    }
                    client => {
                        let conns = arg(args, 4, "conns")?;
                        let inflight = arg(args, 5, "in flight")?;
                        let payload = arg(args, 6, "payload")?;
                        load::calls(client, &addr, conns, inflight, payload, window).await
                    }
                }
            }
        }
    })?;
    println!("{report}");
    Ok(())
}

struct Opts {
    smoke: bool,
    duration: f64,
    warmup: f64,
    pin: bool,
    json: PathBuf,
    only: Option<String>,
}

fn parse_opts(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        smoke: false,
        duration: 3.0,
        warmup: 0.5,
        pin: true,
        json: PathBuf::from("target/drs-bench.json"),
        only: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--no-pin" => o.pin = false,
            "--duration" => o.duration = value()?.parse()?,
            "--warmup" => o.warmup = value()?.parse()?,
            "--json" => o.json = PathBuf::from(value()?),
            "--only" => o.only = Some(value()?.clone()),
            "run" => {}
            other => return Err(format!("unknown option {other} (see the crate docs)").into()),
        }
    }
    if o.smoke {
        o.duration = o.duration.min(0.3);
        o.warmup = o.warmup.min(0.1);
    }
    Ok(o)
}

struct Harness {
    exe: PathBuf,
    pin: bool,
}

impl Harness {
    fn command(&self, core: usize, args: &[&str]) -> Command {
        let mut cmd = if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(&self.exe);
            c
        } else {
            Command::new(&self.exe)
        };
        cmd.args(args);
        cmd
    }

    /// Starts a server; returns it and the address it printed.
    fn server(&self, system: &str) -> Res<(Child, String)> {
        let mut child = self
            .command(0, &["serve", system])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let line = read_line(&mut child, Duration::from_secs(30))?;
        let addr = line
            .strip_prefix("ready ")
            .ok_or_else(|| format!("{system}: unexpected line {line:?}"))?
            .to_string();
        Ok((child, addr))
    }

    /// Runs the load generator to completion; returns its report.
    fn load(&self, args: &[&str]) -> Res<Value> {
        let out = self
            .command(1, &[&["load"], args].concat())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("load {args:?} failed").into());
        }
        let text = String::from_utf8(out.stdout)?;
        Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
    }
}

fn read_line(child: &mut Child, limit: Duration) -> Res<String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep the pipe open (and drained) for the child's lifetime.
        let mut rest = String::new();
        while reader.read_line(&mut rest).unwrap_or(0) > 0 {
            rest.clear();
        }
    });
    Ok(rx.recv_timeout(limit)?.trim().to_string())
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
    // A durable server's store (named by its pid; killed, it cannot
    // remove it itself).
    let store = std::env::temp_dir().join(format!("drs-bench-store-{}", child.id()));
    let _ = std::fs::remove_dir_all(store);
}

fn rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

/// One measured row.
struct Row {
    group: &'static str,
    scenario: String,
    system: &'static str,
    result: Value,
}

/// (label in the table, server system, load client)
const TCP_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-tcp", "lines"),
    ("drs json", "drs-tcp-json", "lines"),
    ("drs msgpack", "drs-tcp-msgpack", "msgpack"),
    ("drs json, Rust client", "drs-tcp-json", "drs-rust"),
    ("drs json, no-op layer", "drs-tcp-json-layer", "lines"),
    (
        "drs json, jailed (drs-auth)",
        "drs-tcp-json-jailed",
        "lines",
    ),
    ("tarpc json", "tarpc-tcp", "tarpc"),
];
const WS_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-ws", "ws-text"),
    ("drs json", "drs-ws-json", "ws-text"),
    ("drs msgpack", "drs-ws-msgpack", "ws-msgpack"),
    ("jsonrpsee", "jsonrpsee-ws", "jsonrpc-ws"),
];
const STREAM_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-stream", "stream-lines"),
    ("drs json", "drs-tcp-json", "stream-lines"),
    ("drs json, Rust client", "drs-tcp-json", "stream-rust"),
];
/// (streams on one connection, window): one stream moves about half a
/// window per round trip, so it is shown with 16 items, drs's default of
/// 64, and 256.
const STREAM_SHAPES: &[(usize, u32)] = &[(1, 16), (1, 64), (1, 256), (32, 64)];
/// TLS over TCP and WebSocket, against the same echo floors inside rustls.
const TLS_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-tls", "lines-tls"),
    ("drs json", "drs-tls-json", "lines-tls"),
];
const WSS_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-wss", "wss-text"),
    ("drs json", "drs-wss-json", "wss-text"),
];
const IPC_SYSTEMS: &[(&str, &str, &str)] = &[
    ("floor", "floor-ipc", "lines-ipc"),
    ("drs json", "drs-ipc-json", "lines-ipc"),
];

/// (label in the table, server system, load client) for each system of a
/// group.
type Systems = &'static [(&'static str, &'static str, &'static str)];

/// Through brokers: the raw request/reply of each against drs over it.
const NATS_SYSTEMS: &[(&str, &str, &str)] = &[
    ("nats raw", "nats-echo", "nats-raw"),
    ("drs json over nats", "drs-nats-json", "drs-nats"),
];
const REDIS_SYSTEMS: &[(&str, &str, &str)] = &[
    ("redis raw", "redis-echo", "redis-raw"),
    ("drs json over redis", "drs-redis-json", "drs-redis"),
];

/// Runs a call scenario (`shape`: warm-up, duration, connections, in
/// flight, payload) against each of `systems`, one server at a time.
fn calls(
    h: &Harness,
    rows: &mut Vec<Row>,
    group: &'static str,
    scenario: &str,
    systems: &[(&'static str, &str, &str)],
    shape: &[String; 5],
) -> Res<()> {
    for &(label, system, client) in systems {
        let (server, addr) = h.server(system)?;
        let mut args = vec![client, addr.as_str()];
        args.extend(shape.iter().map(String::as_str));
        let result = h.load(&args);
        stop(server);
        let result = result.map_err(|e| format!("{group} {scenario} {label}: {e}"))?;
        eprintln!(
            "{group:9} {scenario:14} {label:22} {:>12.0} calls/s",
            result["rate"].as_f64().unwrap_or(0.0)
        );
        rows.push(Row {
            group,
            scenario: scenario.to_string(),
            system: label,
            result,
        });
    }
    Ok(())
}

fn orchestrate(args: &[String]) -> Res<()> {
    let o = parse_opts(args)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let has_taskset = Command::new("taskset").arg("--version").output().is_ok();
    let h = Harness {
        exe: std::env::current_exe()?,
        pin: o.pin && cores >= 2 && has_taskset,
    };
    let (warm, dur) = (o.warmup.to_string(), o.duration.to_string());
    let wanted = |name: &str| o.only.as_deref().is_none_or(|f| name.contains(f));
    let mut rows = Vec::new();

    let shapes: &[(usize, usize)] = &[(1, 1), (1, 64), (32, 8)];
    let payloads: &[usize] = &[64, 16 * 1024];
    make_pki()?;
    // Through a broker too: drs over NATS against a raw async-nats
    // request/reply echo on the same nats-server, drs over Redis against a
    // raw Redis list-queue echo on the same redis-server (64 B only). The
    // broker runs unpinned beside the two pinned processes.
    let nats = drs_testkit::NatsServer::binary().map(|_| drs_testkit::NatsServer::start(false));
    let redis = drs_testkit::RedisServer::binary().map(|_| drs_testkit::RedisServer::start());
    if let Some(n) = &nats {
        std::env::set_var(servers::NATS_URL, n.url());
    }
    if let Some(r) = &redis {
        std::env::set_var(servers::REDIS_URL, r.url(0));
    }
    let mut groups: Vec<(&'static str, Systems, &[usize])> = vec![
        ("TCP", TCP_SYSTEMS, payloads),
        ("WebSocket", WS_SYSTEMS, payloads),
        ("IPC", IPC_SYSTEMS, payloads),
        ("TLS", TLS_SYSTEMS, payloads),
        ("WSS", WSS_SYSTEMS, payloads),
    ];
    for (group, systems, up) in [
        ("NATS", NATS_SYSTEMS, nats.is_some()),
        ("Redis", REDIS_SYSTEMS, redis.is_some()),
    ] {
        if up {
            groups.push((group, systems, &[64]));
        } else {
            eprintln!("{group}: skipped, its server is not installed");
        }
    }
    for (group, systems, payloads) in groups {
        for &payload in payloads {
            for &(c, k) in shapes {
                let scenario = format!("{c}×{k}, {}", size(payload));
                if !wanted(&format!("{group} {scenario}")) {
                    continue;
                }
                let shape = [
                    warm.clone(),
                    dur.clone(),
                    c.to_string(),
                    k.to_string(),
                    payload.to_string(),
                ];
                calls(&h, &mut rows, group, &scenario, systems, &shape)?;
            }
        }
    }
    drop((nats, redis));

    for &(streams, window) in STREAM_SHAPES {
        let scenario = format!(
            "{streams} stream{}, 64 B, window {window}",
            if streams == 1 { "" } else { "s" }
        );
        if !wanted(&format!("Stream {scenario}")) {
            continue;
        }
        for &(label, system, client) in STREAM_SYSTEMS {
            let (server, addr) = h.server(system)?;
            let (n, w) = (streams.to_string(), window.to_string());
            let result = h.load(&[client, &addr, &warm, &dur, &n, &w, "64"]);
            stop(server);
            let result = result.map_err(|e| format!("Stream {scenario} {label}: {e}"))?;
            eprintln!(
                "stream    {scenario:26} {label:22} {:>12.0} items/s",
                result["rate"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "Stream",
                scenario: scenario.clone(),
                system: label,
                result,
            });
        }
    }

    let clients = if o.smoke { 50 } else { 1000 };
    let clients_s = clients.to_string();
    if wanted("broadcast") {
        for (label, system) in [("floor", "floor-fanout"), ("drs json", "drs-tcp-json")] {
            let (server, addr) = h.server(system)?;
            let result = h.load(&["broadcast", &addr, &warm, &dur, &clients_s, "64"]);
            stop(server);
            let result = result?;
            eprintln!(
                "broadcast {label:22} {:>12.0} deliveries/s",
                result["rate"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "Broadcast",
                scenario: format!("64 B to {clients} clients"),
                system: label,
                result,
            });
        }
    }
    // Pub/sub: deliveries/s to 1, 100 and 1,000 subscribers of a topic,
    // against the fan-out floor (the same lines written to every socket).
    let fanouts: &[usize] = if o.smoke {
        &[1, 10, 50]
    } else {
        &[1, 100, 1000]
    };
    for &subs in fanouts {
        let scenario = format!(
            "64 B to {subs} subscriber{}",
            if subs == 1 { "" } else { "s" }
        );
        if !wanted(&format!("PubSub {scenario}")) {
            continue;
        }
        for (label, system) in [
            ("floor", "floor-fanout"),
            ("drs json", "drs-tcp-json-broker"),
        ] {
            let (server, addr) = h.server(system)?;
            let result = h.load(&["publish", &addr, &warm, &dur, &subs.to_string(), "64"]);
            stop(server);
            let result = result.map_err(|e| format!("PubSub {scenario} {label}: {e}"))?;
            eprintln!(
                "pubsub    {scenario:24} {label:22} {:>12.0} deliveries/s",
                result["rate"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "PubSub",
                scenario: scenario.clone(),
                system: label,
                result,
            });
        }
    }
    // Confirmed publishes stored for a named retroactive subscriber, in
    // memory and in the redb store (4 connections × 16 in flight).
    let scenario = "4×16, 64 B, stored for 1 name";
    if wanted(&format!("Durable {scenario}")) {
        for (label, system) in [
            ("drs json, memory", "drs-tcp-json-broker"),
            ("drs json, redb store", "drs-tcp-json-durable"),
        ] {
            let (server, addr) = h.server(system)?;
            let result = h.load(&["publish-lines", &addr, &warm, &dur, "4", "16", "64"]);
            stop(server);
            let result = result.map_err(|e| format!("Durable {label}: {e}"))?;
            eprintln!(
                "durable   {label:22} {:>12.0} publications/s",
                result["rate"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "Durable",
                scenario: scenario.into(),
                system: label,
                result,
            });
        }
    }
    if wanted("fire") {
        for (label, system) in [("floor", "floor-sink"), ("drs json", "drs-tcp-json")] {
            let (server, addr) = h.server(system)?;
            let result = h.load(&["fire", &addr, &warm, &dur, "4", "64"]);
            stop(server);
            let result = result?;
            eprintln!(
                "fire      {label:22} {:>12.0} fires/s",
                result["rate"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "Fire",
                scenario: "4 conns, 64 B".into(),
                system: label,
                result,
            });
        }
    }
    let idle_conns = if o.smoke { 200 } else { 10_000 };
    if wanted("idle") {
        for (label, system) in [("floor", "floor-tcp"), ("drs json", "drs-tcp-json")] {
            let result = idle(&h, system, idle_conns)?;
            eprintln!(
                "idle      {label:22} {:>12.0} bytes/conn",
                result["per_conn_bytes"].as_f64().unwrap_or(0.0)
            );
            rows.push(Row {
                group: "Idle",
                scenario: format!("{idle_conns} TCP connections"),
                system: label,
                result,
            });
        }
    }

    let table = render(&rows);
    println!("{table}");
    let verdicts = targets(&rows);
    if o.smoke {
        println!(
            "(smoke mode: every system and scenario ran end to end; the figures mean nothing)"
        );
    } else {
        for v in &verdicts {
            println!("{v}");
        }
    }
    let doc = json!({
        "machine": machine(),
        "pinned": h.pin,
        "duration_s": o.duration,
        "smoke": o.smoke,
        "rows": rows.iter().map(|r| json!({
            "group": r.group, "scenario": r.scenario, "system": r.system, "result": r.result,
        })).collect::<Vec<_>>(),
        "targets": verdicts,
    });
    if let Some(dir) = o.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.json, serde_json::to_string_pretty(&doc)?)?;
    println!("results written to {}", o.json.display());
    Ok(())
}

/// Makes a CA and a certificate for `localhost` for the TLS scenarios, in
/// a temporary directory the server and load processes find through
/// `DRS_BENCH_TLS_DIR`.
fn make_pki() -> Res<()> {
    use drs_tls::test_pki::{TestCa, Usage};
    let ca = TestCa::new("drs-bench CA");
    let (cert, key) = ca.issue("localhost", &["localhost"], Usage::Server, false);
    let dir = std::env::temp_dir().join(format!("drs-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), cert)?;
    std::fs::write(dir.join("server.key"), key)?;
    // Read by the child processes this one starts (it has no threads yet
    // that read the environment).
    std::env::set_var("DRS_BENCH_TLS_DIR", &dir);
    Ok(())
}

/// Server RSS growth per connection with `n` idle connections.
fn idle(h: &Harness, system: &str, n: usize) -> Res<Value> {
    let (server, addr) = h.server(system)?;
    let pid = server.id();
    let _ = h.load(&["idle", &addr, "1"]);
    let before = rss_kib(pid)?;
    let mut load = h
        .command(1, &["load", "idle", &addr, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = read_line(&mut load, Duration::from_secs(120))?;
    if !line.starts_with("connected") {
        stop(load);
        stop(server);
        return Err(format!("idle load: {line:?}").into());
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib(pid)?;
    drop(load.stdin.take());
    stop(load);
    stop(server);
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    Ok(
        json!({ "conns": n, "rss_before_kib": before, "rss_after_kib": after, "per_conn_bytes": per_conn, "rate": per_conn }),
    )
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({ "cpu": cpu, "cores": std::thread::available_parallelism().map_or(1, |n| n.get()) })
}

fn find<'a>(rows: &'a [Row], group: &str, scenario: &str, system: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r.group == group && r.scenario == scenario && r.system == system)
        .map(|r| &r.result)
}

fn num(v: Option<&Value>, field: &str) -> Option<f64> {
    v.and_then(|v| v[field].as_f64())
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut last = ("", String::new());
    let peer_of = |group: &str| match group {
        "TLS" | "WSS" => None,
        "TCP" => Some("tarpc json"),
        "WebSocket" => Some("jsonrpsee"),
        "NATS" => Some("nats raw"),
        "Redis" => Some("redis raw"),
        _ => None,
    };
    for r in rows {
        if (r.group, r.scenario.clone()) != (last.0, last.1.clone()) {
            let (unit, extra) = match r.group {
                "Broadcast" => ("deliveries/s", "reach all p50"),
                "Fire" => ("fires/s", ""),
                "Idle" => ("bytes/conn", ""),
                "Stream" => ("items/s", ""),
                _ => ("calls/s", "p50 µs   p99 µs"),
            };
            let peer = peer_of(r.group)
                .map(|p| format!("{:>14}", format!("×{p}")))
                .unwrap_or_default();
            out.push_str(&format!(
                "\n{} — {}\n  {:24} {:>13} {:>8}{}  {}\n",
                r.group, r.scenario, "system", unit, "×floor", peer, extra
            ));
            last = (r.group, r.scenario.clone());
        }
        let rate = num(Some(&r.result), "rate").unwrap_or(0.0);
        let floor = num(find(rows, r.group, &r.scenario, "floor"), "rate");
        let vs_floor = floor
            .map(|f| format!("{:.2}", rate / f))
            .unwrap_or_default();
        let vs_peer = peer_of(r.group)
            .and_then(|p| num(find(rows, r.group, &r.scenario, p), "rate"))
            .map(|p| format!("{:.2}", rate / p))
            .unwrap_or_default();
        let lat = match (
            num(Some(&r.result), "p50_us"),
            num(Some(&r.result), "p99_us"),
        ) {
            (Some(a), Some(_)) if r.group == "Broadcast" => format!("{a:.0} µs"),
            (Some(a), Some(b)) => format!("{a:>7.1} {b:>8.1}"),
            _ => String::new(),
        };
        let peer_col = if peer_of(r.group).is_some() {
            format!("{vs_peer:>14}")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:24} {:>13.0} {:>8}{}  {}\n",
            r.system, rate, vs_floor, peer_col, lat
        ));
    }
    out
}

fn targets(rows: &[Row]) -> Vec<String> {
    let mut v = Vec::new();
    let rate = |g: &str, s: &str, sys: &str| num(find(rows, g, s, sys), "rate");
    let p50 = |g: &str, s: &str, sys: &str| num(find(rows, g, s, sys), "p50_us");
    let mut check = |name: String, value: Option<f64>, goal: &str, ok: fn(f64) -> bool| {
        let line = match value {
            Some(x) => format!(
                "{} {name}: {x:.2} (target {goal})",
                if ok(x) { "MET " } else { "MISS" }
            ),
            None => format!("---- {name}: not measured"),
        };
        v.push(line);
    };
    for s in ["1×64, 64 B", "32×8, 64 B"] {
        let drs = rate("TCP", s, "drs json");
        check(
            format!("TCP {s} drs/floor"),
            drs.zip(rate("TCP", s, "floor")).map(|(a, b)| a / b),
            "≥ 0.5",
            |x| x >= 0.5,
        );
        check(
            format!("TCP {s} drs/tarpc"),
            drs.zip(rate("TCP", s, "tarpc json")).map(|(a, b)| a / b),
            "≥ 3",
            |x| x >= 3.0,
        );
        let drs = rate("WebSocket", s, "drs json");
        check(
            format!("WS {s} drs/floor"),
            drs.zip(rate("WebSocket", s, "floor")).map(|(a, b)| a / b),
            "≥ 0.5",
            |x| x >= 0.5,
        );
        check(
            format!("WS {s} drs/jsonrpsee"),
            drs.zip(rate("WebSocket", s, "jsonrpsee"))
                .map(|(a, b)| a / b),
            "≥ 3",
            |x| x >= 3.0,
        );
    }
    for g in ["TCP", "WebSocket"] {
        let s = "1×1, 64 B";
        check(
            format!("{g} {s} p50 drs/floor"),
            p50(g, s, "drs json")
                .zip(p50(g, s, "floor"))
                .map(|(a, b)| a / b),
            "≤ 1.25",
            |x| x <= 1.25,
        );
    }
    for s in ["1×64, 64 B", "32×8, 64 B"] {
        check(
            format!("TCP {s} no-op layer/none"),
            rate("TCP", s, "drs json, no-op layer")
                .zip(rate("TCP", s, "drs json"))
                .map(|(a, b)| a / b),
            "≥ 0.95, the noise",
            |x| x >= 0.95,
        );
    }
    let s = "1×64, 64 B";
    check(
        format!("TCP {s} drs Rust client/floor"),
        rate("TCP", s, "drs json, Rust client")
            .zip(rate("TCP", s, "floor"))
            .map(|(a, b)| a / b),
        "≥ 0.35",
        |x| x >= 0.35,
    );
    let b = rows
        .iter()
        .find(|r| r.group == "Broadcast")
        .map(|r| r.scenario.clone())
        .unwrap_or_default();
    check(
        "broadcast drs/floor deliveries".into(),
        rate("Broadcast", &b, "drs json")
            .zip(rate("Broadcast", &b, "floor"))
            .map(|(a, b)| a / b),
        "≥ 0.5",
        |x| x >= 0.5,
    );
    for subs in ["1 subscriber", "100 subscribers", "1000 subscribers"] {
        let s = format!("64 B to {subs}");
        check(
            format!("pub/sub {s} drs/floor deliveries"),
            rate("PubSub", &s, "drs json")
                .zip(rate("PubSub", &s, "floor"))
                .map(|(a, b)| a / b),
            "≥ 0.5",
            |x| x >= 0.5,
        );
    }
    let i = rows
        .iter()
        .find(|r| r.group == "Idle")
        .map(|r| r.scenario.clone())
        .unwrap_or_default();
    check(
        "idle TCP connection, KiB of server RSS".into(),
        num(find(rows, "Idle", &i, "drs json"), "per_conn_bytes").map(|b| b / 1024.0),
        "≤ 16",
        |x| x <= 16.0,
    );
    v
}
