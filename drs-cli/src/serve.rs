//! `drs serve`: a server from a TOML file (listeners with their transport,
//! protocol, TLS and token; limits; a jail; the pub/sub broker and its
//! store; `nats://` listeners join the service's other workers' brokers),
//! or the demo actions with `--demo`.

use drs::ServerAuth;
use std::{path::PathBuf, time::Duration};

use drs::{
    broker::{Broker, BrokerConfig},
    Jail, ListenerTokens, Server, ServerConfig,
};
use serde::Deserialize;

use crate::exit::{self, Failure};

pub(crate) const HELP: &str = "\
Examples:
  drs serve --demo                                   # the demo actions on tcp://127.0.0.1:12000
  drs serve --demo --listen tcp://127.0.0.1:0 --listen ws://127.0.0.1:0
  drs serve drs.toml                                 # listeners, limits, tokens from a file
  drs serve drs.toml --demo --timeout 10             # plus the demo actions; 10 s to drain
  drs serve --demo --listen 'tls://0.0.0.0:12443?cert=cert.pem&key=key.pem'

The file (a commented example: drs-cli/drs.example.toml):

  name = \"orders\"
  jail = [\"echo\", \"orders.*\"]        # actions any connection may call
  [limits]
  max_connections = 10000
  handler_timeout = 30               # seconds; 0 = off
  [broker]                           # pub/sub: drs.subscribe, drs.publish
  store = \"/var/lib/drs\"             # retroactive topics survive restarts
  [[listener]]
  url = \"tcp://127.0.0.1:12000\"
  public = true                      # open although another has a token
  [[listener]]
  url = \"tls://0.0.0.0:12443?protocol=msgpack\"
  token = \"s3cret\"                   # drs.auth {\"token\": …} required here
  tls = { cert = \"cert.pem\", key = \"key.pem\" }

Each listener prints `listening URL` on stdout once bound (port 0 picks
a free port). Ctrl-C drains: running calls get --timeout seconds.";

/// `drs serve`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The TOML file: listeners, limits, tokens, jail, broker
    config: Option<PathBuf>,
    /// Serve the demo actions (echo, add, sleep, fail, kaboom, shout, count, …)
    #[arg(long)]
    demo: bool,
    /// Listen here too (repeatable; default tcp://127.0.0.1:12000 when nothing else listens)
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// Seconds running calls get to finish at shutdown (fractions allowed)
    #[arg(long, short = 't', value_name = "SECONDS", default_value = "5", value_parser = crate::seconds)]
    timeout: Duration,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The server's name (logs, the demo's `session`).
    name: Option<String>,
    /// Serve the demo actions.
    #[serde(default)]
    demo: bool,
    /// Actions any connection may call (`billing.*` is a prefix).
    jail: Option<Vec<String>>,
    #[serde(default)]
    limits: Limits,
    broker: Option<BrokerSection>,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerSection>,
}

/// `[limits]`: durations in seconds (0 turns an optional one off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_connections: Option<usize>,
    memory_budget: Option<usize>,
    max_frame: Option<usize>,
    max_outbound: Option<usize>,
    max_in_flight: Option<usize>,
    idle_timeout: Option<f64>,
    frame_timeout: Option<f64>,
    admission_timeout: Option<f64>,
    write_stall_timeout: Option<f64>,
    handler_timeout: Option<f64>,
    call_timeout: Option<f64>,
}

/// `[broker]`: pub/sub and broker RPC.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    /// Off: no drs.subscribe/publish/expose.
    #[serde(default = "yes")]
    enabled: bool,
    /// The durable store's directory; absent: in memory.
    store: Option<PathBuf>,
    /// Topics anyone may publish to.
    publish: Option<Vec<String>>,
    /// Patterns anyone may subscribe to.
    subscribe: Option<Vec<String>>,
    /// Unacknowledged deliveries per named subscriber.
    window: Option<usize>,
    /// Seconds before an unacknowledged delivery is sent again.
    ack_timeout: Option<f64>,
}

fn yes() -> bool {
    true
}

impl Default for BrokerSection {
    /// On, in memory, open.
    fn default() -> Self {
        Self {
            enabled: true,
            store: None,
            publish: None,
            subscribe: None,
            window: None,
            ack_timeout: None,
        }
    }
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerSection {
    /// tcp://, ws://, tls://, wss://, ipc://, nats://, redis://; ?protocol=msgpack.
    url: String,
    /// The token connections must present (drs.auth, or ?token= on WebSocket).
    token: Option<String>,
    /// Serve this listener without a token although others have one (an
    /// explicit choice: never the default).
    #[serde(default)]
    public: bool,
    /// Certificates of a tls:// or wss:// listener.
    tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
    /// Require client certificates signed by this CA (mutual TLS).
    client_ca: Option<PathBuf>,
}

/// Reads and checks the file at `path`.
pub(crate) fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn duration(what: &str, secs: f64) -> Result<Duration, Failure> {
    if secs.is_finite() && (0.0..1e9).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Failure::usage(format!(
            "{what}: {secs} is not a number of seconds"
        )))
    }
}

fn optional(what: &str, secs: f64) -> Result<Option<Duration>, Failure> {
    duration(what, secs).map(|d| (!d.is_zero()).then_some(d))
}

fn jail(what: &str, patterns: &[String]) -> Result<Jail, Failure> {
    Jail::new(patterns).map_err(|e| Failure::usage(format!("{what}: {e}")))
}

impl Limits {
    fn apply(&self, mut config: ServerConfig) -> Result<ServerConfig, Failure> {
        let c = &mut config.conn;
        if let Some(n) = self.max_frame {
            c.max_frame_len = n.max(1);
        }
        if let Some(n) = self.max_outbound {
            c.max_outbound = n.max(1);
        }
        if let Some(n) = self.max_in_flight {
            c.max_in_flight = n.max(1);
        }
        if let Some(s) = self.idle_timeout {
            c.idle_timeout = optional("limits.idle_timeout", s)?;
        }
        if let Some(s) = self.frame_timeout {
            c.frame_timeout = optional("limits.frame_timeout", s)?;
        }
        if let Some(s) = self.admission_timeout {
            c.admission_timeout = duration("limits.admission_timeout", s)?;
        }
        if let Some(s) = self.write_stall_timeout {
            c.write_stall_timeout = optional("limits.write_stall_timeout", s)?;
        }
        if let Some(s) = self.handler_timeout {
            c.handler_timeout = optional("limits.handler_timeout", s)?;
        }
        if let Some(s) = self.call_timeout {
            c.call_timeout = duration("limits.call_timeout", s)?;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n.max(1);
        }
        if let Some(n) = self.memory_budget {
            config.memory_budget = n.max(1);
        }
        Ok(config)
    }
}

impl BrokerSection {
    fn config(&self) -> Result<BrokerConfig, Failure> {
        let mut config = BrokerConfig::default();
        if let Some(dir) = &self.store {
            config = config.store(dir);
        }
        if let Some(topics) = &self.publish {
            config = config.publish_jail(jail("broker.publish", topics)?);
        }
        if let Some(patterns) = &self.subscribe {
            config = config.subscribe_jail(jail("broker.subscribe", patterns)?);
        }
        if let Some(window) = self.window {
            config = config.window(window);
        }
        if let Some(s) = self.ack_timeout {
            config = config.ack_timeout(duration("broker.ack_timeout", s)?);
        }
        Ok(config)
    }
}

/// A server running as `config` says: its listeners' URLs, and what to
/// close at shutdown.
pub(crate) struct Running {
    pub(crate) server: Server,
    pub(crate) broker: Option<Broker>,
    /// The brokers of `nats://` listeners' services, joined while these live.
    _joined: Vec<drs::broker::NatsBroker>,
}

/// Builds the server `config` describes and binds its listeners, calling
/// `bound` with each one's URL.
pub(crate) async fn start(config: Config, mut bound: impl FnMut(&str)) -> Result<Running, Failure> {
    let server = Server::with_config(config.limits.apply(ServerConfig::default())?);
    // Statistics: drs.stats, and what the dashboard and /metrics show.
    drs::Stats::install(&server);
    // Its name and listeners, for drs.stats and the dashboard's header.
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| format!("drs serve (pid {})", std::process::id()));
    let info = drs::stats::ServerInfo::install(&server, name);
    // drs.identify (--name, sessions), broker or not.
    drs::Names::install(&server);
    if let Some(patterns) = &config.jail {
        server.jail(jail("jail", patterns)?);
    }
    let section = config.broker.unwrap_or_default();
    let broker = if section.enabled {
        let broker = Broker::attach(&server, section.config()?.formats(drs::registry()))
            .map_err(|e| Failure::new(1, format!("the broker's store: {e}")))?;
        drs::rembus::attach(&server, &broker);
        Some(broker)
    } else {
        None
    };
    if config.demo {
        match &config.name {
            Some(name) => drs_demo::demo_actions_named(&server, name.clone()),
            None => drs_demo::demo_actions(&server),
        }
    }
    let tokens = config
        .listeners
        .iter()
        .any(|l| l.token.is_some())
        .then(|| ListenerTokens::install(&server));
    let mut joined = Vec::new();
    for listener in config.listeners {
        if listener.token.as_deref() == Some("") {
            return Err(Failure::usage(format!(
                "listener {}: the token is empty",
                listener.url
            )));
        }
        if tokens.is_some() && listener.token.is_none() && !listener.public {
            return Err(Failure::usage(format!(
                "listener {}: no token while other listeners require one; \
                 give it a token, or `public = true` to serve it open",
                listener.url
            )));
        }
        if listener.public && listener.token.is_some() {
            return Err(Failure::usage(format!(
                "listener {}: `public = true` and a token contradict each other",
                listener.url
            )));
        }
        let (url, local) = match (listener.url.starts_with("nats://"), &broker) {
            (true, Some(broker)) => {
                let (url, local, nats_broker) = join_nats(&server, broker, &listener).await?;
                joined.push(nats_broker);
                (url, local)
            }
            _ => bind(&server, &listener).await?,
        };
        if let Some(tokens) = &tokens {
            tokens.set(local, listener.token.clone());
        }
        info.listening(url.clone());
        bound(&url);
    }
    Ok(Running {
        server,
        broker,
        _joined: joined,
    })
}

/// A `nats://HOST:PORT/SERVICE` listener with the broker on: one worker
/// of the service, whose pub/sub joins the other workers' through NATS
/// (retroactive topics in JetStream when the NATS server has it).
async fn join_nats(
    server: &Server,
    broker: &Broker,
    listener: &ListenerSection,
) -> Result<(String, String, drs::broker::NatsBroker), Failure> {
    use drs::{
        broker::{NatsBroker, NatsBrokerConfig},
        nats::{async_nats, NatsListener},
    };
    let url = drs::Url::parse(&listener.url).map_err(|e| Failure::usage(e.to_string()))?;
    let protocol = drs::protocol_of(&url).map_err(|e| Failure::usage(e.to_string()))?;
    let Some((host, service)) = url
        .target
        .split_once('/')
        .filter(|(h, s)| !h.is_empty() && !s.is_empty())
    else {
        return Err(Failure::usage(format!(
            "listener {}: nats://HOST:PORT/SERVICE",
            listener.url
        )));
    };
    let cannot = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot listen on {}: {e}", listener.url),
        )
    };
    let nats = async_nats::connect(format!("nats://{host}"))
        .await
        .map_err(|e| cannot(&e))?;
    let bound = NatsListener::bind(&nats, service)
        .await
        .map_err(|e| cannot(&e))?;
    let joined =
        NatsBroker::attach_or_plain(server, broker, &nats, service, NatsBrokerConfig::default())
            .await
            .map_err(|e| cannot(&e))?;
    let local = server.listen_arc(bound, protocol).map_err(|e| cannot(&e))?;
    let suffix = url
        .param("protocol")
        .map(|p| format!("?protocol={p}"))
        .unwrap_or_default();
    Ok((format!("nats://{host}/{service}{suffix}"), local, joined))
}

/// Binds one listener, through the registry of schemes as `drs::listen`
/// does: its URL and the local address its connections report. A
/// `tls = {…}` section becomes the URL's `cert`, `key` and `client_ca`.
async fn bind(server: &Server, listener: &ListenerSection) -> Result<(String, String), Failure> {
    let mut url = drs::Url::parse(&listener.url).map_err(|e| Failure::usage(e.to_string()))?;
    let usage =
        |e: &dyn std::fmt::Display| Failure::usage(format!("listener {}: {e}", listener.url));
    let cannot = |e: &dyn std::fmt::Display| {
        Failure::new(
            exit::CONNECTION,
            format!("cannot listen on {}: {e}", listener.url),
        )
    };
    let secure = matches!(url.scheme.as_str(), "tls" | "wss");
    match (&listener.tls, secure) {
        (Some(tls), true) => {
            if url.param("cert").is_some() || url.param("key").is_some() {
                return Err(usage(
                    &"give the certificates once: in tls = {…} or in the URL",
                ));
            }
            let files = [("cert", Some(&tls.cert)), ("key", Some(&tls.key))];
            let client_ca = [("client_ca", tls.client_ca.as_ref())];
            for (name, path) in files.into_iter().chain(client_ca) {
                let Some(path) = path else { continue };
                let path = path
                    .to_str()
                    .ok_or_else(|| usage(&format!("{name}: {} is not UTF-8", path.display())))?;
                url.query.push((name.to_string(), path.to_string()));
            }
        }
        (None, true) if url.param("cert").is_none() => {
            return Err(usage(&format!(
                "a {}:// listener needs tls = {{ cert = \"…\", key = \"…\" }}",
                url.scheme
            )))
        }
        (Some(_), false) => return Err(usage(&"tls is for tls:// and wss:// listeners")),
        _ => {}
    }
    if secure {
        // Certificates that do not load are the configuration's fault:
        // say so before anything is bound.
        drs::tls::ServerTls::for_url(&url).map_err(|e| usage(&e))?;
    }
    let protocol = drs::protocol_of(&url).map_err(|e| Failure::usage(e.to_string()))?;
    let scheme = drs::registry().find_scheme(&url.scheme).ok_or_else(|| {
        let known = drs::registry().schemes().join(", ");
        usage(&format!("unknown scheme `{}` ({known})", url.scheme))
    })?;
    let bound = scheme
        .listen(server, &url, protocol)
        .await
        .map_err(|e| match &e {
            drs::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput => usage(&e),
            _ => cannot(&e),
        })?;
    // What connections report as their local address: the URL's address
    // without scheme.
    let local = bound
        .split_once("://")
        .map_or(bound.as_str(), |(_, rest)| rest)
        .to_string();
    let bound = match url.param("protocol") {
        Some(p) => format!("{bound}?protocol={p}"),
        None => bound,
    };
    Ok((bound, local))
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let mut config = match &args.config {
        Some(path) => load(path)?,
        None => Config::default(),
    };
    config.demo |= args.demo;
    config
        .listeners
        .extend(args.listen.into_iter().map(|url| ListenerSection {
            url,
            token: None,
            public: false,
            tls: None,
        }));
    if config.listeners.is_empty() {
        if args.config.is_some() {
            return Err(Failure::usage(
                "the file has no [[listener]] (and no --listen was given)",
            ));
        }
        if !config.demo {
            return Err(Failure::usage(
                "nothing to serve: give a config file, --demo, or both (drs serve --help)",
            ));
        }
        config.listeners.push(ListenerSection {
            url: "tcp://127.0.0.1:12000".into(),
            token: None,
            public: false,
            tls: None,
        });
    }
    let running = start(config, |url| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {url}");
        let _ = out.flush();
    })
    .await?;
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::new(1, format!("cannot wait for Ctrl-C: {e}")))?;
    tracing::info!("shutting down");
    running.server.shutdown(args.timeout).await;
    if let Some(broker) = running.broker {
        broker
            .close()
            .await
            .map_err(|e| Failure::new(1, format!("the broker's store: {e}")))?;
    }
    Ok(())
}
