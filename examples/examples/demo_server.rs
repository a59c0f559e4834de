//! The demo server: `echo`, `add`, `sleep`, `fail`, `kaboom`, `shout`,
//! `ask_back`, `count`, `cached_time`, `pooled_sleep` and `session` (see
//! [`examples::demo_actions`]), on any number of transports at once.
//!
//! ```text
//! cargo run --example demo_server                                  # TCP on 127.0.0.1:12000, JSON
//! cargo run --example demo_server -- --tcp 127.0.0.1:12000 --ws 127.0.0.1:12001 --ipc /tmp/drs-demo.sock
//! cargo run --example demo_server -- --tcp 127.0.0.1:0 --protocol msgpack --tcp 127.0.0.1:0
//! cargo run --example demo_server -- --listen tcp://127.0.0.1:0 --listen ws://127.0.0.1:0?protocol=msgpack
//! ```
//!
//! `--listen URL` takes the URLs `drs serve --listen` takes (`drs serve
//! --demo` serves the same actions); `--tcp ADDR`, `--ws ADDR` and `--ipc
//! PATH` are short for `--listen tcp://ADDR` and so on. `--protocol
//! json|msgpack` sets the protocol of the listeners that follow it
//! (default json; `?protocol=` sets one listener's), so one server can
//! serve JSON and MessagePack clients together; they see each other's
//! `shout`s. Port 0 picks a free port. Each listener prints `listening
//! URL` on stdout as it binds, the URL a client dials (`listening
//! tcp://127.0.0.1:41234`, with `?protocol=msgpack` when it is not JSON),
//! as `drs serve` does. Ctrl-C shuts down gracefully.
//!
//! `--nats nats://HOST:PORT --service NAME` makes it one worker of service
//! `NAME` on NATS (subject and queue group `drs.NAME`); start several and
//! they share the calls; `--redis redis://HOST:PORT/DB --service NAME`
//! the same through Redis lists. Broker flags count as listeners: with any
//! listener flag, no default TCP port is opened.
//!
//! Every limit of the server can be set from the command line, so each can
//! be tried from a shell (`demo_server --help` lists them with defaults).

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use drs_auth::{Jail, ListenerTokens, ServerAuth};
use drs_broker::{Broker, BrokerConfig};
use drs_broker::{NatsBroker, NatsBrokerConfig};
use drs_core::{Protocol, Server, ServerConfig};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_rembus::Rembus;
use drs_tls::{ServerTls, TlsListener};
use drs_transport_ipc::IpcListener;
use drs_transport_nats::{async_nats, NatsListener};
use drs_transport_redis::{RedisConfig, RedisListener};
use drs_transport_tcp::{Keepalive, TcpListener};
use drs_transport_ws::{WsConfig, WsListener};
use examples::{default_server_name, demo_actions_named, init_tracing};

const USAGE: &str =
    "usage: demo_server [--protocol json|msgpack] [--listen URL] [--tcp ADDR] [--ws ADDR] [--ipc PATH] ... [LIMITS]
  default: --listen tcp://127.0.0.1:12000 (JSON); --protocol applies to the listeners after it
  --listen URL                tcp://, ws://, tls://, wss://, ipc://PATH, nats://HOST:PORT/SERVICE,
                              redis://HOST:PORT/DB/SERVICE; ?protocol=msgpack (as `drs serve`)
  --tcp ADDR, --ws ADDR, --ipc PATH   short for --listen tcp://ADDR, ws://ADDR, ipc://PATH
  each listener prints `listening URL` once bound (the URL a client dials)

limits (durations in seconds, fractions allowed; 0 turns an optional one off):
  --idle-timeout SECS         close connections idle this long            (default: off)
  --frame-timeout SECS        a started frame must finish within this     (default: 30)
  --admission-timeout SECS    on_connect hooks must finish within this    (default: 10)
  --write-stall-timeout SECS  drop a peer that takes nothing this long    (default: 30)
  --handler-timeout SECS      stop handlers running longer than this      (default: off)
  --keepalive SECS            TCP keepalive: silence before probing       (default: 30)
                              (then a probe every 10 s; 3 unanswered end it)
  --max-connections N         connections at once                         (default: 10000)
  --memory-budget BYTES       bytes held for all peers together           (default: 268435456)
                              (unfinished frames, commands waiting)
  --max-outbound BYTES        bytes waiting to be written, per connection (default: 33554432)
  --max-frame BYTES           largest frame accepted or sent              (default: 8388608)
  --slow-admission MS         a demo connect hook that takes this long    (default: 0)
  --name NAME                 the server's name, as `session` answers     (default: HOSTNAME:PID)

brokers (each counts as a listener):
  --nats URL                  serve as a NATS service: subject and queue group drs.SERVICE
                              (any number of demo_servers share it), printed as
                              `listening nats://HOST:PORT/SERVICE`; pub/sub goes through NATS
                              subjects drs.SERVICE.topic.>, retroactive topics of named
                              components through JetStream (stream DRS_SERVICE) if enabled
  --redis redis://HOST:PORT/DB  serve as a Redis service: workers share the list
                              drs:{SERVICE}:queue; `listening redis://HOST:PORT/DB/SERVICE`
  --idempotent ACTIONS        actions a dead --redis worker's successor may run again
                              (comma-separated; others are answered \"worker lost\")
  --service NAME              the service name of --nats and --redis      (default: demo)
  --cerbas redis://HOST:PORT/DB  serve unmodified Cerbas clients through that Redis database
                              (Cerbas's dev setup uses 1): hello, echo, sum, withargs,
                              witherror, slow, asyncfunc, halt; `listening cerbas://HOST:PORT/DB`
  --cerbas-crontab FILE       run the Cerbas requests of a crontab file
                              (`<cron expression> | <request JSON>`, UTC, reloaded on change)

pub/sub (on every listener: drs.subscribe, drs.publish, drs.expose; docs/PROTOCOL.md §2):
  --rembus ADDR               serve Rembus components (CBOR over WebSocket) on ADDR,
                              printed as `listening rembus://ADDR`
  --store DIR                 keep retroactive topics and names' state here (redb)
                              (default: TMPDIR/drs-demo/NAME, printed as `store PATH`)

operations:
  --stats ADDR                serve statistics over HTTP on ADDR: Prometheus at /metrics, a live
                              dashboard at /; printed as `listening http://ADDR` (drs.stats is
                              served on every listener too)
  --crontab FILE              run the drs commands of a crontab (`<cron expression> | <command
                              JSON>`, e.g. `*/5 * * * * | {\"action\": \"echo\", \"body\": 1}`;
                              UTC; 6 fields start with seconds); reloaded on change, a bad line
                              logged with its number and skipped
  --watch DIR                 call `file_changed` {\"path\", \"kind\"} when a file under DIR is
                              created, changed or removed (debounced 200 ms): logged and
                              broadcast to every client

security:
  --tls-cert FILE --tls-key FILE  the --tcp and --ws listeners after them speak TLS
                              (PEM chain and key): `listening tls://ADDR`, `listening wss://ADDR`
  --tls-client-ca FILE        and require a client certificate signed by this CA (mutual TLS)
  --token TOKEN               every listener (--rembus included) requires drs.auth
                              {\"token\": TOKEN} (or ?token=TOKEN on WebSocket); the admission
                              timeout is the deadline to authenticate; 5 failures a minute
                              per address; only drs.auth and drs.ping are served before
  --public                    the next listener is served without the token (explicit:
                              never the default)
  --jail PATTERNS             allowlist of actions for every connection (comma-separated;
                              `billing.*` is a prefix); others get \"action not allowed\"";

enum Bind {
    /// TCP, over TLS when settings are given.
    Tcp(String, Option<ServerTls>),
    /// WebSocket, `wss://` when TLS settings are given.
    Ws(String, Option<ServerTls>),
    Ipc(String),
    /// Rembus components, over WebSocket.
    Rembus(String),
    /// A NATS service: the server's URL, and the service name when the
    /// listener gave one (`--service` otherwise).
    Nats(String, Option<String>),
    /// Cerbas clients through Redis: the URL with its database.
    Cerbas(String),
    /// A Redis service: the URL, and the service name when the listener
    /// gave one (`--service` otherwise).
    Redis(String, Option<String>),
}

/// What to listen on, each with its protocol, and the limits.
struct Settings {
    /// Each listener with its protocol and the token it requires.
    binds: Vec<(Bind, Arc<dyn Protocol>, Option<String>)>,
    jail: Option<Jail>,
    config: ServerConfig,
    keepalive: Option<Keepalive>,
    slow_admission: Duration,
    /// What `session` answers as the server's name.
    name: String,
    /// The broker's durable store.
    store: Option<PathBuf>,
    /// Where to serve /metrics and the dashboard.
    stats: Option<String>,
    /// A crontab of drs commands.
    crontab: Option<PathBuf>,
    /// A directory whose changes fire `file_changed`.
    watch: Option<PathBuf>,
    /// The service name on NATS.
    service: String,
    /// The crontab of Cerbas mode.
    cerbas_crontab: Option<PathBuf>,
    /// Actions a dead Redis worker's successor may run again.
    idempotent: Vec<String>,
}

fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag}: `{v}` is not a number of seconds"))
}

/// An optional duration: 0 turns it off.
fn optional(flag: &str, v: &str) -> Result<Option<Duration>, String> {
    seconds(flag, v).map(|d| (!d.is_zero()).then_some(d))
}

fn count(flag: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag}: `{v}` is not a positive whole number"))
}

fn parse(args: impl Iterator<Item = String>) -> Result<Settings, String> {
    let mut protocol: Arc<dyn Protocol> = Arc::new(Json);
    let mut binds = Vec::new();
    let mut config = ServerConfig::default();
    let mut keepalive = Some(Keepalive::default());
    let mut slow_admission = Duration::ZERO;
    let mut name = None;
    let mut token: Option<String> = None;
    // Listeners open despite the token (`--public` before them).
    let mut public = Vec::new();
    let mut next_public = false;
    let (mut tls_cert, mut tls_key, mut tls_ca) = (None::<String>, None::<String>, None::<String>);
    let mut jail = None;
    let mut store = None;
    let mut stats = None;
    let mut crontab = None;
    let mut watch = None;
    let mut service = "demo".to_string();
    let mut cerbas_crontab = None;
    let mut idempotent = Vec::new();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let f = flag.as_str();
        let c = &mut config.conn;
        match f {
            "--idle-timeout" => c.idle_timeout = optional(f, &value()?)?,
            "--frame-timeout" => c.frame_timeout = optional(f, &value()?)?,
            "--admission-timeout" => c.admission_timeout = seconds(f, &value()?)?,
            "--write-stall-timeout" => c.write_stall_timeout = optional(f, &value()?)?,
            "--handler-timeout" => c.handler_timeout = optional(f, &value()?)?,
            "--keepalive" => {
                keepalive = optional(f, &value()?)?.map(|idle| Keepalive::default().idle(idle))
            }
            "--max-connections" => config.max_connections = count(f, &value()?)?,
            "--memory-budget" => config.memory_budget = count(f, &value()?)?,
            "--max-outbound" => c.max_outbound = count(f, &value()?)?,
            "--max-frame" => c.max_frame_len = count(f, &value()?)?,
            "--slow-admission" => {
                slow_admission = Duration::from_millis(count(f, &value()?)? as u64)
            }
            "--name" => name = Some(value()?),
            "--store" => store = Some(PathBuf::from(value()?)),
            "--stats" => stats = Some(value()?),
            "--crontab" => crontab = Some(PathBuf::from(value()?)),
            "--watch" => watch = Some(PathBuf::from(value()?)),
            "--token" => {
                let t = value()?;
                if t.is_empty() {
                    return Err("--token: the token is empty".into());
                }
                if token.is_some() {
                    return Err("--token: given twice (it applies to every listener)".into());
                }
                token = Some(t);
            }
            "--jail" => jail = Some(Jail::parse(&value()?).map_err(|e| format!("--jail: {e}"))?),
            "--tls-cert" => tls_cert = Some(value()?),
            "--tls-key" => tls_key = Some(value()?),
            "--tls-client-ca" => tls_ca = Some(value()?),
            "--public" => next_public = true,
            "--tcp" => {
                let addr = value()?;
                let tls = server_tls(tls_cert.as_deref(), tls_key.as_deref(), tls_ca.as_deref())?;
                {
                    public.push(std::mem::take(&mut next_public));
                    binds.push((Bind::Tcp(addr, tls), protocol.clone(), None))
                }
            }
            "--ws" => {
                let addr = value()?;
                let tls = server_tls(tls_cert.as_deref(), tls_key.as_deref(), tls_ca.as_deref())?;
                {
                    public.push(std::mem::take(&mut next_public));
                    binds.push((Bind::Ws(addr, tls), protocol.clone(), None))
                }
            }
            "--listen" => {
                let url = value()?;
                let tls = server_tls(tls_cert.as_deref(), tls_key.as_deref(), tls_ca.as_deref())?;
                let (bind, listener_protocol) = listen_url(&url, tls, &protocol)?;
                public.push(std::mem::take(&mut next_public));
                binds.push((bind, listener_protocol, None))
            }
            "--ipc" => {
                public.push(std::mem::take(&mut next_public));
                binds.push((Bind::Ipc(value()?), protocol.clone(), None))
            }
            "--rembus" => {
                public.push(std::mem::take(&mut next_public));
                binds.push((Bind::Rembus(value()?), Arc::new(Rembus), None))
            }
            "--nats" => {
                public.push(std::mem::take(&mut next_public));
                binds.push((Bind::Nats(value()?, None), protocol.clone(), None))
            }
            "--cerbas" => {
                public.push(std::mem::take(&mut next_public));
                binds.push((Bind::Cerbas(value()?), protocol.clone(), None))
            }
            "--cerbas-crontab" => cerbas_crontab = Some(PathBuf::from(value()?)),
            "--redis" => {
                public.push(std::mem::take(&mut next_public));
                binds.push((Bind::Redis(value()?, None), protocol.clone(), None))
            }
            "--idempotent" => idempotent.extend(value()?.split(',').map(|a| a.trim().to_string())),
            "--service" => {
                service = checked_service(&value()?).map_err(|e| format!("--service: {e}"))?;
            }
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
    if next_public {
        return Err("--public: goes before the listener it opens".into());
    }
    if binds.is_empty() {
        let tls = server_tls(tls_cert.as_deref(), tls_key.as_deref(), tls_ca.as_deref())?;
        public.push(false);
        binds.push((Bind::Tcp("127.0.0.1:12000".into(), tls), protocol, None));
    }
    // The token is the server's: every listener that serves commands
    // requires it, but those marked --public (Cerbas clients have no way
    // to present one; they are served by a server of their own).
    for ((bind, _, required), open) in binds.iter_mut().zip(public) {
        if !open && !matches!(bind, Bind::Cerbas(_)) {
            required.clone_from(&token);
        }
    }
    Ok(Settings {
        binds,
        config,
        keepalive,
        slow_admission,
        name: name.unwrap_or_else(default_server_name),
        jail,
        store,
        stats,
        crontab,
        watch,
        service,
        cerbas_crontab,
        idempotent,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing("info");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match parse(args.into_iter()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let server = Server::with_config(settings.config);
    // Statistics: drs.stats, and what the dashboard and /metrics show.
    drs_stats::Stats::install(&server);
    // Its name and listeners, for drs.stats and the dashboard's header.
    let info = drs_stats::ServerInfo::install(&server, settings.name.clone());
    // Pub/sub and broker RPC, with exposers served before the demo's own
    // handlers of the same name.
    let store = settings.store.clone().unwrap_or_else(|| {
        let dir: String = settings
            .name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        std::env::temp_dir().join("drs-demo").join(dir)
    });
    let config = BrokerConfig::default()
        .store(&store)
        .formats(drs::registry());
    let broker = match Broker::attach(&server, config) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    announce(&format!("store {}", store.display()));
    drs_rembus::attach(&server, &broker);
    demo_actions_named(&server, settings.name.clone());
    tracing::info!(name = %settings.name, "demo server");
    let slow = settings.slow_admission;
    server.on_connect(move |conn| async move {
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
        tracing::info!(
            id = conn.id(),
            transport = conn.info().transport,
            peer = conn.peer_addr(),
            "client connected"
        );
        Ok::<_, std::convert::Infallible>(())
    });
    server.on_disconnect(|conn| {
        let reason = conn
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_default();
        tracing::info!(id = conn.id(), %reason, "client disconnected")
    });

    if let Some(jail) = settings.jail {
        tracing::info!(%jail, "every connection is jailed");
        server.jail(jail);
    }
    // The token each listener requires, by its address (known once bound).
    let tokens = settings
        .binds
        .iter()
        .any(|(_, _, token)| token.is_some())
        .then(|| ListenerTokens::install(&server));

    // Statistics: /metrics for Prometheus and the live dashboard at /.
    let _endpoint = match &settings.stats {
        Some(addr) => match drs_metrics::serve(&server, addr).await {
            Ok(endpoint) => {
                announce(&format!("listening http://{}", endpoint.addr()));
                Some(endpoint)
            }
            Err(e) => {
                eprintln!("cannot serve statistics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    // Tasks: a crontab of drs commands, a watched directory. They run
    // through an in-process connection, which any token lets through.
    let _tasks = if settings.crontab.is_some() || settings.watch.is_some() {
        let tasks = match drs_tasks::Tasks::attach(&server).await {
            Ok(tasks) => tasks,
            Err(e) => {
                eprintln!("cannot start tasks: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(tokens) = &tokens {
            tokens.set(tasks.local_addr(), None);
        }
        if let Some(path) = &settings.crontab {
            tasks.crontab(path, drs_tasks::chrono_tz::UTC);
            tracing::info!(path = %path.display(), "crontab");
        }
        if let Some(dir) = &settings.watch {
            // What changed is logged and broadcast to every client.
            let broadcaster = server.clone();
            server.on("file_changed", move |body: drs_core::Body| {
                let server = broadcaster.clone();
                async move {
                    tracing::info!(?body, "file changed");
                    drs_core::HandlerResult::Ok(server.broadcast_body("file_changed", &body))
                }
            });
            if let Err(e) = tasks.watch(dir, "file_changed", Duration::from_millis(200)) {
                eprintln!("--watch: {e}");
                return ExitCode::FAILURE;
            }
            tracing::info!(dir = %dir.display(), "watching");
        }
        Some(tasks)
    } else {
        None
    };

    let keepalive = settings.keepalive;
    // Cerbas workers and NATS bridges run while these live.
    let mut cerbas = Vec::new();
    let mut nats_brokers = Vec::new();
    for (bind, protocol, token) in settings.binds {
        let msgpack = protocol.name() == "msgpack";
        let (kind, asked, bound, shown) = match bind {
            Bind::Tcp(addr, None) => {
                let bound = match TcpListener::bind(&addr).await {
                    Ok(l) => server.listen_arc(l.keepalive(keepalive), protocol),
                    Err(e) => Err(e),
                };
                ("tcp", addr, bound, None)
            }
            Bind::Tcp(addr, Some(tls)) => {
                let bound = match TlsListener::bind(&addr, tls).await {
                    Ok(l) => server.listen_arc(l.keepalive(keepalive), protocol),
                    Err(e) => Err(e),
                };
                ("tls", addr, bound, None)
            }
            Bind::Ws(addr, tls) => {
                let ws = WsConfig::default().tcp_keepalive(keepalive);
                let kind = if tls.is_some() { "wss" } else { "ws" };
                let bound = match WsListener::bind_with(&addr, ws).await {
                    Ok(l) => {
                        let l = examples::with_browser_page(l);
                        let l = match tls {
                            Some(tls) => l.tls(tls),
                            None => l,
                        };
                        server.listen_arc(l, protocol)
                    }
                    Err(e) => Err(e),
                };
                (kind, addr, bound, None)
            }
            Bind::Ipc(path) => {
                let bound =
                    IpcListener::bind(path.clone()).and_then(|l| server.listen_arc(l, protocol));
                ("ipc", path, bound, None)
            }
            Bind::Rembus(addr) => {
                let bound = drs_rembus::listen(&server, &addr).await;
                ("rembus", addr, bound, None)
            }
            Bind::Nats(url, service) => {
                let service = service.unwrap_or_else(|| settings.service.clone());
                let options = async_nats::ConnectOptions::new()
                    .name(format!("drs demo_server {}", settings.name));
                let bound = match options.connect(url.as_str()).await {
                    Ok(nats) => match NatsListener::bind(&nats, &service).await {
                        Ok(l) => {
                            // Pub/sub across every worker of the service,
                            // through NATS; retroactive topics in JetStream
                            // when the server has it.
                            let joined = NatsBroker::attach_or_plain(
                                &server,
                                &broker,
                                &nats,
                                &service,
                                NatsBrokerConfig::default(),
                            )
                            .await;
                            match joined {
                                Ok(b) => {
                                    nats_brokers.push(b);
                                    server.listen_arc(l, protocol)
                                }
                                Err(e) => Err(e),
                            }
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let shown = format!("{url}/{service}");
                ("nats", url, bound, Some(shown))
            }
            Bind::Redis(url, service) => {
                let service = service.unwrap_or_else(|| settings.service.clone());
                let config = RedisConfig::default().idempotent(settings.idempotent.clone());
                let bound =
                    RedisListener::bind_with(&url, &service, protocol.clone(), config).await;
                let bound = bound.and_then(|l| server.listen_arc(l, protocol));
                let shown = format!("{url}/{service}");
                ("redis", url, bound, Some(shown))
            }
            Bind::Cerbas(url) => {
                // The Cerbas functions are drs handlers on a server of their
                // own (Cerbas's `echo` is not the demo's).
                let (functions, worker) =
                    examples::cerbas_demo(&url, settings.cerbas_crontab.clone());
                let bound = match worker.start(&functions).await {
                    Ok(handle) => {
                        cerbas.push((functions, handle));
                        Ok(url.clone())
                    }
                    Err(e) => Err(std::io::Error::other(e)),
                };
                // Cerbas's clients use the Redis database itself.
                let shown = url.replacen("redis://", "cerbas://", 1);
                ("cerbas", url, bound, Some(shown))
            }
        };
        match bound {
            Ok(addr) => {
                if let Some(tokens) = &tokens {
                    tokens.set(addr.clone(), token);
                }
                // The URL a client dials, as `drs serve` prints it.
                let url = shown.unwrap_or_else(|| format!("{kind}://{addr}"));
                let suffix = if msgpack && kind != "rembus" && kind != "cerbas" {
                    "?protocol=msgpack"
                } else {
                    ""
                };
                info.listening(format!("{url}{suffix}"));
                announce(&format!("listening {url}{suffix}"))
            }
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
    if let Err(e) = broker.close().await {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The TLS settings for the listeners that follow `--tls-cert` and
/// `--tls-key` (with `--tls-client-ca`: mutual TLS).
fn server_tls(
    cert: Option<&str>,
    key: Option<&str>,
    client_ca: Option<&str>,
) -> Result<Option<ServerTls>, String> {
    let (cert, key) = match (cert, key) {
        (None, None) if client_ca.is_none() => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
            )
        }
    };
    let mut builder =
        ServerTls::from_pem_files(cert, key).map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    if let Some(ca) = client_ca {
        builder = builder
            .require_client_cert_file(ca)
            .map_err(|e| format!("--tls-client-ca: {e}"))?;
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))
}

/// Prints a line on stdout and flushes it (tests read it through a pipe).
/// A `--listen URL` listener: the same URLs as `drs serve --listen`
/// (`?protocol=` picks the listener's protocol).
fn listen_url(
    url: &str,
    tls: Option<ServerTls>,
    protocol: &Arc<dyn Protocol>,
) -> Result<(Bind, Arc<dyn Protocol>), String> {
    let parsed = drs::Url::parse(url).map_err(|e| format!("--listen: {e}"))?;
    let protocol: Arc<dyn Protocol> = match parsed.param("protocol") {
        None => protocol.clone(),
        Some("json") => Arc::new(Json),
        Some("msgpack") => Arc::new(MsgPack),
        Some(other) => {
            return Err(format!(
                "--listen {url}: unknown protocol `{other}` (json or msgpack)"
            ))
        }
    };
    let target = parsed.target.clone();
    let secure = |tls: Option<ServerTls>| {
        tls.ok_or_else(|| format!("--listen {url}: needs --tls-cert and --tls-key before it"))
    };
    let service = |what: &str| {
        let (host, rest) = target
            .split_once('/')
            .ok_or_else(|| format!("--listen {url}: {what}"))?;
        Ok::<_, String>((host.to_string(), rest.to_string()))
    };
    let bind = match parsed.scheme.as_str() {
        "tcp" => Bind::Tcp(target, None),
        "tls" => Bind::Tcp(target, Some(secure(tls)?)),
        "ws" => Bind::Ws(target, None),
        "wss" => Bind::Ws(target, Some(secure(tls)?)),
        "ipc" => Bind::Ipc(target),
        "nats" => {
            let (host, name) = service("nats://HOST:PORT/SERVICE")?;
            let name = checked_service(&name).map_err(|e| format!("--listen {url}: {e}"))?;
            Bind::Nats(format!("nats://{host}"), Some(name))
        }
        "redis" => {
            let (host, rest) = service("redis://HOST:PORT/DB/SERVICE")?;
            let (db, name) = rest
                .split_once('/')
                .ok_or_else(|| format!("--listen {url}: redis://HOST:PORT/DB/SERVICE"))?;
            let name = checked_service(name).map_err(|e| format!("--listen {url}: {e}"))?;
            Bind::Redis(format!("redis://{host}/{db}"), Some(name))
        }
        other => {
            return Err(format!(
                "--listen {url}: unknown scheme `{other}` (tcp, ws, tls, wss, ipc, nats, redis)"
            ))
        }
    };
    Ok((bind, protocol))
}

/// A service name both NATS and Redis accept.
fn checked_service(name: &str) -> Result<String, String> {
    drs_transport_nats::check_service(name)
        .and_then(|()| drs_transport_redis::check_service(name))
        .map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
